import { readFileSync, readdirSync } from 'node:fs';
import { basename } from 'node:path';
import { qemuConvert, qemuCreate, qemuIo, requireQemu, run, tempDir } from '@ic/test-utils';

/**
 * A seed: a real image made by qemu-img at test time, plus the files it needs. Mutants are this image with a
 * few bytes changed; companions (extent files of a descriptor, the parent of a child) stay as qemu made them
 * unless a mutation names one of them.
 */
export interface Seed {
  /** Stable name: regression tests rebuild a seed by name and apply the recorded mutations to it. */
  name: string;
  /** The qemu-img format name of the driver that opens it (the mutant is always opened with `-f` this). */
  format: string;
  bytes: Uint8Array;
  /** Other files the image names (VMDK extent files), by the name the image uses. */
  companions: Record<string, Uint8Array>;
  /** The backing image, opened (unmutated) and passed to the driver as OpenOptions.backing. */
  backing?: { format: string; bytes: Uint8Array; companions?: Record<string, Uint8Array> };
}

const M = 1024 * 1024;

type Builder = (path: (name: string) => string) => Omit<Seed, 'name' | 'format' | 'bytes'> & { file: string };

function rawWithData(file: string, size: number): void {
  qemuCreate(file, 'raw', size);
  qemuIo(file, 'raw', ['write -P 0x11 0 64k', 'write -P 0x22 1M 128k', 'write -P 0x33 5M 4k']);
}

function qemuOk(args: string[]): void {
  const result = run('qemu-img', args);
  if (result.code !== 0) throw new Error(`qemu-img ${args.join(' ')}: ${result.stderr.trim()}`);
}

/** The writes every writable seed gets: data, a zero write and a discard, spread over several tables. */
const WRITES = ['write -P 0xa1 0 64k', 'write -P 0xa2 3M 192k', 'write -z 6M 64k', 'write -P 0xa3 9M 4k', 'discard 3M 64k', 'write -P 0xa4 15M 64k'];

/** Every seed, by name; each builder works in its own directory. */
const BUILDERS: Record<string, { format: string; build: Builder }> = {
  'qcow2-v3': {
    format: 'qcow2',
    build: (path) => {
      const file = path('v3.qcow2');
      qemuCreate(file, 'qcow2', 16 * M);
      qemuIo(file, 'qcow2', WRITES);
      return { file, companions: {} };
    },
  },
  'qcow2-v2': {
    format: 'qcow2',
    build: (path) => {
      const file = path('v2.qcow2');
      qemuCreate(file, 'qcow2', 16 * M, { o: 'compat=0.10' });
      qemuIo(file, 'qcow2', WRITES.filter((w) => !w.startsWith('write -z')));
      return { file, companions: {} };
    },
  },
  'qcow2-4k-refcount1': {
    format: 'qcow2',
    build: (path) => {
      const file = path('small.qcow2');
      qemuCreate(file, 'qcow2', 16 * M, { o: 'cluster_size=4096,refcount_bits=1' });
      qemuIo(file, 'qcow2', WRITES);
      return { file, companions: {} };
    },
  },
  'qcow2-backing': {
    format: 'qcow2',
    build: (path) => {
      const base = path('base.raw');
      rawWithData(base, 16 * M);
      const file = path('child.qcow2');
      qemuCreate(file, 'qcow2', 16 * M, { backing: 'base.raw', backingFormat: 'raw', cwd: path('.') });
      qemuIo(file, 'qcow2', WRITES, path('.'));
      return { file, companions: {}, backing: { format: 'raw', bytes: readFileSync(base) } };
    },
  },
  'qcow2-extended-l2': {
    format: 'qcow2',
    build: (path) => {
      const file = path('ext.qcow2');
      qemuCreate(file, 'qcow2', 16 * M, { o: 'extended_l2=on,cluster_size=64k' });
      qemuIo(file, 'qcow2', ['write -P 0xb1 0 4k', 'write -P 0xb2 70k 6k', 'write -z 1M 2k', 'write -P 0xb3 8M 64k']);
      return { file, companions: {} };
    },
  },
  'qcow2-bitmaps': {
    format: 'qcow2',
    build: (path) => {
      const file = path('bitmaps.qcow2');
      qemuCreate(file, 'qcow2', 16 * M);
      qemuIo(file, 'qcow2', ['write -P 0xc1 0 64k']);
      qemuOk(['bitmap', '--add', '-f', 'qcow2', file, 'b0']);
      qemuOk(['bitmap', '--add', '-f', 'qcow2', '-g', '512k', file, 'second-bitmap']);
      qemuIo(file, 'qcow2', ['write -P 0xc2 2M 64k']);
      return { file, companions: {} };
    },
  },
  'qcow2-compressed': {
    format: 'qcow2',
    build: (path) => {
      const raw = path('source.raw');
      rawWithData(raw, 8 * M);
      const file = path('compressed.qcow2');
      qemuOk(['convert', '-c', '-f', 'raw', '-O', 'qcow2', raw, file]);
      return { file, companions: {} };
    },
  },
  'qcow2-snapshot': {
    format: 'qcow2',
    build: (path) => {
      const file = path('snap.qcow2');
      qemuCreate(file, 'qcow2', 16 * M);
      qemuIo(file, 'qcow2', ['write -P 0xd1 0 64k']);
      qemuOk(['snapshot', '-c', 'first', file]);
      qemuIo(file, 'qcow2', ['write -P 0xd2 0 4k', 'write -P 0xd3 4M 64k']);
      return { file, companions: {} };
    },
  },
  qed: {
    format: 'qed',
    build: (path) => {
      const file = path('plain.qed');
      qemuCreate(file, 'qed', 16 * M);
      qemuIo(file, 'qed', WRITES);
      return { file, companions: {} };
    },
  },
  'qed-backing': {
    format: 'qed',
    build: (path) => {
      const base = path('base.raw');
      rawWithData(base, 16 * M);
      const file = path('child.qed');
      qemuCreate(file, 'qed', 16 * M, { backing: 'base.raw', backingFormat: 'raw', cwd: path('.') });
      qemuIo(file, 'qed', WRITES, path('.'));
      return { file, companions: {}, backing: { format: 'raw', bytes: readFileSync(base) } };
    },
  },
  'qed-4k-table2': {
    format: 'qed',
    build: (path) => {
      const file = path('small.qed');
      qemuCreate(file, 'qed', 16 * M, { o: 'cluster_size=4096,table_size=2' });
      qemuIo(file, 'qed', WRITES);
      return { file, companions: {} };
    },
  },
  'vmdk-sparse': {
    format: 'vmdk',
    build: (path) => {
      const file = path('sparse.vmdk');
      qemuCreate(file, 'vmdk', 16 * M, { o: 'zeroed_grain=on' });
      qemuIo(file, 'vmdk', WRITES.filter((w) => !w.startsWith('discard')));
      return { file, companions: {} };
    },
  },
  'vmdk-stream': {
    format: 'vmdk',
    build: (path) => {
      const raw = path('source.raw');
      rawWithData(raw, 8 * M);
      const file = path('stream.vmdk');
      qemuConvert(raw, 'raw', file, 'vmdk', 'subformat=streamOptimized');
      return { file, companions: {} };
    },
  },
  'vmdk-flat-descriptor': {
    format: 'vmdk',
    build: (path) => {
      const file = path('flat.vmdk');
      qemuCreate(file, 'vmdk', M, { o: 'subformat=monolithicFlat' });
      qemuIo(file, 'vmdk', ['write -P 0xe1 0 64k', 'write -P 0xe2 512k 4k']);
      return { file, companions: companionsOf(path('.'), file) };
    },
  },
  'vmdk-2gb-sparse-descriptor': {
    format: 'vmdk',
    build: (path) => {
      const file = path('split.vmdk');
      qemuCreate(file, 'vmdk', 8 * M, { o: 'subformat=twoGbMaxExtentSparse' });
      qemuIo(file, 'vmdk', ['write -P 0xf1 0 64k', 'write -P 0xf2 5M 64k']);
      return { file, companions: companionsOf(path('.'), file) };
    },
  },
  'vmdk-child': {
    format: 'vmdk',
    build: (path) => {
      const parent = path('parent.vmdk');
      qemuCreate(parent, 'vmdk', 16 * M);
      qemuIo(parent, 'vmdk', ['write -P 0x44 0 128k', 'write -P 0x45 8M 64k']);
      const file = path('child.vmdk');
      qemuCreate(file, 'vmdk', 16 * M, { backing: 'parent.vmdk', backingFormat: 'vmdk', cwd: path('.') });
      qemuIo(file, 'vmdk', ['write -P 0x46 64k 64k', 'write -P 0x47 12M 64k'], path('.'));
      return { file, companions: {}, backing: { format: 'vmdk', bytes: readFileSync(parent) } };
    },
  },
};

/** Every file qemu-img made next to `file` for it (extent files), by base name. */
function companionsOf(dir: string, file: string): Record<string, Uint8Array> {
  const stem = basename(file).replace(/\.vmdk$/, '');
  const out: Record<string, Uint8Array> = {};
  for (const name of readdirSync(dir)) {
    if (name !== basename(file) && name.startsWith(`${stem}-`)) out[name] = readFileSync(`${dir}/${name}`);
  }
  return out;
}

export const SEED_NAMES: readonly string[] = Object.keys(BUILDERS);

const cache = new Map<string, Seed>();

/** Builds (once per process) the seed called `name` with qemu-img. */
export function seedImage(name: string): Seed {
  const cached = cache.get(name);
  if (cached) return cached;
  const builder = BUILDERS[name];
  if (!builder) throw new Error(`unknown fuzz seed '${name}' (seeds: ${SEED_NAMES.join(', ')})`);
  requireQemu();
  const dir = tempDir('ic-fuzz-seed-');
  try {
    const built = builder.build(dir.path);
    const seed: Seed = { name, format: builder.format, bytes: new Uint8Array(readFileSync(built.file)), companions: built.companions };
    if (built.backing) seed.backing = built.backing;
    cache.set(name, seed);
    return seed;
  } finally {
    dir.cleanup();
  }
}

/** Every seed (or the named ones). */
export function seedImages(names: readonly string[] = SEED_NAMES): Seed[] {
  return names.map((name) => seedImage(name));
}

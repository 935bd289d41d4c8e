import { readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { basename } from 'node:path';
import { qemuConvert, qemuCreate, qemuIo, requireQemu, run, tempDir } from '@ic/test-utils';
import { FILE_PARAMETERS_GUID, METADATA_REGION_GUID, PARENT_LOCATOR_GUID, REGION_TABLE_OFFSETS, VHDX_PARENT_LOCATOR_TYPE, guidEqual } from '@ic/vhdx';

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

/**
 * Writes in scattered order over an 8 MiB disk (the last block first), for the formats whose blocks are big (VDI
 * 1 MiB, VHD 2 MiB, VHDX and Parallels 1 MiB): block indexes then differ from guest order, and the files stay a few
 * MiB (every written block is whole in the seed, and every mutant is a copy of it).
 */
const SCATTERED = ['write -P 0xb4 7M 64k', 'write -P 0xb1 0 4k', 'write -P 0xb3 5M 4k', 'write -P 0xb2 2M 64k', 'write -z 3M 64k', 'write -P 0xb5 2200k 4k'];

/**
 * A differencing VHDX (qemu 7.2 reads and writes none, so this is a qemu-made VHDX turned into one as another
 * writer would): file parameters with has_parent, a sixth metadata entry and a parent locator naming
 * `parent` by relative_path. The BAT keeps its qemu layout (one chunk, its sector bitmap entry not present).
 */
function makeDifferencing(bytes: Uint8Array, parent: string): Uint8Array {
  const out = bytes.slice();
  const view = new DataView(out.buffer);
  const table = REGION_TABLE_OFFSETS[0];
  let metadata = -1;
  for (let i = 0; i < view.getUint32(table + 8, true); i++) {
    const entry = table + 16 + i * 32;
    if (guidEqual(out.subarray(entry, entry + 16), METADATA_REGION_GUID)) metadata = Number(view.getBigUint64(entry + 16, true));
  }
  if (metadata < 0) throw new Error('qemu-made VHDX without a metadata region');
  const count = view.getUint16(metadata + 10, true);
  let end = 0;
  for (let i = 0; i < count; i++) {
    const entry = metadata + 32 + i * 32;
    const offset = view.getUint32(entry + 16, true);
    end = Math.max(end, offset + view.getUint32(entry + 20, true));
    // File parameters (8 bytes: block size, flags): set has_parent.
    if (guidEqual(out.subarray(entry, entry + 16), FILE_PARAMETERS_GUID)) {
      view.setUint32(metadata + offset + 4, view.getUint32(metadata + offset + 4, true) | 2, true);
    }
  }
  const utf16 = (text: string) => Uint8Array.from([...text].flatMap((c) => [c.charCodeAt(0), 0]));
  const pairs: [string, string][] = [
    ['relative_path', `.\\${parent}`],
    ['absolute_win32_path', `C:\\images\\${parent}`],
  ];
  const keysAt = 20 + pairs.length * 12;
  const strings = pairs.flatMap(([key, value]) => [utf16(key), utf16(value)]);
  const locator = new Uint8Array(keysAt + strings.reduce((sum, text) => sum + text.length, 0));
  const lv = new DataView(locator.buffer);
  locator.set(VHDX_PARENT_LOCATOR_TYPE, 0);
  lv.setUint16(18, pairs.length, true);
  let at = keysAt;
  pairs.forEach((_, i) => {
    const [key, value] = [strings[i * 2]!, strings[i * 2 + 1]!];
    lv.setUint32(20 + i * 12, at, true);
    locator.set(key, at);
    at += key.length;
    lv.setUint32(20 + i * 12 + 4, at, true);
    locator.set(value, at);
    at += value.length;
    lv.setUint16(20 + i * 12 + 8, key.length, true);
    lv.setUint16(20 + i * 12 + 10, value.length, true);
  });
  const item = Math.ceil(end / 8) * 8;
  out.set(locator, metadata + item);
  const entry = metadata + 32 + count * 32;
  out.set(PARENT_LOCATOR_GUID, entry);
  view.setUint32(entry + 16, item, true);
  view.setUint32(entry + 20, locator.length, true);
  view.setUint32(entry + 24, 4, true); // required
  view.setUint16(metadata + 10, count + 1, true);
  return out;
}

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
  'vdi-empty': {
    format: 'vdi',
    build: (path) => {
      const file = path('empty.vdi');
      qemuCreate(file, 'vdi', 64 * M);
      return { file, companions: {} };
    },
  },
  'vdi-scattered': {
    format: 'vdi',
    build: (path) => {
      const file = path('scattered.vdi');
      qemuCreate(file, 'vdi', 8 * M);
      qemuIo(file, 'vdi', SCATTERED);
      return { file, companions: {} };
    },
  },
  'vdi-static': {
    format: 'vdi',
    build: (path) => {
      const file = path('static.vdi');
      qemuCreate(file, 'vdi', 3 * M, { o: 'static=on' });
      qemuIo(file, 'vdi', ['write -P 0xc2 2M 4k', 'write -P 0xc1 0 64k']);
      return { file, companions: {} };
    },
  },
  'vpc-empty': {
    format: 'vpc',
    build: (path) => {
      const file = path('empty.vhd');
      qemuCreate(file, 'vpc', 64 * M);
      return { file, companions: {} };
    },
  },
  'vpc-scattered': {
    format: 'vpc',
    build: (path) => {
      const file = path('scattered.vhd');
      qemuCreate(file, 'vpc', 8 * M);
      qemuIo(file, 'vpc', SCATTERED);
      return { file, companions: {} };
    },
  },
  'vpc-force-size': {
    format: 'vpc',
    build: (path) => {
      // force_size: the exact size in current_size, creator "qem2", the maximum CHS geometry.
      const file = path('forced.vhd');
      qemuCreate(file, 'vpc', 5 * M + 512, { o: 'force_size=on' });
      qemuIo(file, 'vpc', ['write -P 0xc3 4M 4k']);
      return { file, companions: {} };
    },
  },
  'vpc-fixed': {
    format: 'vpc',
    build: (path) => {
      const file = path('fixed.vhd');
      qemuCreate(file, 'vpc', 3 * M, { o: 'subformat=fixed' });
      qemuIo(file, 'vpc', ['write -P 0xc4 2M 4k', 'write -P 0xc5 0 64k']);
      return { file, companions: {} };
    },
  },
  'vhdx-empty': {
    format: 'vhdx',
    build: (path) => {
      // qemu's default block size for this size (8 MiB).
      const file = path('empty.vhdx');
      qemuCreate(file, 'vhdx', 64 * M);
      return { file, companions: {} };
    },
  },
  'vhdx-1m-scattered': {
    format: 'vhdx',
    build: (path) => {
      const file = path('scattered.vhdx');
      qemuCreate(file, 'vhdx', 8 * M, { o: 'block_size=1M' });
      qemuIo(file, 'vhdx', SCATTERED);
      return { file, companions: {} };
    },
  },
  'vhdx-32m': {
    format: 'vhdx',
    build: (path) => {
      // One written block of 32 MiB (the file holds it whole), the second of two.
      const file = path('big-blocks.vhdx');
      qemuCreate(file, 'vhdx', 64 * M, { o: 'block_size=32M' });
      qemuIo(file, 'vhdx', ['write -P 0xd1 40M 4k']);
      return { file, companions: {} };
    },
  },
  'vhdx-fixed': {
    format: 'vhdx',
    build: (path) => {
      const file = path('fixed.vhdx');
      qemuCreate(file, 'vhdx', 2 * M, { o: 'subformat=fixed,block_size=1M' });
      qemuIo(file, 'vhdx', ['write -P 0xd2 1M 4k', 'write -P 0xd3 0 64k']);
      return { file, companions: {} };
    },
  },
  'vhdx-differencing': {
    format: 'vhdx',
    build: (path) => {
      const parent = path('parent.vhdx');
      qemuCreate(parent, 'vhdx', 8 * M, { o: 'block_size=1M' });
      qemuIo(parent, 'vhdx', ['write -P 0xd4 0 128k', 'write -P 0xd5 6M 64k']);
      const file = path('child.vhdx');
      qemuCreate(file, 'vhdx', 8 * M, { o: 'block_size=1M' });
      qemuIo(file, 'vhdx', ['write -P 0xd6 6M 4k', 'write -P 0xd7 1M 64k']);
      writeFileSync(file, makeDifferencing(readFileSync(file), 'parent.vhdx'));
      return { file, companions: {}, backing: { format: 'vhdx', bytes: readFileSync(parent) } };
    },
  },
  'parallels-empty': {
    format: 'parallels',
    build: (path) => {
      const file = path('empty.hds');
      qemuCreate(file, 'parallels', 64 * M);
      return { file, companions: {} };
    },
  },
  'parallels-scattered': {
    format: 'parallels',
    build: (path) => {
      const file = path('scattered.hds');
      qemuCreate(file, 'parallels', 8 * M);
      qemuIo(file, 'parallels', SCATTERED);
      return { file, companions: {} };
    },
  },
  'parallels-64k': {
    format: 'parallels',
    build: (path) => {
      const file = path('small.hds');
      qemuCreate(file, 'parallels', 16 * M, { o: 'cluster_size=64k' });
      qemuIo(file, 'parallels', WRITES.filter((w) => !w.startsWith('discard')).reverse());
      return { file, companions: {} };
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

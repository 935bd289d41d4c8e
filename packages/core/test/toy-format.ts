/**
 * A deliberately tiny format for testing the engine without any real driver.
 *   header (at 0): magic[4] | u32 clusterSize | u64 virtualSize | u64 tableOffset | u32 headerClusters
 *   table: one u64 per guest cluster: 0 unallocated, 1 zero, otherwise the host offset of the data cluster.
 * Two toy formats with different magics and header sizes convert into each other through the engine.
 */
import {
  alignUp,
  ByteView,
  DRIVER_API_VERSION,
  IcError,
  pushExtent,
  readExtents,
  type BlockIO,
  type Driver,
  type CheckReport,
  type Extent,
  type Image,
  type Placement,
  type UnitRun,
} from '../src/index.js';

const HEADER_LENGTH = 28;

/**
 * Targets with a placement other than 'anywhere' (the format itself reads any layout; its check enforces the
 * placement's rule, so the engine's verify step and the tests see a broken placement as corruption):
 *  - packed: the data clusters fill slots start .. start + (n-1)*C, start being the lowest;
 *  - prefixed: each data cluster is preceded by `prefix` bytes "PFX!" + u32 guest cluster index, written by build().
 */
export interface ToyVariant {
  placement?: Placement;
  hostAlignment?: number;
}

const PREFIX_MAGIC = 'PFX!';

export function makeToyDriver(name: string, magic: string, headerClusters: number, clusterSizes = { min: 512, max: 1 << 21 }, variant: ToyVariant = {}): Driver {
  const magicBytes = new TextEncoder().encode(magic);
  const placement = variant.placement ?? { kind: 'anywhere' as const };

  async function open(io: BlockIO): Promise<Image> {
    const head = new ByteView(await io.read(0, HEADER_LENGTH));
    if (head.text(0, 4) !== magic) throw new IcError('WRONG_FORMAT', `${name}: bad magic`);
    const clusterSize = head.u32le(4);
    const virtualSize = head.u64le(8);
    const tableOffset = head.u64le(16);
    const clusters = Math.ceil(virtualSize / clusterSize);
    if (clusters > 1 << 20) throw new IcError('LIMIT', `${name}: too many clusters`);
    const table = new ByteView(await io.read(tableOffset, clusters * 8));
    const extents: Extent[] = [];
    for (let index = 0; index < clusters; index++) {
      const entry = table.u64le(index * 8);
      const guestOffset = index * clusterSize;
      const length = Math.min(clusterSize, virtualSize - guestOffset);
      if (entry === 0) pushExtent(extents, { kind: 'unallocated', guestOffset, length });
      else if (entry === 1) pushExtent(extents, { kind: 'zero', guestOffset, length });
      else pushExtent(extents, { kind: 'data', guestOffset, length, hostOffset: entry });
    }
    return {
      format: name,
      info: () => ({ format: name, virtualSize, clusterSize, dirty: false }),
      map: async function* () {
        yield* extents;
      },
      read: (guestOffset, length) => readExtents(io, extents, guestOffset, length),
      conversionSource: async () => ({
        options: { virtualSize, clusterSize },
        blockers: [],
        headerRegionSize: head.u32le(24) * clusterSize,
        metadataRanges: () => [
          { offset: 0, length: HEADER_LENGTH, kind: 'header' as const },
          { offset: tableOffset, length: alignUp(clusters * 8, clusterSize), kind: 'metadata' as const, role: 'table' },
        ],
      }),
      units: () => {
        const pointer = { encoding: 'u64le' as const };
        const runs: UnitRun[] = [{ kind: 'table', hostOffset: tableOffset, unitLength: alignUp(clusters * 8, clusterSize), count: 1, pointerOffset: 16, pointerStride: 0, pointer }];
        for (const extent of extents) {
          if (extent.kind !== 'data') continue;
          const index = extent.guestOffset / clusterSize;
          runs.push({ kind: 'data', hostOffset: extent.hostOffset, unitLength: clusterSize, count: Math.ceil(extent.length / clusterSize), pointerOffset: tableOffset + index * 8, pointerStride: 8, pointer });
        }
        return runs;
      },
      check: async (): Promise<CheckReport> => {
        // Leaks: clusters past the header region that nothing references (this format has no reference counts).
        const used = new Set<number>();
        const mark = (offset: number, length: number) => {
          for (let c = Math.floor(offset / clusterSize); c < Math.ceil((offset + length) / clusterSize); c++) used.add(c);
        };
        mark(tableOffset, clusters * 8);
        for (const extent of extents) if (extent.kind === 'data') mark(extent.hostOffset, alignUp(extent.length, clusterSize));
        const fileClusters = Math.ceil((await io.size()) / clusterSize);
        let leaks = 0;
        if (placement.kind === 'anywhere') for (let c = head.u32le(24); c < fileClusters; c++) if (!used.has(c)) leaks++;
        const messages = await placementProblems(io, extents, clusterSize, placement);
        return { corruptions: messages.length, leaks, checkErrors: 0, messages };
      },
      close: async () => {},
    };
  }

  return {
    name,
    description: `toy format ${name} for engine tests`,
    version: '0.0.0',
    apiVersion: DRIVER_API_VERSION,
    capabilities: { read: true, zeroExtents: true, check: true, inPlaceSource: true, inPlaceTarget: true },
    probe: (head) => (magicBytes.every((b, i) => head[i] === b) ? 100 : 0),
    open,
    inPlace: {
      clusterSizes,
      create: (request) => ({
        layout: {
          clusterSize: request.clusterSize,
          headerRegionSize: headerClusters * request.clusterSize,
          maxHostOffset: Number.MAX_SAFE_INTEGER,
          zeroExtents: true,
          unreferencedClustersLeak: placement.kind === 'anywhere',
          ...(placement.kind === 'anywhere' ? {} : { placement }),
          ...(variant.hostAlignment ? { hostAlignment: variant.hostAlignment } : {}),
        },
        problems: [],
        estimate: () => ({ metadataBytes: alignUp(Math.ceil(request.source.virtualSize / request.clusterSize) * 8, request.clusterSize) }),
        build: async (mapping, space, out) => {
          const clusterSize = request.clusterSize;
          const clusters = Math.ceil(request.source.virtualSize / clusterSize);
          const table = ByteView.alloc(clusters * 8);
          for await (const batch of mapping) {
            for (const extent of batch) {
              for (let at = extent.guestOffset; at < extent.guestOffset + extent.length; at += clusterSize) {
                const index = at / clusterSize;
                if (extent.kind === 'data') {
                  const host = extent.hostOffset + (at - extent.guestOffset);
                  table.setU64le(index * 8, host);
                  if (placement.kind === 'prefixed') await out.write(host - placement.prefix, prefixBytes(placement.prefix, index));
                } else if (extent.kind === 'zero') table.setU64le(index * 8, 1);
              }
            }
          }
          const tableOffset = space.allocate(alignUp(table.length, clusterSize), clusterSize);
          await out.write(tableOffset, table.bytes);
          const header = ByteView.alloc(HEADER_LENGTH);
          header.bytes.set(magicBytes, 0);
          header.setU32le(4, clusterSize);
          header.setU64le(8, request.source.virtualSize);
          header.setU64le(16, tableOffset);
          header.setU32le(24, headerClusters);
          return { header: header.bytes, fileSize: space.end };
        },
      }),
    },
  };
}

function prefixBytes(length: number, guestCluster: number): Uint8Array {
  const bytes = ByteView.alloc(length);
  bytes.bytes.set(new TextEncoder().encode(PREFIX_MAGIC), 0);
  bytes.setU32le(4, guestCluster);
  return bytes.bytes;
}

/** What breaks the variant's placement rule, one message per problem. */
async function placementProblems(io: BlockIO, extents: readonly Extent[], clusterSize: number, placement: Placement): Promise<string[]> {
  const problems: string[] = [];
  const hosts: number[] = [];
  for (const extent of extents) {
    if (extent.kind !== 'data') continue;
    for (let at = 0; at < extent.length; at += clusterSize) {
      const host = extent.hostOffset + at;
      hosts.push(host);
      if (placement.kind === 'prefixed') {
        const prefix = await io.read(host - placement.prefix, placement.prefix);
        const expected = prefixBytes(placement.prefix, (extent.guestOffset + at) / clusterSize);
        if (!prefix.every((byte, i) => byte === expected[i])) problems.push(`data cluster at ${host} lacks its prefix`);
      }
    }
  }
  if (placement.kind === 'packed' && hosts.length > 0) {
    const start = Math.min(...hosts);
    if (start < placement.start) problems.push(`the packed run starts at ${start}, before ${placement.start}`);
    const slots = new Set(hosts.map((host) => (host - start) / clusterSize));
    for (const slot of slots) if (!Number.isInteger(slot) || slot >= hosts.length) problems.push(`a data cluster lies outside slots 0..${hosts.length - 1} (slot ${slot})`);
    if (slots.size !== hosts.length) problems.push('two data clusters share a slot');
  }
  return problems;
}

/**
 * Tiny formats for testing the crash machinery without real drivers (not exported from the package).
 *
 * Toy header (at offset 0, little-endian):
 *   0 magic[4] | 4 u32 clusterSize | 8 u64 virtualSize | 16 u64 tableOffset | 24 u32 headerClusters
 *   28 u32 headerLength | 32 u32 crc32c of bytes 0..headerLength with this field zeroed
 *   36.. filler up to headerLength derived from tableOffset (so a header longer than a sector has a tail
 *   that matters: a torn tail fails the checksum)
 * Table: one u64 per guest cluster: 0 unallocated, 1 zero, otherwise the host offset of the data cluster.
 *
 * Also a raw-like toy: guest byte N is file byte N, its probe accepts anything with score 1.
 */
import {
  alignUp,
  ByteView,
  crc32c,
  DRIVER_API_VERSION,
  IcError,
  isPowerOfTwo,
  pushExtent,
  readExtents,
  type BlockIO,
  type CheckReport,
  type Driver,
  type Extent,
  type Image,
} from '@ic/core';

const FIXED = 36;

export interface ToyFormatOptions {
  name: string;
  magic: string;
  /** Clusters at offset 0 owned by the header. */
  headerClusters: number;
  /** Bytes of meaningful header (default 36); more than 512 exercises the multi-sector commits. */
  headerLength?: number;
  clusterSizes?: { min: number; max: number };
}

function fillerByte(tableOffset: number, at: number): number {
  return ((tableOffset / 512 + at * 31) & 0xff) || 1;
}

export function encodeToyHeader(magic: string, clusterSize: number, virtualSize: number, tableOffset: number, headerClusters: number, headerLength: number): Uint8Array {
  const header = ByteView.alloc(headerLength);
  header.bytes.set(new TextEncoder().encode(magic), 0);
  header.setU32le(4, clusterSize);
  header.setU64le(8, virtualSize);
  header.setU64le(16, tableOffset);
  header.setU32le(24, headerClusters);
  header.setU32le(28, headerLength);
  for (let at = FIXED; at < headerLength; at++) header.setU8(at, fillerByte(tableOffset, at));
  header.setU32le(32, crc32c(header.bytes));
  return header.bytes;
}

export function makeToyFormat(options: ToyFormatOptions): Driver {
  const { name, magic, headerClusters } = options;
  const headerLength = options.headerLength ?? FIXED;
  const clusterSizes = options.clusterSizes ?? { min: 512, max: 1 << 21 };
  const magicBytes = new TextEncoder().encode(magic);
  const corrupt = (what: string, offset?: number) => new IcError('CORRUPT', `${name}: ${what}`, offset === undefined ? { format: name } : { format: name, offset });

  async function open(io: BlockIO): Promise<Image> {
    const fileSize = await io.size();
    const fixed = new ByteView(await io.read(0, FIXED));
    if (!magicBytes.every((b, i) => fixed.u8(i) === b)) throw new IcError('WRONG_FORMAT', `${name}: bad magic`);
    const clusterSize = fixed.u32le(4);
    const length = fixed.u32le(28);
    if (!isPowerOfTwo(clusterSize) || clusterSize < 512 || clusterSize > 1 << 21) throw corrupt(`cluster size ${clusterSize} at 4`, 4);
    if (length < FIXED || length > 64 * 1024) throw corrupt(`header length ${length} at 28`, 28);
    const head = new ByteView(await io.read(0, length));
    const stored = head.u32le(32);
    head.setU32le(32, 0);
    if (crc32c(head.bytes) !== stored) throw corrupt('header checksum mismatch at 32', 32);
    const virtualSize = head.u64le(8);
    const tableOffset = head.u64le(16);
    const regionSize = head.u32le(24) * clusterSize;
    const clusters = Math.ceil(virtualSize / clusterSize);
    if (clusters > 1 << 20) throw new IcError('LIMIT', `${name}: ${clusters} clusters`);
    const tableLength = alignUp(clusters * 8, clusterSize);
    if (tableOffset % clusterSize !== 0 || tableOffset < regionSize || tableOffset + clusters * 8 > fileSize) throw corrupt(`table offset ${tableOffset} at 16`, 16);
    const table = new ByteView(await io.read(tableOffset, clusters * 8));
    const extents: Extent[] = [];
    const hosts: number[] = [];
    for (let index = 0; index < clusters; index++) {
      const entry = table.u64le(index * 8);
      const guestOffset = index * clusterSize;
      const length = Math.min(clusterSize, virtualSize - guestOffset);
      if (entry === 0) pushExtent(extents, { kind: 'unallocated', guestOffset, length });
      else if (entry === 1) pushExtent(extents, { kind: 'zero', guestOffset, length });
      else {
        if (entry % clusterSize !== 0 || entry < regionSize || entry + clusterSize > fileSize) throw corrupt(`table entry ${index} (${entry})`, tableOffset + index * 8);
        pushExtent(extents, { kind: 'data', guestOffset, length, hostOffset: entry });
        hosts.push(entry);
      }
    }
    const check = async (): Promise<CheckReport> => {
      const messages: string[] = [];
      const sorted = [...hosts].sort((a, b) => a - b);
      for (let i = 1; i < sorted.length; i++) if (sorted[i] === sorted[i - 1]) messages.push(`host cluster ${sorted[i]} referenced twice`);
      for (const host of hosts) if (host < tableOffset + tableLength && tableOffset < host + clusterSize) messages.push(`data cluster ${host} overlaps the table`);
      return { corruptions: messages.length, leaks: 0, checkErrors: 0, messages };
    };
    return {
      format: name,
      info: () => ({ format: name, virtualSize, clusterSize, dirty: false }),
      map: () => [extents],
      read: (guestOffset, length) => readExtents(io, extents, guestOffset, length),
      check,
      conversionSource: async () => ({
        options: { virtualSize, clusterSize },
        blockers: [],
        headerRegionSize: regionSize,
        metadataRanges: () => [
          { offset: 0, length, kind: 'header' as const },
          { offset: tableOffset, length: tableLength, kind: 'metadata' as const, role: 'table' },
        ],
      }),
      close: async () => {},
    };
  }

  return {
    name,
    description: `toy format ${name} for crash tests`,
    version: '0.0.0',
    apiVersion: DRIVER_API_VERSION,
    capabilities: { read: true, check: true, zeroExtents: true, inPlaceSource: true, inPlaceTarget: true },
    probe: (head) => (magicBytes.every((b, i) => head[i] === b) ? 100 : 0),
    open,
    inPlace: {
      clusterSizes,
      create: (request) => ({
        layout: {
          clusterSize: request.clusterSize,
          headerRegionSize: Math.max(headerClusters * request.clusterSize, alignUp(headerLength, request.clusterSize)),
          maxHostOffset: Number.MAX_SAFE_INTEGER,
          zeroExtents: true,
        },
        problems: request.source.backing ? ['toy formats cannot name a backing file'] : [],
        estimate: () => ({ metadataBytes: alignUp(Math.ceil(request.source.virtualSize / request.clusterSize) * 8, request.clusterSize) }),
        build: async (mapping, space, out) => {
          const clusterSize = request.clusterSize;
          const clusters = Math.ceil(request.source.virtualSize / clusterSize);
          const table = ByteView.alloc(clusters * 8);
          for await (const batch of mapping) {
            for (const extent of batch) {
              for (let at = extent.guestOffset; at < extent.guestOffset + extent.length; at += clusterSize) {
                const index = at / clusterSize;
                if (extent.kind === 'data') table.setU64le(index * 8, extent.hostOffset + (at - extent.guestOffset));
                else if (extent.kind === 'zero') table.setU64le(index * 8, 1);
              }
            }
          }
          const tableOffset = space.allocate(alignUp(table.length, clusterSize), clusterSize);
          await out.write(tableOffset, table.bytes);
          const regionClusters = Math.max(headerClusters, Math.ceil(headerLength / clusterSize));
          const header = encodeToyHeader(magic, clusterSize, request.source.virtualSize, tableOffset, regionClusters, headerLength);
          return { header, fileSize: space.end };
        },
      }),
    },
  };
}

/** A raw-like toy: any bytes are an image, guest byte N is file byte N; holes are zero extents. */
export function makeToyRaw(name = 'toyraw'): Driver {
  async function open(io: BlockIO): Promise<Image> {
    const fileSize = await io.size();
    const extents = async (): Promise<Extent[]> => {
      const out: Extent[] = [];
      const ranges = io.dataRanges ? await io.dataRanges(0, fileSize) : [{ offset: 0, length: fileSize }];
      let at = 0;
      for (const range of ranges) {
        if (range.offset > at) pushExtent(out, { kind: 'zero', guestOffset: at, length: range.offset - at, hostOffset: at });
        pushExtent(out, { kind: 'data', guestOffset: range.offset, length: range.length, hostOffset: range.offset });
        at = range.offset + range.length;
      }
      if (at < fileSize) pushExtent(out, { kind: 'zero', guestOffset: at, length: fileSize - at, hostOffset: at });
      return out;
    };
    return {
      format: name,
      info: () => ({ format: name, virtualSize: fileSize, dirty: false }),
      map: async function* () {
        yield await extents();
      },
      read: (guestOffset, length) => io.read(guestOffset, length),
      conversionSource: async () => ({
        options: { virtualSize: alignUp(fileSize, 512), clusterSize: 4096 },
        blockers: [],
        metadataRanges: () => [],
      }),
      close: async () => {},
    };
  }
  return {
    name,
    description: 'raw-like toy for crash tests',
    version: '0.0.0',
    apiVersion: DRIVER_API_VERSION,
    capabilities: { read: true, inPlaceSource: true },
    probe: () => 1,
    open,
  };
}

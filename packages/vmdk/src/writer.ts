import type { BlockIO } from '@ic/core/sdk';
import { NO_PARENT_CID } from './descriptor.js';
import { vmdkError } from './errors.js';
import { buildDirectoryBlock, GTE_ZEROED, qemuSparseLayout } from './grain-tables.js';
import { headerRegion, monolithicHeader } from './header-region.js';
import { SECTOR_SIZE } from './header.js';
import { randomCid } from './options.js';

export interface SparseGrain {
  /** Guest byte offset, a multiple of the grain size. */
  guestOffset: number;
  /** Up to one grain of data; the rest of the grain is written as zeros. */
  data: Uint8Array;
}

export interface SparseVmdkSpec {
  /** Virtual size in bytes (rounded up to a sector). */
  capacity: number;
  /** Grain size in bytes, a multiple of 512 (default 64 KiB). */
  grainSize?: number;
  /** Grains stored in the file, in the order given (so a reverse order makes a fragmented file). */
  grains: readonly SparseGrain[];
  /** Guest offsets (grain multiples) recorded as zeroed grains (GTE 1; sets the zeroed-grain flag). */
  zeroGrains?: readonly number[];
  /** Grains start on a multiple of this many sectors (default 1: packed right after the tables, unaligned). */
  grainAlignmentSectors?: number;
  /** Extra sectors left free before the first grain (default 0), to shift every grain off any alignment. */
  gapSectors?: number;
  /** Leave a gap of this many sectors between consecutive grains (default 0). */
  spacingSectors?: number;
  zeroedGrainFlag?: boolean;
  parent?: { name: string; cid: number };
  cid?: number;
  extentName?: string;
}

export interface SparseVmdkLayout {
  grainSectors: number;
  /** Host byte offset of each written grain, by guest offset. */
  hostOffsets: Map<number, number>;
  fileSize: number;
  overHead: number;
}

/**
 * Writes a monolithicSparse VMDK with qemu's table layout (RGD at sector 21, redundant GTs, GD, GTs) but grains at
 * arbitrary sector offsets: by default packed right after the tables, so they are NOT multiples of 64 KiB (or of
 * the grain size). overHead is the end of the tables, as qemu only needs the file to be at least that long.
 * Used by tests to build images qemu-img reads correctly but that an in-place conversion must relocate.
 */
export async function writeSparseVmdk(io: BlockIO, spec: SparseVmdkSpec): Promise<SparseVmdkLayout> {
  const grainBytes = spec.grainSize ?? 65536;
  if (grainBytes <= 0 || grainBytes % SECTOR_SIZE !== 0) throw vmdkError('INVALID', `grain size ${grainBytes} is not a positive multiple of 512`);
  const grainSectors = grainBytes / SECTOR_SIZE;
  const capacity = Math.ceil(spec.capacity / SECTOR_SIZE);
  const layout = qemuSparseLayout(capacity, grainSectors);
  const gtes = new Uint32Array(layout.gtCount * 512);
  const metadataEnd = layout.gdOffset + layout.gdSectors + layout.gtSectors * layout.gtCount;
  const alignment = spec.grainAlignmentSectors ?? 1;
  let next = Math.ceil((metadataEnd + (spec.gapSectors ?? 0)) / alignment) * alignment;
  const hostOffsets = new Map<number, number>();
  const grainWrites: { offset: number; data: Uint8Array }[] = [];
  let end = metadataEnd;
  for (const grain of spec.grains) {
    if (grain.guestOffset % grainBytes !== 0 || grain.guestOffset >= capacity * SECTOR_SIZE || grain.data.length > grainBytes) {
      throw vmdkError('INVALID', `grain at guest ${grain.guestOffset} is not a grain-aligned offset inside the disk with at most one grain of data`);
    }
    const padded = new Uint8Array(grainBytes);
    padded.set(grain.data);
    gtes[grain.guestOffset / grainBytes] = next;
    hostOffsets.set(grain.guestOffset, next * SECTOR_SIZE);
    grainWrites.push({ offset: next * SECTOR_SIZE, data: padded });
    end = Math.max(end, next + grainSectors);
    next = Math.ceil((next + grainSectors + (spec.spacingSectors ?? 0)) / alignment) * alignment;
  }
  for (const guestOffset of spec.zeroGrains ?? []) gtes[guestOffset / grainBytes] = GTE_ZEROED;
  const zeroed = spec.zeroedGrainFlag ?? (spec.zeroGrains?.length ?? 0) > 0;

  const tables = Array.from({ length: layout.gtCount }, (_, i) => gtes.subarray(i * 512, (i + 1) * 512));
  const header = monolithicHeader({ capacity, grainSectors, rgdOffset: layout.rgdOffset, gdOffset: layout.gdOffset, overHead: metadataEnd, zeroedGrain: zeroed });
  const region = headerRegion(header, {
    cid: spec.cid ?? randomCid(),
    parentCid: spec.parent?.cid ?? NO_PARENT_CID,
    createType: 'monolithicSparse',
    ...(spec.parent ? { parentFileNameHint: spec.parent.name } : {}),
    extents: [`RW ${capacity} SPARSE "${spec.extentName ?? 'image.vmdk'}"`],
    virtualHWVersion: '4',
    virtualSize: capacity * SECTOR_SIZE,
    adapterType: 'ide',
    toolsVersion: '2147483647',
  });

  await io.truncate(0);
  await io.write(0, region);
  await io.write(layout.rgdOffset * SECTOR_SIZE, buildDirectoryBlock(layout.rgdOffset, layout.gdSectors, layout.gtSectors, 512, tables));
  await io.write(layout.gdOffset * SECTOR_SIZE, buildDirectoryBlock(layout.gdOffset, layout.gdSectors, layout.gtSectors, 512, tables));
  for (const write of grainWrites) await io.write(write.offset, write.data);
  const fileSize = end * SECTOR_SIZE;
  await io.truncate(fileSize);
  await io.flush();
  return { grainSectors, hostOffsets, fileSize, overHead: metadataEnd };
}

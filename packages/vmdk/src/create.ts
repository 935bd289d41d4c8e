import type { BackingReference, BlockIO, CreateSpec } from '@ic/core/sdk';
import { baseName, MAX_PARENT_NAME, NO_PARENT_CID } from './descriptor.js';
import { FORMAT, vmdkError } from './errors.js';
import { qemuSparseLayout, writeU32Entries } from './grain-tables.js';
import { headerRegion, monolithicHeader } from './header-region.js';
import { MAX_GD_ENTRIES, SECTOR_SIZE } from './header.js';
import { isDescriptorSafe, randomCid, resolveOptions, type ResolvedOptions } from './options.js';

/** Checks a backing reference for a VMDK child and returns the parentCID to record. */
export function parentFor(backing: BackingReference | undefined, options: ResolvedOptions): { hint?: string; parentCid: number } {
  if (!backing) {
    if (options.parentCid !== undefined) throw vmdkError('INVALID', 'option parent_cid needs a backing file');
    return { parentCid: NO_PARENT_CID };
  }
  if (backing.format !== undefined && backing.format !== FORMAT) {
    throw vmdkError('INVALID', `backing_file must be a vmdk image (got backing format ${backing.format}); VMDK can only have a VMDK parent`);
  }
  if (!isDescriptorSafe(backing.name, MAX_PARENT_NAME)) {
    throw vmdkError('INVALID', `backing file name must be 1 to ${MAX_PARENT_NAME} characters without quotes or line breaks`);
  }
  if (options.parentCid === undefined) {
    throw vmdkError(
      'INVALID',
      `a VMDK child records its parent's CID and qemu refuses to read through a parent whose CID differs; pass -o parent_cid=<the CID= value in ${backing.name}'s descriptor>`,
    );
  }
  return { hint: backing.name, parentCid: options.parentCid };
}

/**
 * qemu 7.2's vmdk_init_extent() counts the grains of the new extent, and the grain tables from them
 * (DIV_ROUND_UP(grains, 512)), in uint32_t: past 2^32 - 512 grains the count wraps and qemu-img writes a file
 * qemu then cannot write to ("write failed: Invalid argument"; 256 TiB with qemu-img's 64 KiB grains leaves a
 * 64 KiB file). With 64 KiB grains the largest image qemu-img makes correctly is (2^32 - 512) grains:
 * 256 TiB - 32 MiB. ic creates exactly what qemu-img creates, so it refuses the rest up front.
 */
export const QEMU_CREATE_MAX_GRAINS = 2 ** 32 - 512;

/** Largest capacity qemu-img's own arithmetic creates correctly, whose tables lie below 2^32 sectors, and that ic can iterate. */
function checkCapacity(capacity: number, grainSectors: number): void {
  const grains = Math.ceil(capacity / grainSectors);
  if (grains > QEMU_CREATE_MAX_GRAINS) {
    const maximum = QEMU_CREATE_MAX_GRAINS * grainSectors * SECTOR_SIZE;
    throw vmdkError(
      'INVALID',
      `virtual size ${capacity * SECTOR_SIZE} needs ${grains} grains of ${grainSectors * SECTOR_SIZE} bytes; qemu 7.2 counts them in 32 bits when it creates a VMDK and makes an image it cannot write, so at most ${maximum} bytes (256 TiB - 32 MiB)`,
    );
  }
  const layout = qemuSparseLayout(capacity, grainSectors);
  if (layout.gtCount > MAX_GD_ENTRIES) throw vmdkError('INVALID', `virtual size ${capacity * SECTOR_SIZE} needs more than ${MAX_GD_ENTRIES} grain tables`);
  if (layout.grainOffset >= 2 ** 32) throw vmdkError('INVALID', `virtual size ${capacity * SECTOR_SIZE} needs metadata beyond the 2 TiB a sparse extent can address`);
}

/**
 * `qemu-img create -f vmdk` for the monolithicSparse subformat: header, descriptor at sector 1 (20 sectors), RGD at
 * sector 21, the redundant GTs, the GD, the GTs (all pre-created: qemu cannot allocate grains under a GD entry of
 * 0), file size = grain_offset (already a multiple of the grain).
 */
export async function createVmdk(io: BlockIO, spec: CreateSpec): Promise<void> {
  const options = resolveOptions(spec.options);
  if (options.subformat === 'streamOptimized') {
    throw vmdkError('UNSUPPORTED', 'creating streamOptimized images is not supported; use qemu-img convert -O vmdk -o subformat=streamOptimized');
  }
  if (options.subformat !== 'monolithicSparse') {
    throw vmdkError('UNSUPPORTED', `subformat ${options.subformat} writes several files; ic creates single-file monolithicSparse images only (use qemu-img create for ${options.subformat})`);
  }
  if (!Number.isSafeInteger(spec.virtualSize) || spec.virtualSize < 0) throw vmdkError('INVALID', `virtual size ${spec.virtualSize} is not a valid size`);
  const capacity = Math.ceil(spec.virtualSize / SECTOR_SIZE); // qemu-img rounds up to a sector
  const grainSectors = 128;
  checkCapacity(capacity, grainSectors);
  // The parent's CID comes from -o parent_cid, or from the parent itself when the caller opened it.
  const openedParentCid = spec.backingInfo?.formatSpecific?.type === FORMAT ? spec.backingInfo.formatSpecific.data.cid : undefined;
  const parent = parentFor(spec.backing, typeof openedParentCid === 'number' && options.parentCid === undefined ? { ...options, parentCid: openedParentCid } : options);
  const layout = qemuSparseLayout(capacity, grainSectors);

  const header = monolithicHeader({
    capacity,
    grainSectors,
    rgdOffset: layout.rgdOffset,
    gdOffset: layout.gdOffset,
    overHead: layout.grainOffset,
    zeroedGrain: options.zeroedGrain,
  });
  const region = headerRegion(header, {
    cid: randomCid(),
    parentCid: parent.parentCid,
    createType: 'monolithicSparse',
    ...(parent.hint === undefined ? {} : { parentFileNameHint: parent.hint }),
    extents: [`RW ${capacity} SPARSE "${options.extentName ?? baseName(io.name)}"`],
    virtualHWVersion: options.hwVersion,
    virtualSize: capacity * SECTOR_SIZE,
    adapterType: options.adapterType,
    toolsVersion: options.toolsVersion,
  });

  // Start from an empty file of the final size: the grain tables are all zero.
  await io.truncate(0);
  await io.truncate(layout.grainOffset * SECTOR_SIZE);
  await io.write(0, region);
  for (const directorySector of [layout.rgdOffset, layout.gdOffset]) {
    const directory = new Uint8Array(layout.gdSectors * SECTOR_SIZE);
    const entries = new Uint32Array(layout.gtCount);
    for (let i = 0; i < layout.gtCount; i++) entries[i] = directorySector + layout.gdSectors + i * layout.gtSectors;
    writeU32Entries(directory, 0, entries);
    if (directory.length > 0) await io.write(directorySector * SECTOR_SIZE, directory);
  }
  await io.flush();
}

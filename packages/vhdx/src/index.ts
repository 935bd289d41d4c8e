import { vhdxDriver } from './driver.js';

export { vhdxDriver, VHDX_DRIVER_VERSION } from './driver.js';
export * from './guid.js';
export {
  FORMAT,
  HEADER_SECTION_SIZE,
  HEADER_OFFSETS,
  REGION_TABLE_OFFSETS,
  HEADER_SIZE,
  HEADER_FIELDS,
  FILE_SIGNATURE,
  hasVhdxSignature,
  checksumValid,
  setChecksum,
  parseHeaderBlock,
  serializeHeader,
  readCurrentHeader,
  validateLogFields,
  fileIdentifier,
  creatorOf,
  type VhdxHeader,
} from './header.js';
export { readRegionTable, serializeRegionTable, overlapping, REGION_ENTRY_LENGTH, REGION_HEADER_LENGTH, type RegionEntry, type RegionTable, type OwnedRange } from './region.js';
export { findActiveLogEntry, descriptorSectors, LOG_SECTOR, LOG_SIGNATURE, DESC_SIGNATURE, ZERO_SIGNATURE, type ActiveLogEntry } from './log.js';
export {
  readMetadata,
  parseParentLocator,
  backingOf,
  serializeMetadata,
  HAS_PARENT,
  LEAVE_BLOCKS_ALLOCATED,
  MIN_BLOCK_SIZE,
  MAX_BLOCK_SIZE,
  METADATA_TABLE_SIZE,
  METADATA_ITEMS,
  type VhdxMetadata,
} from './metadata.js';
export * from './bat.js';
export { checkImage } from './check.js';
export { VHDX_OPTIONS, createImage, createLayout, headerSection, defaultBlockSize, isValidBlockSize, MAX_VIRTUAL_SIZE, CREATOR } from './create.js';
export { openVhdx, VhdxImage, type VhdxLayout } from './image.js';
export { VhdxInPlaceTarget, vhdxInPlace } from './target.js';

export default vhdxDriver;

import { vdiDriver } from './driver.js';

export { vdiDriver, openVdi, VDI_DRIVER_VERSION } from './driver.js';
export {
  FORMAT,
  HEADER_FIELDS,
  HEADER_LENGTH,
  SECTOR_SIZE,
  VDI_SIGNATURE,
  VDI_VERSION_1_1,
  VDI_TYPE_DYNAMIC,
  VDI_TYPE_STATIC,
  VDI_TEXT,
  BLOCK_SIZE,
  MAX_BLOCKS_IN_IMAGE,
  MAX_DISK_SIZE,
  hasVdiSignature,
  bmapBytesFor,
  parseHeader,
  validateHeader,
  serializeHeader,
  type VdiHeader,
  type VdiGeometry,
} from './header.js';
export { ENTRY_SIZE, ENTRY_UNALLOCATED, ENTRY_DISCARDED, isAllocated, readBlockMap, encodeBlockMap, blockHostOffset } from './blockmap.js';
export { checkImage } from './check.js';
export { VDI_OPTIONS, DEFAULT_OFFSET_BMAP, defaultOffsetData, creationSize, newHeader, createImage, randomStoredUuid } from './create.js';
export { VdiImage, blockProblem } from './image.js';
export { VdiInPlaceTarget, vdiInPlace } from './target.js';

export default vdiDriver;

import { vpcDriver } from './driver.js';

export { vpcDriver, openVpc, VPC_DRIVER_VERSION, FIXED_FOOTER_SCORE } from './driver.js';
export {
  FORMAT,
  FOOTER_FIELDS,
  FOOTER_LENGTH,
  COOKIE,
  DISK_TYPE_FIXED,
  DISK_TYPE_DYNAMIC,
  DISK_TYPE_DIFFERENCING,
  MAX_SECTORS,
  MAX_CHS,
  MAX_GEOMETRY_SECTORS,
  CURRENT_SIZE_CREATORS,
  NO_DATA_OFFSET,
  hasCookie,
  vhdChecksum,
  parseFooter,
  serializeFooter,
  footerChecksumOk,
  virtualSizeOf,
  calculateGeometry,
  sizedGeometry,
  type VhdFooter,
  type Geometry,
  type SizedGeometry,
} from './footer.js';
export { DYNAMIC_HEADER_FIELDS, DYNAMIC_HEADER_LENGTH, DEFAULT_BLOCK_SIZE, MAX_TABLE_ENTRIES, parseDynamicHeader, serializeDynamicHeader, type DynamicHeader } from './dynamic-header.js';
export { BAT_ENTRY_SIZE, BAT_UNALLOCATED, BAT_UNIT, readBat, batBytesFor, encodeBat } from './bat.js';
export { bitmapSize, fullBitmap } from './bitmaps.js';
export { VPC_OPTIONS, CREATOR_VERSION, CREATOR_OS, DYNAMIC_HEADER_OFFSET, DEFAULT_TABLE_OFFSET, randomUuid, vhdTimestamp, newFooter, creationOptions, tableEntriesFor, createImage } from './create.js';
export { VhdDynamicTarget, VhdFixedTarget, vpcInPlace, exactGeometry, TARGET_BLOCK_SIZES, TARGET_MAX_HOST_OFFSET } from './target.js';
export { VpcImage, readLayout, fixedFooterIn, blockProblem, FIXED_CONVERSION_CLUSTER_SIZE, type VpcLayout, type FixedLayout, type DynamicLayout } from './image.js';

export default vpcDriver;

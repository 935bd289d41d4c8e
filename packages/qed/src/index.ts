import { qedDriver } from './driver.js';

export { qedDriver, openQed, QED_DRIVER_VERSION } from './driver.js';
export {
  FORMAT,
  HEADER_FIELDS,
  HEADER_LENGTH,
  QED_MAGIC,
  FEATURE_BACKING_FILE,
  FEATURE_NEED_CHECK,
  FEATURE_BACKING_FORMAT_NO_PROBE,
  KNOWN_FEATURES,
  MIN_CLUSTER_SIZE,
  MAX_CLUSTER_SIZE,
  DEFAULT_CLUSTER_SIZE,
  MIN_TABLE_SIZE,
  MAX_TABLE_SIZE,
  DEFAULT_TABLE_SIZE,
  MAX_BACKING_NAME_LENGTH,
  hasQedMagic,
  maxImageSize,
  qemuMaxImageSize,
  qemuGeometryProblem,
  parseHeader,
  validateHeader,
  serializeHeader,
  clusterOffsetProblem,
  tableOffsetProblem,
  decodeBackingName,
  type QedHeader,
  type QedGeometry,
} from './header.js';
export { ENTRY_SIZE, ENTRY_UNALLOCATED, ENTRY_ZERO, decodeEntry, readTableEntries, TableBuilder } from './tables.js';
export { ClusterSet, scanTables, checkImage, type ScanResult, type L2TableRef } from './check.js';
export { QED_OPTIONS, BACKING_NAME_OFFSET, createImage, geometryOptions, encodeBackingName, newHeader, headerRegionBytes } from './create.js';
export { QedImage, NEED_CHECK_BLOCKER } from './image.js';
export { QedInPlaceTarget, qedInPlace, QEMU_USABLE_MAX_CLUSTER_SIZE } from './target.js';

export default qedDriver;

import { parallelsDriver } from './driver.js';

export { parallelsDriver, openParallels, PARALLELS_DRIVER_VERSION } from './driver.js';
export {
  FORMAT,
  HEADER_FIELDS,
  HEADER_LENGTH,
  SECTOR_SIZE,
  BAT_ENTRY_SIZE,
  MAGIC_SECTORS,
  MAGIC_CLUSTERS,
  HEADER_VERSION,
  INUSE_MAGIC,
  FORMAT_EXTENSION_MAGIC,
  DEFAULT_CLUSTER_SIZE,
  MAX_TRACKS,
  MAX_BAT_ENTRIES,
  looksLikeParallels,
  parseHeader,
  validateHeader,
  serializeHeader,
  newHeader,
  type BatUnit,
  type ParallelsHeader,
  type ParallelsGeometry,
} from './header.js';
export { batEntryOffset, readBat, encodeBat, ENTRIES_PER_READ, type BatChunk } from './bat.js';
export { checkImage } from './check.js';
export { PARALLELS_OPTIONS, MAX_CLUSTERS, clusterSizeOption, createImage } from './create.js';
export { ParallelsImage, INUSE_BLOCKER, EXTENSION_BLOCKER } from './image.js';
export { ParallelsInPlaceTarget, parallelsInPlace, ENGINE_HEAD_LIMIT, MIN_TARGET_CLUSTER, MAX_TARGET_CLUSTER } from './target.js';

export default parallelsDriver;

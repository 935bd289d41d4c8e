import { qcow2Driver } from './driver.js';

export { qcow2Driver, probeQcow2, QCOW2_DRIVER_VERSION } from './driver.js';
export { Qcow2Image } from './image.js';
export { Qcow2Target, qcow2InPlace } from './target.js';
export { createImage, encodeHeaderRegion, resolveParameters, QCOW2_OPTIONS, type Qcow2Parameters } from './create.js';
export * from './header.js';
export * from './extensions.js';
export * from './tables.js';
export * from './refcount.js';
export { readSnapshotTable, SnapshotField, type Snapshot, type SnapshotTable } from './snapshots.js';
export { readBitmapDirectory, BitmapDirectoryField, BitmapTableEntry, type BitmapEntry } from './bitmaps.js';
export { checkImage } from './check.js';
export { describeConversionSource } from './source.js';
export { loadState, type Qcow2State } from './state.js';
export { walkMapping, type MappedPiece } from './mapping.js';

export default qcow2Driver;

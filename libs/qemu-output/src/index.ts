/**
 * @ic/qemu-output — qemu-img's output shapes for ic images: `qemu-img info`, `map` and `check` as JSON (same
 * field names, key order and spacing, so the text is byte-comparable) and as qemu-img's human text, plus its
 * size strings and backing-name rules. Depends only on @ic/core's SDK; browser-safe.
 */
export {
  formatG3,
  sizeToString,
  hasProtocol,
  fullBackingFilename,
  infoJson,
  qemuJson,
  infoHuman,
  mapJson,
  mapHuman,
  checkJson,
  fixed2,
  checkHuman,
  type MapRow,
} from './qemu-text.js';
export { qemuMapEntries } from './map.js';
export { toQemuMapEntry, mergeQemuMapEntries, type QemuMapEntry } from '@ic/core/sdk';

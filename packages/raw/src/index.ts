export { rawDriver, RAW_CONVERSION_CLUSTER_SIZE } from './driver.js';
export { default } from './driver.js';

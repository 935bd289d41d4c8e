export { toyDriver, toyDriver as default, TOY_OPTIONS } from './driver.js';
export { ToyImage } from './image.js';
export { toyInPlace } from './target.js';
export { decodeHeader, encodeHeader, FORMAT, HEADER_LENGTH, MAGIC, type ToyHeader } from './header.js';

import { IcError } from './errors.js';

/**
 * Endian-explicit field access on a byte buffer. 64-bit fields are returned as numbers and refused when
 * they exceed 2^53 - 1: no image ic can handle needs more, and a hostile one must not wrap around.
 */
export class ByteView {
  private readonly view: DataView;

  constructor(readonly bytes: Uint8Array) {
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }

  static alloc(length: number): ByteView {
    return new ByteView(new Uint8Array(length));
  }

  get length(): number {
    return this.bytes.length;
  }

  u8(offset: number): number {
    return this.view.getUint8(offset);
  }
  u16le(offset: number): number {
    return this.view.getUint16(offset, true);
  }
  u16be(offset: number): number {
    return this.view.getUint16(offset, false);
  }
  u32le(offset: number): number {
    return this.view.getUint32(offset, true);
  }
  u32be(offset: number): number {
    return this.view.getUint32(offset, false);
  }
  /** 64-bit as bigint, for flag words where every bit matters. */
  u64leBig(offset: number): bigint {
    return this.view.getBigUint64(offset, true);
  }
  u64beBig(offset: number): bigint {
    return this.view.getBigUint64(offset, false);
  }
  u64le(offset: number, field = 'field'): number {
    return toSafeNumber(this.view.getBigUint64(offset, true), field);
  }
  u64be(offset: number, field = 'field'): number {
    return toSafeNumber(this.view.getBigUint64(offset, false), field);
  }

  setU8(offset: number, value: number): void {
    this.view.setUint8(offset, value);
  }
  setU16le(offset: number, value: number): void {
    this.view.setUint16(offset, value, true);
  }
  setU16be(offset: number, value: number): void {
    this.view.setUint16(offset, value, false);
  }
  setU32le(offset: number, value: number): void {
    this.view.setUint32(offset, value, true);
  }
  setU32be(offset: number, value: number): void {
    this.view.setUint32(offset, value, false);
  }
  setU64le(offset: number, value: number | bigint): void {
    this.view.setBigUint64(offset, BigInt(value), true);
  }
  setU64be(offset: number, value: number | bigint): void {
    this.view.setBigUint64(offset, BigInt(value), false);
  }

  /** ASCII/UTF-8 text of a byte range. */
  text(offset: number, length: number): string {
    return new TextDecoder().decode(this.bytes.subarray(offset, offset + length));
  }
}

export function toSafeNumber(value: bigint, field = 'field'): number {
  if (value > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw new IcError('LIMIT', `${field} value ${value} exceeds 2^53`);
  }
  return Number(value);
}

export function isPowerOfTwo(value: number): boolean {
  return Number.isSafeInteger(value) && value > 0 && 2 ** Math.round(Math.log2(value)) === value;
}

export function log2(value: number): number {
  return Math.round(Math.log2(value));
}

export function alignUp(value: number, alignment: number): number {
  return Math.ceil(value / alignment) * alignment;
}

export function alignDown(value: number, alignment: number): number {
  return Math.floor(value / alignment) * alignment;
}

export function isAligned(value: number, alignment: number): boolean {
  return value % alignment === 0;
}

export function isAllZero(bytes: Uint8Array): boolean {
  // Compare eight bytes at a time where the buffer allows it.
  const words = bytes.byteOffset % 8 === 0 ? Math.floor(bytes.length / 8) : 0;
  if (words > 0) {
    const view = new BigUint64Array(bytes.buffer, bytes.byteOffset, words);
    for (let i = 0; i < words; i++) if (view[i] !== 0n) return false;
  }
  for (let i = words * 8; i < bytes.length; i++) if (bytes[i] !== 0) return false;
  return true;
}

export function encodeText(text: string): Uint8Array {
  return new TextEncoder().encode(text);
}

export function concatBytes(parts: readonly Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((sum, part) => sum + part.length, 0));
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}

export function bytesEqual(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/**
 * VHDX GUIDs as they lie in the file: data1 (u32), data2 and data3 (u16) little-endian, then data4's eight bytes
 * ([MS-VHDX] 2.1.1). Compared byte for byte, as qemu does.
 */
export type Guid = Uint8Array;

export const GUID_LENGTH = 16;

/** The on-disk bytes of a GUID written the usual way, e.g. "2DC27766-F623-4200-9D64-115E9BFD4A08". */
export function guid(text: string): Guid {
  const hex = text.replace(/-/g, '');
  if (!/^[0-9a-fA-F]{32}$/.test(hex)) throw new Error(`bad GUID literal ${text}`);
  const byte = (i: number) => parseInt(hex.slice(i * 2, i * 2 + 2), 16);
  const out = new Uint8Array(GUID_LENGTH);
  [3, 2, 1, 0, 5, 4, 7, 6].forEach((from, to) => (out[to] = byte(from)));
  for (let i = 8; i < 16; i++) out[i] = byte(i);
  return out;
}

/** The usual text form of on-disk GUID bytes. */
export function guidText(bytes: Uint8Array): string {
  const h = (i: number) => bytes[i]!.toString(16).padStart(2, '0');
  const part = (indexes: number[]) => indexes.map(h).join('');
  return `${part([3, 2, 1, 0])}-${part([5, 4])}-${part([7, 6])}-${part([8, 9])}-${part([10, 11, 12, 13, 14, 15])}`.toUpperCase();
}

export function guidEqual(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length < GUID_LENGTH || b.length < GUID_LENGTH) return false;
  for (let i = 0; i < GUID_LENGTH; i++) if (a[i] !== b[i]) return false;
  return true;
}

export function isZeroGuid(bytes: Uint8Array): boolean {
  for (let i = 0; i < GUID_LENGTH; i++) if (bytes[i] !== 0) return false;
  return true;
}

/** A random (version 4) GUID, from the platform's crypto.getRandomValues. */
export function randomGuid(): Guid {
  const out = new Uint8Array(GUID_LENGTH);
  globalThis.crypto.getRandomValues(out);
  out[7] = (out[7]! & 0x0f) | 0x40;
  out[8] = (out[8]! & 0x3f) | 0x80;
  return out;
}

/** Region table entries ([MS-VHDX] 2.2.3.2). */
export const BAT_REGION_GUID = guid('2DC27766-F623-4200-9D64-115E9BFD4A08');
export const METADATA_REGION_GUID = guid('8B7CA206-4790-4B9A-B8FE-575F050F886E');

/** Metadata items ([MS-VHDX] 2.6.2). */
export const FILE_PARAMETERS_GUID = guid('CAA16737-FA36-4D43-B3B6-33F0AA44E76B');
export const VIRTUAL_DISK_SIZE_GUID = guid('2FA54224-CD1B-4876-B211-5DBED83BF4B8');
export const PAGE_83_GUID = guid('BECA12AB-B2E6-4523-93EF-C309E000C746');
export const LOGICAL_SECTOR_SIZE_GUID = guid('8141BF1D-A96F-4709-BA47-F233A8FAAB5F');
export const PHYSICAL_SECTOR_SIZE_GUID = guid('CDA348C7-445D-4471-9CC9-E9885251C556');
export const PARENT_LOCATOR_GUID = guid('A8D35F2D-B30B-454D-ABF7-D3D84834AB0C');
/** Locator type of a VHDX parent. */
export const VHDX_PARENT_LOCATOR_TYPE = guid('B04AEFB7-D19E-4A81-B789-25B8E9445913');

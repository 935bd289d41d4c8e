import { crc32c, IcError, type BlockIO } from '@ic/core/sdk';
import { guidEqual, isZeroGuid } from './guid.js';
import { FORMAT, type VhdxHeader, vhdxError } from './header.js';

/**
 * The log ([MS-VHDX] 2.3): a circular buffer of 4 KiB sectors holding entries. An entry starts with a 64-byte
 * header ("loge", CRC-32C of the whole entry, u32 entry length, u32 tail, u64 sequence number, u32 descriptor
 * count, reserved, log GUID, u64 flushed file offset, u64 last file offset), then 32-byte descriptors ("desc"
 * data or "zero" ranges) filling whole sectors, then one data sector per data descriptor.
 *
 * qemu replays an active log on a read-write open and refuses a read-only open of an image that has one
 * ("contains a log that needs to be replayed"); ic opens read-only, so it refuses such images too.
 */
export const LOG_SECTOR = 4096;
export const LOG_SIGNATURE = 0x65676f6c; // "loge"
export const DESC_SIGNATURE = 0x63736564; // "desc"
export const ZERO_SIGNATURE = 0x6f72657a; // "zero"
export const LOG_HEADER_LENGTH = 64;
export const DESCRIPTOR_LENGTH = 32;
/** CRC work ic does looking for an active entry before giving up (a hostile log can claim huge entries everywhere). */
export const MAX_LOG_SCAN_BYTES = 1024 * 1024 * 1024;

const hex = (value: number): string => `0x${value.toString(16)}`;

export interface ActiveLogEntry {
  /** Offset of the entry inside the log. */
  position: number;
  sequenceNumber: bigint;
}

/** Sectors holding the header and `count` descriptors (qemu's vhdx_compute_desc_sectors). */
export function descriptorSectors(count: number): number {
  return Math.ceil((count + 2) / 128);
}

/**
 * Finds an entry qemu would replay (vhdx_log_search): a header with the right signature, GUID, a non-zero
 * sequence number and a sane length, valid descriptors, and a matching CRC. undefined when there is none (no log
 * GUID, a zero length, or only stale entries). An entry with a good header and a bad descriptor makes qemu refuse
 * the image: CORRUPT here.
 */
export async function findActiveLogEntry(io: BlockIO, header: VhdxHeader): Promise<ActiveLogEntry | undefined> {
  if (isZeroGuid(header.logGuid) || header.logLength === 0) return undefined;
  const { logOffset, logLength } = header;
  const fileSize = await io.size();
  if (logOffset + logLength > fileSize) throw vhdxError('CORRUPT', `the ${logLength}-byte log at ${hex(logOffset)} runs past the end of the file (${hex(fileSize)})`, logOffset);
  /** Sectors of the circular log from `position` on, wrapping at its end. */
  const readSectors = async (position: number, count: number): Promise<Uint8Array> => {
    const out = new Uint8Array(count * LOG_SECTOR);
    let at = position;
    let filled = 0;
    while (filled < out.length) {
      const take = Math.min(out.length - filled, logLength - at);
      out.set(await io.read(logOffset + at, take), filled);
      filled += take;
      at = (at + take) % logLength;
    }
    return out;
  };
  let scanned = 0;
  let position = 0;
  const sectorsInLog = logLength / LOG_SECTOR;
  let sector = 0;
  while (sector < sectorsInLog) {
    position = sector * LOG_SECTOR;
    const head = new DataView((await io.read(logOffset + position, LOG_HEADER_LENGTH)).buffer);
    const entryLength = head.getUint32(8, true);
    const sequence = head.getBigUint64(16, true);
    const descriptors = head.getUint32(24, true);
    const guid = new Uint8Array(head.buffer, 32, 16);
    const headerValid =
      head.getUint32(0, true) === LOG_SIGNATURE &&
      entryLength <= logLength &&
      entryLength % LOG_SECTOR === 0 &&
      sequence !== 0n &&
      guidEqual(guid, header.logGuid) &&
      descriptors * DESCRIPTOR_LENGTH <= entryLength;
    if (!headerValid) {
      sector++;
      continue;
    }
    const descSectors = descriptorSectors(descriptors);
    const totalSectors = Math.max(entryLength / LOG_SECTOR, descSectors);
    scanned += totalSectors * LOG_SECTOR;
    if (scanned > MAX_LOG_SCAN_BYTES) throw new IcError('LIMIT', `${FORMAT}: the log at ${hex(logOffset)} holds more entry headers than ic checks (over ${MAX_LOG_SCAN_BYTES} bytes of entries)`, { format: FORMAT, offset: logOffset });
    const descBytes = await readSectors(position, descSectors);
    const desc = new DataView(descBytes.buffer);
    for (let i = 0; i < descriptors; i++) {
      const at = LOG_HEADER_LENGTH + i * DESCRIPTOR_LENGTH;
      const signature = desc.getUint32(at, true);
      const fileOffset = desc.getBigUint64(at + 16, true);
      const valid =
        desc.getBigUint64(at + 24, true) === sequence &&
        fileOffset % BigInt(LOG_SECTOR) === 0n &&
        (signature === DESC_SIGNATURE || (signature === ZERO_SIGNATURE && desc.getBigUint64(at + 8, true) % BigInt(LOG_SECTOR) === 0n));
      if (!valid) {
        throw vhdxError('CORRUPT', `log entry ${sequence} at ${hex(logOffset + position)} has an invalid descriptor ${i}: qemu cannot open this image`, logOffset + position);
      }
    }
    descBytes.fill(0, 4, 8);
    let crc = crc32c(descBytes);
    for (let s = descSectors; s < totalSectors; s++) crc = crc32c(await readSectors((position + s * LOG_SECTOR) % logLength, 1), crc);
    if (crc === head.getUint32(4, true)) return { position, sequenceNumber: sequence };
    // qemu goes on after the sectors it has just read.
    sector += totalSectors;
  }
  return undefined;
}

import { IcError, type ErrorCode } from '@ic/core/sdk';

/** The qemu-img format name, used in every message. */
export const FORMAT = 'vmdk';

/** An IcError whose message starts with the format name and, when known, ends with the byte offset. */
export function vmdkError(code: ErrorCode, message: string, offset?: number): IcError {
  const where = offset === undefined ? '' : ` (offset ${offset})`;
  return new IcError(code, `${FORMAT}: ${message}${where}`, offset === undefined ? { format: FORMAT } : { format: FORMAT, offset });
}

export const corruptAt = (message: string, offset?: number): IcError => vmdkError('CORRUPT', message, offset);
export const limitAt = (message: string, offset?: number): IcError => vmdkError('LIMIT', message, offset);

import { IcError } from '@ic/core/sdk';

/** The qemu-img format name; every message of this driver starts with it. */
export const FORMAT = 'qcow2';

function hex(value: number): string {
  return Number.isSafeInteger(value) ? `0x${value.toString(16)}` : String(value);
}

/** Structures are inconsistent or out of bounds. `offset` is the host offset where the problem lies. */
export function corruptAt(message: string, offset?: number): IcError {
  const where = offset === undefined ? '' : ` (at ${hex(offset)})`;
  return new IcError('CORRUPT', `${FORMAT}: ${message}${where}`, offset === undefined ? { format: FORMAT } : { format: FORMAT, offset });
}

/** A valid image using something this driver does not handle. */
export function unsupportedFeature(message: string): IcError {
  return new IcError('UNSUPPORTED', `${FORMAT}: ${message}`, { format: FORMAT });
}

/** A field claims more than we are willing to allocate or iterate. */
export function limitExceeded(message: string, offset?: number): IcError {
  return new IcError('LIMIT', `${FORMAT}: ${message}`, offset === undefined ? { format: FORMAT } : { format: FORMAT, offset });
}

/** A bad user option or argument. */
export function invalidOption(message: string): IcError {
  return new IcError('INVALID', `${FORMAT}: ${message}`, { format: FORMAT });
}

export { hex };

/**
 * The one error type of ic. Every failure a user can cause (a wrong option, a corrupt or hostile image,
 * a feature a format cannot represent) is an IcError with a stable `code`; the CLI maps codes to exit
 * statuses and prints `message` as one line. Anything else that escapes is a bug in ic.
 */

export const ERROR_CODES = {
  /** The bytes are not an image of the format that was asked for (or probing found no format). */
  WRONG_FORMAT: 'WRONG_FORMAT',
  /** A user-supplied argument or option is malformed or out of range. */
  INVALID: 'INVALID',
  /** The image is recognised but its structures are inconsistent or out of bounds. */
  CORRUPT: 'CORRUPT',
  /** The image uses a feature this operation or format cannot handle. */
  UNSUPPORTED: 'UNSUPPORTED',
  /** An offset or length falls outside what is addressable. */
  OUT_OF_BOUNDS: 'OUT_OF_BOUNDS',
  /** The operation would need to follow a reference to another file, and that is refused. */
  EXTERNAL_REF: 'EXTERNAL_REF',
  /** A field claims more than ic is willing to allocate or iterate (a hostile image). */
  LIMIT: 'LIMIT',
  /** Another process holds the image. */
  LOCKED: 'LOCKED',
  /** No space is left on the device. */
  NO_SPACE: 'NO_SPACE',
  /** The operating system reported an I/O error. */
  IO: 'IO',
  /** The image is in a transitional state left by an interrupted operation; run `ic recover`. */
  NEEDS_RECOVERY: 'NEEDS_RECOVERY',
  /** The operation was stopped (a signal, or its caller) at a safe point; the message says what state the image is in. */
  INTERRUPTED: 'INTERRUPTED',
  /** The file does not exist or cannot be opened. */
  NOT_FOUND: 'NOT_FOUND',
  /** ic found its own result inconsistent (a bug in ic); the operation was rolled back where possible. */
  INTERNAL: 'INTERNAL',
} as const;

export type ErrorCode = (typeof ERROR_CODES)[keyof typeof ERROR_CODES];

export interface ErrorContext {
  /** qemu-img name of the format involved, when there is one. */
  format?: string;
  path?: string;
  /** Byte offset in the file (host) where the problem was found. */
  offset?: number;
  /** The step that failed, e.g. "read L2 table", "commit header". */
  step?: string;
  cause?: unknown;
  /**
   * Set when an operation failed after it changed the image's format (past the commit point): the format the
   * file is in now. Its data is intact; what is left to do is said in the message (usually `ic recover`).
   */
  imageFormat?: string;
}

const BRAND = Symbol.for('ic.error');

export class IcError extends Error {
  readonly code: ErrorCode;
  readonly format: string | undefined;
  readonly path: string | undefined;
  readonly offset: number | undefined;
  readonly step: string | undefined;
  readonly imageFormat: string | undefined;
  readonly [BRAND] = true;

  constructor(code: ErrorCode, message: string, context: ErrorContext = {}) {
    super(message, context.cause === undefined ? undefined : { cause: context.cause });
    this.name = 'IcError';
    this.code = code;
    this.format = context.format;
    this.path = context.path;
    this.offset = context.offset;
    this.step = context.step;
    this.imageFormat = context.imageFormat;
  }
}

/** True for an IcError from any copy of @ic/core (a plugin may bring its own). */
export function isIcError(value: unknown): value is IcError {
  return typeof value === 'object' && value !== null && (value as Record<symbol, unknown>)[BRAND] === true;
}

/** Shorthand used by parsers: `throw corrupt('qcow2', 'L1 table offset is not cluster-aligned', 0x28)`. */
export function corrupt(format: string, message: string, offset?: number): IcError {
  return new IcError('CORRUPT', `${format}: ${message}`, offset === undefined ? { format } : { format, offset });
}

export function unsupported(format: string, message: string): IcError {
  return new IcError('UNSUPPORTED', `${format}: ${message}`, { format });
}

export function invalid(message: string): IcError {
  return new IcError('INVALID', message);
}

import { IcError } from './errors.js';
import type { ConversionReport, ConvertInPlaceRequest } from './convert-types.js';

/** Converts the image in `request.io` from `request.source`'s format to `request.target`'s, in place. */
export async function convertInPlace(request: ConvertInPlaceRequest): Promise<ConversionReport> {
  throw new IcError('UNSUPPORTED', `in-place conversion ${request.source.name} -> ${request.target.name} is being implemented`);
}

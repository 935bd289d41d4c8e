import { IcError, isPowerOfTwo, type Driver } from '@ic/core';

/** The sizes the kit prefers (qemu's smallest common and default cluster sizes), each clamped into a driver's range. */
const PREFERRED = [4096, 65536];

/** The powers of two in [min, max]. */
function powersOfTwoWithin(min: number, max: number): number[] {
  const out: number[] = [];
  for (let size = 1; size <= max && Number.isSafeInteger(size); size *= 2) if (size >= min) out.push(size);
  return out;
}

/**
 * The cluster sizes the kit builds a driver's images with: the caller's (each must lie in the driver's
 * inPlace.clusterSizes and be a power of two), or by default 4 KiB and 64 KiB each moved to the nearest size the
 * driver supports, so a format whose only cluster size is 1 MiB is tested at 1 MiB. Throws when the set is empty
 * (a range with no power of two in it) or when a requested size is outside the range: never silently no tests.
 */
export function kitClusterSizes(driver: Driver, requested?: readonly number[]): number[] {
  const range = driver.inPlace?.clusterSizes;
  if (!range) throw new IcError('INVALID', `${driver.name} has no inPlace.clusterSizes, so the kit cannot build its images`);
  const supported = powersOfTwoWithin(range.min, range.max);
  if (supported.length === 0) {
    throw new IcError('INVALID', `${driver.name}: inPlace.clusterSizes [${range.min}, ${range.max}] holds no power of two, so no image can be built`);
  }
  if (requested !== undefined) {
    if (requested.length === 0) throw new IcError('INVALID', `${driver.name}: the clusterSizes option is empty; leave it out for the driver's own range`);
    const outside = requested.filter((size) => !isPowerOfTwo(size) || size < range.min || size > range.max);
    if (outside.length > 0) {
      throw new IcError('INVALID', `${driver.name}: cluster sizes ${outside.join(', ')} are not powers of two in inPlace.clusterSizes [${range.min}, ${range.max}]`);
    }
    return [...new Set(requested)].sort((a, b) => a - b);
  }
  const nearest = (size: number) => supported.reduce((best, candidate) => (Math.abs(Math.log2(candidate / size)) < Math.abs(Math.log2(best / size)) ? candidate : best));
  return [...new Set(PREFERRED.map(nearest))].sort((a, b) => a - b);
}

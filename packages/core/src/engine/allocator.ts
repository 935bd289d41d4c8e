import { alignUp } from '../sdk/index.js';
import { IcError } from '../sdk/index.js';
import type { SpaceAllocator } from '../sdk/index.js';

/**
 * Hands out host space that nothing durable references: everything at or past `start`, which the engine
 * sets past the end of the file and past every range the source references. Allocations are recorded so
 * the engine can check that a target writes only where it was given room.
 */
export class AppendAllocator implements SpaceAllocator {
  private next: number;
  private readonly granted: { offset: number; length: number }[] = [];

  constructor(
    start: number,
    private readonly defaultAlignment: number,
    private readonly limit = Number.MAX_SAFE_INTEGER,
  ) {
    this.next = alignUp(start, defaultAlignment);
  }

  get end(): number {
    return this.next;
  }

  allocate(length: number, alignment = this.defaultAlignment): number {
    if (!Number.isSafeInteger(length) || length <= 0) throw new IcError('INTERNAL', `allocation of ${length} bytes`);
    if (!Number.isSafeInteger(alignment) || alignment <= 0) throw new IcError('INTERNAL', `allocation aligned to ${alignment}`);
    const offset = alignUp(this.next, alignment);
    if (offset + length > this.limit) throw new IcError('LIMIT', `no room for ${length} more bytes below host offset ${this.limit}`);
    this.next = offset + length;
    this.granted.push({ offset, length });
    return offset;
  }

  /** Rounds the end up so the next allocation, and the file length, land on `alignment`. */
  padTo(alignment: number): void {
    this.next = alignUp(this.next, alignment);
  }

  /** True when [offset, offset+length) lies inside one granted allocation. */
  owns(offset: number, length: number): boolean {
    // Allocations are increasing, so a binary search finds the candidate.
    let low = 0;
    let high = this.granted.length - 1;
    while (low <= high) {
      const middle = (low + high) >> 1;
      const grant = this.granted[middle]!;
      if (offset < grant.offset) high = middle - 1;
      else if (offset >= grant.offset + grant.length) low = middle + 1;
      else return offset + length <= grant.offset + grant.length;
    }
    return false;
  }
}

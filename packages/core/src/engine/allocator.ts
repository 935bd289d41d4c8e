import { alignUp, IcError, type SpaceAllocator } from '../sdk/index.js';
import { RunList } from './runs.js';

/**
 * The end of the host space handed out so far, past everything the source references; shared by the
 * allocators of one conversion (relocated clusters and the target's metadata draw from the same space).
 * `limit` is what the engine reserved before building: nothing is handed out beyond it.
 */
export class SpaceCursor {
  private next: number;

  constructor(
    readonly start: number,
    readonly limit = Number.MAX_SAFE_INTEGER,
  ) {
    this.next = start;
  }

  get end(): number {
    return this.next;
  }

  take(length: number, alignment: number, what: string): number {
    if (!Number.isSafeInteger(length) || length <= 0) throw new IcError('INTERNAL', `${what}: allocation of ${length} bytes`);
    if (!Number.isSafeInteger(alignment) || alignment <= 0) throw new IcError('INTERNAL', `${what}: allocation aligned to ${alignment}`);
    const offset = alignUp(this.next, alignment);
    if (!Number.isSafeInteger(offset + length) || offset + length > this.limit) {
      throw new IcError('LIMIT', `${what}: no room for ${length} more bytes below host offset ${this.limit}`);
    }
    this.next = offset + length;
    return offset;
  }

  /** Rounds the end up so the next allocation, and the file length, land on `alignment`. */
  padTo(alignment: number): void {
    this.next = alignUp(this.next, alignment);
  }
}

/**
 * Hands out host space that nothing durable references. Grants are recorded as merged runs (typed arrays, not
 * objects), so the engine can check that a target writes only where it was given room.
 */
export class AppendAllocator implements SpaceAllocator {
  readonly cursor: SpaceCursor;
  private readonly runs = new RunList();
  /** Bytes granted (alignment padding excluded). */
  granted = 0;

  constructor(
    start: number | SpaceCursor,
    private readonly defaultAlignment: number,
    limit?: number,
    private readonly what = 'allocation',
  ) {
    this.cursor = typeof start === 'number' ? new SpaceCursor(alignUp(start, defaultAlignment), limit) : start;
  }

  get end(): number {
    return this.cursor.end;
  }

  allocate(length: number, alignment = this.defaultAlignment): number {
    const offset = this.cursor.take(length, alignment, this.what);
    this.granted += length;
    this.runs.append(offset, offset + length);
    return offset;
  }

  padTo(alignment: number): void {
    this.cursor.padTo(alignment);
  }

  /** True when [offset, offset+length) lies inside one run of granted space. */
  owns(offset: number, length: number): boolean {
    const { starts, ends } = this.runs;
    let low = 0;
    let high = this.runs.count - 1;
    while (low <= high) {
      const middle = (low + high) >> 1;
      if (offset < starts[middle]!) high = middle - 1;
      else if (offset >= ends[middle]!) low = middle + 1;
      else return offset + length <= ends[middle]!;
    }
    return false;
  }

  /** The granted runs [start, end), in host order. */
  grants(): Iterable<[number, number]> {
    return this.runs;
  }
}

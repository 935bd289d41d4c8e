/** A growable list of [start, end) pairs in typed arrays: no object per entry. */
export class RunList {
  starts = new Float64Array(64);
  ends = new Float64Array(64);
  count = 0;

  push(start: number, end: number): void {
    if (this.count === this.starts.length) {
      const grow = (old: Float64Array) => {
        const next = new Float64Array(old.length * 2);
        next.set(old);
        return next;
      };
      this.starts = grow(this.starts);
      this.ends = grow(this.ends);
    }
    this.starts[this.count] = start;
    this.ends[this.count] = end;
    this.count++;
  }

  /** Like push, but extends the last run when [start, end) continues it. */
  append(start: number, end: number): void {
    if (this.count > 0 && this.ends[this.count - 1] === start) this.ends[this.count - 1] = end;
    else this.push(start, end);
  }

  *[Symbol.iterator](): Generator<[number, number]> {
    for (let i = 0; i < this.count; i++) yield [this.starts[i]!, this.ends[i]!];
  }
}

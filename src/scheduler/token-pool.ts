// Where a scheduler's sequences keep their tokens: runs of one Int32Array, handed out by size
// class and taken back when a sequence ends.
//
// A request waits and runs for hundreds of steps, so its tokens outlive V8's young generation,
// and every scavenge copied them (kilobytes a request as number[]s) until they were promoted:
// with 256 running requests, scavenges of 5 to 20 ms fell into the scheduler's steps every few
// hundred steps. A typed array's elements live outside the JavaScript heap, but giving each
// sequence its own costs 2-3 µs to allocate, with a tail of 50-150 µs (the buffer is allocated
// and tracked outside the heap), which steps that admit a hundred requests at once paid. Runs of
// one array cost neither: a sequence holds an offset, and nothing is allocated per request once
// the pool has grown to the working set. It does not shrink: it keeps the most tokens that
// waiting and running requests held at once (at 4 bytes a token, half what their arrays took),
// each run rounded up to a power of two.

/** The smallest run handed out: short prompts share a class rather than one each. */
const MIN_RUN = 64;

/** log2 of a power of two, as a small integer (an array index, where Math.log2 gives a double). */
const sizeClass = (run: number): number => 31 - Math.clz32(run);

export class TokenPool {
  /** Every run; replaced (and copied) when it grows, so read it again rather than keeping it. */
  data: Int32Array;
  private top = 0;
  /** Freed runs' offsets, by size class (log2 of the run's length). */
  private readonly free: number[][] = [];

  constructor(initialInts = 1 << 16) {
    this.data = new Int32Array(initialInts);
  }

  /** The length of the run that `alloc(length)` hands out. */
  static runLength(length: number): number {
    let run = MIN_RUN;
    while (run < length) run *= 2;
    return run;
  }

  /** The offset of a run of runLength(length) ints, its contents unspecified. */
  alloc(length: number): number {
    const run = TokenPool.runLength(length);
    const reused = this.free[sizeClass(run)]?.pop();
    if (reused !== undefined) return reused;
    if (this.top + run > this.data.length) {
      let size = Math.max(this.data.length, MIN_RUN);
      while (this.top + run > size) size *= 2;
      const grown = new Int32Array(size);
      grown.set(this.data.subarray(0, this.top));
      this.data = grown;
    }
    const offset = this.top;
    this.top += run;
    return offset;
  }

  /** Takes back the run at `offset` of length `run` (as runLength gave it). */
  release(offset: number, run: number): void {
    (this.free[sizeClass(run)] ??= []).push(offset);
  }

  /** Ints handed out and not taken back, for tests. */
  inUse(): number {
    let freed = 0;
    this.free.forEach((offsets, k) => (freed += offsets.length * 2 ** k));
    return this.top - freed;
  }
}

// Which adapters waiting requests want, ordered by each adapter's oldest waiting request: the
// order in which first-come-first-served admission will reach them. The scheduler reports
// every request entering and leaving the waiting queue, so placement walks only the wanted
// adapters, soonest first, and never scans the queue.
//
// The order must follow the oldest request, not when demand began: an adapter that is wanted
// without pause (new requests keep coming) would otherwise stay ahead of an adapter whose one
// request has waited longer, keep its slot, and starve that request, which admission in
// arrival order keeps at the head of the queue.

interface Wanted {
  name: string;
  /** Arrival numbers of its waiting requests, ascending; the first is its place in the order. */
  arrivals: number[];
}

/** Index of the first element of the ascending `xs` for which `key(x) >= k`. */
function lowerBound<T>(xs: readonly T[], k: number, key: (x: T) => number): number {
  let lo = 0;
  let hi = xs.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (key(xs[mid]!) < k) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

const head = (w: Wanted): number => w.arrivals[0]!;
const self = (x: number): number => x;

export class Demand {
  private readonly byName = new Map<string, Wanted>();
  /** Ascending by head arrival (arrivals are unique, so the order is strict). */
  private readonly order: Wanted[] = [];
  private changes = 0;

  /**
   * Changes with the order and with each adapter's place in it, not with requests queued behind
   * an adapter's oldest: placement reads no more of demand than that.
   */
  get version(): number {
    return this.changes;
  }

  /**
   * A request that arrived `arrival`-th waits for the adapter (new, or back from running); returns
   * true when nobody waited for the adapter before.
   */
  add(name: string, arrival: number): boolean {
    let w = this.byName.get(name);
    if (!w) {
      w = { name, arrivals: [arrival] };
      this.byName.set(name, w);
      this.changes++;
      this.order.splice(lowerBound(this.order, arrival, head), 0, w);
      return true;
    }
    // Usually the newest request, which goes last without a search (or a splice's array).
    const xs = w.arrivals;
    if (arrival > xs[xs.length - 1]!) {
      xs.push(arrival);
      return false;
    }
    const at = lowerBound(xs, arrival, self);
    if (at > 0) {
      xs.splice(at, 0, arrival);
      return false;
    }
    // A request older than its oldest (one preempted back into the queue): it moves forward.
    this.changes++;
    this.unlink(w);
    w.arrivals.unshift(arrival);
    this.order.splice(lowerBound(this.order, arrival, head), 0, w);
    return false;
  }

  /** The request stopped waiting (started, or ended); returns true when nobody waits for the adapter any more. */
  remove(name: string, arrival: number): boolean {
    const w = this.byName.get(name);
    const at = w ? lowerBound(w.arrivals, arrival, self) : -1;
    if (!w || w.arrivals[at] !== arrival) throw new Error(`internal error: request ${arrival} is not waiting for adapter "${name}"`);
    if (at > 0) {
      w.arrivals.splice(at, 1);
      return false;
    }
    this.changes++;
    this.unlink(w);
    w.arrivals.shift();
    if (w.arrivals.length === 0) {
      this.byName.delete(name);
      return true;
    }
    this.order.splice(lowerBound(this.order, head(w), head), 0, w);
    return false;
  }

  /**
   * Requests that stopped waiting together (`arrivals` ascending, as a step admits them): one
   * pass over the adapter's arrivals and at most one move in the order, where a removal each
   * would move it once per request. Returns true when nobody waits for the adapter any more.
   */
  removeAll(name: string, arrivals: readonly number[]): boolean {
    const w = this.byName.get(name);
    const xs = w?.arrivals ?? [];
    let found = 0;
    for (let i = 0; i < xs.length && found < arrivals.length; i++) if (xs[i] === arrivals[found]) found++;
    if (!w || found < arrivals.length) {
      throw new Error(`internal error: request ${arrivals[found]} is not waiting for adapter "${name}"`);
    }
    const oldHead = head(w);
    let kept = 0;
    for (let i = 0, j = 0; i < xs.length; i++) {
      if (j < arrivals.length && xs[i] === arrivals[j]) j++;
      else xs[kept++] = xs[i]!;
    }
    xs.length = kept;
    if (kept > 0 && head(w) === oldHead) return false;
    this.changes++;
    this.unlink(w, oldHead);
    if (kept === 0) {
      this.byName.delete(name);
      return true;
    }
    this.order.splice(lowerBound(this.order, head(w), head), 0, w);
    return false;
  }

  has(name: string): boolean {
    return this.byName.has(name);
  }

  /** Its place in the order (the arrival of its oldest waiting request; smaller is sooner), or null when nobody waits for it. */
  seq(name: string): number | null {
    const w = this.byName.get(name);
    return w ? head(w) : null;
  }

  /** Wanted adapters, soonest first. Placement walks it without changing demand. */
  *names(): IterableIterator<string> {
    for (const w of this.order) yield w.name;
  }

  /** Takes `w` out of the order, where its head arrival `at` (its current one by default) put it. */
  private unlink(w: Wanted, at = head(w)): void {
    this.order.splice(lowerBound(this.order, at, head), 1);
  }
}

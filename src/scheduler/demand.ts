// Which adapters waiting requests want, in the order their demand began, with how many
// waiting requests want each. The scheduler updates it as requests queue, start, go back to
// waiting and end, so placement never has to scan the waiting queue.
export class Demand {
  /** Insertion order is the order demand began; `seq` numbers that order for comparisons. */
  private readonly wanted = new Map<string, { count: number; seq: number }>();
  private nextSeq = 0;

  /** Returns true when the adapter just became wanted. */
  add(name: string): boolean {
    const w = this.wanted.get(name);
    if (w) {
      w.count++;
      return false;
    }
    this.wanted.set(name, { count: 1, seq: this.nextSeq++ });
    return true;
  }

  /** Returns true when no waiting request wants the adapter any more. */
  remove(name: string): boolean {
    const w = this.wanted.get(name);
    if (!w) throw new Error(`internal error: no waiting request wants adapter "${name}"`);
    if (--w.count > 0) return false;
    this.wanted.delete(name);
    return true;
  }

  has(name: string): boolean {
    return this.wanted.has(name);
  }

  /** Its place in the order (smaller is wanted sooner), or null when nobody waits for it. */
  seq(name: string): number | null {
    return this.wanted.get(name)?.seq ?? null;
  }

  count(name: string): number {
    return this.wanted.get(name)?.count ?? 0;
  }

  get size(): number {
    return this.wanted.size;
  }

  /** Wanted adapters, wanted soonest first. */
  names(): IterableIterator<string> {
    return this.wanted.keys();
  }
}

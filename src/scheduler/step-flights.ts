// The steps sent to the engine and not completed yet, oldest first: one, or with overlap
// scheduling two (the one the engine runs and the one queued behind it). Entry lists are
// reused from step to step, so a step allocates little beyond its batch and events: garbage
// made every step would bring collection pauses into the tail.
import type { StepEntry } from './batch-builder.js';

/** A step in flight: `ahead` when sent while the one before ran, `decode` when every row is one sampled token. */
export interface Flight {
  id: number;
  entries: StepEntry[];
  n: number;
  ahead: boolean;
  decode: boolean;
}

export class StepFlights {
  private readonly flights: Flight[] = [];
  private readonly spare: StepEntry[][] = [];
  /**
   * Adapters' ends of running requests that a step in flight still has rows of (held until the
   * step `after` and those before it are done): until then the adapter keeps its users, so its
   * slot is neither refilled nor cleared under a step that names it. A queued step whose slot
   * holds no adapter would fail as a whole.
   */
  private readonly heldEnds: Array<{ after: number; end: () => void }> = [];
  /** Steps sent so far, and how many of them while the step before was still running. */
  private readonly counts = { total: 0, ahead: 0 };

  get length(): number {
    return this.flights.length;
  }

  /** An entry list for the next step to fill (one a completed step left, when there is one). */
  entries(): StepEntry[] {
    return this.spare.pop() ?? [];
  }

  /** Takes back an entry list that no step was sent with. */
  recycle(entries: StepEntry[]): void {
    this.spare.push(entries);
  }

  /** The step of these entries is sent to the engine. */
  send(entries: StepEntry[], n: number): Flight {
    this.counts.total++;
    const ahead = this.flights.length > 0;
    if (ahead) this.counts.ahead++;
    const flight: Flight = { id: this.counts.total, entries, n, ahead, decode: true };
    this.flights.push(flight);
    return flight;
  }

  /** The oldest step, now completed (its entries are reused once the caller is done with them, at the next send). */
  complete(): Flight | undefined {
    const flight = this.flights.shift();
    if (flight) this.spare.push(flight.entries);
    return flight;
  }

  /** Drops the oldest step, which failed, and runs the ends it held. */
  discard(): void {
    const flight = this.complete();
    if (flight) this.releaseHeld(flight.id);
  }

  /** Runs `end` now, or once the steps in flight are done when one of them may read its adapter's slot. */
  afterFlights(end: () => void): void {
    const last = this.flights.at(-1);
    if (last === undefined) end();
    else this.heldEnds.push({ after: last.id, end });
  }

  /** Runs the held ends of steps up to `id`, in the order they were held. */
  releaseHeld(id: number): void {
    let kept = 0;
    const held = this.heldEnds;
    for (let i = 0; i < held.length; i++) {
      const h = held[i]!;
      if (h.after <= id) h.end();
      else held[kept++] = h;
    }
    held.length = kept;
  }

  /** Forgets every step in flight (they never completed, so nothing advanced) and runs every held end. */
  forget(): void {
    for (const f of this.flights) {
      for (let i = 0; i < f.n; i++) {
        const e = f.entries[i]!;
        if (e.epoch === e.seq.epoch) e.seq.leaveSteps();
      }
      this.spare.push(f.entries);
    }
    this.flights.length = 0;
    this.releaseHeld(Infinity);
  }

  /** Steps sent so far: the clock of waits for a place. */
  get sentCount(): number {
    return this.counts.total;
  }

  /** Steps sent so far, and those sent while the one before ran. */
  sent(): { total: number; ahead: number } {
    return { ...this.counts };
  }
}

// The requests each adapter's machine has not heard of yet: those naming it, starting and
// ending since it last heard. They wait in its record, and it hears them (adapter-pending.ts
// says in which order) before anything that depends on them, so a step that turns a batch over
// costs fewer statechart transitions, with the same outcome.
import type { AdapterEvent } from '../../statecharts/adapter.machine.js';
import { ACQUIRE_INDEPENDENT, ACQUIRE_MONOTONE, COUNTS_REASON, needsAcquisitions, takesCountsLater } from './adapter-pending.js';
import type { AdapterRecord } from './adapter-record.js';

/** Sends an event to a record's machine, once what is pending for it is heard (AdapterActors). */
export type Deliver = (rec: AdapterRecord, event: AdapterEvent, reason: string) => void;

export class PendingCounts {
  /** Adapters with starts or ends their machines have not heard yet, longest pending first. */
  private readonly uncounted = new Set<AdapterRecord>();

  constructor(private readonly deliver: Deliver) {}

  /**
   * A new request names it; false where its machine must hear it at once. Requests arrive one by
   * one, and between two steps hundreds may, so the machine hears them as one counted ACQUIRE
   * when it is next read or sent an event that is not ACQUIRE_INDEPENDENT (ACQUIRE only counts
   * users: it moves no state, emits nothing and is never published, so nobody can tell the
   * difference). Where the machine would refuse it (failed, or unloading: the caller has a bug),
   * it hears it at once, so the error names the call.
   */
  acquire(rec: AdapterRecord): boolean {
    if (rec.label === 'failed' || rec.label === 'unloading') return false;
    rec.acquired++;
    return true;
  }

  /**
   * `count` requests of it started running in one step; false where its machine must hear them
   * at once. A resident adapter's machine hears them in one COUNTS when it is next read or sent
   * another event, or in a step with time to spare (settleOne), not in the step that turns a
   * batch over, where every transition adds to its time. COUNTS only counts requests: it moves
   * no state, emits nothing and is never published. Meanwhile inUse counts them. Where the
   * machine would refuse START (not resident: the caller has a bug), it hears it at once, so the
   * error names the call.
   */
  started(rec: AdapterRecord, count: number): boolean {
    if (count < 1 || !takesCountsLater(rec.label)) return false;
    rec.started += count;
    this.uncounted.add(rec);
    return true;
  }

  /**
   * `count` running requests of it ended in one step: heard in one COUNTS, as started's requests
   * are, or with the EVICT that sends it from its slot. False for a release the machine would
   * refuse (more than run or use it), which it must hear at once.
   */
  ended(rec: AdapterRecord, count: number): boolean {
    const ctx = rec.snap.context;
    if (count < 1 || !takesCountsLater(rec.label) || ctx.running + rec.started - rec.ended < count || ctx.users + rec.acquired - rec.ended < count) {
      return false;
    }
    rec.ended += count;
    this.uncounted.add(rec);
    return true;
  }

  /**
   * Whether a running request uses it: its machine's count with the starts and ends it has not
   * heard yet (the machine's guards stay the rule). Acquisitions change no running count.
   */
  inUse(rec: AdapterRecord): boolean {
    return rec.snap.context.running + rec.started - rec.ended > 0;
  }

  /** Whether its machine would take `event` after what is pending for it. */
  can(rec: AdapterRecord, event: AdapterEvent): boolean {
    const asked = this.withPending(rec, event, false);
    if (rec.acquired > 0 && !ACQUIRE_INDEPENDENT.has(asked.type)) {
      // takesBefore's question is this one: a yes needs no second asking (an EVICT that
      // placement asks about for each slot it frees), a no is asked again after the acquisitions.
      if (ACQUIRE_MONOTONE.has(asked.type) && rec.snap.status === 'active' && rec.snap.can(asked)) return true;
      this.settleAcquired(rec);
    }
    return rec.snap.status === 'active' && rec.snap.can(asked);
  }

  /**
   * Lets the machine whose starts or ends have waited longest hear all that is pending for it;
   * false when none has any. For a step that sent no events: heard then, they are not heard in
   * the step where its requests end and it leaves its slot, where every transition adds to the
   * time of a step that turns a batch over. Acquisitions alone wait: they are heard with the
   * adapter's next starts, and until then no event needs them (each step settling one had
   * every waiting adapter hear its new requests again and again).
   */
  settleOne(): boolean {
    for (const rec of this.uncounted) {
      this.settle(rec);
      return true;
    }
    return false;
  }

  /** Its machine has left: nothing pending for it is heard. */
  forget(rec: AdapterRecord): void {
    this.uncounted.delete(rec);
  }

  /** Whether its machine may take `event` before the acquisitions it has not heard yet. */
  takesBefore(rec: AdapterRecord, event: AdapterEvent): boolean {
    if (rec.acquired === 0 || ACQUIRE_INDEPENDENT.has(event.type)) return true;
    return ACQUIRE_MONOTONE.has(event.type) && rec.snap.status === 'active' && rec.snap.can(event);
  }

  /** Lets its machine hear all that is pending for it. */
  settle(rec: AdapterRecord): void {
    this.settleCounts(rec, true);
    this.settleAcquired(rec);
  }

  /**
   * `event` as its machine is to hear it (`take`: it is sent now, not only asked about), once it
   * has heard the starts and ends pending for it: an EVICT carries them (as when a batch turns
   * over and its adapter leaves its slot), so they cost no transition of their own; any other
   * event hears them first, with the acquisitions it needs.
   */
  withPending(rec: AdapterRecord, event: AdapterEvent, take: boolean): AdapterEvent {
    if (rec.started === 0 && rec.ended === 0) return event;
    if (event.type === 'EVICT') {
      const carried: AdapterEvent = { type: 'EVICT', started: rec.started + (event.started ?? 0), ended: rec.ended + (event.ended ?? 0) };
      // Only asked about (can), they stay pending.
      if (take) {
        rec.started = 0;
        rec.ended = 0;
        this.uncounted.delete(rec);
      }
      return carried;
    }
    this.settleCounts(rec, needsAcquisitions(event));
    return event;
  }

  /** Lets its machine hear the acquisitions it has not heard yet. */
  settleAcquired(rec: AdapterRecord): void {
    const count = rec.acquired;
    if (count === 0) return;
    rec.acquired = 0;
    this.deliver(rec, { type: 'ACQUIRE', count }, count === 1 ? 'a request names it' : `${count} requests name it`);
  }

  /**
   * Lets its machine hear the starts and ends it has not heard yet (and the acquisitions, with
   * `acquisitionsToo` or where the ends need them), before anything else reaches or reads it: one
   * COUNTS, which the machine takes as all acquisitions, then all starts, then all ends. The
   * guards only ask that no more requests end than run and use it, so counting every start before
   * any end passes them whenever the order they happened in did, and leaves the same counts
   * (test/adapter-pending-counts.test.ts checks this against every reachable resident state).
   */
  private settleCounts(rec: AdapterRecord, acquisitionsToo: boolean): void {
    const { started, ended } = rec;
    if (started === 0 && ended === 0) return;
    rec.started = 0;
    rec.ended = 0;
    this.uncounted.delete(rec);
    let event: AdapterEvent = { type: 'COUNTS', acquired: 0, started, ended };
    if (rec.acquired > 0 && (acquisitionsToo || !this.takesBefore(rec, event))) {
      event = { type: 'COUNTS', acquired: rec.acquired, started, ended };
      rec.acquired = 0;
    }
    this.deliver(rec, event, COUNTS_REASON);
  }
}

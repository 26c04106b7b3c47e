// Hosts the adapters' statecharts: starts them, sends them events they must accept, forwards
// the loader commands their transitions emit, and follows every transition to keep the index
// current and to publish it. Nothing here decides anything about an adapter. Each machine steps
// under one shared scope (adapter-scope.ts), and the requests it has not heard of yet wait in
// its record (pending-counts.ts).
import type { AdapterStatus } from '../api.js';
import { TroupeError } from '../errors.js';
import { adapterStateLabel, residencyOf, type AdapterEvent, type AdapterInput, type AdapterSnapshot } from '../../statecharts/adapter.machine.js';
import type { AdapterIndex, Placement } from './adapter-index.js';
import { endedReason, startedReason } from './adapter-pending.js';
import { newRecord, type AdapterRecord } from './adapter-record.js';
import { AdapterScope } from './adapter-scope.js';
import { adapterDetail, adapterStatus, type AdapterDetail, type AdapterTransition } from './adapter-view.js';
import type { LoaderCommand } from './loader.js';
import { PendingCounts } from './pending-counts.js';

const now = (): number => performance.timeOrigin + performance.now();

function describe(event: AdapterEvent): string {
  const { type, ...rest } = event;
  return Object.keys(rest).length > 0 ? `${type} ${JSON.stringify(rest)}` : type;
}

export class AdapterActors {
  private readonly records = new Map<string, AdapterRecord>();
  private readonly scope = new AdapterScope();
  private readonly pending = new PendingCounts((rec, event, reason) => this.deliver(rec, event, reason));
  private readonly listeners = new Set<(t: AdapterTransition) => void>();
  private readonly labelCounts = new Map<string, number>();

  /** `isLoaded` says whether a name is in the loaded set clients see (kept by the registry's catalog). */
  constructor(
    private readonly index: AdapterIndex,
    private readonly isLoaded: (name: string) => boolean,
  ) {}

  start(input: AdapterInput, reason: string): void {
    const rec = newRecord(input, this.scope.initial(input));
    this.records.set(rec.name, rec);
    this.index.add(rec.name, rec.pinned, rec.placed);
    this.countLabel(rec.label, 1);
    this.publish(rec, 'none', rec.label, reason);
  }

  has(name: string): boolean {
    return this.records.has(name);
  }

  /** Registration order, for the rare walks over every adapter (listings, a loader restart). */
  names(): string[] {
    return [...this.records.keys()];
  }

  snapshot(name: string): AdapterSnapshot | null {
    const rec = this.records.get(name);
    if (!rec) return null;
    this.pending.settle(rec);
    return rec.snap;
  }

  /** Whether it was registered pinned (fixed for its machine's life, so its snapshot need not be current). */
  pinned(name: string): boolean | null {
    return this.records.get(name)?.pinned ?? null;
  }

  /**
   * Whether it was registered pinned, for an adapter that takes new requests as it is (neither
   * failed nor being removed); null for any other. What admitting a request asks first, in one lookup.
   */
  servingPinned(name: string): boolean | null {
    const rec = this.records.get(name);
    return rec === undefined || rec.label === 'failed' || rec.removal !== null ? null : rec.pinned;
  }

  label(name: string): string | null {
    return this.records.get(name)?.label ?? null;
  }

  /** Why it failed, if it did. */
  error(name: string): string | null {
    return this.snapshot(name)?.context.error ?? null;
  }

  /** Its rank once read: set by a transition of its own, so the snapshot need not be current. */
  rank(name: string): number | null {
    return this.records.get(name)?.snap.context.rank ?? null;
  }

  placement(name: string): Placement | null {
    return this.records.get(name)?.placed ?? null;
  }

  /** The promise of its pending removal, made on first asking. */
  removal(name: string): { promise: Promise<void>; first: boolean } {
    const rec = this.records.get(name)!;
    if (rec.removal) return { promise: rec.removal.promise, first: false };
    let resolve!: () => void;
    const promise = new Promise<void>((r) => (resolve = r));
    rec.removal = { promise, resolve };
    return { promise, first: true };
  }

  removing(name: string): boolean {
    return (this.records.get(name)?.removal ?? null) !== null;
  }

  /** Cancels its pending removal (REVIVE): whoever awaits the removal is answered now, as if it had completed. */
  revive(name: string, reason: string): void {
    const rec = this.records.get(name)!;
    this.send(name, { type: 'REVIVE' }, reason);
    const removal = rec.removal;
    rec.removal = null;
    removal?.resolve();
  }

  status(name: string): AdapterStatus | null {
    const rec = this.records.get(name);
    if (!rec) return null;
    this.pending.settle(rec);
    return adapterStatus(rec.snap, rec.label, this.isLoaded(name));
  }

  detail(name: string): AdapterDetail | null {
    const rec = this.records.get(name);
    if (!rec) return null;
    this.pending.settle(rec);
    return adapterDetail(rec.snap, rec.label, this.isLoaded(name), rec.last, rec.placed.span);
  }

  /** Resolves once the adapter's read from disk has ended (at once if none is in flight); null if it is gone. */
  whenRead(name: string): Promise<AdapterStatus | null> {
    const rec = this.records.get(name);
    if (!rec) return Promise.resolve(null);
    if (rec.placed.residency !== 'loading') return Promise.resolve(this.status(name));
    return new Promise((resolve) => rec.readWaiters.push(resolve));
  }

  labelCountsNow(): Record<string, number> {
    return Object.fromEntries([...this.labelCounts].filter(([, n]) => n > 0));
  }

  takeCommands(): LoaderCommand[] {
    return this.scope.takeCommands();
  }

  subscribe(listener: (t: AdapterTransition) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** Whether a running request uses it, with the starts and ends its machine has not heard yet. */
  inUse(name: string): boolean {
    const rec = this.records.get(name);
    return rec !== undefined && this.pending.inUse(rec);
  }

  can(name: string, event: AdapterEvent): boolean {
    const rec = this.records.get(name);
    return rec !== undefined && this.pending.can(rec, event);
  }

  /** A new request names it: its machine hears it later, with others (PendingCounts.acquire). */
  acquire(name: string, reason: string): void {
    const rec = this.records.get(name);
    if (rec === undefined || !this.pending.acquire(rec)) this.send(name, { type: 'ACQUIRE' }, reason);
  }

  /**
   * `count` requests of it started running in one step: its machine hears them later, in one
   * COUNTS (PendingCounts.started). Meanwhile the index's version changes as a transition would
   * change it, so placement walks again as it would have.
   */
  countStarted(name: string, count: number): void {
    const rec = this.records.get(name);
    if (rec === undefined || !this.pending.started(rec, count)) {
      this.send(name, { type: 'START', count }, startedReason(count));
      return;
    }
    this.index.transitioned();
  }

  /** `count` running requests of it ended in one step: heard later, as countStarted's are. */
  countEnded(name: string, count: number): void {
    const rec = this.records.get(name);
    if (rec === undefined || !this.pending.ended(rec, count)) {
      this.send(name, { type: 'RELEASE', running: true, count }, endedReason(count));
      return;
    }
    this.index.transitioned();
  }

  /** Lets the machine whose starts or ends waited longest hear them (PendingCounts.settleOne). */
  settleOne(): boolean {
    return this.pending.settleOne();
  }

  /** Sends an event the machine must accept: one it does not is a bug in the caller, reported with the adapter, its state and the event. */
  send(name: string, event: AdapterEvent, reason: string): void {
    const rec = this.records.get(name);
    if (!rec) throw new TroupeError('internal', `internal error: ${describe(event)} for adapter "${name}", which is not registered`);
    this.deliver(rec, this.pending.withPending(rec, event, true), reason);
  }

  /** send(), once the starts and ends pending for it are heard. */
  private deliver(rec: AdapterRecord, event: AdapterEvent, reason: string): void {
    const name = rec.name;
    if (!this.pending.takesBefore(rec, event)) this.pending.settleAcquired(rec);
    const before = rec.snap;
    const snap = this.scope.transition(before, event);
    // An event the machine takes makes a new snapshot, except a transition that only emits
    // commands; only an unchanged snapshot needs the slower question (a refused event changes nothing).
    if (snap === before && !(before.status === 'active' && before.can(event))) {
      throw new TroupeError('internal', `internal error: adapter "${name}" in state ${rec.label} does not accept ${describe(event)}`);
    }
    // As an actor does: the snapshot is taken, then what its actions put off runs (the loader
    // commands), then it is followed.
    rec.snap = snap;
    this.index.transitioned();
    this.scope.runDeferred();
    this.observe(rec, snap, reason);
    // An unload completes as soon as the machine says it may (no users, no transfer in flight).
    if (snap.status === 'active' && snap.context.removal && snap.can({ type: 'DRAINED' })) {
      this.send(name, { type: 'DRAINED' }, 'no request uses it any more; freed');
    }
  }

  /** Follows a transition into the index and publishes it; `reason` says why its event was sent. */
  private observe(rec: AdapterRecord, snap: AdapterSnapshot, reason: string): void {
    // A transition that changes no state (one that only counts requests) keeps the machine's
    // state nodes, and with them its residency and label: most transitions need not read them.
    const moved = snap._nodes !== rec.nodes;
    rec.nodes = snap._nodes;
    const residency = moved ? residencyOf(snap) : rec.placed.residency;
    const slot = snap.context.slot;
    let placed = rec.placed;
    if (residency !== placed.residency || slot !== placed.slot) {
      // A run keeps its span from slot to slot (a move exchanges runs of one size); a new one
      // takes its rank's.
      const span = slot === null ? 1 : placed.slot !== null ? placed.span : this.index.spanFor(snap.context.rank);
      placed = { residency, slot, span };
      this.index.move(rec.name, rec.pinned, rec.placed, placed);
      rec.placed = placed;
    }
    const to = moved ? adapterStateLabel(snap) : rec.label;
    if (to !== rec.label) {
      const from = rec.label;
      rec.label = to;
      this.countLabel(from, -1).countLabel(to, 1);
      // A failure's reason is the machine's own error (a pool mismatch is found by its guard).
      this.publish(rec, from, to, to === 'failed' ? `failed: ${snap.context.error ?? 'unknown error'}` : reason);
    }
    if (rec.readWaiters.length > 0 && placed.residency !== 'loading') {
      const status = snap.status === 'done' ? null : adapterStatus(snap, rec.label, this.isLoaded(rec.name));
      for (const w of rec.readWaiters.splice(0)) w(status);
    }
    if (snap.status === 'done') this.forget(rec);
  }

  private forget(rec: AdapterRecord): void {
    this.records.delete(rec.name);
    this.pending.forget(rec);
    this.index.remove(rec.name, rec.pinned, rec.placed);
    this.countLabel(rec.label, -1);
    rec.removal?.resolve();
  }

  private countLabel(label: string, delta: number): this {
    this.labelCounts.set(label, (this.labelCounts.get(label) ?? 0) + delta);
    return this;
  }

  private publish(rec: AdapterRecord, from: string, to: string, reason: string): void {
    const t: AdapterTransition = { adapter: rec.name, from, to, reason, time: now() };
    rec.last = t;
    for (const l of this.listeners) l(t);
  }
}

// Hosts the adapters' statecharts: starts them, sends them events they must accept, forwards
// the loader commands their transitions emit, and follows every transition to keep the index
// current and to publish it. Nothing here decides anything about an adapter.
//
// Each adapter is its machine's snapshot, advanced by the machine's own transition function
// (XState's actor logic interface) under one shared actor scope whose actions run as an
// actor runs them. An actor per adapter would add a mailbox, a system and an inspection
// path per adapter and per event, and nothing here uses them.
import { createEmptyActor, type ActorScope, type ExecutableActionObject } from 'xstate';
import type { AdapterStatus } from '../api.js';
import { TroupeError } from '../errors.js';
import {
  adapterMachine,
  adapterStateLabel,
  residencyOf,
  type AdapterCommandEvent,
  type AdapterEvent,
  type AdapterInput,
  type AdapterSnapshot,
} from '../../statecharts/adapter.machine.js';
import type { AdapterIndex, Placement } from './adapter-index.js';
import {
  ACQUIRE_INDEPENDENT,
  ACQUIRE_MONOTONE,
  COUNTS_REASON,
  endedReason,
  needsAcquisitions,
  startedReason,
  takesCountsLater,
} from './adapter-pending.js';
import { adapterDetail, adapterStatus, type AdapterDetail, type AdapterTransition } from './adapter-view.js';
import type { LoaderCommand } from './loader.js';

const now = (): number => performance.timeOrigin + performance.now();

interface AdapterRecord {
  readonly name: string;
  readonly pinned: boolean;
  snap: AdapterSnapshot;
  /** Derived from the machine's snapshot: the published label and where the index files it. */
  label: string;
  placed: Placement;
  /** The state nodes `label` and `placed.residency` were read from (see observe). */
  nodes: AdapterSnapshot['_nodes'];
  last: AdapterTransition | null;
  removal: { promise: Promise<void>; resolve: () => void } | null;
  /** Callers waiting for its read from disk to end. */
  readWaiters: Array<(status: AdapterStatus | null) => void>;
  /**
   * Requests that named it since its machine last heard of any (see acquire): they reach the
   * machine as one counted ACQUIRE before it is read, or sent an event that depends on them.
   */
  acquired: number;
  /**
   * Requests that started running, and running requests that ended, since its machine last heard
   * of any (see countStarted): they reach it as one COUNTS before anything else, or the ends with
   * the EVICT that sends it from its slot.
   */
  started: number;
  ended: number;
}

function describe(event: AdapterEvent): string {
  const { type, ...rest } = event;
  return Object.keys(rest).length > 0 ? `${type} ${JSON.stringify(rest)}` : type;
}

type AdapterScope = ActorScope<AdapterSnapshot, AdapterEvent, ActorScope<AdapterSnapshot, AdapterEvent>['system'], AdapterCommandEvent>;

export class AdapterActors {
  private readonly records = new Map<string, AdapterRecord>();
  private commands: LoaderCommand[] = [];
  /** What the running transition's actions put off until its snapshot is taken (emits do). */
  private readonly deferred: Array<() => void> = [];
  private readonly scope: AdapterScope;
  private readonly listeners = new Set<(t: AdapterTransition) => void>();
  private readonly labelCounts = new Map<string, number>();
  /** Adapters with starts or ends their machines have not heard yet, longest pending first. */
  private readonly uncounted = new Set<AdapterRecord>();

  /** `isLoaded` says whether a name is in the loaded set clients see (kept by the registry's catalog). */
  constructor(
    private readonly index: AdapterIndex,
    private readonly isLoaded: (name: string) => boolean,
  ) {
    // As XState's pure transition() builds its scope, but once, not per event: the machine has
    // no children, delays or sends, so `self` and its system only receive inspection events,
    // which nobody inspects.
    const self = createEmptyActor();
    this.scope = {
      self: self as unknown as AdapterScope['self'],
      id: self.id,
      sessionId: self.sessionId,
      logger: console.log,
      system: self.system,
      defer: (fn) => this.deferred.push(fn),
      emit: (e) => this.commands.push(e.command),
      stopChild: () => {},
      actionExecutor: (action: ExecutableActionObject) => action.exec?.(action.info, action.params),
    };
  }

  start(input: AdapterInput, reason: string): void {
    const first = adapterMachine.getInitialSnapshot(this.scope, input);
    this.runDeferred();
    if (first.status === 'error') throw first.error;
    const rec: AdapterRecord = {
      name: input.name,
      pinned: input.pinned,
      snap: first,
      label: adapterStateLabel(first),
      placed: { residency: residencyOf(first), slot: null, span: 1 },
      nodes: first._nodes,
      last: null,
      removal: null,
      readWaiters: [],
      acquired: 0,
      started: 0,
      ended: 0,
    };
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
    this.settle(rec);
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
    this.settle(rec);
    return adapterStatus(rec.snap, rec.label, this.isLoaded(name));
  }

  detail(name: string): AdapterDetail | null {
    const rec = this.records.get(name);
    if (!rec) return null;
    this.settle(rec);
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
    const out = this.commands;
    this.commands = [];
    return out;
  }

  subscribe(listener: (t: AdapterTransition) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /**
   * Whether a running request uses it: its machine's count with the starts and ends it has not
   * heard yet (the machine's guards stay the rule). Acquisitions change no running count.
   */
  inUse(name: string): boolean {
    const rec = this.records.get(name);
    return rec !== undefined && rec.snap.context.running + rec.started - rec.ended > 0;
  }

  can(name: string, event: AdapterEvent): boolean {
    const rec = this.records.get(name);
    if (!rec) return false;
    const asked = this.withPending(rec, event, false);
    if (rec.acquired > 0 && !ACQUIRE_INDEPENDENT.has(asked.type)) {
      // takesBeforePending's question is this one: a yes needs no second asking (an EVICT that
      // placement asks about for each slot it frees), a no is asked again after the acquisitions.
      if (ACQUIRE_MONOTONE.has(asked.type) && rec.snap.status === 'active' && rec.snap.can(asked)) return true;
      this.settleAcquired(rec);
    }
    return rec.snap.status === 'active' && rec.snap.can(asked);
  }

  /**
   * A new request names it. Requests arrive one by one, and between two steps hundreds may, so
   * the machine hears them as one counted ACQUIRE when it is next read or sent an event that is
   * not ACQUIRE_INDEPENDENT (ACQUIRE
   * only counts users: it moves no state, emits nothing and is never published, so nobody can
   * tell the difference). Where the machine would refuse it (failed, or unloading: the caller
   * has a bug), it hears it at once, so the error names this call.
   */
  acquire(name: string, reason: string): void {
    const rec = this.records.get(name);
    if (rec === undefined || rec.label === 'failed' || rec.label === 'unloading') {
      this.send(name, { type: 'ACQUIRE' }, reason);
      return;
    }
    rec.acquired++;
  }

  /**
   * `count` requests of it started running in one step. A resident adapter's machine hears them
   * in one COUNTS when it is next read or sent another event, or in a step with time to spare
   * (settleOne), not in the step that turns a batch over, where every transition adds to its
   * time. COUNTS only counts requests: it moves no state, emits nothing and is never
   * published. Meanwhile inUse counts them, and the index's version changes as a transition
   * would change it, so placement walks again as it would have. Where the machine would refuse
   * START (not resident: the caller has a bug), it hears it at once, so the error names this call.
   */
  countStarted(name: string, count: number): void {
    const rec = this.records.get(name);
    if (rec === undefined || count < 1 || !takesCountsLater(rec.label)) {
      this.send(name, { type: 'START', count }, startedReason(count));
      return;
    }
    rec.started += count;
    this.uncounted.add(rec);
    this.index.transitioned();
  }

  /**
   * `count` running requests of it ended in one step: heard in one COUNTS, as countStarted's
   * requests are, or with the EVICT that sends it from its slot. A release the machine would
   * refuse (more than run or use it) is sent at once.
   */
  countEnded(name: string, count: number): void {
    const rec = this.records.get(name);
    const ctx = rec?.snap.context;
    if (
      rec === undefined ||
      ctx === undefined ||
      count < 1 ||
      !takesCountsLater(rec.label) ||
      ctx.running + rec.started - rec.ended < count ||
      ctx.users + rec.acquired - rec.ended < count
    ) {
      this.send(name, { type: 'RELEASE', running: true, count }, endedReason(count));
      return;
    }
    rec.ended += count;
    this.uncounted.add(rec);
    this.index.transitioned();
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

  /** Whether its machine may take `event` before the acquisitions it has not heard yet. */
  private takesBeforePending(rec: AdapterRecord, event: AdapterEvent): boolean {
    if (rec.acquired === 0 || ACQUIRE_INDEPENDENT.has(event.type)) return true;
    return ACQUIRE_MONOTONE.has(event.type) && rec.snap.status === 'active' && rec.snap.can(event);
  }

  /** Lets its machine hear all that is pending for it. */
  private settle(rec: AdapterRecord): void {
    this.settleCounts(rec, true);
    this.settleAcquired(rec);
  }

  /**
   * `event` as its machine is to hear it (`take`: it is sent now, not only asked about), once it
   * has heard the starts and ends pending for it: an EVICT carries them (as when a batch turns
   * over and its adapter leaves its slot), so they cost no transition of their own; any other
   * event hears them first, with the acquisitions it needs.
   */
  private withPending(rec: AdapterRecord, event: AdapterEvent, take: boolean): AdapterEvent {
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
    if (rec.acquired > 0 && (acquisitionsToo || !this.takesBeforePending(rec, event))) {
      event = { type: 'COUNTS', acquired: rec.acquired, started, ended };
      rec.acquired = 0;
    }
    this.deliver(rec, event, COUNTS_REASON);
  }

  /** Lets its machine hear the acquisitions it has not heard yet. */
  private settleAcquired(rec: AdapterRecord): void {
    const count = rec.acquired;
    if (count === 0) return;
    rec.acquired = 0;
    this.deliver(rec, { type: 'ACQUIRE', count }, count === 1 ? 'a request names it' : `${count} requests name it`);
  }

  /** Sends an event the machine must accept: one it does not is a bug in the caller, reported with the adapter, its state and the event. */
  send(name: string, event: AdapterEvent, reason: string): void {
    const rec = this.records.get(name);
    if (!rec) throw new TroupeError('internal', `internal error: ${describe(event)} for adapter "${name}", which is not registered`);
    this.deliver(rec, this.withPending(rec, event, true), reason);
  }

  /** send(), once the starts and ends pending for it are heard. */
  private deliver(rec: AdapterRecord, event: AdapterEvent, reason: string): void {
    const name = rec.name;
    if (!this.takesBeforePending(rec, event)) this.settleAcquired(rec);
    const before = rec.snap;
    const snap = this.transition(before, event);
    // An event the machine takes makes a new snapshot, except a transition that only emits
    // commands; only an unchanged snapshot needs the slower question (a refused event changes nothing).
    if (snap === before && !(before.status === 'active' && before.can(event))) {
      throw new TroupeError('internal', `internal error: adapter "${name}" in state ${rec.label} does not accept ${describe(event)}`);
    }
    // As an actor does: the snapshot is taken, then what its actions put off runs (the loader
    // commands), then it is followed.
    rec.snap = snap;
    this.index.transitioned();
    this.runDeferred();
    this.observe(rec, snap, reason);
    // An unload completes as soon as the machine says it may (no users, no transfer in flight).
    if (snap.status === 'active' && snap.context.removal && snap.can({ type: 'DRAINED' })) {
      this.send(name, { type: 'DRAINED' }, 'no request uses it any more; freed');
    }
  }

  /** The machine's next snapshot; an adapter that left (a final snapshot) takes no events. */
  private transition(snap: AdapterSnapshot, event: AdapterEvent): AdapterSnapshot {
    if (snap.status !== 'active') return snap;
    try {
      return adapterMachine.transition(snap, event, this.scope);
    } catch (err) {
      this.deferred.length = 0;
      throw err;
    }
  }

  private runDeferred(): void {
    // Each deferred call may defer more (none does today); run until none is left.
    for (let i = 0; i < this.deferred.length; i++) this.deferred[i]!();
    this.deferred.length = 0;
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
    this.uncounted.delete(rec);
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

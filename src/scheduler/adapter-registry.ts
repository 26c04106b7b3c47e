// Every registered adapter's statechart actor, and the indexes over them. The machines own
// each adapter's state (slot, users, CPU copy, pending removal) and emit the loader commands;
// the registry only turns scheduler and loader happenings into machine events, keeps the
// indexes current from the transitions, and asks placement which adapter goes where.
import { createActor, type Actor } from 'xstate';
import type { AdapterStatus } from '../api.js';
import type { LoraModule } from '../engine/types.js';
import { TroupeError, badRequest, notFound } from '../errors.js';
import {
  adapterMachine,
  adapterStateLabel,
  residencyOf,
  type AdapterEvent,
  type AdapterSnapshot,
} from '../../statecharts/adapter.machine.js';
import { AdapterIndex, type Placement } from './adapter-index.js';
import type { AdapterCounters, AdapterDetail, AdapterTransition } from './adapter-view.js';
import { adapterDetail, adapterStatus } from './adapter-view.js';
import type { LoaderCommand, LoaderEvent } from './loader.js';
import { place, type PlacementHost } from './placement.js';

export type { AdapterCounters, AdapterDetail, AdapterTransition } from './adapter-view.js';

const now = (): number => performance.timeOrigin + performance.now();

interface AdapterRecord {
  readonly name: string;
  readonly pinned: boolean;
  readonly actor: Actor<typeof adapterMachine>;
  /** Derived from the machine's snapshot: the published label and where the index files it. */
  label: string;
  placed: Placement;
  last: AdapterTransition | null;
  removal: { promise: Promise<void>; resolve: () => void } | null;
  /** Callers waiting for its read from disk to end. */
  readWaiters: Array<(status: AdapterStatus | null) => void>;
}

export interface RegistryLimits {
  /** GPU pool slots (--max-gpu-loras). */
  slots: number;
  /** Most pinned adapters (--max-loras-per-batch - 1). */
  maxPinned: number;
  maxLoaded: number | null;
  evictionPolicy: 'lru' | 'fifo';
  maxLoraRank: number;
  loraModules: readonly LoraModule[];
}

function describe(event: AdapterEvent): string {
  const { type, ...rest } = event;
  return Object.keys(rest).length > 0 ? `${type} ${JSON.stringify(rest)}` : type;
}

export class AdapterRegistry implements PlacementHost {
  private readonly records = new Map<string, AdapterRecord>();
  readonly index: AdapterIndex;
  private commands: LoaderCommand[] = [];
  private readonly listeners = new Set<(t: AdapterTransition) => void>();
  private readonly labelCounts = new Map<string, number>();
  /** Why the event being sent is sent; published with the transition it causes. */
  private reason: string | null = null;
  /** An invariant broken while the indexes followed a transition; thrown once the send returns. */
  private fault: Error | null = null;

  constructor(readonly limits: RegistryLimits) {
    this.index = new AdapterIndex(limits.slots, limits.evictionPolicy);
  }

  add(spec: { name: string; path: string; pinned: boolean }): void {
    const existing = this.records.get(spec.name);
    if (existing) throw new TroupeError('conflict', `LoRA adapter '${spec.name}' is already loaded (state ${existing.label}); unload it first`);
    if (spec.pinned && this.index.pinned.size >= this.limits.maxPinned) {
      const max = this.limits.maxPinned;
      throw badRequest(
        `cannot pin adapter "${spec.name}": ${this.index.pinned.size} adapters are pinned and at most ${max} may be ` +
          `(max_loras_per_batch - 1, one slot is kept for unpinned adapters and the base model)`,
      );
    }
    const actor = createActor(adapterMachine, {
      input: { ...spec, maxRank: this.limits.maxLoraRank, poolModules: this.limits.loraModules },
    });
    const first = actor.getSnapshot();
    const rec: AdapterRecord = {
      name: spec.name,
      pinned: spec.pinned,
      actor,
      label: adapterStateLabel(first),
      placed: { residency: residencyOf(first), slot: null },
      last: null,
      removal: null,
      readWaiters: [],
    };
    this.records.set(spec.name, rec);
    this.index.add(rec.name, rec.pinned, rec.placed);
    this.countLabel(rec.label, 1);
    actor.on('command', (e) => this.commands.push(e.command));
    actor.subscribe((snap) => this.observe(rec, snap));
    actor.start();
    this.publish(rec, 'none', rec.label, spec.pinned ? 'added, pinned' : 'added');
    // Read eagerly while the CPU budget allows, so a bad adapter fails at load time.
    const max = this.limits.maxLoaded;
    if (spec.pinned || max === null || this.index.cpuCount < max) this.send(rec.name, { type: 'LOAD' }, 'read at registration');
  }

  /** Refuses new requests at once; resolves once its users are gone and its copies are released. */
  remove(name: string): Promise<void> {
    const rec = this.records.get(name);
    if (!rec) return Promise.reject(notFound(`LoRA adapter '${name}' is not loaded`));
    if (rec.removal) return rec.removal.promise;
    let resolve!: () => void;
    const promise = new Promise<void>((r) => (resolve = r));
    rec.removal = { promise, resolve };
    const users = rec.actor.getSnapshot().context.users;
    this.send(name, { type: 'UNLOAD' }, users > 0 ? `unload requested; waiting for ${users} request(s)` : 'unload requested');
    return promise;
  }

  /** Why a request for `name` must be refused, or null. */
  refusal(name: string): TroupeError | null {
    const rec = this.records.get(name);
    if (!rec) return badRequest(`LoRA adapter '${name}' is not loaded`);
    if (rec.label === 'failed') return badRequest(`LoRA adapter '${name}' failed to load: ${this.error(name)}`);
    if (rec.removal) return badRequest(`adapter "${name}" is being unloaded`);
    return null;
  }

  error(name: string): string | null {
    return this.records.get(name)?.actor.getSnapshot().context.error ?? null;
  }

  /** Applies a loader event; returns the name of an adapter that just failed, if any. */
  onLoaderEvent(ev: LoaderEvent): string | null {
    const rec = this.records.get(ev.name);
    // Gone already: it was unloaded after its last transfer landed.
    if (!rec) return null;
    if (ev.kind === 'cpu-loaded') {
      const { rank, targetModules, bytes } = ev;
      this.send(ev.name, { type: 'CPU_LOADED', rank, targetModules, bytes: bytes ?? 0 }, `read from disk (rank ${rank})`);
    } else if (ev.kind === 'slot-ready') {
      this.send(ev.name, { type: 'SLOT_READY', slot: ev.slot }, `copied into slot ${ev.slot}`);
    } else {
      this.send(ev.name, { type: 'LOAD_FAILED', error: ev.error }, `load failed: ${ev.error}`);
    }
    return rec.label === 'failed' ? rec.name : null;
  }

  /**
   * The loader thread was replaced: the CPU copies it held are gone and commands sent to it may
   * be lost. Each machine knows what that means for it (read again, copy again, or forget the
   * copy); slots keep their weights, which live in the engines. Rare, so a walk over all is fine.
   */
  loaderRestarted(): void {
    const event: AdapterEvent = { type: 'LOADER_RESTARTED' };
    for (const rec of [...this.records.values()]) {
      if (!rec.actor.getSnapshot().can(event)) continue;
      const reason = rec.placed.residency === 'cpuLoaded'
        ? 'the loader restarted and its CPU copy is gone; read from disk again when needed'
        : 'the loader restarted; its read or copy is issued again';
      this.send(rec.name, event, reason);
    }
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

  list(names?: readonly string[]): AdapterStatus[] {
    const recs = names ? names.flatMap((n) => this.records.get(n) ?? []) : [...this.records.values()];
    return recs.map((r) => adapterStatus(r.actor.getSnapshot(), r.label));
  }

  details(): AdapterDetail[] {
    return [...this.records.values()].map((r) => adapterDetail(r.actor.getSnapshot(), r.label, r.last));
  }

  /** Resolves once the adapter's read from disk has ended (at once if none is in flight); null if it is gone. */
  whenRead(name: string): Promise<AdapterStatus | null> {
    const rec = this.records.get(name);
    if (!rec) return Promise.resolve(null);
    if (rec.placed.residency !== 'loading') return Promise.resolve(adapterStatus(rec.actor.getSnapshot(), rec.label));
    return new Promise((resolve) => rec.readWaiters.push(resolve));
  }

  /** Small figures for the metrics: slots in use, CPU copies, and adapters per state. */
  counters(): AdapterCounters {
    const loading = this.index.inResidency('loading').size;
    return {
      slots: this.index.slotCount,
      slotsUsed: this.index.slotsUsed,
      cpuAdapters: this.index.cpuCount - loading,
      byState: Object.fromEntries([...this.labelCounts].filter(([, n]) => n > 0)),
    };
  }

  /** The pool slot of a GPU-resident adapter, or null while it is not (yet) usable. */
  residentSlot(name: string): number | null {
    const placed = this.records.get(name)?.placed;
    return placed?.residency?.startsWith('gpuResident') ? placed.slot : null;
  }

  /** Whether a copy that a waiting request needs is in flight. */
  wantedCopyInFlight(): boolean {
    return this.index.wantedInResidency('h2dInFlight') > 0;
  }

  // ---- requests: the scheduler reports each one's moves ----

  // `arrival` numbers each request in arrival order (Sequence.arrival): the demand order.

  /** A new request waits for it. */
  queued(name: string, arrival: number): void {
    this.send(name, { type: 'ACQUIRE' }, 'a request names it');
    this.index.want(name, arrival, this.residency(name));
    this.index.touch(name);
  }

  /** One of its waiting requests starts running (its adapter is resident). */
  started(name: string, arrival: number): void {
    this.index.unwant(name, arrival, this.residency(name));
    this.send(name, { type: 'START' }, 'a request started');
    this.index.touch(name);
  }

  /** A running request went back to waiting (its KV cache was freed). */
  preempted(name: string, arrival: number): void {
    this.send(name, { type: 'PREEMPT' }, 'a request was preempted');
    this.index.want(name, arrival, this.residency(name));
  }

  /** A request ended (finished, aborted or failed), from waiting or from running. */
  ended(name: string, arrival: number, wasRunning: boolean): void {
    if (!wasRunning) this.index.unwant(name, arrival, this.residency(name));
    this.send(name, { type: 'RELEASE', running: wasRunning }, 'a request ended');
  }

  /** A step used it: it becomes the most recently used. */
  touch(name: string): void {
    this.index.touch(name);
  }

  /** Loads and copies what waiting requests (and pins) want, within the slots and the CPU budget. */
  pump(): void {
    place(this);
  }

  // ---- PlacementHost ----

  residency(name: string): string | null {
    return this.records.get(name)?.placed.residency ?? null;
  }

  slot(name: string): number | null {
    return this.records.get(name)?.placed.slot ?? null;
  }

  can(name: string, event: AdapterEvent): boolean {
    const snap = this.records.get(name)?.actor.getSnapshot();
    return snap !== undefined && snap.status === 'active' && snap.can(event);
  }

  /** Sends an event the machine must accept: one it does not is a bug in the caller, reported with the adapter, its state and the event. */
  send(name: string, event: AdapterEvent, reason: string): void {
    const rec = this.records.get(name);
    if (!rec) throw new TroupeError('internal', `internal error: ${describe(event)} for adapter "${name}", which is not registered`);
    if (!this.can(name, event)) {
      throw new TroupeError('internal', `internal error: adapter "${name}" in state ${rec.label} does not accept ${describe(event)}`);
    }
    const outer = this.reason;
    this.reason = reason;
    try {
      rec.actor.send(event);
    } finally {
      this.reason = outer;
    }
    const fault = this.fault;
    this.fault = null;
    if (fault) throw fault;
    // An unload completes as soon as the machine says it may (no users, no transfer in flight).
    const snap = rec.actor.getSnapshot();
    if (snap.status === 'active' && snap.context.removal && snap.can({ type: 'DRAINED' })) {
      this.send(name, { type: 'DRAINED' }, 'no request uses it any more; freed');
    }
  }

  private observe(rec: AdapterRecord, snap: AdapterSnapshot): void {
    try {
      const placed: Placement = { residency: residencyOf(snap), slot: snap.context.slot };
      if (placed.residency !== rec.placed.residency || placed.slot !== rec.placed.slot) {
        this.index.move(rec.name, rec.pinned, rec.placed, placed);
        rec.placed = placed;
      }
      const to = adapterStateLabel(snap);
      if (to !== rec.label) {
        const from = rec.label;
        rec.label = to;
        this.countLabel(from, -1).countLabel(to, 1);
        this.publish(rec, from, to, this.reasonFor(to, snap));
      }
      if (rec.readWaiters.length > 0 && placed.residency !== 'loading') {
        const status = snap.status === 'done' ? null : adapterStatus(snap, rec.label);
        for (const w of rec.readWaiters.splice(0)) w(status);
      }
      if (snap.status === 'done') this.forget(rec);
    } catch (err) {
      // An observer's throw would escape as an unhandled error; send() rethrows it instead.
      this.fault ??= err instanceof Error ? err : new Error(String(err));
    }
  }

  private reasonFor(to: string, snap: AdapterSnapshot): string {
    // A failure's reason is the machine's own error (a pool mismatch is found by its guard).
    if (to === 'failed') return `failed: ${snap.context.error ?? 'unknown error'}`;
    return this.reason ?? 'state change';
  }

  private forget(rec: AdapterRecord): void {
    this.records.delete(rec.name);
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

// Hosts the adapters' statechart actors: starts them, sends them events they must accept,
// forwards the loader commands their transitions emit, and follows every transition to keep
// the index current and to publish it. Nothing here decides anything about an adapter.
import { createActor, type Actor } from 'xstate';
import type { AdapterStatus } from '../api.js';
import { TroupeError } from '../errors.js';
import {
  adapterMachine,
  adapterStateLabel,
  residencyOf,
  type AdapterEvent,
  type AdapterInput,
  type AdapterSnapshot,
} from '../../statecharts/adapter.machine.js';
import type { AdapterIndex, Placement } from './adapter-index.js';
import { adapterDetail, adapterStatus, type AdapterDetail, type AdapterTransition } from './adapter-view.js';
import type { LoaderCommand } from './loader.js';

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

function describe(event: AdapterEvent): string {
  const { type, ...rest } = event;
  return Object.keys(rest).length > 0 ? `${type} ${JSON.stringify(rest)}` : type;
}

export class AdapterActors {
  private readonly records = new Map<string, AdapterRecord>();
  private commands: LoaderCommand[] = [];
  private readonly listeners = new Set<(t: AdapterTransition) => void>();
  private readonly labelCounts = new Map<string, number>();
  /** Why the event being sent is sent; published with the transition it causes. */
  private reason: string | null = null;
  /** An invariant broken while the index followed a transition; thrown once the send returns. */
  private fault: Error | null = null;

  /** `isLoaded` says whether a name is in the loaded set clients see (kept by the registry's catalog). */
  constructor(private readonly index: AdapterIndex, private readonly isLoaded: (name: string) => boolean) {}

  start(input: AdapterInput, reason: string): void {
    const actor = createActor(adapterMachine, { input });
    const first = actor.getSnapshot();
    const rec: AdapterRecord = {
      name: input.name,
      pinned: input.pinned,
      actor,
      label: adapterStateLabel(first),
      placed: { residency: residencyOf(first), slot: null },
      last: null,
      removal: null,
      readWaiters: [],
    };
    this.records.set(rec.name, rec);
    this.index.add(rec.name, rec.pinned, rec.placed);
    this.countLabel(rec.label, 1);
    actor.on('command', (e) => this.commands.push(e.command));
    actor.subscribe((snap) => this.observe(rec, snap));
    actor.start();
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
    return this.records.get(name)?.actor.getSnapshot() ?? null;
  }

  label(name: string): string | null {
    return this.records.get(name)?.label ?? null;
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
    return rec ? adapterStatus(rec.actor.getSnapshot(), rec.label, this.isLoaded(name)) : null;
  }

  detail(name: string): AdapterDetail | null {
    const rec = this.records.get(name);
    return rec ? adapterDetail(rec.actor.getSnapshot(), rec.label, this.isLoaded(name), rec.last) : null;
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

  /** Whether a running request uses it (read from its machine; the machine's guards stay the rule). */
  inUse(name: string): boolean {
    return (this.records.get(name)?.actor.getSnapshot().context.running ?? 0) > 0;
  }

  can(name: string, event: AdapterEvent): boolean {
    const snap = this.records.get(name)?.actor.getSnapshot();
    return snap !== undefined && snap.status === 'active' && snap.can(event);
  }

  /** Sends an event the machine must accept: one it does not is a bug in the caller, reported with the adapter, its state and the event. */
  send(name: string, event: AdapterEvent, reason: string): void {
    const rec = this.records.get(name);
    if (!rec) throw new TroupeError('internal', `internal error: ${describe(event)} for adapter "${name}", which is not registered`);
    const before = rec.actor.getSnapshot();
    const label = rec.label;
    const outer = this.reason;
    this.reason = reason;
    try {
      rec.actor.send(event);
    } finally {
      this.reason = outer;
    }
    // An event the machine takes makes a new snapshot, except a transition that only emits
    // commands; only an unchanged snapshot needs the slower question (a refused event changes nothing).
    if (rec.actor.getSnapshot() === before && !(before.status === 'active' && before.can(event))) {
      throw new TroupeError('internal', `internal error: adapter "${name}" in state ${label} does not accept ${describe(event)}`);
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
        // A failure's reason is the machine's own error (a pool mismatch is found by its guard).
        this.publish(rec, from, to, to === 'failed' ? `failed: ${snap.context.error ?? 'unknown error'}` : (this.reason ?? 'state change'));
      }
      if (rec.readWaiters.length > 0 && placed.residency !== 'loading') {
        const status = snap.status === 'done' ? null : adapterStatus(snap, rec.label, this.isLoaded(rec.name));
        for (const w of rec.readWaiters.splice(0)) w(status);
      }
      if (snap.status === 'done') this.forget(rec);
    } catch (err) {
      // An observer's throw would escape as an unhandled error; send() rethrows it instead.
      this.fault ??= err instanceof Error ? err : new Error(String(err));
    }
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

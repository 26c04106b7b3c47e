// The scheduler's view of its adapters. The machines own each adapter's state (slot, users,
// CPU copy, pending removal) and emit the loader commands; the registry turns scheduler and
// loader happenings into machine events, and asks placement which adapter goes where, using
// the index kept current from the machines' transitions. Loads, admissions and unloads, which
// clients drive, are the lifecycle's (adapter-lifecycle.ts). What clients see (the loaded set,
// and the names a request may bring back) is the catalog's; the machines are its cache.
import type { AdapterStatus } from '../api.js';
import type { LoraModule } from '../engine/types.js';
import type { TroupeError } from '../errors.js';
import type { AdapterEvent } from '../../statecharts/adapter.machine.js';
import { AdapterActors } from './adapter-actors.js';
import { AdapterCatalog, type CatalogEntry as AdapterSpec } from './adapter-catalog.js';
import { AdapterIndex } from './adapter-index.js';
import { AdapterLifecycle } from './adapter-lifecycle.js';
import type { AdapterCounters, AdapterDetail, AdapterTransition } from './adapter-view.js';
import type { LoaderCommand, LoaderEvent } from './loader.js';
import { place, type PlacementHost } from './placement.js';

export type { AdapterCounters, AdapterDetail, AdapterTransition } from './adapter-view.js';

export interface RegistryLimits {
  /** GPU pool slots (--max-gpu-loras, cut by the slot rank: lora-slots.ts). */
  slots: number;
  /** Ranks a slot; absent: maxLoraRank, one slot an adapter. */
  slotRank?: number;
  /** Most pinned adapters (--max-loras-per-batch - 1). */
  maxPinned: number;
  maxLoaded: number | null;
  evictionPolicy: 'lru' | 'fifo';
  maxLoraRank: number;
  loraModules: readonly LoraModule[];
  /** Moves wanted adapters into lower slots (see placement's compact); default true. */
  compactSlots?: boolean;
}

export class AdapterRegistry implements PlacementHost {
  readonly index: AdapterIndex;
  private readonly actors: AdapterActors;
  /** The loaded set clients see and every name ever loaded; the machines are its cache. */
  private readonly catalog: AdapterCatalog;
  /** Loads, admissions and unloads, as clients drive them. */
  private readonly lifecycle: AdapterLifecycle;
  /** The index's version when placement last walked and did nothing, or -1. */
  private idleAt = -1;
  /** residentSlot's answers while the index's version is residentSlotsAt. */
  private readonly residentSlots = new Map<string, number | null>();
  private residentSlotsAt = -1;

  constructor(readonly limits: RegistryLimits) {
    this.index = new AdapterIndex(limits.slots, limits.evictionPolicy, limits.maxLoaded !== null, limits.slotRank ?? limits.maxLoraRank);
    this.catalog = new AdapterCatalog(limits.maxLoaded);
    this.actors = new AdapterActors(this.index, (name) => this.catalog.isLoaded(name));
    this.lifecycle = new AdapterLifecycle(limits, this.index, this.actors, this.catalog);
  }

  /** An explicit load (or --lora-paths): AdapterLifecycle.add. */
  add(spec: AdapterSpec): void {
    this.lifecycle.add(spec);
  }

  /** Readies `name` for a new request, or says why it must be refused: AdapterLifecycle.admit. */
  admit(name: string): TroupeError | null {
    return this.lifecycle.admit(name);
  }

  /** An explicit unload; resolves once its users are gone: AdapterLifecycle.remove. */
  remove(name: string): Promise<void> {
    return this.lifecycle.remove(name);
  }

  error(name: string): string | null {
    return this.actors.error(name);
  }

  /** Applies a loader event; returns the name of an adapter that just failed, if any. */
  onLoaderEvent(ev: LoaderEvent): string | null {
    // Gone already: it was unloaded after its last transfer landed.
    if (!this.actors.has(ev.name)) return null;
    const before = this.actors.label(ev.name);
    if (ev.kind === 'cpu-loaded') {
      const { rank, targetModules, bytes } = ev;
      this.send(ev.name, { type: 'CPU_LOADED', rank, targetModules, bytes: bytes ?? 0 }, `read from disk (rank ${rank})`);
    } else if (ev.kind === 'slot-ready') {
      const moved = before === 'moving';
      this.send(ev.name, { type: 'SLOT_READY', slot: ev.slot }, moved ? `moved into slot ${ev.slot}` : `copied into slot ${ev.slot}`);
    } else if (ev.kind === 'move-failed') {
      this.send(ev.name, { type: 'MOVE_FAILED', error: ev.error }, ev.error);
    } else {
      this.send(ev.name, { type: 'LOAD_FAILED', error: ev.error }, `load failed: ${ev.error}`);
    }
    const after = this.actors.label(ev.name);
    if (ev.kind === 'cpu-loaded' && after !== 'failed') this.catalog.confirm(ev.name);
    if (before === 'failed') return null;
    // One that failed with nobody waiting and an unload pending is gone already.
    if (after === null && ev.kind === 'load-failed') this.catalog.failed(ev.name);
    if (after !== 'failed') return null;
    this.catalog.failed(ev.name);
    return ev.name;
  }

  /**
   * The loader thread was replaced: the CPU copies it held are gone and commands sent to it may
   * be lost. Each machine knows what that means for it (read again, copy again, or forget the
   * copy); slots keep their weights, which live in the engines. Rare, so a walk over all is fine.
   */
  loaderRestarted(): void {
    const event: AdapterEvent = { type: 'LOADER_RESTARTED' };
    for (const name of this.actors.names()) {
      if (!this.actors.can(name, event)) continue;
      const residency = this.residency(name);
      const reason =
        residency === 'cpuLoaded'
          ? 'the loader restarted and its CPU copy is gone; read from disk again when needed'
          : residency === null
            ? 'the loader restarted: the copy queued behind its failed read is gone, so it may leave'
            : 'the loader restarted; its read or copy is issued again';
      this.send(name, event, reason);
    }
  }

  takeCommands(): LoaderCommand[] {
    return this.actors.takeCommands();
  }

  subscribe(listener: (t: AdapterTransition) => void): () => void {
    return this.actors.subscribe(listener);
  }

  /** The named adapters' statuses (those registered), or every adapter's. */
  list(names?: readonly string[]): AdapterStatus[] {
    return (names ?? this.actors.names()).flatMap((n) => this.actors.status(n) ?? []);
  }

  details(): AdapterDetail[] {
    return this.actors.names().flatMap((n) => this.actors.detail(n) ?? []);
  }

  /** Resolves once its read from disk has ended, with its status (null if it is gone). */
  whenRead(name: string): Promise<AdapterStatus | null> {
    return this.actors.whenRead(name);
  }

  /** Small figures for the metrics: slots in use, CPU copies, and adapters per state. */
  counters(): AdapterCounters {
    return {
      slots: this.index.slotCount,
      slotsUsed: this.index.slotsUsed,
      cpuAdapters: this.index.cpuCount - this.index.inResidency('loading').size,
      byState: this.actors.labelCountsNow(),
    };
  }

  /**
   * The pool slot of a GPU-resident adapter, or null while it is not (yet) usable. A step asks
   * this of every request it looks at, running or waiting, for a few adapters: the answers are
   * kept until an adapter is filed elsewhere, which a lookup among thousands of registered
   * adapters costs more than.
   */
  residentSlot(name: string): number | null {
    const version = this.index.placementVersion;
    if (version !== this.residentSlotsAt) {
      this.residentSlots.clear();
      this.residentSlotsAt = version;
    }
    let slot = this.residentSlots.get(name);
    if (slot === undefined) {
      const placed = this.actors.placement(name);
      slot = placed?.residency?.startsWith('gpuResident') ? placed.slot : null;
      this.residentSlots.set(name, slot);
    }
    return slot;
  }

  /** Whether a copy that a waiting request needs is in flight. */
  wantedCopyInFlight(): boolean {
    return this.index.wantedInResidency('h2dInFlight') > 0;
  }

  // ---- requests: the scheduler reports each one's moves; `arrival` (Sequence.arrival) orders demand ----

  /** A new request waits for it. */
  queued(name: string, arrival: number): void {
    this.actors.acquire(name, 'a request names it');
    this.index.want(name, arrival, this.residency(name));
    this.index.touch(name);
  }

  /** Waiting requests of it (their `arrivals`) start running in one step (its adapter is resident). */
  started(name: string, arrivals: readonly number[]): void {
    this.index.unwantAll(name, arrivals, this.residency(name));
    this.actors.countStarted(name, arrivals.length);
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

  /** `count` running requests of it ended in one step. */
  endedRunning(name: string, count: number): void {
    this.actors.countEnded(name, count);
  }

  /**
   * Lets one machine hear the requests that named, started or ended with it since it last heard
   * (PendingCounts.settleOne).
   */
  settleOne(): void {
    this.actors.settleOne();
  }

  /** A step used it: it becomes the most recently used. */
  touch(name: string): void {
    this.index.touch(name);
  }

  /**
   * Loads and copies what waiting requests (and pins) want, within the slots and the CPU budget.
   * A walk that did nothing does nothing again until something it reads changes (the index's
   * version), so the requests that arrive between two steps, each of which pumps, walk once.
   */
  pump(): void {
    const before = this.index.version;
    if (before === this.idleAt) return;
    place(this);
    // One that acted may leave work for the next walk (see place).
    this.idleAt = this.index.version === before ? before : -1;
  }

  // ---- PlacementHost ----

  residency(name: string): string | null {
    return this.actors.placement(name)?.residency ?? null;
  }

  slot(name: string): number | null {
    return this.actors.placement(name)?.slot ?? null;
  }

  rank(name: string): number | null {
    return this.actors.rank(name);
  }

  inUse(name: string): boolean {
    return this.actors.inUse(name);
  }

  can(name: string, event: AdapterEvent): boolean {
    return this.actors.can(name, event);
  }

  send(name: string, event: AdapterEvent, reason: string): void {
    this.actors.send(name, event, reason);
  }
}

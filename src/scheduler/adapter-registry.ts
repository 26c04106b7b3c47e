// The scheduler's view of its adapters. The machines own each adapter's state (slot, users,
// CPU copy, pending removal) and emit the loader commands; the registry turns scheduler and
// loader happenings into machine events, and asks placement which adapter goes where, using
// the index kept current from the machines' transitions. What clients see (the loaded set,
// and the names a request may bring back) is the catalog's; the machines are its cache.
import type { AdapterStatus } from '../api.js';
import type { LoraModule } from '../engine/types.js';
import { TroupeError, badRequest, notFound } from '../errors.js';
import type { AdapterEvent } from '../../statecharts/adapter.machine.js';
import { AdapterActors } from './adapter-actors.js';
import { AdapterCatalog, type CatalogEntry as AdapterSpec } from './adapter-catalog.js';
import { AdapterIndex } from './adapter-index.js';
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
  /** The index's version when placement last walked and did nothing, or -1. */
  private idleAt = -1;
  /** residentSlot's answers while the index's version is residentSlotsAt. */
  private readonly residentSlots = new Map<string, number | null>();
  private residentSlotsAt = -1;

  constructor(readonly limits: RegistryLimits) {
    this.index = new AdapterIndex(limits.slots, limits.evictionPolicy, limits.maxLoaded !== null, limits.slotRank ?? limits.maxLoraRank);
    this.catalog = new AdapterCatalog(limits.maxLoaded);
    this.actors = new AdapterActors(this.index, (name) => this.catalog.isLoaded(name));
  }

  /**
   * An explicit load (or --lora-paths). A name in the loaded set is refused, as SGLang refuses
   * it; one evicted from it comes back as it is when the path and pin are the same, and is
   * replaced otherwise. Loading past --max-loaded-loras evicts the least recently used
   * unpinned adapter from the loaded set (see AdapterCatalog).
   */
  add(spec: AdapterSpec): void {
    const { name } = spec;
    const label = this.actors.label(name);
    if (label !== null) {
      const removing = this.actors.removing(name);
      if (this.catalog.isLoaded(name) && !removing) {
        throw new TroupeError('conflict', `Failed to load LoRA adapter '${name}' because it is already loaded (state ${label}); unload it first`);
      }
      if (label !== 'failed' && this.sameAs(name, spec)) {
        if (removing) this.actors.revive(name, 'loaded again while its unload waits; it stays');
        this.use(name);
        this.readIfRoom(name);
        return;
      }
      // Refused before the old adapter leaves, so a refused load changes nothing.
      this.assertCanPin(spec, this.actors.snapshot(name)!.context.pinned ? 1 : 0);
      this.replace(spec, label);
    }
    this.register(spec, spec.pinned ? 'added, pinned' : 'added');
    this.catalog.remember(spec);
    this.use(name);
  }

  /**
   * Readies `name` for a new request, or says why it must be refused. As in SGLang, a name that
   * was once loaded stays servable: one evicted from the loaded set, or unloaded, is loaded again
   * from the path it was loaded with (a request naming an adapter whose unload still waits for
   * its requests keeps it instead), and it becomes the most recently used.
   */
  admit(name: string): TroupeError | null {
    // The common case, a request for an adapter that serves: one lookup, and no need to ask the catalog.
    const pinned = this.actors.servingPinned(name);
    if (pinned !== null) {
      this.catalog.use(name, pinned);
      return null;
    }
    const label = this.actors.label(name);
    const remembered = this.catalog.remembered(name);
    if (label === 'failed') {
      // A load that never succeeded is refused with its reason until it is loaded again; a
      // reload from the remembered path is tried again, as SGLang tries every request.
      const refused = badRequest(`LoRA adapter '${name}' failed to load: ${this.error(name)}`);
      if (remembered === null || this.actors.snapshot(name)!.context.users > 0) return refused;
      void this.unregister(name, 'a request names it again; its load is tried again');
      // It waits for the loader to report the rest of its failed load.
      if (this.actors.has(name)) return refused;
    } else if (label !== null) {
      if (this.actors.removing(name)) {
        if (remembered === null || !this.sameAs(name, remembered)) return badRequest(`adapter "${name}" is being unloaded`);
        this.actors.revive(name, 'a request names it while its unload waits; it stays');
      }
      this.use(name);
      return null;
    }
    if (remembered === null) {
      const loaded = this.catalog.loadedNames();
      return badRequest(
        `Got LoRA adapter that has never been loaded: '${name}' (loaded adapters: ${loaded.length > 0 ? loaded.join(', ') : 'none'}); ` +
          'load it with /load_lora_adapter or --lora-paths first',
      );
    }
    try {
      this.register(remembered, `loaded again from ${remembered.path}: a request names it`);
    } catch (err) {
      return badRequest(`Failed to implicitly load LoRA adapter '${name}': ${err instanceof Error ? err.message : String(err)}`);
    }
    this.use(name);
    return null;
  }

  /**
   * An explicit unload: it leaves the loaded set at once and new requests for it load it again
   * (see admit); resolves once its users are gone and its copies are released. An adapter
   * evicted from the loaded set is not loaded, so it cannot be unloaded, as in SGLang.
   */
  remove(name: string): Promise<void> {
    const label = this.actors.label(name);
    const leaving = label !== null && (label === 'failed' || this.actors.removing(name) || this.catalog.isLoaded(name));
    if (!leaving) {
      const evicted = label !== null || this.catalog.remembered(name) !== null;
      const why = evicted ? ': it left the loaded set, and a request naming it loads it again' : '';
      return Promise.reject(notFound(`LoRA adapter '${name}' is not loaded${why}`));
    }
    this.catalog.unloaded(name);
    return this.unregister(name, 'unload requested');
  }

  /** Starts its machine; refused past the pin limit. */
  private register(spec: AdapterSpec, reason: string): void {
    this.assertCanPin(spec, 0);
    this.actors.start({ ...spec, maxRank: this.limits.maxLoraRank, poolModules: this.limits.loraModules }, reason);
    this.readIfRoom(spec.name);
  }

  /** SGLang keeps one slot of every batch for unpinned adapters and the base model; `leaving` pins are about to go. */
  private assertCanPin(spec: AdapterSpec, leaving: number): void {
    const pinned = this.index.pinned.size - leaving;
    if (spec.pinned && pinned >= this.limits.maxPinned) {
      throw badRequest(
        `Failed to load LoRA adapter '${spec.name}' as a pinned adapter. It is not allowed to pin all slots in the LoRA memory pool ` +
          `to avoid starvation for unpinned adapters and base models: ${pinned} adapters are pinned and at most ${this.limits.maxPinned} may be ` +
          '(max_loras_per_batch - 1); increase --max-loras-per-batch or load it unpinned',
      );
    }
  }

  /** Reads a loaded adapter that is on disk while the CPU budget allows, so a bad adapter fails at load time. */
  private readIfRoom(name: string): void {
    if (this.residency(name) !== 'registered') return;
    const max = this.limits.maxLoaded;
    if (this.actors.snapshot(name)!.context.pinned || max === null || this.index.cpuCount < max) {
      this.send(name, { type: 'LOAD' }, 'read at registration');
    }
  }

  /** An explicit load names an adapter evicted from the loaded set with another path or pin: the old one leaves first. */
  private replace(spec: AdapterSpec, label: string): void {
    const old = this.actors.snapshot(spec.name)!.context;
    if (!this.actors.removing(spec.name)) void this.unregister(spec.name, `replaced by ${spec.path}`).catch(() => {});
    if (this.actors.has(spec.name)) {
      const users = this.actors.snapshot(spec.name)!.context.users;
      throw badRequest(
        `Failed to load LoRA adapter '${spec.name}' from ${spec.path}: the adapter of that name from ${old.path} (state ${label}) is ` +
          `still unloading${users > 0 ? `, waiting for ${users} request(s)` : ''}; load it again once that is done`,
      );
    }
  }

  /** Asks its machine to leave; resolves once it has. */
  private unregister(name: string, reason: string): Promise<void> {
    const { promise, first } = this.actors.removal(name);
    if (first) {
      const users = this.actors.snapshot(name)!.context.users;
      this.send(name, { type: 'UNLOAD' }, users > 0 ? `${reason}; waiting for ${users} request(s)` : reason);
    }
    return promise;
  }

  /**
   * It is used: the most recently used of the loaded set. Those this evicts from the set keep
   * their machines, CPU copies and slots (the cache), which the CPU budget and the pool reclaim.
   */
  private use(name: string): void {
    this.catalog.use(name, this.actors.pinned(name)!);
  }

  /** Whether its machine runs the adapter `spec` describes. */
  private sameAs(name: string, spec: { path: string; pinned: boolean }): boolean {
    const ctx = this.actors.snapshot(name)!.context;
    return ctx.path === spec.path && ctx.pinned === spec.pinned;
  }

  error(name: string): string | null {
    return this.actors.snapshot(name)?.context.error ?? null;
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

  /** Lets one machine hear the requests that named, started or ended with it since it last heard (AdapterActors.settleOne). */
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

// The scheduler's view of its adapters. The machines own each adapter's state (slot, users,
// CPU copy, pending removal) and emit the loader commands; the registry turns scheduler and
// loader happenings into machine events, and asks placement which adapter goes where, using
// the index kept current from the machines' transitions.
import type { AdapterStatus } from '../api.js';
import type { LoraModule } from '../engine/types.js';
import { TroupeError, badRequest, notFound } from '../errors.js';
import type { AdapterEvent } from '../../statecharts/adapter.machine.js';
import { AdapterActors } from './adapter-actors.js';
import { AdapterIndex } from './adapter-index.js';
import type { AdapterCounters, AdapterDetail, AdapterTransition } from './adapter-view.js';
import type { LoaderCommand, LoaderEvent } from './loader.js';
import { place, type PlacementHost } from './placement.js';

export type { AdapterCounters, AdapterDetail, AdapterTransition } from './adapter-view.js';

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

export class AdapterRegistry implements PlacementHost {
  readonly index: AdapterIndex;
  private readonly actors: AdapterActors;

  constructor(readonly limits: RegistryLimits) {
    this.index = new AdapterIndex(limits.slots, limits.evictionPolicy);
    this.actors = new AdapterActors(this.index);
  }

  add(spec: { name: string; path: string; pinned: boolean }): void {
    const existing = this.actors.label(spec.name);
    if (existing !== null) throw new TroupeError('conflict', `LoRA adapter '${spec.name}' is already loaded (state ${existing}); unload it first`);
    const pinned = this.index.pinned.size;
    if (spec.pinned && pinned >= this.limits.maxPinned) {
      throw badRequest(
        `cannot pin adapter "${spec.name}": ${pinned} adapters are pinned and at most ${this.limits.maxPinned} may be ` +
          `(max_loras_per_batch - 1, one slot is kept for unpinned adapters and the base model)`,
      );
    }
    this.actors.start({ ...spec, maxRank: this.limits.maxLoraRank, poolModules: this.limits.loraModules });
    // Read eagerly while the CPU budget allows, so a bad adapter fails at load time.
    const max = this.limits.maxLoaded;
    if (spec.pinned || max === null || this.index.cpuCount < max) this.send(spec.name, { type: 'LOAD' }, 'read at registration');
  }

  /** Refuses new requests at once; resolves once its users are gone and its copies are released. */
  remove(name: string): Promise<void> {
    if (!this.actors.has(name)) return Promise.reject(notFound(`LoRA adapter '${name}' is not loaded`));
    const { promise, first } = this.actors.removal(name);
    if (first) {
      const users = this.actors.snapshot(name)!.context.users;
      this.send(name, { type: 'UNLOAD' }, users > 0 ? `unload requested; waiting for ${users} request(s)` : 'unload requested');
    }
    return promise;
  }

  /** Why a request for `name` must be refused, or null. */
  refusal(name: string): TroupeError | null {
    const label = this.actors.label(name);
    if (label === null) return badRequest(`LoRA adapter '${name}' is not loaded`);
    if (label === 'failed') return badRequest(`LoRA adapter '${name}' failed to load: ${this.error(name)}`);
    if (this.actors.removing(name)) return badRequest(`adapter "${name}" is being unloaded`);
    return null;
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
      this.send(ev.name, { type: 'SLOT_READY', slot: ev.slot }, `copied into slot ${ev.slot}`);
    } else {
      this.send(ev.name, { type: 'LOAD_FAILED', error: ev.error }, `load failed: ${ev.error}`);
    }
    // One that failed with nobody waiting and an unload pending is gone already.
    return before !== 'failed' && this.actors.label(ev.name) === 'failed' ? ev.name : null;
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
      const reason = this.residency(name) === 'cpuLoaded'
        ? 'the loader restarted and its CPU copy is gone; read from disk again when needed'
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

  /** The pool slot of a GPU-resident adapter, or null while it is not (yet) usable. */
  residentSlot(name: string): number | null {
    const placed = this.actors.placement(name);
    return placed?.residency?.startsWith('gpuResident') ? placed.slot : null;
  }

  /** Whether a copy that a waiting request needs is in flight. */
  wantedCopyInFlight(): boolean {
    return this.index.wantedInResidency('h2dInFlight') > 0;
  }

  // ---- requests: the scheduler reports each one's moves; `arrival` (Sequence.arrival) orders demand ----

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
    return this.actors.placement(name)?.residency ?? null;
  }

  slot(name: string): number | null {
    return this.actors.placement(name)?.slot ?? null;
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

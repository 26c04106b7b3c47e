// Every registered adapter: its statechart actor, who uses it, which pool slot it holds and
// whether its CPU copy exists. It turns "these adapters are wanted, oldest first" into loader
// commands, within the pool's slots and the CPU budget (maxLoadedLoras).
import { createActor, type Actor } from 'xstate';
import type { AdapterStatus } from '../api.js';
import type { LoraModule } from '../engine/types.js';
import { TroupeError, badRequest } from '../errors.js';
import { adapterMachine, adapterStateLabel, residencyOf, type AdapterEvent } from '../../statecharts/adapter.machine.js';
import type { LoaderCommand, LoaderEvent } from './loader.js';

/** One published state change of an adapter; `time` is epoch milliseconds (sub-millisecond precision). */
export interface AdapterTransition {
  adapter: string;
  from: string;
  to: string;
  reason: string;
  time: number;
}

/** An adapter's status plus what a live view of the pool shows. */
export interface AdapterDetail extends AdapterStatus {
  /** Waiting and running requests that name it. */
  refcount: number;
  running: number;
  /** Size of its weights (float32) while held in CPU memory, and while copied into or held by a slot. */
  cpuBytes: number;
  gpuBytes: number;
  lastTransition: AdapterTransition | null;
}

const now = (): number => performance.timeOrigin + performance.now();

interface AdapterRecord {
  name: string;
  path: string;
  pinned: boolean;
  actor: Actor<typeof adapterMachine>;
  label: string;
  /** Waiting and running requests that use it. */
  users: number;
  running: number;
  /** Logical clock of the last step (or submit) that used it: LRU order. */
  lastUsed: number;
  /** Logical clock of its last slot assignment: FIFO order. */
  slotSince: number;
  removal: { promise: Promise<void>; resolve: () => void } | null;
  /** Float32 size of its weights, known once read from disk. */
  bytes: number;
  last: AdapterTransition | null;
}

const HOLDS_CPU = new Set(['loading', 'cpuLoaded', 'h2dInFlight', 'gpuResident.unpinned', 'gpuResident.pinned']);

export interface RegistryLimits {
  slots: number;
  maxLoaded: number | null;
  evictionPolicy: 'lru' | 'fifo';
  maxLoraRank: number;
  loraModules: readonly LoraModule[];
}

export class AdapterRegistry {
  private readonly records = new Map<string, AdapterRecord>();
  private readonly slots: Array<string | null>;
  private commands: LoaderCommand[] = [];
  private readonly listeners = new Set<(t: AdapterTransition) => void>();
  private clock = 0;
  /** Why the event being sent to an actor is sent; published with the transition it causes. */
  private reason: string | null = null;

  constructor(private readonly limits: RegistryLimits) {
    this.slots = new Array<string | null>(limits.slots).fill(null);
  }

  tick(): number {
    return ++this.clock;
  }

  add(spec: { name: string; path: string; pinned: boolean }): void {
    if (this.records.has(spec.name)) {
      const state = this.records.get(spec.name)!.label;
      throw badRequest(`adapter "${spec.name}" is already loaded (state ${state}); unload it first`);
    }
    if (spec.pinned) {
      const pinned = [...this.records.values()].filter((r) => r.pinned).length;
      const max = this.limits.slots - 1;
      if (pinned >= max) {
        throw badRequest(
          `cannot pin adapter "${spec.name}": ${pinned} adapters are pinned and at most ${max} may be ` +
            `(max_loras_per_batch - 1, one slot is kept for unpinned adapters and the base model)`,
        );
      }
    }
    const actor = createActor(adapterMachine, {
      input: { ...spec, maxRank: this.limits.maxLoraRank, poolModules: this.limits.loraModules },
    });
    const rec: AdapterRecord = {
      ...spec,
      actor,
      label: adapterStateLabel(actor.getSnapshot()),
      users: 0,
      running: 0,
      lastUsed: this.tick(),
      slotSince: 0,
      removal: null,
      bytes: 0,
      last: null,
    };
    this.records.set(spec.name, rec);
    actor.subscribe((snap) => {
      const to = adapterStateLabel(snap);
      if (to === rec.label) return;
      const from = rec.label;
      rec.label = to;
      // A failure's reason is the machine's own error (a pool mismatch is found by its guard).
      const reason = to === 'failed' ? `failed: ${snap.context.error ?? 'unknown error'}` : (this.reason ?? 'state change');
      this.publish(rec, from, to, reason);
    });
    actor.start();
    this.publish(rec, 'none', 'registered', spec.pinned ? 'added, pinned' : 'added');
    // Load eagerly while the CPU budget allows, so a bad adapter fails at load time.
    if (spec.pinned || this.limits.maxLoaded === null || this.cpuCount() < this.limits.maxLoaded) {
      this.loadCpu(rec, 'read at registration');
    }
  }

  /** Refuses new requests at once; resolves once its users are gone and its copies are released. */
  remove(name: string): Promise<void> {
    const rec = this.records.get(name);
    if (!rec) return Promise.reject(badRequest(`adapter "${name}" is not loaded`));
    if (rec.removal) return rec.removal.promise;
    let resolve!: () => void;
    const promise = new Promise<void>((r) => (resolve = r));
    rec.removal = { promise, resolve };
    this.send(rec, { type: 'UNLOAD' }, rec.users > 0 ? `unload requested; waiting for ${rec.users} request(s)` : 'unload requested');
    this.drain();
    return promise;
  }

  /** Why a request for `name` must be refused, or null. */
  refusal(name: string): TroupeError | null {
    const rec = this.records.get(name);
    if (!rec) return badRequest(`adapter "${name}" is not loaded`);
    if (rec.label === 'failed') return badRequest(`adapter "${name}" failed to load: ${this.error(name)}`);
    if (rec.removal) return badRequest(`adapter "${name}" is being unloaded`);
    return null;
  }

  error(name: string): string | null {
    return this.records.get(name)?.actor.getSnapshot().context.error ?? null;
  }

  /** Applies a loader event; returns the name of an adapter that just failed, if any. */
  onLoaderEvent(ev: LoaderEvent): string | null {
    const rec = this.records.get(ev.name);
    if (!rec) return null;
    const before = residencyOf(rec.actor.getSnapshot());
    if (before === null) return null;
    if (ev.kind === 'cpu-loaded') {
      rec.bytes = ev.bytes ?? 0;
      this.send(rec, { type: 'CPU_LOADED', rank: ev.rank, targetModules: ev.targetModules }, `read from disk (rank ${ev.rank})`);
    } else if (ev.kind === 'slot-ready') {
      if (rec.actor.getSnapshot().context.slot !== ev.slot) return null;
      this.send(rec, { type: 'SLOT_READY' }, `copied into slot ${ev.slot}`);
      rec.slotSince = this.tick();
    } else {
      const slot = rec.actor.getSnapshot().context.slot;
      this.send(rec, { type: 'LOAD_FAILED', error: ev.error }, `load failed: ${ev.error}`);
      if (rec.label === 'failed' && before === 'h2dInFlight' && slot !== null) {
        this.slots[slot] = null;
        this.commands.push({ kind: 'clear-slot', slot });
      }
    }
    if (rec.label !== 'failed') return null;
    // The CPU copy exists when the failure came after the read (pool mismatch, or the copy failed).
    if (before === 'h2dInFlight' || (before === 'loading' && ev.kind === 'cpu-loaded')) {
      this.commands.push({ kind: 'drop-cpu', name: rec.name });
    }
    if (rec.removal) this.finishRemoval(rec);
    return rec.name;
  }

  /**
   * The loader thread was replaced: the CPU copies it held are gone, and commands sent to it
   * may have been lost. Slots keep their weights (they live in the engines). The chart has no
   * way back from 'loading' or 'h2dInFlight', so those reads and copies are simply issued again;
   * a resident adapter is read again too, because after an eviction its next copy into a slot
   * comes from its CPU copy.
   */
  loaderRestarted(): void {
    for (const rec of this.records.values()) {
      const res = residencyOf(rec.actor.getSnapshot());
      const read: LoaderCommand = { kind: 'load-cpu', name: rec.name, path: rec.path };
      if (res === 'cpuLoaded') {
        this.send(rec, { type: 'DROP_CPU' }, 'the loader restarted and its CPU copy is gone; read from disk again when needed');
      } else if (res === 'loading' || res?.startsWith('gpuResident')) {
        this.commands.push(read);
      } else if (res === 'h2dInFlight') {
        this.commands.push(read, { kind: 'copy-to-slot', name: rec.name, slot: rec.actor.getSnapshot().context.slot! });
      }
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

  details(): AdapterDetail[] {
    return this.list().map((s) => {
      const rec = this.records.get(s.name)!;
      const res = residencyOf(rec.actor.getSnapshot()) ?? '';
      const inSlot = res === 'h2dInFlight' || res.startsWith('gpuResident');
      return {
        ...s,
        refcount: rec.users,
        running: rec.running,
        cpuBytes: HOLDS_CPU.has(res) && res !== 'loading' ? rec.bytes : 0,
        gpuBytes: inSlot ? rec.bytes : 0,
        lastTransition: rec.last,
      };
    });
  }

  list(): AdapterStatus[] {
    return [...this.records.values()].map((r) => {
      const ctx = r.actor.getSnapshot().context;
      return {
        name: r.name,
        path: r.path,
        pinned: r.pinned,
        state: r.label,
        rank: ctx.rank,
        targetModules: [...ctx.targetModules],
        slot: ctx.slot,
        error: ctx.error,
      };
    });
  }

  /** The pool slot of a GPU-resident adapter, or null while it is not (yet) usable. */
  residentSlot(name: string): number | null {
    const rec = this.records.get(name);
    if (!rec) return null;
    const res = residencyOf(rec.actor.getSnapshot());
    return res !== null && res.startsWith('gpuResident') ? rec.actor.getSnapshot().context.slot : null;
  }

  copyInFlight(name: string): boolean {
    const rec = this.records.get(name);
    return rec !== undefined && residencyOf(rec.actor.getSnapshot()) === 'h2dInFlight';
  }

  use(name: string, delta: { users?: number; running?: number }): void {
    const rec = this.records.get(name);
    if (!rec) return;
    rec.users += delta.users ?? 0;
    rec.running += delta.running ?? 0;
    if ((delta.users ?? 0) > 0 || (delta.running ?? 0) > 0) rec.lastUsed = this.tick();
    if (rec.users === 0 && rec.removal) this.drain();
  }

  touch(name: string, clock: number): void {
    const rec = this.records.get(name);
    if (rec) rec.lastUsed = clock;
  }

  /**
   * Moves adapters toward GPU residency, oldest want first: pinned adapters, then the adapters
   * of waiting requests in arrival order. An adapter may only displace (from a slot or from CPU
   * memory) one that no running request uses and that nobody wants sooner.
   */
  pump(wanted: readonly string[]): void {
    this.drain();
    const pinned = [...this.records.values()].filter((r) => r.pinned).map((r) => r.name);
    const order = [...new Set([...pinned, ...wanted])];
    const rank = new Map(order.map((n, j) => [n, j]));
    for (let i = 0; i < order.length; i++) {
      const rec = this.records.get(order[i]!);
      if (!rec) continue;
      const res = residencyOf(rec.actor.getSnapshot());
      const displaceable = (r: AdapterRecord): boolean =>
        !r.pinned && r.running === 0 && (rank.get(r.name) ?? Infinity) > i && r !== rec;
      const why = rec.pinned ? 'pinned' : 'a waiting request needs it';
      if (res === 'registered') {
        if (this.makeCpuRoom(displaceable, rank, rec.name)) this.loadCpu(rec, `read from disk: ${why}`);
      } else if (res === 'cpuLoaded') {
        const slot = this.freeSlot(displaceable, rank, rec.name);
        if (slot !== null) {
          this.slots[slot] = rec.name;
          this.send(rec, { type: 'COPY', slot }, `copying into slot ${slot}: ${why}`);
          this.commands.push({ kind: 'copy-to-slot', name: rec.name, slot });
        }
      }
    }
  }

  private loadCpu(rec: AdapterRecord, reason: string): void {
    this.send(rec, { type: 'LOAD' }, reason);
    this.commands.push({ kind: 'load-cpu', name: rec.name, path: rec.path });
  }

  private cpuCount(): number {
    let n = 0;
    for (const r of this.records.values()) if (HOLDS_CPU.has(residencyOf(r.actor.getSnapshot()) ?? '')) n++;
    return n;
  }

  /** Picks the victim: unwanted ones by policy first, else the one wanted last. */
  private pickVictim(cands: AdapterRecord[], rank: Map<string, number>, byPolicy: boolean): AdapterRecord | null {
    const key = (r: AdapterRecord): number =>
      byPolicy && this.limits.evictionPolicy === 'fifo' ? r.slotSince : r.lastUsed;
    const unwanted = cands.filter((r) => !rank.has(r.name)).sort((a, b) => key(a) - key(b));
    if (unwanted[0]) return unwanted[0];
    const later = cands.sort((a, b) => rank.get(b.name)! - rank.get(a.name)!);
    return later[0] ?? null;
  }

  private makeCpuRoom(displaceable: (r: AdapterRecord) => boolean, rank: Map<string, number>, forName: string): boolean {
    const max = this.limits.maxLoaded;
    if (max === null || this.cpuCount() < max) return true;
    const cands = [...this.records.values()].filter((r) => {
      const res = residencyOf(r.actor.getSnapshot());
      return displaceable(r) && (res === 'cpuLoaded' || res === 'gpuResident.unpinned');
    });
    // CPU copies go least recently used first, whatever the slot policy.
    const victim = this.pickVictim(cands, rank, false);
    // Pinned copies alone filling the budget must not block every other adapter forever.
    if (!victim) return [...this.records.values()].every((r) => r.pinned || !HOLDS_CPU.has(residencyOf(r.actor.getSnapshot()) ?? ''));
    const why = `CPU memory holds at most ${max} adapters (--max-loaded-loras) and "${forName}" needs room; least recently used`;
    if (residencyOf(victim.actor.getSnapshot()) === 'gpuResident.unpinned') this.evict(victim, `evicted from its slot: ${why}`);
    this.send(victim, { type: 'DROP_CPU' }, `dropped from CPU memory: ${why}`);
    this.commands.push({ kind: 'drop-cpu', name: victim.name });
    return true;
  }

  private freeSlot(displaceable: (r: AdapterRecord) => boolean, rank: Map<string, number>, forName: string): number | null {
    const free = this.slots.indexOf(null);
    if (free >= 0) return free;
    const cands = [...this.records.values()].filter(
      (r) => displaceable(r) && residencyOf(r.actor.getSnapshot()) === 'gpuResident.unpinned',
    );
    const victim = this.pickVictim(cands, rank, true);
    if (!victim) return null;
    const policy = rank.has(victim.name) ? 'wanted last by the waiting requests' : this.limits.evictionPolicy;
    return this.evict(victim, `evicted from slot ${victim.actor.getSnapshot().context.slot} for "${forName}" (${policy})`);
  }

  private evict(rec: AdapterRecord, reason: string): number {
    const slot = rec.actor.getSnapshot().context.slot!;
    this.send(rec, { type: 'EVICT' }, reason);
    this.slots[slot] = null;
    return slot;
  }

  /** Completes removals whose adapter is no longer used and has no transfer in flight. */
  private drain(): void {
    for (const rec of [...this.records.values()]) {
      if (!rec.removal || rec.users > 0) continue;
      const res = residencyOf(rec.actor.getSnapshot());
      if (res === 'loading' || res === 'h2dInFlight') continue;
      const slot = rec.actor.getSnapshot().context.slot;
      if (slot !== null) {
        this.slots[slot] = null;
        this.commands.push({ kind: 'clear-slot', slot });
      }
      if (HOLDS_CPU.has(res ?? '')) this.commands.push({ kind: 'drop-cpu', name: rec.name });
      this.finishRemoval(rec);
    }
  }

  private finishRemoval(rec: AdapterRecord): void {
    if (rec.actor.getSnapshot().status !== 'done') {
      this.send(rec, rec.label === 'failed' ? { type: 'UNLOAD' } : { type: 'DRAINED' }, 'no request uses it any more; freed');
    }
    rec.actor.stop();
    this.records.delete(rec.name);
    rec.removal?.resolve();
  }

  private send(rec: AdapterRecord, event: AdapterEvent, reason: string): void {
    this.reason = reason;
    try {
      rec.actor.send(event);
    } finally {
      this.reason = null;
    }
  }

  private publish(rec: AdapterRecord, from: string, to: string, reason: string): void {
    const t: AdapterTransition = { adapter: rec.name, from, to, reason, time: now() };
    rec.last = t;
    for (const l of this.listeners) l(t);
  }
}

// Views over the adapters by residency, kept current from their machines' transitions: who
// holds which slots (an adapter holds a run of them: lora-slots.ts), which are pinned, how many
// CPU copies exist, the eviction orders, and how many wanted adapters sit in each residency.
// Every question placement asks is answered from here in time that depends on slots and wanted
// adapters, never on how many are registered.
import { loraSlotSpan } from '../engine/lora-slots.js';
import { Demand } from './demand.js';
import { Recency } from './recency.js';

/** What the index files an adapter under: its residency leaf (null once failed or gone) and slot. */
export interface Placement {
  residency: string | null;
  slot: number | null;
  /** The slots it holds from `slot` on (1 while it holds none). */
  span: number;
}

const HOLDS_CPU = new Set(['loading', 'cpuLoaded', 'h2dInFlight', 'gpuResident.unpinned', 'gpuResident.pinned', 'moving']);
/** Residencies whose CPU copy may be dropped for another adapter (pinned ones never are). */
const DROPPABLE = new Set(['cpuLoaded', 'gpuResident.unpinned']);
/**
 * The residencies whose adapters inResidency lists: each holds at most the slots, or the reads
 * in flight. 'registered' and 'cpuLoaded' hold as many as are registered and nothing lists
 * them; a set of thousands that every swap adds to and takes from would rebuild its table now
 * and then, inside a step.
 */
const LISTED = new Set(['loading', 'h2dInFlight', 'gpuResident.unpinned', 'gpuResident.pinned', 'moving']);
export type ListedResidency = 'loading' | 'h2dInFlight' | 'gpuResident.unpinned' | 'gpuResident.pinned' | 'moving';
/**
 * Residencies that keep an adapter's place in slotOrder: a move between slots is not a new load,
 * so neither fifo's order nor lru's changes with it (a moving adapter is never evicted: its
 * machine refuses EVICT).
 */
const KEEPS_SLOT_ORDER = new Set(['gpuResident.unpinned', 'moving']);

export class AdapterIndex {
  private readonly byResidency = new Map<string, Set<string>>();
  /** Per slot, the adapter holding it: an adapter's name in each slot of its span. */
  private readonly owners: Array<string | null>;
  private freeSlots: number;
  /** Pinned adapters until they are gone (failed ones included: they still count against the pin limit). */
  readonly pinned = new Set<string>();
  private cpuCopies = 0;
  private pinnedCpuCopies = 0;
  /** Unpinned GPU residents, first to evict first: least recently used (lru) or longest in its slot (fifo). */
  readonly slotOrder = new Recency();
  /**
   * Droppable CPU copies, least recently used first, whatever the slot policy; kept only where a
   * CPU budget (--max-loaded-loras) reads it, since it holds as many as are registered.
   */
  readonly cpuOrder = new Recency();
  readonly demand = new Demand();
  private readonly wantedIn = new Map<string | null, number>();
  private changes = 0;
  private moves = 0;

  constructor(
    slots: number,
    private readonly policy: 'lru' | 'fifo',
    /** Whether a CPU budget picks which copy to drop from cpuOrder. */
    private readonly keepsCpuOrder = true,
    /** Ranks a pool slot (lora-slots.ts); 0: every adapter takes one slot. */
    private readonly slotRank = 0,
  ) {
    this.owners = new Array<string | null>(slots).fill(null);
    this.freeSlots = slots;
  }

  get slotCount(): number {
    return this.owners.length;
  }

  get slotsUsed(): number {
    return this.owners.length - this.freeSlots;
  }

  /** Adapters holding (or reading) a CPU copy: what --max-loaded-loras counts. */
  get cpuCount(): number {
    return this.cpuCopies;
  }

  /** Whether every CPU copy belongs to a pinned adapter, which may then exceed the budget. */
  get onlyPinnedCopies(): boolean {
    return this.cpuCopies === this.pinnedCpuCopies;
  }

  /**
   * Changes whenever what placement reads may have: a machine's transition (noted by its host),
   * an adapter added or gone, demand's order. Not with touch: the eviction orders only rank the
   * adapters that may go, never make one go that could not.
   */
  get version(): number {
    return this.changes + this.demand.version;
  }

  /** Changes whenever an adapter is filed elsewhere (or added, or gone): what its residency and slot say. */
  get placementVersion(): number {
    return this.moves;
  }

  /** A machine took an event: its residency, counts or guards may have changed. */
  transitioned(): void {
    this.changes++;
  }

  inResidency(residency: ListedResidency): ReadonlySet<string> {
    return this.byResidency.get(residency) ?? new Set();
  }

  /** How many adapters that waiting requests want are in this residency. */
  wantedInResidency(residency: string): number {
    return this.wantedIn.get(residency) ?? 0;
  }

  /** The lowest run of `span` free slots that starts at a multiple of `span`, or null. */
  lowestFreeSlot(span = 1): number | null {
    if (this.freeSlots < span) return null;
    if (span === 1) {
      const i = this.owners.indexOf(null);
      return i >= 0 ? i : null;
    }
    for (let at = 0; at + span <= this.owners.length; at += span) {
      if (this.runFree(at, span)) return at;
    }
    return null;
  }

  /** Whether no adapter holds any of the slots [at, at + span). */
  runFree(at: number, span: number): boolean {
    for (let s = at; s < at + span; s++) if (this.owners[s] !== null) return false;
    return true;
  }

  /** The adapter filed in `slot` (in any slot of its span), or null. */
  owner(slot: number): string | null {
    return this.owners[slot] ?? null;
  }

  /** The slots an adapter of `rank` takes (1 while its rank is unknown). */
  spanFor(rank: number | null): number {
    return loraSlotSpan(rank, this.slotRank);
  }

  /** The slots from `slot` on that its holder holds (0 for a free slot). */
  runLength(slot: number): number {
    const owner = this.owners[slot] ?? null;
    let n = 0;
    while (owner !== null && this.owners[slot + n] === owner) n++;
    return n;
  }

  /** The distinct adapters holding slots in [at, at + span), lowest first. */
  runOwners(at: number, span: number): string[] {
    const names: string[] = [];
    for (let s = at; s < at + span; s++) {
      const owner = this.owners[s] ?? null;
      if (owner !== null && names[names.length - 1] !== owner) names.push(owner);
    }
    return names;
  }

  /**
   * Two runs of `span` slots exchange owners before their machines hear of it (MOVE and
   * GIVE_SLOT): each machine's transition then finds its new slots already its own, where filing
   * one adapter into slots the other still held would be refused.
   */
  exchangeSlots(a: number, b: number, span = 1): void {
    for (let i = 0; i < span; i++) {
      const owner = this.owners[a + i] ?? null;
      this.owners[a + i] = this.owners[b + i] ?? null;
      this.owners[b + i] = owner;
    }
  }

  add(name: string, pinned: boolean, at: Placement): void {
    this.changes++;
    this.moves++;
    if (pinned) this.pinned.add(name);
    this.file(name, pinned, at);
  }

  move(name: string, pinned: boolean, from: Placement, to: Placement): void {
    if (from.residency === to.residency && from.slot === to.slot) return;
    this.moves++;
    if (this.demand.has(name)) this.countWanted(from.residency, -1).countWanted(to.residency, 1);
    this.unfile(name, pinned, from, to);
    this.file(name, pinned, to, from);
  }

  remove(name: string, pinned: boolean, last: Placement): void {
    this.changes++;
    this.moves++;
    this.unfile(name, pinned, last, { residency: null, slot: null, span: 1 });
    this.pinned.delete(name);
  }

  /** The request that arrived `arrival`-th waits for the adapter (now in `residency`). */
  want(name: string, arrival: number, residency: string | null): void {
    if (this.demand.add(name, arrival)) this.countWanted(residency, 1);
  }

  unwant(name: string, arrival: number, residency: string | null): void {
    if (this.demand.remove(name, arrival)) this.countWanted(residency, -1);
  }

  /** Requests that arrived `arrivals` (ascending) stopped waiting for the adapter together. */
  unwantAll(name: string, arrivals: readonly number[], residency: string | null): void {
    if (this.demand.removeAll(name, arrivals)) this.countWanted(residency, -1);
  }

  /** A step or a new request used it: it moves to the back of the LRU orders. */
  touch(name: string): void {
    if (this.keepsCpuOrder) this.cpuOrder.use(name);
    if (this.policy === 'lru') this.slotOrder.use(name);
  }

  private countWanted(residency: string | null, delta: number): this {
    this.wantedIn.set(residency, (this.wantedIn.get(residency) ?? 0) + delta);
    return this;
  }

  private file(name: string, pinned: boolean, at: Placement, from?: Placement): void {
    if (at.residency !== null) {
      if (LISTED.has(at.residency)) {
        let set = this.byResidency.get(at.residency);
        if (!set) this.byResidency.set(at.residency, (set = new Set()));
        set.add(name);
      }
      const wasHolding = from !== undefined && from.residency !== null && HOLDS_CPU.has(from.residency);
      if (HOLDS_CPU.has(at.residency) && !wasHolding) {
        this.cpuCopies++;
        if (pinned) this.pinnedCpuCopies++;
      }
      // Entering keeps an existing place in the LRU order (a slot given up keeps its copy's age).
      if (this.keepsCpuOrder && !pinned && DROPPABLE.has(at.residency)) this.cpuOrder.add(name, true);
      if (at.residency === 'gpuResident.unpinned') this.slotOrder.add(name, true);
    }
    if (at.slot !== null && this.owners[at.slot] !== name) {
      for (let s = at.slot; s < at.slot + at.span; s++) {
        const holder = this.owners[s];
        if (holder === undefined) throw new Error(`internal error: slot ${s} of "${name}" is outside the pool's ${this.owners.length}`);
        if (holder !== null) throw new Error(`internal error: slot ${s} is given to "${name}" but held by "${holder}"`);
      }
      this.owners.fill(name, at.slot, at.slot + at.span);
      this.freeSlots -= at.span;
    }
  }

  private unfile(name: string, pinned: boolean, from: Placement, to: Placement): void {
    if (from.residency !== null && from.residency !== to.residency) {
      this.byResidency.get(from.residency)?.delete(name);
      if (HOLDS_CPU.has(from.residency) && !(to.residency !== null && HOLDS_CPU.has(to.residency))) {
        this.cpuCopies--;
        if (pinned) this.pinnedCpuCopies--;
      }
      if (this.keepsCpuOrder && !(to.residency !== null && DROPPABLE.has(to.residency))) this.cpuOrder.delete(name);
      if (KEEPS_SLOT_ORDER.has(from.residency) && !(to.residency !== null && KEEPS_SLOT_ORDER.has(to.residency))) this.slotOrder.delete(name);
    }
    if (from.slot !== null && from.slot !== to.slot && this.owners[from.slot] === name) {
      for (let s = from.slot; s < from.slot + from.span; s++) {
        if (this.owners[s] !== name) continue;
        this.owners[s] = null;
        this.freeSlots++;
      }
    }
  }
}

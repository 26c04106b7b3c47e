// Moves wanted adapters toward GPU residency, soonest wanted first: pinned adapters, then the
// adapters of waiting requests in the order their demand began. An adapter is read from disk
// as soon as it is wanted and CPU memory has room, and copied into a slot as soon as one is
// free (or can be freed): that is the prefetch, since a request's adapter starts loading when
// the request arrives, wherever it waits in the queue.
//
// The walk stops as soon as nothing further can change: once no slot can be had and no read
// is possible (or none is needed), later adapters cannot fare better, because every adapter
// they could displace could have been displaced by the earlier ones too.
//
// Then one resident adapter that a waiting request wants may move to a lower slot (compact).
import type { AdapterEvent } from '../../statecharts/adapter.machine.js';
import type { AdapterIndex } from './adapter-index.js';
import { pickRun, pickVictim } from './victim-policy.js';

export interface PlacementLimits {
  maxLoaded: number | null;
  evictionPolicy: 'lru' | 'fifo';
  /** Whether wanted adapters move to lower slots (compact); default true. */
  compactSlots?: boolean;
}

/** What placement needs from the registry: the indexes, and the adapters' machines. */
export interface PlacementHost {
  readonly index: AdapterIndex;
  readonly limits: PlacementLimits;
  residency(name: string): string | null;
  slot(name: string): number | null;
  /** Its rank, once read (the slots it takes follow from it: AdapterIndex.spanFor). */
  rank(name: string): number | null;
  /** Whether a running request uses it: such an adapter never goes, so its machine need not be asked. */
  inUse(name: string): boolean;
  can(name: string, event: AdapterEvent): boolean;
  send(name: string, event: AdapterEvent, reason: string): void;
}

export function place(host: PlacementHost): void {
  fill(host);
  if (host.limits.compactSlots !== false) compact(host);
}

function fill(host: PlacementHost): void {
  const { index } = host;
  let slotsOpen = true;
  let cpuOpen = true;
  // Work left among wanted adapters, counted when the walk begins: a displacement during the
  // walk only ever moves an adapter wanted later back, which the next walk picks up.
  let reads = index.wantedInResidency('registered');
  let copies = index.wantedInResidency('cpuLoaded');

  const visit = (name: string, forSeq: number, why: string): void => {
    const residency = host.residency(name);
    if (residency === 'registered' && cpuOpen) {
      if (makeCpuRoom(host, name, forSeq)) host.send(name, { type: 'LOAD' }, `read from disk: ${why}`);
      else cpuOpen = false;
    } else if (residency === 'cpuLoaded' && slotsOpen) {
      const slot = takeSlot(host, name, forSeq);
      if (slot === null) slotsOpen = false;
      else host.send(name, { type: 'COPY', slot }, `copying into slot ${slot}: ${why}`);
    }
  };

  for (const name of index.pinned) visit(name, -Infinity, 'pinned');
  for (const name of index.demand.names()) {
    if ((!slotsOpen || copies === 0) && (!cpuOpen || reads === 0)) return;
    const residency = host.residency(name);
    if (residency === 'registered') reads--;
    else if (residency === 'cpuLoaded') copies--;
    else continue;
    // Pinned adapters had their turn above.
    if (!index.pinned.has(name)) visit(name, index.demand.seq(name)!, 'a waiting request needs it');
  }
}

/** Makes room for one more CPU copy within --max-loaded-loras; false when none can be made. */
function makeCpuRoom(host: PlacementHost, forName: string, forSeq: number): boolean {
  const { index } = host;
  const max = host.limits.maxLoaded;
  if (max === null || index.cpuCount < max) return true;
  const busy = (name: string): boolean => host.residency(name) !== 'cpuLoaded' && host.inUse(name);
  const canGo = (name: string): boolean => host.can(name, host.residency(name) === 'cpuLoaded' ? { type: 'DROP_CPU' } : { type: 'EVICT' });
  const victim = pickVictim(index.cpuOrder, index, forSeq, busy, canGo, 'least recently used');
  // Pinned copies alone filling the budget must not block every other adapter forever.
  if (!victim) return index.onlyPinnedCopies;
  const why = `CPU memory holds at most ${max} adapters (--max-loaded-loras) and "${forName}" needs room; ${victim.why}`;
  if (host.residency(victim.name) === 'gpuResident.unpinned') {
    host.send(victim.name, { type: 'EVICT' }, `evicted from its slot: ${why}`);
  }
  // An adapter whose copy could not be read again after a loader restart leaves its slot for disk.
  if (host.residency(victim.name) === 'cpuLoaded') host.send(victim.name, { type: 'DROP_CPU' }, `dropped from CPU memory: ${why}`);
  return true;
}

/**
 * The first of a free run of the slots `forName` takes, or of one that adapters give up for it;
 * null when none may. With compaction, an adapter that nothing runs on or waits for, in a run that
 * batches cover with fewer slots, moves up into that run and leaves its own to `forName` (the copy
 * waits for the move, which takes a fraction of the copy's time).
 */
function takeSlot(host: PlacementHost, forName: string, forSeq: number): number | null {
  const span = host.index.spanFor(host.rank(forName));
  const slot = freeOrGivenSlot(host, forName, forSeq, span);
  if (slot === null || host.limits.compactSlots === false) return slot;
  const lower = lowerPlace(host, slot, span, { type: 'MOVE', slot, partner: null });
  if (lower === null) return slot;
  const owner = host.index.owner(lower);
  if (owner === null) return lower;
  host.index.exchangeSlots(lower, slot, span);
  host.send(
    owner,
    { type: 'MOVE', slot, partner: null },
    `moving from slot ${lower} to slot ${slot}, which "${forName}" would have taken: nothing runs on it or waits for it`,
  );
  return lower;
}

function freeOrGivenSlot(host: PlacementHost, forName: string, forSeq: number, span: number): number | null {
  const { index } = host;
  const free = index.lowestFreeSlot(span);
  if (free !== null) return free;
  const busy = (name: string): boolean => host.inUse(name);
  const canGo = (name: string): boolean => host.can(name, { type: 'EVICT' });
  const policy = host.limits.evictionPolicy;
  const run = pickRun(index, span, (name) => host.slot(name)!, forSeq, busy, canGo, policy);
  if (!run) return null;
  const takes = span > 1 ? `, which takes slots ${run.slot}-${run.slot + span - 1}` : '';
  for (const victim of run.victims) {
    host.send(victim.name, { type: 'EVICT' }, `evicted from slot ${host.slot(victim.name)} for "${forName}"${takes} (${victim.why})`);
  }
  return run.slot;
}

/**
 * A step's LoRA kernels read every pool slot up to the highest its batch uses, rounded up to a
 * power of two (the CUDA engine's slot buckets), so once the pool holds more adapters than run
 * together, a batch that uses one high slot pays for all below it. So the adapter that waiting
 * requests want soonest among those resident, if it would need fewer slots lower down, moves: into a free
 * slot or, in exchange, into that of an adapter that nothing runs on or waits for. Only while
 * no request runs on it (steps read its slot) and one move at a time: a move copies the two
 * slots' weights inside the GPU, a fraction of a step's time (bench/gpu-adapter-load.js), where
 * the high slots cost every step that reaches them.
 */
function compact(host: PlacementHost): void {
  const { index } = host;
  if (index.inResidency('moving').size > 0) return;
  let best: { name: string; from: number; to: number; seq: number } | null = null;
  for (const residency of ['gpuResident.unpinned', 'gpuResident.pinned'] as const) {
    for (const name of index.inResidency(residency)) {
      const seq = index.demand.seq(name);
      if (seq === null || (best !== null && seq > best.seq) || host.inUse(name)) continue;
      const from = host.slot(name)!;
      const to = lowerPlace(host, from, index.runLength(from), { type: 'GIVE_SLOT', slot: from });
      if (to !== null) best = { name, from, to, seq };
    }
  }
  if (best === null) return;
  const { name, from, to } = best;
  const partner = index.owner(to);
  const move: AdapterEvent = { type: 'MOVE', slot: to, partner };
  if (!host.can(name, move)) return;
  // Each machine then finds its new slots its own (see exchangeSlots).
  index.exchangeSlots(from, to, index.runLength(from));
  host.send(name, move, `moving from slot ${from} to slot ${to}, so that its batches cover fewer slots: a waiting request wants it`);
  if (partner !== null) host.send(partner, { type: 'GIVE_SLOT', slot: from }, `"${name}" takes its slot ${to}; nothing runs on it or waits for it`);
}

/**
 * The lowest run of `span` slots under the run at `from` that a batch covers with fewer slots
 * (the slots up to one past the run, rounded up to a power of two), and that is free or held by
 * one adapter of the same span that nothing runs on or waits for and whose machine takes `ask`,
 * the event that would send it to `from`.
 */
function lowerPlace(host: PlacementHost, from: number, span: number, ask: AdapterEvent): number | null {
  const { index } = host;
  let covered = 1;
  while (covered < from + span) covered *= 2;
  // Covered by half as many: one past the run at most covered / 2.
  for (let slot = 0; 2 * (slot + span) <= covered; slot += span) {
    if (index.runFree(slot, span)) return slot;
    // Held by one adapter whose run is this one: the first slot its own, the run its length.
    const owner = index.owner(slot);
    if (owner === null || host.slot(owner) !== slot || index.runLength(slot) !== span) continue;
    if (index.demand.has(owner) || host.inUse(owner)) continue;
    if (host.can(owner, ask)) return slot;
  }
  return null;
}

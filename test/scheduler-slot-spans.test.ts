// A pool cut into slots of rank 8: each adapter takes the slots its rank needs, a power of two of
// them from a multiple of that power, so more small adapters stay resident in the same pool; a
// larger adapter frees an aligned run by evicting every adapter in it, and moves between slots
// exchange runs of one size.
import { describe, expect, test } from 'vitest';
import { cudaSlotRuns, loraPoolSlots, loraSlotRank, loraSlotSpan } from '../src/engine/lora-slots.js';
import type { Scheduler } from '../src/scheduler/index.js';
import { newScheduler, runAll, seq, serveLoader, step, type LoaderSpec } from './scheduler-harness.js';

const RANKS: Record<string, number> = { a8: 8, b8: 8, c8: 8, d8: 4, x16: 16, y16: 12, z16: 16, w32: 32 };
const LOADER: Record<string, LoaderSpec> = Object.fromEntries(Object.entries(RANKS).map(([n, rank]) => [n, { rank, bytes: 4096 }]));

const slotOf = (s: Scheduler, name: string): number | null => s.adapters([name])[0]!.slot;
const stateOf = (s: Scheduler, name: string): string => s.adapters([name])[0]!.state;
const spanOf = (s: Scheduler, name: string): number => s.adapterDetails().find((a) => a.name === name)!.slotSpan;

/** A scheduler over `slots` slots of rank 8 (max rank 32 unless given), the adapters added. */
function pool(slots: number, o: Parameters<typeof newScheduler>[0] = {}): Scheduler {
  const s = newScheduler({ maxLorasPerBatch: 2, gpuSlots: slots, maxLoraRank: 32, loraSlotRank: 8, compactSlots: false, ...o });
  for (const name of Object.keys(RANKS)) s.addAdapter({ name, path: `/${name}`, pinned: false });
  return s;
}

/** Runs one request for each adapter in turn, each to its end. */
function useInTurn(s: Scheduler, ...names: string[]): void {
  for (const name of names) {
    s.submit(seq(`${name}-warm`, { lora: name, maxNewTokens: 1 }));
    runAll(s, { loader: LOADER });
  }
}

describe('slot rank and spans', () => {
  test('the CPU backend cuts a power-of-two max rank into slots of rank 8; CUDA cuts ranks 32 and 64 into slots of 16', () => {
    expect([loraSlotRank('cpu', 64, ''), loraSlotRank('cpu', 8, ''), loraSlotRank('cpu', 4, ''), loraSlotRank('cpu', 24, '')]).toEqual([8, 8, 4, 24]);
    expect([8, 16, 24, 32, 64, 128].map((r) => loraSlotRank('cuda', r, ''))).toEqual([8, 16, 24, 16, 16, 128]);
    // Whole slots where the kernels do not read runs of slots (or runs are not measured there).
    expect(loraSlotRank('cuda', 64, '', false)).toBe(64);
    expect([cudaSlotRuns('csgmv', undefined), cudaSlotRuns('csgmv', 'fused'), cudaSlotRuns('csgmv', 'mma')]).toEqual([true, true, false]);
    expect(cudaSlotRuns('sgmv', '')).toBe(false);
    // TROUPE_LORA_SLOT_RANK names one, for comparing layouts; the engines check that they take it.
    expect(loraSlotRank('cuda', 64, '16')).toBe(16);
    expect(() => loraSlotRank('cpu', 16, '32')).toThrow(
      /TROUPE_LORA_SLOT_RANK must be a power of two up to the max LoRA rank 16 \(itself a power of two\), got "32"/,
    );
    expect(() => loraSlotRank('cpu', 24, '8')).toThrow(/max LoRA rank 24/);
    expect(() => loraSlotRank('cpu', 16, '3')).toThrow(/got "3"/);
    expect([loraPoolSlots(4, 64, 8), loraPoolSlots(4, 64, 64), loraPoolSlots(3, 24, 24)]).toEqual([32, 4, 3]);
    expect([4, 8, 9, 12, 16, 24, 32, 64].map((r) => loraSlotSpan(r, 8))).toEqual([1, 1, 2, 2, 2, 4, 4, 8]);
    expect(loraSlotSpan(null, 8)).toBe(1);
  });
});

describe('a pool of slots of rank 8', () => {
  test("each adapter takes its rank's span from a multiple of it, small ones filling the gaps", () => {
    const s = pool(8);
    useInTurn(s, 'a8', 'x16', 'w32', 'b8');
    expect(['a8', 'x16', 'w32', 'b8'].map((n) => [slotOf(s, n), spanOf(s, n)])).toEqual([
      [0, 1],
      [2, 2],
      [4, 4],
      [1, 1],
    ]);
    expect(s.adapterCounters()).toMatchObject({ slots: 8, slotsUsed: 8 });
    // Eight slots of rank 8 are two adapters of rank 32, and hold four adapters here.
    expect(s.load().residentAdapters).toEqual(['a8', 'b8', 'w32', 'x16']);
  });

  test('a rank-12 adapter takes two slots and a rank-4 one a single slot', () => {
    const s = pool(4, { maxLoraRank: 16 });
    useInTurn(s, 'y16', 'd8');
    expect([slotOf(s, 'y16'), spanOf(s, 'y16'), slotOf(s, 'd8'), spanOf(s, 'd8')]).toEqual([0, 2, 2, 1]);
  });

  test("a larger adapter evicts every adapter of the least recently used one's run", () => {
    const s = pool(4, { maxLoraRank: 16 });
    useInTurn(s, 'a8', 'b8', 'c8');
    expect(['a8', 'b8', 'c8'].map((n) => slotOf(s, n))).toEqual([0, 1, 2]);
    useInTurn(s, 'x16');
    // a8 is the least recently used: x16 takes its run, which b8 leaves too; c8 keeps slot 2.
    expect([slotOf(s, 'x16'), stateOf(s, 'a8'), stateOf(s, 'b8'), slotOf(s, 'c8')]).toEqual([0, 'cpuLoaded', 'cpuLoaded', 2]);
    const reasons = s
      .adapterDetails()
      .filter((a) => a.name === 'a8' || a.name === 'b8')
      .map((a) => a.lastTransition!.reason);
    expect(reasons[0]).toMatch(/evicted from slot 0 for "x16", which takes slots 0-1 \(lru\)/);
    expect(reasons[1]).toMatch(/evicted from slot 1 for "x16", which takes slots 0-1 \(it shares the run with "a8"\)/);
  });

  test('a run where a request runs is passed over for the next', () => {
    const s = pool(4, { maxLoraRank: 16 });
    useInTurn(s, 'a8', 'b8', 'c8');
    s.submit(seq('b', { lora: 'b8', maxNewTokens: 8 }));
    expect(step(s)!.ids).toEqual(['b']);
    s.submit(seq('x', { lora: 'x16', maxNewTokens: 1 }));
    const seen = serveLoader(s, LOADER);
    // b8 runs beside a8, so a8's run stays; c8's run is the one x16 takes.
    expect(seen).toContainEqual({ kind: 'copy-to-slot', name: 'x16', slot: 2 });
    expect([slotOf(s, 'a8'), slotOf(s, 'b8'), stateOf(s, 'c8'), slotOf(s, 'x16')]).toEqual([0, 1, 'cpuLoaded', 2]);
    const { out } = runAll(s, { loader: LOADER });
    expect([out.get('b')!.finish, out.get('x')!.finish]).toMatchObject([{ type: 'length' }, { type: 'length' }]);
  });

  test('a rank-32 adapter evicted for two rank-16 ones leaves them its whole run', () => {
    const s = pool(4);
    useInTurn(s, 'w32', 'x16', 'z16');
    expect([stateOf(s, 'w32'), slotOf(s, 'x16'), slotOf(s, 'z16')]).toEqual(['cpuLoaded', 0, 2]);
  });

  test('the runs of one pool never overlap while adapters of every rank come and go', () => {
    const s = pool(8, { maxLorasPerBatch: 3 });
    const names = Object.keys(RANKS);
    for (let round = 0; round < 40; round++) {
      const name = names[(round * 5 + (round >> 2)) % names.length]!;
      s.submit(seq(`r${round}`, { lora: name, maxNewTokens: 1 + (round % 3) }));
      if (round % 2 === 1) runAll(s, { loader: LOADER });
      const taken = new Map<number, string>();
      for (const a of s.adapterDetails()) {
        if (a.slot === null) continue;
        expect(a.slot % a.slotSpan, a.name).toBe(0);
        expect(a.slotSpan, a.name).toBe(loraSlotSpan(RANKS[a.name]!, 8));
        for (let k = a.slot; k < a.slot + a.slotSpan; k++) {
          expect(taken.get(k), `slot ${k}`).toBeUndefined();
          taken.set(k, a.name);
        }
      }
      expect(Math.max(-1, ...taken.keys())).toBeLessThan(8);
    }
    const { out } = runAll(s, { loader: LOADER });
    for (const [, r] of out) expect(r.finish).toMatchObject({ type: 'length' });
  });
});

describe('moves between runs', () => {
  test('a wanted adapter exchanges runs with an idle one of its span', () => {
    const s = pool(8, { compactSlots: true });
    useInTurn(s, 'x16', 'y16', 'z16');
    // Each new one took the lowest run, the idle one there moving up.
    expect(['z16', 'x16', 'y16'].map((n) => slotOf(s, n))).toEqual([0, 2, 4]);
    s.submit(seq('y', { lora: 'y16', maxNewTokens: 1 }));
    expect(s.takeCommands()).toEqual([{ kind: 'swap-slots', slots: [4, 0], names: ['y16', 'z16'] }]);
    s.onLoaderEvent({ kind: 'slot-ready', name: 'y16', slot: 0 });
    s.onLoaderEvent({ kind: 'slot-ready', name: 'z16', slot: 4 });
    expect([slotOf(s, 'y16'), spanOf(s, 'y16'), slotOf(s, 'z16'), spanOf(s, 'z16')]).toEqual([0, 2, 4, 2]);
    expect(Array.from(step(s)!.batch.loraSlots)).toEqual([0]);
  });

  test("an adapter never moves into part of another's run", () => {
    const s = pool(8, { compactSlots: true });
    useInTurn(s, 'x16', 'z16', 'w32');
    expect(['z16', 'x16', 'w32'].map((n) => slotOf(s, n))).toEqual([0, 2, 4]);
    // The pool is full: x16, the least recently used, leaves its run, and a8 takes its first slot.
    useInTurn(s, 'a8');
    expect([slotOf(s, 'a8'), stateOf(s, 'x16')]).toEqual([2, 'cpuLoaded']);
    // Slots 0 and 1 are z16's run: a8 stays where it is.
    s.submit(seq('a', { lora: 'a8', maxNewTokens: 1 }));
    expect(s.takeCommands()).toEqual([]);
    expect(slotOf(s, 'a8')).toBe(2);
  });
});

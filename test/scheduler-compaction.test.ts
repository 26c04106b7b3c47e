// Compaction of the GPU pool: a step's LoRA kernels cover every slot up to the highest its batch
// uses (rounded up to a power of two), so adapters that requests want move to low slots, by an
// exchange inside the engine with an adapter that nothing runs on or waits for, and a copy takes
// the low slot that such an adapter leaves it.
import { describe, expect, test } from 'vitest';
import type { Scheduler } from '../src/scheduler/index.js';
import { newScheduler, runAll, seq, step } from './scheduler-harness.js';

const slotOf = (s: Scheduler, name: string): number | null => s.adapters([name])[0]!.slot;
const stateOf = (s: Scheduler, name: string): string => s.adapters([name])[0]!.state;
const add = (s: Scheduler, ...names: string[]): void => {
  for (const name of names) s.addAdapter({ name, path: `/${name}`, pinned: false });
};

/** Runs one request for each adapter in turn, each to its end; every adapter's CPU copy is 4 KB. */
function useInTurn(s: Scheduler, ...names: string[]): void {
  const loader = Object.fromEntries(names.map((n) => [n, { bytes: 4096 }]));
  for (const name of names) {
    s.submit(seq(`${name}-warm`, { lora: name, maxNewTokens: 1 }));
    runAll(s, { loader });
  }
}

/** A pool of 8 slots after A to E were used in turn: E in slot 0, then A, B, C and D. */
function fiveUsed(o: Parameters<typeof newScheduler>[0] = {}): Scheduler {
  const s = newScheduler({ maxLorasPerBatch: 2, gpuSlots: 8, ...o });
  add(s, 'A', 'B', 'C', 'D', 'E');
  useInTurn(s, 'A', 'B', 'C', 'D', 'E');
  return s;
}

describe('moving adapters to low slots', () => {
  test('each new adapter takes the lowest slot an idle adapter can leave it, the idle one moving up', () => {
    const s = fiveUsed();
    expect(['E', 'A', 'B', 'C', 'D'].map((n) => slotOf(s, n))).toEqual([0, 1, 2, 3, 4]);
  });

  test('a wanted adapter in a high slot trades places with an idle one in slot 0, and its steps use slot 0', () => {
    const s = fiveUsed();
    s.submit(seq('d', { lora: 'D', maxNewTokens: 2 }));
    expect(s.takeCommands()).toEqual([{ kind: 'swap-slots', slots: [4, 0], names: ['D', 'E'] }]);
    expect([stateOf(s, 'D'), stateOf(s, 'E')]).toEqual(['moving', 'moving']);
    // Its weights stay on the GPU while they move, and load balancers still see it there.
    expect(s.adapterDetails().find((a) => a.name === 'D')).toMatchObject({ slot: 0, gpuBytes: 4096, cpuBytes: 4096 });
    expect(s.load().residentAdapters).toEqual(['A', 'B', 'C', 'D', 'E']);
    // Nothing runs on it while its weights move.
    expect(step(s)).toBeNull();
    s.onLoaderEvent({ kind: 'slot-ready', name: 'D', slot: 0 });
    s.onLoaderEvent({ kind: 'slot-ready', name: 'E', slot: 4 });
    expect([stateOf(s, 'D'), slotOf(s, 'D'), stateOf(s, 'E'), slotOf(s, 'E')]).toEqual(['gpuResident.unpinned', 0, 'gpuResident.unpinned', 4]);
    const first = step(s)!;
    expect(first.ids).toEqual(['d']);
    expect(Array.from(first.batch.loraSlots)).toEqual([0]);
    expect(s.takeCommands()).toEqual([]);
  });

  test('never moves an adapter a request runs on, nor into the slot of one that runs or that a request waits for', () => {
    const s = newScheduler({ maxLorasPerBatch: 2, gpuSlots: 4 });
    add(s, 'A', 'B', 'C');
    useInTurn(s, 'A', 'B', 'C');
    expect(['C', 'A', 'B'].map((n) => slotOf(s, n))).toEqual([0, 1, 2]);
    // C runs in slot 0; A (slot 1) and B (slot 2) wait for the batch's other place.
    s.submit(seq('c', { lora: 'C', maxNewTokens: 6 }));
    expect(step(s)!.ids).toEqual(['c']);
    s.submit(seq('a', { lora: 'A', maxNewTokens: 6 }));
    s.submit(seq('b', { lora: 'B', maxNewTokens: 6 }));
    // A could only go to slot 0, where C runs; B to 0 or 1, where A is wanted.
    expect(s.takeCommands()).toEqual([]);
    const next = step(s)!;
    expect(next.ids).toEqual(['c', 'a']);
    expect(new Set(next.batch.loraSlots)).toEqual(new Set([0, 1]));
    expect(s.takeCommands()).toEqual([]);
  });

  test('one move at a time, the adapter wanted soonest first', () => {
    const s = fiveUsed({ maxLorasPerBatch: 3 });
    s.submit(seq('c', { lora: 'C', maxNewTokens: 1 }));
    s.submit(seq('d', { lora: 'D', maxNewTokens: 1 }));
    expect(s.takeCommands()).toEqual([{ kind: 'swap-slots', slots: [3, 0], names: ['C', 'E'] }]);
    s.onLoaderEvent({ kind: 'slot-ready', name: 'C', slot: 0 });
    s.onLoaderEvent({ kind: 'slot-ready', name: 'E', slot: 3 });
    // Slot 0 is now C's, which a request wants: D trades with A, idle in slot 1.
    expect(s.takeCommands()).toEqual([{ kind: 'swap-slots', slots: [4, 1], names: ['D', 'A'] }]);
    s.onLoaderEvent({ kind: 'slot-ready', name: 'D', slot: 1 });
    s.onLoaderEvent({ kind: 'slot-ready', name: 'A', slot: 4 });
    const { out, steps } = runAll(s);
    expect([...out.keys()].sort()).toEqual(['c', 'd']);
    expect(new Set(steps[0]!.batch.loraSlots)).toEqual(new Set([0, 1]));
  });

  test('a failed exchange leaves both adapters to be copied again from CPU memory, and their requests still run', () => {
    const s = fiveUsed();
    s.submit(seq('d', { lora: 'D', maxNewTokens: 1 }));
    expect(s.takeCommands()).toEqual([{ kind: 'swap-slots', slots: [4, 0], names: ['D', 'E'] }]);
    for (const name of ['D', 'E']) s.onLoaderEvent({ kind: 'move-failed', name, error: 'moving from slot 4 to slot 0 failed: device lost' });
    expect([stateOf(s, 'E'), slotOf(s, 'E')]).toEqual(['cpuLoaded', null]);
    // D is wanted, so it is copied again at once, into the lowest free slot.
    expect(s.takeCommands()).toEqual([{ kind: 'copy-to-slot', name: 'D', slot: 0 }]);
    const last = s.adapterDetails().find((a) => a.name === 'E')!.lastTransition;
    expect(last).toMatchObject({ from: 'moving', to: 'cpuLoaded', reason: 'moving from slot 4 to slot 0 failed: device lost' });
    s.onLoaderEvent({ kind: 'slot-ready', name: 'D', slot: 0 });
    const { out } = runAll(s);
    expect(out.get('d')!.finish).toMatchObject({ type: 'length' });
  });

  test('compactSlots false leaves every adapter in the slot it was copied into', () => {
    const s = fiveUsed({ compactSlots: false });
    expect(['A', 'B', 'C', 'D', 'E'].map((n) => slotOf(s, n))).toEqual([0, 1, 2, 3, 4]);
    s.submit(seq('e', { lora: 'E', maxNewTokens: 1 }));
    expect(s.takeCommands()).toEqual([]);
    expect(Array.from(step(s)!.batch.loraSlots)).toEqual([4]);
  });
});

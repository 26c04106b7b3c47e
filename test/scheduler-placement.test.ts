// Where adapters go and when: refusals of events the adapter machine does not accept, loads
// that start when a request arrives (prefetch), and a GPU pool larger than one batch
// (--max-gpu-loras), on the pure Scheduler with a fake loader.
import { describe, expect, test } from 'vitest';
import type { Scheduler } from '../src/scheduler/index.js';
import { newScheduler, runAll, seq, serveLoader, step } from './scheduler-harness.js';

const stateOf = (s: Scheduler, name: string) => s.adapters([name])[0]?.state;
const slotOf = (s: Scheduler, name: string) => s.adapters([name])[0]?.slot;

function add(s: Scheduler, ...names: string[]): void {
  for (const n of names) s.addAdapter({ name: n, path: `/${n}`, pinned: false });
}

/** Runs `id` (its adapter resident or loadable) to its end, serving the loader. */
function runToEnd(s: Scheduler, id: string): void {
  for (let i = 0; i < 50; i++) {
    serveLoader(s);
    if (step(s)?.events.some((e) => e.id === id && e.finish)) return;
  }
  throw new Error(`${id} did not finish`);
}

describe('events the adapter machine does not accept', () => {
  test('are internal errors naming the adapter, its state and the event, and change nothing', () => {
    const s = newScheduler();
    add(s, 'A');
    serveLoader(s);
    expect(stateOf(s, 'A')).toBe('cpuLoaded');
    expect(() => s.onLoaderEvent({ kind: 'slot-ready', name: 'A', slot: 3 })).toThrow(
      'internal error: adapter "A" in state cpuLoaded does not accept SLOT_READY {"slot":3}',
    );
    expect(() => s.onLoaderEvent({ kind: 'cpu-loaded', name: 'A', rank: 8, targetModules: ['q_proj'] })).toThrow(
      /internal error: adapter "A" in state cpuLoaded does not accept CPU_LOADED/,
    );
    expect(s.adapters()).toEqual([expect.objectContaining({ name: 'A', state: 'cpuLoaded', slot: null, error: null })]);
    expect(s.takeCommands()).toEqual([]);
    // A copy that lands in the slot it was sent to is still accepted afterwards.
    s.submit(seq('a', { lora: 'A', maxNewTokens: 1 }));
    expect(s.takeCommands()).toEqual([{ kind: 'copy-to-slot', name: 'A', slot: 0 }]);
    expect(() => s.onLoaderEvent({ kind: 'slot-ready', name: 'A', slot: 1 })).toThrow(/in state h2dInFlight does not accept SLOT_READY \{"slot":1\}/);
    s.onLoaderEvent({ kind: 'slot-ready', name: 'A', slot: 0 });
    expect(runAll(s).out.get('a')!.finish).toEqual({ type: 'length', length: 1 });
  });

  test('a transition that only emits a command is taken: a read in flight when the loader restarts is issued again', () => {
    const s = newScheduler();
    add(s, 'A');
    expect(s.takeCommands()).toEqual([{ kind: 'load-cpu', name: 'A', path: '/A' }]);
    // The machine stays where it is (its snapshot does not change) and asks for the read again.
    s.loaderRestarted();
    expect(s.takeCommands()).toEqual([{ kind: 'load-cpu', name: 'A', path: '/A' }]);
    expect(stateOf(s, 'A')).toBe('loading');
    s.onLoaderEvent({ kind: 'cpu-loaded', name: 'A', rank: 8, targetModules: ['q_proj'] });
    expect(stateOf(s, 'A')).toBe('cpuLoaded');
    // It is still refused where the machine has no such transition.
    expect(() => s.onLoaderEvent({ kind: 'cpu-loaded', name: 'A', rank: 8, targetModules: ['q_proj'] })).toThrow(
      /adapter "A" in state cpuLoaded does not accept CPU_LOADED/,
    );
  });

  test('loader events for an adapter already gone are ignored', () => {
    const s = newScheduler();
    expect(() => s.onLoaderEvent({ kind: 'cpu-loaded', name: 'gone', rank: 8, targetModules: ['q_proj'] })).not.toThrow();
  });
});

describe('prefetch', () => {
  test('a request far back in the queue has its adapter copied into a free slot as it arrives', () => {
    const s = newScheduler({ maxLorasPerBatch: 2, gpuSlots: 3, maxRunningRequests: 1 });
    add(s, 'A', 'C');
    serveLoader(s);
    for (let i = 0; i < 4; i++) s.submit(seq(`a${i}`, { lora: 'A', maxNewTokens: 4 }));
    serveLoader(s);
    expect(step(s)!.ids).toEqual(['a0']);
    s.submit(seq('c', { lora: 'C', maxNewTokens: 1 }));
    // Four requests are ahead of it and no step ran, yet its copy is already on its way.
    expect(s.takeCommands()).toEqual([{ kind: 'copy-to-slot', name: 'C', slot: 1 }]);
    expect(stateOf(s, 'C')).toBe('h2dInFlight');
  });

  test('a read starts at once even when no slot can be had, and the CPU cache drops a copy nobody waits for', () => {
    const s = newScheduler({ maxLorasPerBatch: 2, maxLoadedLoras: 4, maxRunningRequests: 2 });
    add(s, 'A', 'B', 'X');
    s.submit(seq('a', { lora: 'A', maxNewTokens: 8 }));
    s.submit(seq('b', { lora: 'B', maxNewTokens: 8 }));
    serveLoader(s);
    expect(step(s)!.ids).toEqual(['a', 'b']);
    // Both slots are held by running requests: x's adapter waits in CPU memory.
    s.submit(seq('x', { lora: 'X', maxNewTokens: 1 }));
    expect(s.takeCommands()).toEqual([]);
    // Y is read last, so X is the least recently used copy; but a request waits for X.
    add(s, 'Y', 'C');
    expect(serveLoader(s)).toEqual([{ kind: 'load-cpu', name: 'Y', path: '/Y' }]);
    expect(stateOf(s, 'C')).toBe('registered');
    s.submit(seq('c', { lora: 'C', maxNewTokens: 1 }));
    expect(s.takeCommands()).toEqual([
      { kind: 'drop-cpu', name: 'Y' },
      { kind: 'load-cpu', name: 'C', path: '/C' },
    ]);
    expect(stateOf(s, 'X')).toBe('cpuLoaded');
    s.onLoaderEvent({ kind: 'cpu-loaded', name: 'C', rank: 8, targetModules: ['q_proj'] });
    const { out } = runAll(s);
    expect([...out.keys()].sort()).toEqual(['a', 'b', 'c', 'x']);
  });
});

describe('a GPU pool larger than one batch (--max-gpu-loras)', () => {
  function sequential(gpuSlots: number): { copiesForA: unknown[]; slots: Array<number | null | undefined> } {
    const s = newScheduler({ maxLorasPerBatch: 2, gpuSlots });
    add(s, 'A', 'B', 'C');
    serveLoader(s);
    for (const [id, lora] of [
      ['a1', 'A'],
      ['b1', 'B'],
      ['c1', 'C'],
    ] as const) {
      s.submit(seq(id, { lora, maxNewTokens: 1 }));
      runToEnd(s, id);
    }
    const slots = ['A', 'B', 'C'].map((n) => slotOf(s, n));
    s.submit(seq('a2', { lora: 'A', maxNewTokens: 1 }));
    return { copiesForA: s.takeCommands(), slots };
  }

  test('an adapter that left the batch keeps its slot and comes back with no copy', () => {
    const big = sequential(3);
    // Each new adapter took slot 0, the one before moving up (see the compaction tests).
    expect(big.slots).toEqual([1, 2, 0]);
    // A comes back to slot 0 by an exchange inside the GPU, not a copy.
    expect(big.copiesForA).toEqual([{ kind: 'swap-slots', slots: [1, 0], names: ['A', 'C'] }]);
    // With the pool only as large as a batch, C took A's slot, so A is copied again.
    const small = sequential(2);
    expect(small.copiesForA).toContainEqual({ kind: 'copy-to-slot', name: 'A', slot: expect.any(Number) });
  });

  test('a step still holds at most --max-loras-per-batch adapters, and runs in the slots they hold', () => {
    const s = newScheduler({ maxLorasPerBatch: 2, gpuSlots: 4 });
    add(s, 'A', 'B', 'C');
    for (const lora of ['A', 'B', 'C']) s.submit(seq(lora.toLowerCase(), { lora, maxNewTokens: 3 }));
    s.submit(seq('base', { maxNewTokens: 3 }));
    const { steps, out } = runAll(s);
    expect(out.size).toBe(4);
    for (const st of steps) {
      expect(new Set(st.batch.loraSlots).size).toBeLessThanOrEqual(2);
    }
    expect(['A', 'B', 'C'].map((n) => stateOf(s, n))).toEqual(['gpuResident.unpinned', 'gpuResident.unpinned', 'gpuResident.unpinned']);
  });

  test('pins stay limited by --max-loras-per-batch, not by the pool', () => {
    const s = newScheduler({ maxLorasPerBatch: 2, gpuSlots: 4 });
    s.addAdapter({ name: 'P', path: '/P', pinned: true });
    expect(() => s.addAdapter({ name: 'Q', path: '/Q', pinned: true })).toThrow(/at most 1 may be/);
  });

  test('a pool smaller than a batch is refused', () => {
    expect(() => newScheduler({ maxLorasPerBatch: 3, gpuSlots: 2 })).toThrow(/gpuSlots must be an integer of at least maxLorasPerBatch \(3\), got 2/);
  });
});

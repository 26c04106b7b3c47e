// What one step costs must not grow with the waiting queue: once more adapters are claimed
// than a step may hold, no later request can be admitted, so the step stops looking.
import { afterEach, describe, expect, test, vi } from 'vitest';
import { AdapterRegistry } from '../src/scheduler/adapter-registry.js';
import { newScheduler, seq, serveLoader, step } from './scheduler-harness.js';

afterEach(() => {
  vi.restoreAllMocks();
});

describe("a step's work", () => {
  test('stops at the first waiting request that no step could admit, and the queue keeps its order', () => {
    const s = newScheduler({ maxLorasPerBatch: 4, maxRunningRequests: 64, numBlocks: 1024 });
    for (let i = 0; i < 64; i++) s.addAdapter({ name: `A${i}`, path: `/A${i}`, pinned: false });
    // Every adapter is still being read: none can run, and each request claims its own.
    for (let i = 0; i < 64; i++) s.submit(seq(`r${i}`, { lora: `A${i}` }));
    const asked = vi.spyOn(AdapterRegistry.prototype, 'residentSlot');
    expect(s.schedule()).toBeNull();
    // Four adapters fill a step and the fifth claims a place past the limit: nothing after it can run.
    expect(asked).toHaveBeenCalledTimes(5);
    asked.mockRestore();

    // Once the adapters are resident, admission still goes in arrival order.
    serveLoader(s);
    const first = step(s)!;
    expect(first.ids).toEqual(['r0', 'r1', 'r2', 'r3']);
    expect(s.stats().waiting).toBe(60);
  });

  test('a batch the caller keeps is not changed by later steps', () => {
    const s = newScheduler();
    s.submit(seq('a', { prompt: 3, maxNewTokens: 4 }));
    const first = step(s)!;
    const tokens = Array.from(first.batch.tokens);
    const contextLens = Array.from(first.batch.contextLens);
    step(s);
    step(s);
    expect(Array.from(first.batch.tokens)).toEqual(tokens);
    expect(Array.from(first.batch.contextLens)).toEqual(contextLens);
  });
});

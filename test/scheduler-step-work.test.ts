// What one step costs must not grow with the waiting queue: once more adapters are claimed
// than a step may hold, no later request can be admitted, so the step stops looking.
import { afterEach, describe, expect, test, vi } from 'vitest';
import { AdapterActors } from '../src/scheduler/adapter-actors.js';
import { AdapterRegistry } from '../src/scheduler/adapter-registry.js';
import { adapterMachine } from '../statecharts/adapter.machine.js';
import { StepPlanner } from '../src/scheduler/step-planner.js';
import { fakeResult, newScheduler, runAll, sampling, seq, serveLoader, step } from './scheduler-harness.js';

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

  test("looks each adapter's slot up once while no adapter moves, and finds the new slot once one does", () => {
    const s = newScheduler({ maxLorasPerBatch: 2, maxRunningRequests: 64, numBlocks: 512, chunkedPrefillSize: 512 });
    for (const name of ['A', 'B']) s.addAdapter({ name, path: `/${name}`, pinned: false });
    for (let i = 0; i < 20; i++) s.submit(seq(`a${i}`, { lora: 'A', maxNewTokens: 2 }));
    serveLoader(s);
    step(s);
    for (let i = 0; i < 20; i++) s.submit(seq(`b${i}`, { lora: 'B', maxNewTokens: 1 }));
    const lookups = vi.spyOn(AdapterActors.prototype, 'placement');
    // 20 running and 20 waiting requests: B is not resident yet, and each slot is looked up once.
    const second = step(s)!;
    expect(second.ids).toHaveLength(20);
    expect(new Set(second.batch.loraSlots)).toEqual(new Set([0]));
    expect(lookups.mock.calls.map((c) => c[0]).sort()).toEqual(['A', 'B']);
    // B was copied into the other slot meanwhile: the answer kept for it (none) is not used.
    serveLoader(s);
    const third = step(s)!;
    expect(third.ids).toEqual(Array.from({ length: 20 }, (_, i) => `b${i}`));
    expect(new Set(third.batch.loraSlots)).toEqual(new Set([s.adapters(['B'])[0]!.slot]));
  });

  test('does not look at the waiting queue again until something it reads has changed', () => {
    // Two places, both taken by running adapters: C's requests wait for one.
    const s = newScheduler({ maxLorasPerBatch: 2, gpuSlots: 3, maxRunningRequests: 64, numBlocks: 512, chunkedPrefillSize: 512 });
    for (const name of ['A', 'B', 'C']) s.addAdapter({ name, path: `/${name}`, pinned: false });
    s.submit(seq('a', { lora: 'A', maxNewTokens: 6 }));
    s.submit(seq('b', { lora: 'B', maxNewTokens: 8 }));
    for (let i = 0; i < 3; i++) s.submit(seq(`c${i}`, { lora: 'C', maxNewTokens: 1 }));
    serveLoader(s);
    expect(step(s)!.ids).toEqual(['a', 'b']);
    const asked = vi.spyOn(AdapterRegistry.prototype, 'residentSlot');
    // The first decode step looks at each waiting request (the step before ran prefills, which
    // can change which adapter drains); later ones do not.
    expect(step(s)!.ids).toEqual(['a', 'b']);
    expect(asked.mock.calls.filter((c) => c[0] === 'C')).toHaveLength(3);
    asked.mockClear();
    for (let k = 0; k < 3; k++) expect(step(s)!.ids).toEqual(['a', 'b']);
    expect(asked.mock.calls.filter((c) => c[0] === 'C')).toHaveLength(0);
    // A request ends: the queue is looked at. C, in slot 2, first moves into A's slot 0 (so that
    // its steps with B cover 2 slots, not 4), then takes A's place.
    expect(step(s)!.events.find((e) => e.id === 'a')?.finish).toEqual({ type: 'length', length: 6 });
    expect(step(s)!.ids).toEqual(['b']);
    expect(serveLoader(s)).toEqual([{ kind: 'swap-slots', slots: [2, 0], names: ['C', 'A'] }]);
    expect(step(s)!.ids).toEqual(['b', 'c0', 'c1', 'c2']);
  });

  test("counts the step's adapters again only once the running requests change", () => {
    const s = newScheduler({ maxLorasPerBatch: 4, maxRunningRequests: 64, numBlocks: 512, chunkedPrefillSize: 512 });
    for (const name of ['A', 'B']) s.addAdapter({ name, path: `/${name}`, pinned: false });
    s.submit(seq('a', { lora: 'A', maxNewTokens: 4 }));
    s.submit(seq('b', { lora: 'B', maxNewTokens: 8 }));
    serveLoader(s);
    expect(step(s)!.ids).toEqual(['a', 'b']);
    // The first decode step counts the requests the step before admitted.
    expect(step(s)!.ids).toEqual(['a', 'b']);
    const counts = vi.spyOn(StepPlanner.prototype as unknown as { countStepAdapters(): void }, 'countStepAdapters');
    // Decode steps over the same running requests: the adapters counted before stand.
    expect(step(s)!.ids).toEqual(['a', 'b']);
    expect(step(s)!.events.find((e) => e.id === 'a')?.finish).toEqual({ type: 'length', length: 4 });
    expect(counts).not.toHaveBeenCalled();
    // A ended, then C was admitted: counted again once for each.
    s.submit(seq('c', { lora: null }));
    expect(step(s)!.ids).toEqual(['b', 'c']);
    expect(step(s)!.ids).toEqual(['b', 'c']);
    expect(step(s)!.ids).toEqual(['b', 'c']);
    expect(counts).toHaveBeenCalledTimes(2);
  });

  test('completing a step stores each sampled token once and pushes into no array', () => {
    const s = newScheduler();
    for (let i = 0; i < 3; i++) s.submit(seq(`r${i}`, { prompt: 3, maxNewTokens: 4 }));
    step(s);
    const { batch, seqIds } = s.schedule()!;
    const result = fakeResult(batch, seqIds);
    // Every push while the step completes: into which array, and whether of a token. (A spy
    // would push its records through the method it watches.)
    const into: unknown[][] = [];
    let tokens = 0;
    const push = Array.prototype.push;
    Array.prototype.push = function (this: unknown[], ...items: unknown[]): number {
      into[into.length] = this;
      if (typeof items[0] === 'number') tokens++;
      return push.apply(this, items);
    };
    let events;
    try {
      events = s.complete(result);
    } finally {
      Array.prototype.push = push;
    }
    expect(events.map((e) => [e.id, e.token])).toEqual(seqIds.map((id, i) => [id, result.tokens[i]]));
    expect(into).not.toContain(events);
    // Sequences keep their tokens in typed arrays: no array took a token.
    expect(tokens).toBe(0);
    // Each sequence's token went into its own tokens once: the next step feeds back exactly those.
    const next = s.schedule()!;
    expect(next.seqIds).toEqual(seqIds);
    expect(Array.from(next.batch.tokens)).toEqual(seqIds.map((_, i) => result.tokens[i]));
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

  test("requests queued between two steps reach their adapter's machine as one event, heard before it is read", () => {
    const s = newScheduler({ maxRunningRequests: 64, numBlocks: 512, chunkedPrefillSize: 512 });
    s.addAdapter({ name: 'A', path: '/A', pinned: false });
    s.submit(seq('first', { lora: 'A', maxNewTokens: 1 }));
    runAll(s);
    // Heard before the spy: the first request's start and end.
    s.adapterDetails();
    const transitions = vi.spyOn(adapterMachine, 'transition');
    for (let i = 0; i < 40; i++) s.submit(seq(`r${i}`, { lora: 'A' }));
    // A resident adapter takes new requests without a transition each.
    expect(transitions).not.toHaveBeenCalled();
    expect(s.adapterDetails().find((d) => d.name === 'A')).toMatchObject({ refcount: 40, running: 0 });
    expect(transitions.mock.calls.map((c) => c[1])).toEqual([{ type: 'ACQUIRE', count: 40 }]);
    // Events after it find the count: an abort releases one of the 40, a step starts the rest.
    expect(s.abort('r0')?.finish).toEqual({ type: 'abort', message: 'Request aborted' });
    expect(step(s)!.ids).toHaveLength(39);
    expect(s.adapterDetails().find((d) => d.name === 'A')).toMatchObject({ refcount: 39, running: 39 });
  });

  test("a batch's arrays, and its sampling update's, share one buffer each without overlapping", () => {
    const s = newScheduler({ chunkedPrefillSize: 20 });
    // Penalties send histories; chunked prefills and decodes mix in the steps below.
    for (let i = 0; i < 5; i++) s.submit(seq(`r${i}`, { prompt: 3 + 2 * i, sampling: sampling({ repetitionPenalty: i % 2 ? 1.2 : 1 }) }));
    const first = step(s)!.batch;
    const { batch } = step(s)!;
    const packed = (o: object, count: number): void => {
      const views = Object.entries(o).filter((kv): kv is [string, Int32Array] => ArrayBuffer.isView(kv[1]));
      expect(views).toHaveLength(count);
      const ranges = views.map(([name, v]) => ({ name, from: v.byteOffset, to: v.byteOffset + v.byteLength })).sort((a, b) => a.from - b.from);
      for (let i = 1; i < ranges.length; i++) expect(ranges[i]!.from, ranges[i]!.name).toBeGreaterThanOrEqual(ranges[i - 1]!.to);
      expect(ranges.at(-1)!.to).toBe(views[0]![1].buffer.byteLength);
      for (const [name, v] of views) expect(v.buffer, name).toBe(views[0]![1].buffer);
    };
    packed(first, 10);
    packed(batch, 10);
    packed(first.seqUpdate!, 12);
    // Only the sequences new to their slots send values; the penalized ones send their tokens.
    const update = first.seqUpdate!;
    expect(update.slots.length).toBeGreaterThan(0);
    expect(update.penaltyTokens.length).toBe(
      Array.from(update.repetitionPenalty).reduce((a, r, u) => a + (r !== 1 ? update.penaltyStarts[u + 1]! - update.penaltyStarts[u]! : 0), 0),
    );
  });
});

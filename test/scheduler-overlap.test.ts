// Overlap scheduling without an engine: a step built while the one before it is in flight
// starts after it, takes the token it samples through the batch's feed, counts that token among
// the draws, and leaves out sequences that step surely ends; rows of sequences that ended
// meanwhile are discarded.
import { describe, expect, it } from 'vitest';
import { feedInputs } from '../src/actors/feed.js';
import { Scheduler } from '../src/scheduler/index.js';
import { DECODE_STEP_BUCKETS, LORA_SLOT_BUCKETS } from '../src/scheduler/engine-time.js';
import { fakeResult, options, sampling, seq, serveLoader } from './scheduler-harness.js';

describe('scheduleAhead', () => {
  it('chains decode steps through fed tokens and stops at max_new_tokens', () => {
    const s = new Scheduler(options());
    s.submit(seq('x', { prompt: 3, maxNewTokens: 3 }));
    const a = s.schedule()!;
    expect(Array.from(a.batch.positions)).toEqual([0, 1, 2]);
    expect(a.batch.feed).toBeUndefined();

    const b = s.scheduleAhead()!;
    expect(b.seqIds).toEqual(['x']);
    expect(Array.from(b.batch.positions)).toEqual([3]);
    expect(Array.from(b.batch.contextLens)).toEqual([4]);
    expect(Array.from(b.batch.feed!)).toEqual([0, 0]);
    expect(Array.from(b.batch.draws)).toEqual([1]);

    const ra = fakeResult(a.batch, a.seqIds);
    expect(s.complete(ra).map((e) => e.token)).toEqual([100]);
    feedInputs(b.batch, ra.tokens);
    expect(Array.from(b.batch.tokens)).toEqual([100]);

    const c = s.scheduleAhead()!;
    expect(Array.from(c.batch.positions)).toEqual([4]);
    expect(Array.from(c.batch.draws)).toEqual([2]);
    expect(s.complete(fakeResult(b.batch, b.seqIds)).map((e) => e.token)).toEqual([101]);
    // C samples the third and last token: nothing may follow it.
    expect(s.scheduleAhead()).toBeNull();
    const end = s.complete(fakeResult(c.batch, c.seqIds));
    expect(end.map((e) => [e.token, e.finish])).toEqual([[102, { type: 'length', length: 3 }]]);
    expect(s.stats()).toMatchObject({ running: 0, freeBlocks: 64 });
    expect(s.load().steps).toEqual({ total: 3, ahead: 2 });
  });

  it("splits the engine's time into decode steps and the idle time before steps sent ahead", () => {
    const s = new Scheduler(options());
    s.submit(seq('x', { prompt: 3, maxNewTokens: 3 }));
    // A prefills (sent alone: its wait is the server's idle time, not the host's share), B and C decode ahead.
    const a = s.schedule()!;
    const b = s.scheduleAhead()!;
    s.complete({ ...fakeResult(a.batch, a.seqIds), stepMs: 40, waitMs: 1000 });
    const c = s.scheduleAhead()!;
    s.complete({ ...fakeResult(b.batch, b.seqIds), stepMs: 5, waitMs: 0.25 });
    s.complete({ ...fakeResult(c.batch, c.seqIds), stepMs: 6, waitMs: 0.5 });
    const t = s.load().engine;
    expect(t.seconds).toBeCloseTo(0.051, 9);
    expect(t.decodeSteps).toBe(2);
    expect(t.decodeSeconds).toBeCloseTo(0.011, 9);
    // The two decode steps by bucket (cumulative): 5 ms at most 0.005 s, 6 ms at most 0.006.
    const within = (bound: number): number => t.decodeStepBuckets[DECODE_STEP_BUCKETS.indexOf(bound)]!;
    expect([0.004, 0.005, 0.006, 0.007].map(within)).toEqual([0, 1, 2, 2]);
    expect(t.decodeStepBuckets.at(-1)).toBe(2);
    expect(t.waits).toBe(2);
    expect(t.waitSeconds).toBeCloseTo(0.00075, 9);
  });

  it('counts the pool slots each decode step reaches: one past the highest its batch uses', () => {
    const s = new Scheduler(options());
    for (const name of ['A', 'B']) s.addAdapter({ name, path: `/ad/${name}`, pinned: false });
    s.submit(seq('a', { lora: 'A', prompt: 3, maxNewTokens: 3 }));
    s.submit(seq('b', { lora: 'B', prompt: 3, maxNewTokens: 2 }));
    s.submit(seq('base', { prompt: 3, maxNewTokens: 4 }));
    serveLoader(s);
    const slots: number[][] = [];
    for (let i = 0; i < 10; i++) {
      const r = s.schedule();
      if (!r) break;
      slots.push(Array.from(r.batch.loraSlots));
      s.complete({ ...fakeResult(r.batch, r.seqIds), stepMs: 5 });
    }
    // A prefill of all three, then decodes of [A, B, base] twice, then base alone once A is done.
    expect(slots).toEqual([[0, 1, -1], [0, 1, -1], [0, -1], [-1]]);
    const t = s.load().engine;
    expect(t.decodeSteps).toBe(3);
    const within = (bound: number): number => t.decodeStepSlots[LORA_SLOT_BUCKETS.indexOf(bound)]!;
    // Decode steps reaching 2 slots, 1 slot and none.
    expect([0, 1, 2, 4].map(within)).toEqual([1, 2, 3, 3]);
    expect(t.decodeSlotsSum).toBe(3);
  });

  it('discards the row of a sequence that a stop token ended while it was in flight', () => {
    const s = new Scheduler(options());
    s.submit(seq('x', { prompt: 2, maxNewTokens: 8 }));
    s.submit(seq('y', { prompt: 2, maxNewTokens: 8 }));
    const a = s.schedule()!;
    const b = s.scheduleAhead()!;
    expect(b.seqIds).toEqual(['x', 'y']);
    // x samples the end-of-sequence token (2) in A.
    const events = s.complete(fakeResult(a.batch, a.seqIds, (id, draws) => (id === 'x' ? 2 : 100 + draws)));
    expect(events.find((e) => e.id === 'x')!.finish).toEqual({ type: 'stop', matched: 2 });
    const after = s.complete(fakeResult(b.batch, b.seqIds));
    expect(after.map((e) => e.id)).toEqual(['y']);
    expect(s.stats().running).toBe(1);
  });

  it("keeps an ended request's adapter in use until the queued step that has its row is done", async () => {
    const s = new Scheduler(options());
    s.addAdapter({ name: 'A', path: '/A', pinned: false });
    s.submit(seq('x', { lora: 'A', prompt: 2, maxNewTokens: 8 }));
    serveLoader(s);
    const refcount = (): number => s.adapterDetails().find((d) => d.name === 'A')!.refcount;
    const a = s.schedule()!;
    const b = s.scheduleAhead()!;
    expect(b.seqIds).toEqual(['x']);
    // x ends with the end-of-sequence token in A; B, queued, still names A's slot.
    s.complete(fakeResult(a.batch, a.seqIds, () => 2));
    expect(s.stats().running).toBe(0);
    expect(refcount()).toBe(1);
    // Nor may an unload finish meanwhile (it would clear the slot B reads).
    let unloaded = false;
    void s.removeAdapter('A').then(() => (unloaded = true));
    serveLoader(s);
    await Promise.resolve();
    expect(unloaded).toBe(false);
    s.complete(fakeResult(b.batch, b.seqIds));
    serveLoader(s);
    await new Promise((r) => setImmediate(r));
    expect(unloaded).toBe(true);
  });

  it('keeps an aborted running request counted the same way, and lets it go at once with no step in flight', () => {
    const s = new Scheduler(options());
    s.addAdapter({ name: 'A', path: '/A', pinned: false });
    for (const id of ['x', 'y']) s.submit(seq(id, { lora: 'A', prompt: 2, maxNewTokens: 8 }));
    serveLoader(s);
    const refcount = (): number => s.adapterDetails().find((d) => d.name === 'A')!.refcount;
    const a = s.schedule()!;
    s.abort('x');
    expect(refcount()).toBe(2);
    s.complete(fakeResult(a.batch, a.seqIds));
    expect(refcount()).toBe(1);
    s.abort('y');
    expect(refcount()).toBe(0);
  });

  it('needs exactly one step in flight', () => {
    const s = new Scheduler(options());
    s.submit(seq('x'));
    expect(() => s.scheduleAhead()).toThrow(/exactly one step in flight, there are 0/);
    s.schedule();
    s.scheduleAhead();
    expect(() => s.scheduleAhead()).toThrow(/there are 2/);
  });

  it('sends a penalized history once (the engine adds the fed token itself), and feeds a missing token as 0', () => {
    const s = new Scheduler(options());
    s.submit(seq('p', { prompt: 3, sampling: sampling({ maxNewTokens: 4, repetitionPenalty: 1.5 }) }));
    const a = s.schedule()!;
    expect(Array.from(a.batch.seqSlots!)).toEqual([0]);
    expect(Array.from(a.batch.seqUpdate!.slots)).toEqual([0]);
    expect(Array.from(a.batch.seqUpdate!.penaltyTokens)).toEqual([10, 11, 12]);
    expect(Array.from(a.batch.seqUpdate!.penaltyPromptLens)).toEqual([3]);
    expect(Array.from(a.batch.seqUpdate!.repetitionPenalty)).toEqual([1.5]);
    const b = s.scheduleAhead()!;
    expect(Array.from(b.batch.feed!)).toEqual([0, 0]);
    expect(Array.from(b.batch.seqSlots!)).toEqual([0]);
    expect(b.batch.seqUpdate).toBeUndefined();
    feedInputs(b.batch, Int32Array.from([57]));
    expect(Array.from(b.batch.tokens)).toEqual([57]);
    expect(b.batch.feed).toBeUndefined();
    // After a failed step (no tokens) or a row that failed alone (-1), the rows get token 0.
    for (const previous of [null, Int32Array.from([-1])]) {
      const batch = { ...b.batch, tokens: Int32Array.from([9]), feed: Int32Array.from([0, 0]) };
      feedInputs(batch, previous);
      expect(Array.from(batch.tokens)).toEqual([0]);
    }
    expect(s.complete(fakeResult(a.batch, a.seqIds)).map((e) => e.token)).toEqual([100]);
  });
});

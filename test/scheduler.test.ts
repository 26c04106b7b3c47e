import { describe, expect, test, vi } from 'vitest';
import { TroupeError } from '../src/errors.js';
import type { TokenEvent } from '../src/scheduler/index.js';
import { fakeResult, newScheduler, runAll, sampling, seq, step } from './scheduler-harness.js';

describe('continuous batching', () => {
  test('a request submitted mid-run joins the next step next to running decodes', () => {
    const s = newScheduler();
    s.submit(seq('a', { prompt: 5, maxNewTokens: 10 }));
    const first = step(s)!;
    expect(first.ids).toEqual(['a']);
    expect(Array.from(first.batch.tokens)).toEqual([10, 11, 12, 13, 14]);
    expect(Array.from(first.batch.positions)).toEqual([0, 1, 2, 3, 4]);
    expect(first.events).toHaveLength(1);
    expect(first.events[0]!.token).toBe(100);

    s.submit(seq('b', { prompt: 3 }));
    const second = step(s)!;
    expect(second.ids).toEqual(['a', 'b']);
    // a decodes the token it sampled; b prefills its prompt.
    expect(Array.from(second.batch.tokens)).toEqual([100, 10, 11, 12]);
    expect(Array.from(second.batch.positions)).toEqual([5, 0, 1, 2]);
    expect(Array.from(second.batch.seqStarts)).toEqual([0, 1, 4]);
    expect(Array.from(second.batch.contextLens)).toEqual([6, 3]);
    expect(Array.from(second.batch.sample)).toEqual([1, 1]);
    expect(second.events.map((e) => e.id)).toEqual(['a', 'b']);
  });

  test('maxRunningRequests caps the batch; the rest wait their turn', () => {
    const s = newScheduler({ maxRunningRequests: 2 });
    for (const id of ['a', 'b', 'c']) s.submit(seq(id, { maxNewTokens: 2 }));
    const r = step(s)!;
    expect(r.ids).toEqual(['a', 'b']);
    expect(s.stats()).toMatchObject({ waiting: 1, running: 2 });
    const { out } = runAll(s);
    expect(out.get('c')!.tokens).toEqual([100, 101]);
  });
});

describe('queue time', () => {
  test("a request's first token event says how long it waited for a step, and no later event does", () => {
    let clock = 1000;
    const now = vi.spyOn(performance, 'now').mockImplementation(() => clock);
    try {
      const s = newScheduler({ maxRunningRequests: 1 });
      s.submit(seq('a', { maxNewTokens: 2 }));
      s.submit(seq('b', { maxNewTokens: 2 }));
      const events: TokenEvent[] = [];
      for (let i = 0; i < 10 && s.hasWork(); i++) {
        clock += 250;
        events.push(...(step(s)?.events ?? []));
      }
      const of = (id: string) => events.filter((e) => e.id === id && e.token >= 0);
      // a ran in the first step, 250 ms after both arrived; b after a's two steps.
      expect(of('a').map((e) => e.queueSeconds)).toEqual([0.25, undefined]);
      expect(of('b').map((e) => e.queueSeconds)).toEqual([0.75, undefined]);
    } finally {
      now.mockRestore();
    }
  });
});

describe('chunked prefill', () => {
  test('a long prompt is prefilled over several steps and samples only at the end', () => {
    const s = newScheduler({ chunkedPrefillSize: 4 });
    s.submit(seq('a', { prompt: 10, maxNewTokens: 2 }));
    const chunks: number[][] = [];
    const samples: number[] = [];
    for (let i = 0; i < 3; i++) {
      const r = step(s)!;
      chunks.push(Array.from(r.batch.positions));
      samples.push(r.batch.sample[0]!);
      expect(r.events.length).toBe(i === 2 ? 1 : 0);
    }
    expect(chunks).toEqual([
      [0, 1, 2, 3],
      [4, 5, 6, 7],
      [8, 9],
    ]);
    expect(samples).toEqual([0, 0, 1]);
  });

  test('prompt tokens per step stay within the budget while decodes ride along', () => {
    const s = newScheduler({ chunkedPrefillSize: 4 });
    s.submit(seq('a', { prompt: 2, maxNewTokens: 8 }));
    step(s);
    s.submit(seq('b', { prompt: 6 }));
    s.submit(seq('c', { prompt: 3 }));
    const r = step(s)!;
    // a's decode is free; b takes the remaining 4 prompt tokens; c waits for budget.
    expect(r.ids).toEqual(['a', 'b']);
    expect(Array.from(r.batch.seqStarts)).toEqual([0, 1, 5]);
    expect(Array.from(r.batch.sample)).toEqual([1, 0]);
    const r2 = step(s)!;
    expect(r2.ids).toEqual(['a', 'b', 'c']);
    expect(Array.from(r2.batch.seqStarts)).toEqual([0, 1, 3, 5]);
    expect(Array.from(r2.batch.sample)).toEqual([1, 1, 0]);
  });
});

describe('KV cache', () => {
  test('refuses at submit what can never fit, and prompts over the context length', () => {
    const s = newScheduler({ numBlocks: 4, blockSize: 4, contextLength: 64 });
    expect(() => s.submit(seq('big', { prompt: 10, maxNewTokens: 10 }))).toThrow(/KV cache holds only 16 tokens/);
    expect(() => s.submit(seq('long', { prompt: 64 }))).toThrow(/input \(64 tokens\) is longer than the model's context length \(64/);
    expect(() => s.submit(seq('empty', { prompt: 0 }))).toThrow(TroupeError);
    // 10 + 7 = 17 tokens, but the last one never enters the cache.
    expect(() => s.submit(seq('fits', { prompt: 10, maxNewTokens: 7 }))).not.toThrow();
    expect(() => s.submit(seq('fits', { prompt: 2 }))).toThrow(/already in use/);
  });

  test('a request waits while blocks are short and proceeds once they free', () => {
    const s = newScheduler({ numBlocks: 4, blockSize: 4 });
    s.submit(seq('a', { prompt: 12, maxNewTokens: 4 })); // up to 15 tokens = 4 blocks
    s.submit(seq('b', { prompt: 5, maxNewTokens: 2 }));
    const r = step(s)!;
    expect(r.ids).toEqual(['a']);
    expect(s.stats()).toEqual({ waiting: 1, running: 1, freeBlocks: 1, totalBlocks: 4, cachedBlocks: 0 });
    const { out, steps } = runAll(s);
    expect(out.get('a')!.finish).toEqual({ type: 'length', length: 4 });
    expect(out.get('b')!.tokens).toEqual([100, 101]);
    expect(steps.findIndex((x) => x.ids.includes('b'))).toBeGreaterThan(0);
    expect(s.stats().freeBlocks).toBe(4);
  });

  test('preemption frees the newest sequence and keeps its generated tokens for recompute', () => {
    const s = newScheduler({ numBlocks: 4, blockSize: 4 });
    s.submit(seq('old', { prompt: 4, maxNewTokens: 8 }));
    s.submit(seq('new', { prompt: 4, maxNewTokens: 8 }));
    const pick = (id: string, draws: number) => (id === 'old' ? 200 : 300) + draws;
    const all = runAll(s, { pick });
    // Each needs up to 11 tokens (3 blocks); both cannot hold them at once, so 'new' is
    // preempted and later re-prefilled with its prompt plus what it generated.
    const reprefill = all.steps.find((x) => {
      const i = x.ids.indexOf('new');
      return i >= 0 && x.batch.seqStarts[i + 1]! - x.batch.seqStarts[i]! > 4;
    });
    expect(reprefill).toBeDefined();
    const i = reprefill!.ids.indexOf('new');
    const toks = Array.from(reprefill!.batch.tokens.subarray(reprefill!.batch.seqStarts[i], reprefill!.batch.seqStarts[i + 1]));
    expect(toks.slice(0, 6)).toEqual([10, 11, 12, 13, 300, 301]);
    expect(reprefill!.batch.positions[reprefill!.batch.seqStarts[i]!]).toBe(0);
    expect(all.out.get('old')!.tokens).toEqual([200, 201, 202, 203, 204, 205, 206, 207]);
    expect(all.out.get('new')!.tokens).toEqual([300, 301, 302, 303, 304, 305, 306, 307]);
    // The sampling stream continues where it stopped: draws count the kept tokens.
    expect(reprefill!.batch.draws[i]).toBe(toks.length - 4);
  });
});

describe('stop conditions', () => {
  const finishOf = (o: { prompt?: number; pick: (id: string, d: number) => number; opts?: object; s?: object }) => {
    const s = newScheduler({ contextLength: 12, ...(o.opts ?? {}) });
    s.submit({ ...seq('a', { prompt: o.prompt ?? 3 }), sampling: sampling({ maxNewTokens: 5, ...(o.s ?? {}) }) });
    return runAll(s, { pick: o.pick }).out.get('a')!;
  };

  test('max_new_tokens', () => {
    expect(finishOf({ pick: () => 7 })).toEqual({ tokens: [7, 7, 7, 7, 7], finish: { type: 'length', length: 5 } });
  });

  test('EOS stops unless ignore_eos', () => {
    const pick = (_: string, d: number) => (d === 1 ? 2 : 7);
    expect(finishOf({ pick })).toEqual({ tokens: [7, 2], finish: { type: 'stop', matched: 2 } });
    expect(finishOf({ pick, s: { ignoreEos: true } }).finish).toEqual({ type: 'length', length: 5 });
  });

  test('stop_token_ids stop even with ignore_eos', () => {
    const pick = (_: string, d: number) => (d === 2 ? 42 : 7);
    expect(finishOf({ pick, s: { stopTokenIds: [42], ignoreEos: true } })).toEqual({
      tokens: [7, 7, 42],
      finish: { type: 'stop', matched: 42 },
    });
  });

  test('context length', () => {
    // 10 prompt tokens, context 12: two tokens fit.
    expect(finishOf({ prompt: 10, pick: () => 7 })).toEqual({ tokens: [7, 7], finish: { type: 'length', length: 2 } });
  });

  test('max_new_tokens 0 finishes without a step', () => {
    const s = newScheduler();
    s.submit(seq('z', { maxNewTokens: 0 }));
    expect(s.schedule()).toBeNull();
    expect(s.takeEvents()).toEqual([
      { id: 'z', token: -1, logprob: 0, topIds: [], topLogprobs: [], finish: { type: 'length', length: 0 }, promptTokens: 3, cachedTokens: 0 },
    ]);
    expect(s.hasWork()).toBe(false);
  });

  test('abort frees blocks and returns the final event; unknown ids give null', () => {
    const s = newScheduler({ numBlocks: 8 });
    s.submit(seq('a', { prompt: 9 }));
    step(s);
    expect(s.stats().freeBlocks).toBe(5);
    expect(s.abort('a')).toMatchObject({ id: 'a', token: -1, finish: { type: 'abort' }, promptTokens: 9 });
    expect(s.stats()).toEqual({ waiting: 0, running: 0, freeBlocks: 8, totalBlocks: 8, cachedBlocks: 0 });
    expect(s.abort('a')).toBeNull();
    expect(s.hasWork()).toBe(false);
  });

  test('a sequence aborted while its step runs produces no event', () => {
    const s = newScheduler();
    s.submit(seq('a'));
    s.submit(seq('b'));
    const sched = s.schedule()!;
    s.abort('a');
    const evs = s.complete(fakeResult(sched.batch, sched.seqIds));
    expect(evs.map((e) => e.id)).toEqual(['b']);
  });
});

describe('sampling fields', () => {
  test('per-sequence sampling options, seeds, draws and logprobs', () => {
    const s = newScheduler();
    s.submit({
      ...seq('a'),
      sampling: sampling({ temperature: 0.7, topK: 20, topP: 0.9, minP: 0.05 }),
      seed: 1234,
      returnLogprob: true,
      topLogprobsNum: 3,
    });
    s.submit({ ...seq('b'), seed: 99, topLogprobsNum: 1 });
    const r1 = step(s)!;
    // The values go to the engine's sampling slots in the first step; later ones name the slots.
    const sent = r1.batch.seqUpdate!;
    expect(Array.from(sent.slots)).toEqual([0, 1]);
    expect(Array.from(r1.batch.seqSlots!)).toEqual([0, 1]);
    expect(Array.from(sent.temperature)).toEqual([Math.fround(0.7), 0]);
    expect(Array.from(sent.topK)).toEqual([20, -1]);
    expect(Array.from(sent.topP)).toEqual([Math.fround(0.9), 1]);
    expect(Array.from(sent.minP)).toEqual([Math.fround(0.05), 0]);
    expect(Array.from(sent.seeds)).toEqual([1234, 99]);
    expect(Array.from(r1.batch.draws)).toEqual([0, 0]);
    expect(r1.batch.topLogprobs).toBe(3);
    expect(r1.batch.returnLogits).toBe(false);
    expect(Array.from(r1.batch.loraSlots)).toEqual([-1, -1]);
    expect(r1.events[0]).toMatchObject({ token: 100, logprob: -0.5, topIds: [100, 101, 102], topLogprobs: [-0, -1, -2] });
    expect(r1.events[1]).toMatchObject({ token: 100, topIds: [100] });
    const r2 = step(s)!;
    expect(Array.from(r2.batch.draws)).toEqual([1, 1]);
    expect(Array.from(r2.batch.seqSlots!)).toEqual([0, 1]);
    expect(r2.batch.seqUpdate).toBeUndefined();
  });

  test('topLogprobs counts only sequences that sample this step', () => {
    const s = newScheduler({ chunkedPrefillSize: 4 });
    s.submit(seq('a', { prompt: 2 }));
    s.submit({ ...seq('b', { prompt: 8 }), topLogprobsNum: 5 });
    const r = step(s)!;
    expect(Array.from(r.batch.sample)).toEqual([1, 0]);
    expect(r.batch.topLogprobs).toBe(0);
  });

  test('a sequence sends its blocks once, then only the blocks it gains', () => {
    const s = newScheduler({ blockSize: 4 });
    s.submit(seq('a', { prompt: 9, maxNewTokens: 8 }));
    s.submit(seq('b', { prompt: 2, maxNewTokens: 8 }));
    const r = step(s)!;
    expect(Array.from(r.batch.blockAppends!)).toEqual([0, 1, 2, 3]);
    expect(Array.from(r.batch.blockAppendStarts!)).toEqual([0, 3, 4]);
    expect(r.batch.blockTables).toBeUndefined();
    // Decoding one token a step: b's fifth token needs a second block, a's thirteenth a fourth.
    const gained: number[][] = [];
    for (let k = 0; k < 4; k++) {
      const { batch } = step(s)!;
      const starts = batch.blockAppendStarts!;
      gained.push(...[0, 1].map((i) => Array.from(batch.blockAppends!.subarray(starts[i]!, starts[i + 1]!))));
    }
    expect(gained).toEqual([[], [], [], [], [], [4], [5], []]);
  });
});

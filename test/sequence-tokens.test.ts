// A sequence's tokens: the prompt copied in, sampled tokens appended past the array's first size,
// and the stop conditions counted on them.
import { describe, expect, test } from 'vitest';
import { Sequence } from '../src/scheduler/sequence.js';
import { TokenPool } from '../src/scheduler/token-pool.js';
import type { Scheduler } from '../src/scheduler/scheduler.js';
import { fakeResult, newScheduler, runAll, seq } from './scheduler-harness.js';

const fakeOf = (st: { batch: Parameters<typeof fakeResult>[0]; seqIds: string[] }) => fakeResult(st.batch, st.seqIds);

/** The scheduler's pool (private: only what it holds is checked here). */
const poolOf = (s: Scheduler): TokenPool => (s as unknown as { tokenPool: TokenPool }).tokenPool;

const tokensOf = (s: Sequence): number[] => Array.from(s.tokens());

describe('a sequence keeps its tokens', () => {
  test('the prompt is copied: changing the request afterwards changes nothing', () => {
    const init = seq('a', { prompt: 5 });
    const s = new Sequence(init, 0);
    init.promptIds[0] = 999;
    expect(tokensOf(s)).toEqual([10, 11, 12, 13, 14]);
    expect(s.promptLength).toBe(5);
    expect(s.event(null).promptTokens).toBe(5);
  });

  test('sampled tokens append in order, past the room it started with, until max_new_tokens', () => {
    const s = new Sequence(seq('a', { prompt: 3, maxNewTokens: 1000 }), 0);
    const sampled: number[] = [];
    let finish = null;
    for (let i = 0; finish === null; i++) {
      const token = (i * 7919) % 50000;
      sampled.push(token);
      finish = s.accept(token, [], 1 << 20);
    }
    expect(finish).toEqual({ type: 'length', length: 1000 });
    expect(s.generated).toBe(1000);
    expect(s.tokenCount).toBe(1003);
    expect(tokensOf(s)).toEqual([10, 11, 12, ...sampled]);
  });

  test('sequences sharing a pool keep their own tokens as each outgrows its run, and give them back', () => {
    const pool = new TokenPool(64);
    const seqs = [0, 1, 2].map((k) => new Sequence(seq(`s${k}`, { prompt: 3 + 40 * k, maxNewTokens: 600 }), k, pool));
    const want = seqs.map((s) => tokensOf(s));
    for (let i = 0; i < 600; i++) {
      seqs.forEach((s, k) => {
        const token = 1000 * k + i;
        want[k]!.push(token);
        s.accept(token, [], 1 << 20);
      });
    }
    seqs.forEach((s, k) => expect(tokensOf(s)).toEqual(want[k]));
    for (const s of seqs) s.releaseTokens();
    expect(pool.inUse()).toBe(0);
    // Given back twice (it ended two ways at once) is given back once.
    seqs[0]!.releaseTokens();
    expect(pool.inUse()).toBe(0);
  });

  test('the context length ends it, counting the prompt', () => {
    const s = new Sequence(seq('a', { prompt: 6, maxNewTokens: 100 }), 0);
    expect(s.accept(1, [], 8)).toBeNull();
    expect(s.accept(2, [], 8)).toEqual({ type: 'length', length: 2 });
    expect(tokensOf(s)).toEqual([10, 11, 12, 13, 14, 15, 1, 2]);
  });
});

describe('a scheduler gives back the tokens of every sequence that ends', () => {
  test('finished, aborted waiting or running, preempted and run again, or asking for no tokens', () => {
    // Blocks (of 4 tokens) for a request or two at once: the others wait, and some are preempted.
    const s = newScheduler({ numBlocks: 40 });
    for (let k = 0; k < 12; k++) s.submit(seq(`r${k}`, { prompt: 5 + 6 * k, maxNewTokens: 20 + 5 * k }));
    s.submit(seq('none', { maxNewTokens: 0 }));
    s.submit(seq('waits', { prompt: 4, maxNewTokens: 8 }));
    expect(s.abort('waits')?.finish).toEqual({ type: 'abort', message: 'Request aborted' });
    const first = s.schedule()!;
    const early = s.complete(fakeOf(first));
    s.abort(first.seqIds[0]!);
    const { out } = runAll(s);
    for (let k = 0; k < 12; k++) {
      const id = `r${k}`;
      if (id === first.seqIds[0]) continue;
      // Every token came, in order, whatever preemption did on the way.
      const n = 20 + 5 * k;
      const tokens = [...early.filter((e) => e.id === id && e.token >= 0).map((e) => e.token), ...out.get(id)!.tokens];
      expect(tokens, id).toEqual(Array.from({ length: n }, (_, i) => 100 + i));
      expect(out.get(id)!.finish, id).toEqual({ type: 'length', length: n });
    }
    expect(s.load().preempted.cache).toBeGreaterThan(0);
    expect(s.stats().running + s.stats().waiting).toBe(0);
    expect(poolOf(s).inUse()).toBe(0);
  });
});

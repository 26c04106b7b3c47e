// A step result that fails one row (StepResult.errors) fails that sequence alone: it is dropped
// with its blocks freed and reported by takeFailures, while its batch-mates keep their tokens
// and run to completion. Also: top_k values an Int32Array would wrap reach the engine as off.
import { describe, expect, test } from 'vitest';
import type { StepResult } from '../src/engine/types.js';
import { buildBatch } from '../src/scheduler/batch-builder.js';
import { SequenceSlots } from '../src/scheduler/sequence-slots.js';
import { Sequence } from '../src/scheduler/sequence.js';
import { fakeResult, newScheduler, runAll, sampling, seq } from './scheduler-harness.js';

/** The fake engine's result with `message` as the error of the rows of `failing`. */
function failingResult(batch: Parameters<typeof fakeResult>[0], ids: string[], failing: string[], message: string): StepResult {
  const r = fakeResult(batch, ids);
  const errors = ids.map((id) => (failing.includes(id) ? message : null));
  ids.forEach((id, i) => {
    if (failing.includes(id)) r.tokens[i] = -1;
  });
  return { ...r, errors };
}

describe('a step that fails one row', () => {
  test('drops that sequence alone; the other keeps its token and runs to completion', () => {
    const s = newScheduler({ numBlocks: 8 });
    s.submit(seq('a', { prompt: 5, maxNewTokens: 6 }));
    s.submit(seq('b', { prompt: 6, maxNewTokens: 6 }));
    const first = s.schedule()!;
    expect(first.seqIds).toEqual(['a', 'b']);
    const events = s.complete(fakeResult(first.batch, first.seqIds));
    expect(events.map((e) => e.token)).toEqual([100, 100]);
    expect(s.takeFailures()).toEqual([]);

    const second = s.schedule()!;
    const message = 'invalid sampling values: temperature must be a number >= 0, got nan';
    const after = s.complete(failingResult(second.batch, second.seqIds, ['a'], message));
    // b's token of this step stands; a gets no event, only the failure.
    expect(after).toEqual([expect.objectContaining({ id: 'b', token: 101, finish: null })]);
    expect(s.takeFailures()).toEqual([{ id: 'a', message }]);
    expect(s.takeFailures()).toEqual([]);
    // a's blocks are free again: only b's two blocks (7 tokens in cache, block size 4) are held.
    expect(s.stats()).toEqual({ waiting: 0, running: 1, freeBlocks: 6, totalBlocks: 8, cachedBlocks: 0 });
    expect(s.abort('a')).toBeNull();

    const { out, steps } = runAll(s);
    for (const st of steps) expect(st.ids).toEqual(['b']);
    expect(out.get('b')).toEqual({ tokens: [102, 103, 104, 105], finish: { type: 'length', length: 6 } });
    expect(out.has('a')).toBe(false);
    expect(s.stats()).toEqual({ waiting: 0, running: 0, freeBlocks: 8, totalBlocks: 8, cachedBlocks: 0 });
    // Both sequences' tokens went back to the pool, the failed one's too.
    expect((s as unknown as { tokenPool: { inUse(): number } }).tokenPool.inUse()).toBe(0);
  });

  test('a waiting request takes the place the failed sequence freed', () => {
    const s = newScheduler({ maxRunningRequests: 2 });
    for (const id of ['a', 'b', 'c']) s.submit(seq(id, { maxNewTokens: 3 }));
    const first = s.schedule()!;
    expect(first.seqIds).toEqual(['a', 'b']);
    s.complete(failingResult(first.batch, first.seqIds, ['b'], 'sampling failed: boom'));
    expect(s.takeFailures()).toEqual([{ id: 'b', message: 'sampling failed: boom' }]);
    const { out } = runAll(s);
    expect(out.get('a')!.tokens).toEqual([101, 102]);
    expect(out.get('c')).toEqual({ tokens: [100, 101, 102], finish: { type: 'length', length: 3 } });
    expect(out.has('b')).toBe(false);
  });

  test('an error for a sequence aborted while the step ran is ignored', () => {
    const s = newScheduler();
    s.submit(seq('a'));
    s.submit(seq('b'));
    const sched = s.schedule()!;
    s.abort('a');
    const events = s.complete(failingResult(sched.batch, sched.seqIds, ['a'], 'bad'));
    expect(events.map((e) => e.id)).toEqual(['b']);
    expect(s.takeFailures()).toEqual([]);
  });
});

describe('top_k in the batch', () => {
  test('values beyond int32 are off (-1) instead of wrapping', () => {
    const topKs = [2 ** 32 + 1, 2 ** 31, 2 ** 31 - 1, 5, 1, -1, 0, -(2 ** 32) + 1];
    const entries = topKs.map((topK, i) => {
      const sq = new Sequence(seq(`s${i}`, { sampling: sampling({ topK }) }), i);
      sq.blocks = [i];
      return { seq: sq, start: 0, chunk: sq.tokenCount, sample: true, slot: -1, feedRow: -1, epoch: 0 };
    });
    expect(Array.from(buildBatch(entries, entries.length, new SequenceSlots()).seqUpdate!.topK)).toEqual([-1, -1, 2 ** 31 - 1, 5, 1, -1, -1, -1]);
  });
});

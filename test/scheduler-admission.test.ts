// Admission under --max-loras-per-batch: requests for adapters already in the step need no new
// place and are admitted while a request for a new adapter waits for one, and the adapter in
// the step that will free a place soonest drains so the waiting request gets in.
import { describe, expect, test } from 'vitest';
import type { Scheduler } from '../src/scheduler/index.js';
import { newScheduler, seq, serveLoader, step } from './scheduler-harness.js';

function withAdapters(names: string[], o: Parameters<typeof newScheduler>[0]): Scheduler {
  const s = newScheduler(o);
  for (const n of names) s.addAdapter({ name: n, path: `/${n}`, pinned: false });
  serveLoader(s);
  return s;
}

/** One step after serving the loader: the ids it ran, and the ids that finished in it. */
function next(s: Scheduler): { ids: string[]; finished: string[] } {
  serveLoader(s);
  const r = step(s);
  return { ids: r?.ids ?? [], finished: r?.events.filter((e) => e.finish).map((e) => e.id) ?? [] };
}

describe('admission while places are short', () => {
  test('requests for adapters in the step are admitted while a request for a new adapter waits; the adapter ending soonest takes none', () => {
    const s = withAdapters(['A', 'B', 'X'], { maxLorasPerBatch: 2 });
    s.submit(seq('a0', { lora: 'A', maxNewTokens: 3 }));
    s.submit(seq('b0', { lora: 'B', maxNewTokens: 20 }));
    expect(next(s).ids).toEqual(['a0', 'b0']);
    s.submit(seq('x', { lora: 'X', maxNewTokens: 2 }));
    s.submit(seq('a1', { lora: 'A', maxNewTokens: 2 }));
    s.submit(seq('b1', { lora: 'B', maxNewTokens: 2 }));
    // B needs no new place: b1 runs at once. A's requests end first, so A takes no more and x waits for its place.
    expect(next(s).ids).toEqual(['a0', 'b0', 'b1']);
    const seen: string[][] = [];
    for (let i = 0; i < 40 && s.hasWork(); i++) seen.push(next(s).ids);
    const firstStep = (id: string) => seen.findIndex((ids) => ids.includes(id));
    const lastStep = (id: string) => seen.map((ids) => ids.includes(id)).lastIndexOf(true);
    // x got A's place the step after a0, its last request, ended; a1 came after it.
    expect(firstStep('x')).toBe(lastStep('a0') + 1);
    expect(firstStep('a1')).toBeGreaterThan(firstStep('x'));
    expect(s.hasWork()).toBe(false);
  });

  test('a request for a new adapter gets its place within the running requests\u2019 max_new_tokens though the step\u2019s adapters keep receiving requests', () => {
    // A and the base model fill both places and receive a new request every step; under plain
    // skipping neither would ever leave the step and x would wait forever.
    const s = withAdapters(['A', 'X'], { maxLorasPerBatch: 2 });
    const maxNewTokens = 6;
    s.submit(seq('a0', { lora: 'A', maxNewTokens }));
    s.submit(seq('b0', { maxNewTokens }));
    next(s);
    s.submit(seq('x', { lora: 'X', maxNewTokens: 2 }));
    const started = new Map<string, number>();
    for (let i = 1; i <= 40 && !started.has('x'); i++) {
      s.submit(seq(`a${i}`, { lora: 'A', maxNewTokens }));
      s.submit(seq(`b${i}`, { maxNewTokens }));
      for (const id of next(s).ids) if (!started.has(id)) started.set(id, i);
    }
    // The base model's requests kept running next to A's while x waited.
    expect(started.get('b1')).toBe(1);
    // x waited for A's running requests to end, and no longer.
    expect(started.get('x')).toBeDefined();
    expect(started.get('x')!).toBeLessThanOrEqual(maxNewTokens + 1);
  });

  test('at most half the places drain at once, those of the adapters ending soonest', () => {
    const s = withAdapters(['A', 'B', 'C', 'D', 'X', 'Y', 'Z'], { maxLorasPerBatch: 4, numBlocks: 256 });
    const left = { A: 3, B: 5, C: 20, D: 20 };
    for (const [n, m] of Object.entries(left)) s.submit(seq(`${n.toLowerCase()}0`, { lora: n, maxNewTokens: m }));
    expect(next(s).ids).toEqual(['a0', 'b0', 'c0', 'd0']);
    for (const n of ['X', 'Y', 'Z']) s.submit(seq(n.toLowerCase(), { lora: n }));
    for (const n of ['A', 'B', 'C', 'D']) s.submit(seq(`${n.toLowerCase()}1`, { lora: n }));
    // Three requests wait for a place; two adapters drain (A and B end first), C and D take theirs.
    expect(next(s).ids).toEqual(['a0', 'b0', 'c0', 'd0', 'c1', 'd1']);
  });
});

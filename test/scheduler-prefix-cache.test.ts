// The prefix cache through the scheduler: a fake engine keeps every block's contents (each
// position's token and the adapter it was computed under) as the batches write them, and checks
// that every row reads exactly its own tokens under its own adapter through its block table. So
// a block shared wrongly, kept before it was computed, or written while another request reads it
// fails here, whatever tokens the fake model picks.
import { describe, expect, it } from 'vitest';
import type { Scheduler, TokenEvent } from '../src/scheduler/index.js';
import { BlockTables, newScheduler, seq, serveLoader } from './scheduler-harness.js';

const BLOCK = 4;

class KvModel {
  private readonly kv = new Map<number, string[]>();
  private readonly tables = new BlockTables();
  /** Each request's tokens as the test knows them (prompt, then what it sampled) and its adapter. */
  readonly truth = new Map<string, { tokens: number[]; lora: string | null; cached: number; done: boolean }>();
  steps = 0;

  constructor(private readonly s: Scheduler) {}

  submit(id: string, prompt: number[], lora: string | null = null, maxNewTokens = 3): void {
    this.truth.set(id, { tokens: [...prompt], lora, cached: -1, done: false });
    this.s.submit(seq(id, { promptIds: prompt, lora, maxNewTokens }));
  }

  /** One step: writes each row's new positions, checks every row's reads, samples. False if none ran. */
  step(): boolean {
    serveLoader(this.s);
    const sched = this.s.schedule();
    if (!sched) return false;
    this.steps++;
    const b = sched.batch;
    const rows = this.tables.rows(b);
    const at = (id: string) => this.truth.get(id)!;
    sched.seqIds.forEach((id, j) => {
      const t = at(id);
      const from = b.seqStarts[j]!;
      const start = b.positions[from]!;
      for (let p = start; p < start + b.seqStarts[j + 1]! - from; p++) {
        expect(b.tokens[from + p - start], `${id}'s token at ${p}`).toBe(t.tokens[p]);
        const block = rows[j]![Math.floor(p / BLOCK)]!;
        const cells = this.kv.get(block) ?? [];
        cells[p % BLOCK] = `${t.tokens[p]}:${t.lora}`;
        this.kv.set(block, cells);
      }
    });
    sched.seqIds.forEach((id, j) => {
      const t = at(id);
      for (let p = 0; p < b.contextLens[j]!; p++) {
        const block = rows[j]![Math.floor(p / BLOCK)]!;
        expect(this.kv.get(block)?.[p % BLOCK], `${id} reads position ${p} from block ${block}`).toBe(`${t.tokens[p]}:${t.lora}`);
      }
    });
    const n = sched.seqIds.length;
    const tokens = new Int32Array(n).fill(-1);
    // The next token: any function of the request's tokens will do; this one depends on all of them.
    sched.seqIds.forEach((id, j) => {
      if (b.sample[j]) tokens[j] = 1000 + (at(id).tokens.reduce((h, x) => (h * 31 + x) % 997, 7) % 50);
    });
    const events = this.s.complete({
      tokens,
      logprobs: new Float32Array(n),
      topIds: new Int32Array(0),
      topLogprobValues: new Float32Array(0),
      logits: null,
      errors: null,
    });
    this.record(events);
    return true;
  }

  record(events: TokenEvent[]): void {
    for (const e of events) {
      const t = this.truth.get(e.id)!;
      if (t.cached < 0) t.cached = e.cachedTokens;
      if (e.token >= 0) t.tokens.push(e.token);
      if (e.finish) t.done = true;
    }
  }

  runAll(): void {
    for (let i = 0; i < 2000 && this.s.hasWork(); i++) {
      this.record(this.s.takeEvents());
      this.step();
    }
    expect(this.s.hasWork()).toBe(false);
  }

  cached(id: string): number {
    return this.truth.get(id)!.cached;
  }

  tokens(id: string): number[] {
    return this.truth.get(id)!.tokens;
  }
}

const range = (from: number, n: number) => Array.from({ length: n }, (_, i) => from + i);

function cachingModel(o: Parameters<typeof newScheduler>[0] = {}): { s: Scheduler; m: KvModel } {
  const s = newScheduler({ blockSize: BLOCK, prefixCache: true, ...o });
  return { s, m: new KvModel(s) };
}

describe('the prefix cache', () => {
  it('lets a later request read the full blocks of an earlier one with the same prompt, leaving its last token to compute', () => {
    const { s, m } = cachingModel();
    m.submit('a', range(1, 10));
    m.runAll();
    m.submit('b', range(1, 10));
    m.runAll();
    expect(m.cached('a')).toBe(0);
    // Two full blocks of the ten tokens; the third block holds the token that must run.
    expect(m.cached('b')).toBe(8);
    expect(m.tokens('b')).toEqual(m.tokens('a'));
    // A prompt of whole blocks still computes its last one.
    m.submit('c', range(1, 8));
    m.runAll();
    expect(m.cached('c')).toBe(4);
    expect(s.stats()).toMatchObject({ waiting: 0, running: 0, freeBlocks: 64, totalBlocks: 64 });
  });

  it('keeps generated tokens too, so the next turn of a conversation starts from them', () => {
    const { m } = cachingModel();
    m.submit('turn1', range(1, 10), null, 4);
    m.runAll();
    // 10 prompt tokens and 4 sampled: the KV of the first 13 is computed, 3 blocks of it kept.
    const next = [...m.tokens('turn1'), 500, 501, 502];
    m.submit('turn2', next);
    m.runAll();
    expect(m.cached('turn2')).toBe(12);
  });

  it('matches only under the same adapter and the same read of its weights', async () => {
    const { s, m } = cachingModel();
    s.addAdapter({ name: 'A', path: '/A', pinned: false });
    s.addAdapter({ name: 'B', path: '/B', pinned: false });
    m.submit('base', range(1, 12));
    m.runAll();
    m.submit('a1', range(1, 12), 'A');
    m.runAll();
    m.submit('b1', range(1, 12), 'B');
    m.runAll();
    m.submit('a2', range(1, 12), 'A');
    m.runAll();
    m.submit('base2', range(1, 12));
    m.runAll();
    expect([m.cached('a1'), m.cached('b1'), m.cached('a2'), m.cached('base2')]).toEqual([0, 0, 8, 8]);
    // A unloaded and loaded again, its weights read from disk anew: what was computed with the
    // earlier copy no longer matches.
    await s.removeAdapter('A');
    serveLoader(s);
    s.addAdapter({ name: 'A', path: '/A', pinned: false });
    m.submit('a3', range(1, 12), 'A');
    m.runAll();
    expect(m.cached('a3')).toBe(0);
  });

  it('shares blocks between requests that run at once, and frees them when the last lets go', () => {
    const { s, m } = cachingModel({ numBlocks: 16 });
    m.submit('first', range(1, 13), null, 2);
    m.runAll();
    for (const id of ['x', 'y', 'z']) m.submit(id, [...range(1, 12), 900], null, 6);
    m.runAll();
    expect(['x', 'y', 'z'].map((id) => m.cached(id))).toEqual([12, 12, 12]);
    expect(s.stats()).toMatchObject({ running: 0, freeBlocks: 16 });
  });

  it('holds back requests whose beginning another request is computing, then serves it to them from the cache', () => {
    const { s, m } = cachingModel();
    for (const id of ['a', 'b', 'c']) m.submit(id, [...range(1, 12), ...range(100 * id.charCodeAt(0), 3)]);
    m.step();
    // a prefilled alone; b and c waited for its three blocks and read them.
    expect(s.stats()).toMatchObject({ running: 1, waiting: 2 });
    m.runAll();
    expect(['a', 'b', 'c'].map((id) => m.cached(id))).toEqual([0, 12, 12]);
  });

  it('lets a held-back request go on when the request computing its beginning leaves first', () => {
    const { s, m } = cachingModel({ chunkedPrefillSize: 8 });
    m.submit('a', range(1, 30));
    m.submit('b', range(1, 30));
    m.step();
    expect(s.stats()).toMatchObject({ running: 1, waiting: 1 });
    // a has computed one block of 8 tokens' chunk: b takes that one and computes the rest itself.
    s.abort('a');
    m.runAll();
    expect(m.cached('b')).toBe(8);
    expect(m.truth.get('b')!.done).toBe(true);
  });

  it('forgets everything on flushCache, while requests that hold blocks go on', () => {
    const { s, m } = cachingModel();
    m.submit('a', range(1, 10), null, 8);
    m.step();
    m.step();
    s.flushCache();
    expect(s.stats().cachedBlocks).toBe(0);
    m.runAll();
    m.submit('b', range(1, 10));
    m.runAll();
    // a's blocks kept after the flush (those computed later) serve b; those before it do not.
    expect(m.cached('b')).toBe(0);
    s.flushCache();
    m.submit('c', range(1, 10));
    m.runAll();
    expect(m.cached('c')).toBe(0);
  });

  it('gives idle cached blocks to new requests when no free block is left, oldest first', () => {
    const { s, m } = cachingModel({ numBlocks: 8 });
    // Each keeps its first two blocks; the third, with one token, is free again.
    m.submit('a', range(1, 9), null, 1);
    m.runAll();
    m.submit('b', range(100, 9), null, 1);
    m.runAll();
    expect(s.stats().cachedBlocks).toBe(4);
    // Needs 6 of the 8 blocks: the 4 free ones and the 2 cached longest ago, a's.
    m.submit('c', range(200, 22), null, 1);
    m.runAll();
    m.submit('b2', range(100, 9), null, 1);
    m.submit('a2', range(1, 9), null, 1);
    m.runAll();
    expect(m.cached('b2')).toBe(8);
    expect(m.cached('a2')).toBe(0);
  });

  it('reads nothing cached when turned off', () => {
    const s = newScheduler({ blockSize: BLOCK });
    const m = new KvModel(s);
    m.submit('a', range(1, 10));
    m.runAll();
    m.submit('b', range(1, 10));
    m.runAll();
    expect(m.cached('b')).toBe(0);
    expect(s.stats().cachedBlocks).toBe(0);
  });

  it('keeps every read right under a mixed load with preemption, evictions, adapters and flushes', () => {
    let state = 2024;
    const rand = (n: number) => {
      state = (state * 1103515245 + 12345) % 2 ** 31;
      return Math.floor((state / 2 ** 31) * n);
    };
    const { s, m } = cachingModel({ numBlocks: 14, chunkedPrefillSize: 12, maxRunningRequests: 5, maxLorasPerBatch: 3 });
    for (const n of ['A', 'B']) s.addAdapter({ name: n, path: `/${n}`, pinned: false });
    const prefixes = [range(1, 9), range(50, 6), range(80, 13)];
    let submitted = 0;
    const preemptedBefore = s.load().preempted.cache;
    for (let i = 0; i < 3000 && (submitted < 80 || s.hasWork()); i++) {
      if (submitted < 80 && rand(3) === 0) {
        const prompt = [...prefixes[rand(prefixes.length)]!, ...range(300 + rand(5), rand(7))];
        const lora = [null, 'A', 'B'][rand(3)]!;
        m.submit(`r${submitted++}`, prompt, lora, 1 + rand(9));
      }
      if (rand(40) === 0) s.flushCache();
      m.record(s.takeEvents());
      m.step();
    }
    expect(s.hasWork()).toBe(false);
    const ids = [...m.truth.keys()];
    expect(ids.every((id) => m.truth.get(id)!.done)).toBe(true);
    expect(ids.filter((id) => m.cached(id) > 0).length).toBeGreaterThan(10);
    expect(s.load().preempted.cache).toBeGreaterThan(preemptedBefore);
    expect(s.stats()).toMatchObject({ running: 0, waiting: 0, freeBlocks: 14 });
  });
});

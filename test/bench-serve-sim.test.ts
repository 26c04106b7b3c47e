// The serving simulator (bench/sim-server.js): the real scheduler in simulated time, with a fake
// loader and a step-time model. What it reports must follow the requests it served, and overlap
// loading must be what lets steps run while a slot is filled. (The bench scripts load the
// scheduler from dist/, which `npm test` builds first.)
import { describe, expect, it } from 'vitest';
// @ts-expect-error plain JavaScript without declarations
import { simulate } from '../bench/sim-server.js';
// @ts-expect-error plain JavaScript without declarations
import { makeWorkload } from '../bench/serve-workload.js';
// @ts-expect-error plain JavaScript without declarations
import { adapterName } from '../bench/make-adapters.js';
import { DEFAULT_SAMPLING } from '../src/api.js';
import { Scheduler } from '../src/scheduler/index.js';

interface SimRecord {
  ok: boolean;
  ttft: number | null;
  itls: number[];
  outputTokens: number;
}

const MODULES = ['q_proj', 'k_proj', 'v_proj', 'o_proj'];

function baseOptions() {
  return {
    blockSize: 16,
    numBlocks: 4096,
    maxRunningRequests: 64,
    chunkedPrefillSize: 2048,
    maxLorasPerBatch: 4,
    maxLoadedLoras: null,
    evictionPolicy: 'lru' as const,
    maxPlaceWaitSteps: 50,
    eosTokenIds: [],
    contextLength: 4096,
    maxLoraRank: 8,
    loraModules: MODULES,
  };
}

function run(opts: {
  adapters: number;
  overlap: boolean;
  copyMs: number;
  requests: Array<{ at: number; adapter: number; maxNewTokens: number }>;
  overlapSchedule?: boolean;
  copySlowdown?: number;
}) {
  const names = Array.from({ length: opts.adapters }, (_, i) => adapterName(i) as string);
  const workload = opts.requests.map((r, index) => ({
    index,
    at: r.at,
    adapter: r.adapter,
    rank: r.adapter,
    inputIds: [101, 102, 103, 104],
    maxNewTokens: r.maxNewTokens,
  }));
  return simulate({
    Scheduler,
    DEFAULT_SAMPLING,
    names,
    workload,
    drainTimeout: 60,
    overlapSchedule: opts.overlapSchedule,
    options: { ...baseOptions(), overlapLoading: opts.overlap },
    loader: { rank: 8, targetModules: MODULES, bytes: 1_000_000, readMs: 10, copyMs: opts.copyMs, maxReads: 2 },
    model: { a: 10, b: 0, c: 0, d: 0, copySlowdown: opts.copySlowdown },
  }) as { records: SimRecord[]; elapsed: number; stats: { steps: number; copies: number } };
}

describe('serving simulator', () => {
  it('serves the S-LoRA workload: every request ends with the tokens it asked for', () => {
    const workload = makeWorkload({
      seed: 3,
      rate: 4,
      cv: 1,
      alpha: 1,
      duration: 10,
      adapters: 12,
      inputLen: [8, 64],
      outputLen: [4, 32],
      tokenRange: [100, 1000],
    });
    const names = Array.from({ length: 12 }, (_, i) => adapterName(i) as string);
    const r = simulate({
      Scheduler,
      DEFAULT_SAMPLING,
      names,
      workload,
      drainTimeout: 60,
      options: { ...baseOptions(), overlapLoading: false },
      loader: { rank: 8, targetModules: MODULES, bytes: 1_000_000, readMs: 10, copyMs: 2, maxReads: 2 },
      model: { a: 10, b: 0.1, c: 0.05, d: 0.1 },
    }) as { records: SimRecord[] };
    expect(r.records).toHaveLength(workload.length);
    r.records.forEach((rec, i) => {
      expect(rec.ok).toBe(true);
      expect(rec.outputTokens).toBe(workload[i].maxNewTokens);
      expect(rec.ttft).toBeGreaterThan(0);
      expect(rec.itls).toHaveLength(workload[i].maxNewTokens - 1);
    });
  });

  it('lets the running request keep decoding during a copy only with overlap loading', () => {
    // One long request runs on adapter 0; at 1 s a request for adapter 1 arrives, whose copy
    // takes 200 ms. Without overlap loading no step is planned during that copy, so the long
    // request sees one gap between tokens of the copy's length: all of it planning one step at a
    // time, less the 10 ms step already planned ahead under overlap scheduling. With overlap
    // loading its gaps stay at the step time.
    const requests = [
      { at: 0, adapter: 0, maxNewTokens: 300 },
      { at: 1, adapter: 1, maxNewTokens: 4 },
    ];
    const gaps = (overlap: boolean, overlapSchedule: boolean) => {
      const r = run({ adapters: 2, overlap, copyMs: 200, requests, overlapSchedule });
      expect(r.records.every((x) => x.ok)).toBe(true);
      return Math.max(...r.records[0]!.itls);
    };
    expect(gaps(false, false)).toBeGreaterThanOrEqual(0.2);
    expect(gaps(false, true)).toBeGreaterThanOrEqual(0.19 - 1e-9);
    for (const overlapSchedule of [false, true]) expect(gaps(true, overlapSchedule)).toBeLessThan(0.05);
  });

  it('slows the steps planned while a slot is being filled by copySlowdown', () => {
    // As above with overlap loading: the long request's steps during the 200 ms copy take 10 ms,
    // or 30 ms three times slower, and no step outside the copy is slowed.
    const requests = [
      { at: 0, adapter: 0, maxNewTokens: 300 },
      { at: 1, adapter: 1, maxNewTokens: 4 },
    ];
    const itls = (copySlowdown?: number) => {
      const r = run({ adapters: 2, overlap: true, copyMs: 200, requests, copySlowdown });
      expect(r.records.every((x) => x.ok)).toBe(true);
      return r.records[0]!.itls;
    };
    expect(Math.max(...itls())).toBeCloseTo(0.01, 6);
    const slowed = itls(3);
    expect(Math.max(...slowed)).toBeCloseTo(0.03, 6);
    expect(slowed.filter((t) => t > 0.015).length).toBeGreaterThan(3);
    expect(slowed.filter((t) => t > 0.015).length).toBeLessThan(15);
  });

  it('copies adapters into slots one at a time, as the engine fills them', () => {
    // Two requests for two adapters arrive together; both adapters are read at once (two reads
    // may run), but the second copy starts when the first has landed: 100 ms later.
    const r = run({
      adapters: 3,
      overlap: true,
      copyMs: 100,
      requests: [
        { at: 0, adapter: 1, maxNewTokens: 2 },
        { at: 0, adapter: 2, maxNewTokens: 2 },
      ],
    });
    expect(r.records.every((x) => x.ok)).toBe(true);
    expect(r.stats.copies).toBe(2);
    const [first, second] = r.records.map((x) => x.ttft!).sort((a, b) => a - b);
    expect(first!).toBeLessThan(0.15);
    expect(second! - first!).toBeGreaterThanOrEqual(0.1 - 1e-9);
  });
});

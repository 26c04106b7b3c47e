// The serving benchmark's parts that decide what it reports: the S-LoRA workload generator, the
// random adapters it serves, the SSE timing of one request, the /metrics deltas and the capacity
// search. (The bench scripts load helpers from dist/, which `npm test` builds first.)
import { createServer, type Server } from 'node:http';
import { lstatSync, readFileSync, readlinkSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
// @ts-expect-error plain JavaScript without declarations
import { interArrivals, makeWorkload, powerLawCdf } from '../bench/serve-workload.js';
// @ts-expect-error plain JavaScript without declarations
import { makeAdapters, planAdapters } from '../bench/make-adapters.js';
// @ts-expect-error plain JavaScript without declarations
import { adapterActivity, engineShare, parseMetrics, percentile, stepBuckets, streamGenerate, summarize } from '../bench/serve-client.js';
// @ts-expect-error plain JavaScript without declarations
import { searchCapacity } from '../bench/serve-capacity.js';
// @ts-expect-error plain JavaScript without declarations
import { serverArgs } from '../bench/serve-lora.js';
import { parseArgs } from '../src/config/parse.js';
import { validateFlags } from '../src/config/validate.js';
import { loadAdapterWeights } from '../src/model/adapter.js';
import { parseModelConfig } from '../src/model/config.js';
import { DEMO_MODEL } from '../src/model/demo.js';
import { LLAMA_8B_CONFIG } from '../bench/llama-8b-config.js';
import { tempDir } from './model-fixtures.js';

const base = { seed: 7, rate: 4, cv: 1, alpha: 1, adapters: 50, inputLen: [8, 512], outputLen: [8, 256], tokenRange: [100, 128000] };

function moments(xs: number[]): { mean: number; cv: number } {
  const mean = xs.reduce((a, b) => a + b, 0) / xs.length;
  const variance = xs.reduce((a, b) => a + (b - mean) ** 2, 0) / (xs.length - 1);
  return { mean, cv: Math.sqrt(variance) / mean };
}

describe('workload generator', () => {
  it.each([
    [4, 1],
    [2, 0.5],
    [10, 2],
  ])('Gamma gaps at %d req/s have mean 1/rate and cv %d', (rate, cv) => {
    const it = interArrivals(3, rate, cv);
    const n = 20_000;
    const gaps = Array.from({ length: n }, () => it.next().value as number);
    const m = moments(gaps);
    // Four standard errors of the mean; the sample cv within 8% (about four of its standard errors at cv 2).
    expect(Math.abs(m.mean - 1 / rate)).toBeLessThan((4 * cv) / rate / Math.sqrt(n));
    expect(Math.abs(m.cv / cv - 1)).toBeLessThan(0.08);
    expect(gaps.every((g) => g > 0)).toBe(true);
  });

  it('spaces requests evenly at cv 0', () => {
    const w = makeWorkload({ ...base, cv: 0, requests: 5 });
    expect(w.map((r: { at: number }) => r.at)).toEqual([0.25, 0.5, 0.75, 1, 1.25]);
  });

  it('picks adapters by popularity rank with power-law frequencies, over a seeded order', () => {
    const w = makeWorkload({ ...base, requests: 20_000 });
    const byRank = new Array(base.adapters).fill(0);
    const adapterOfRank = new Map<number, number>();
    for (const r of w) {
      byRank[r.rank]++;
      // One adapter per rank: the shuffle is a fixed mapping.
      expect(adapterOfRank.get(r.rank) ?? r.adapter).toBe(r.adapter);
      adapterOfRank.set(r.rank, r.adapter);
    }
    const cdf = powerLawCdf(base.adapters, 1);
    for (let k = 0; k < 5; k++) expect(byRank[k]).toBeGreaterThan(byRank[k + 1]);
    // Rank 1's share is 1 / H_50 (about 0.222); four binomial standard errors.
    expect(Math.abs(byRank[0] / w.length - cdf[0])).toBeLessThan(4 * Math.sqrt((cdf[0] * (1 - cdf[0])) / w.length));
    expect(new Set(adapterOfRank.values()).size).toBe(adapterOfRank.size);
    expect([...adapterOfRank.values()].every((a) => a >= 0 && a < base.adapters)).toBe(true);
    // The most popular adapter is not simply a0000 for this seed.
    expect(adapterOfRank.get(0)).not.toBe(0);
  });

  it('keeps lengths and token ids in their ranges, reaching both ends', () => {
    const w = makeWorkload({ ...base, inputLen: [8, 12], outputLen: [3, 5], tokenRange: [100, 110], requests: 2000 });
    const prompts = w.map((r: { inputIds: number[] }) => r.inputIds.length);
    const outs = w.map((r: { maxNewTokens: number }) => r.maxNewTokens);
    expect(Math.min(...prompts)).toBe(8);
    expect(Math.max(...prompts)).toBe(12);
    expect(Math.min(...outs)).toBe(3);
    expect(Math.max(...outs)).toBe(5);
    const ids = w.flatMap((r: { inputIds: number[] }) => r.inputIds);
    expect(Math.min(...ids)).toBe(100);
    expect(Math.max(...ids)).toBe(109);
  });

  it('is the same for a seed, and a new rate only rescales the arrival times', () => {
    const a = makeWorkload({ ...base, duration: 30 });
    expect(makeWorkload({ ...base, duration: 30 })).toEqual(a);
    expect(makeWorkload({ ...base, seed: 8, duration: 30 })).not.toEqual(a);
    const fast = makeWorkload({ ...base, rate: 8, requests: a.length });
    expect(fast.map((r: { adapter: number }) => r.adapter)).toEqual(a.map((r: { adapter: number }) => r.adapter));
    expect(fast.map((r: { inputIds: number[] }) => r.inputIds)).toEqual(a.map((r: { inputIds: number[] }) => r.inputIds));
    fast.forEach((r: { at: number }, i: number) => expect(r.at * 2).toBeCloseTo(a[i].at, 9));
  });

  it('stops at the duration or the request count, whichever comes first', () => {
    const w = makeWorkload({ ...base, duration: 30 });
    expect(w.at(-1).at).toBeLessThanOrEqual(30);
    expect(w.length).toBeGreaterThan(80);
    expect(makeWorkload({ ...base, duration: 30, requests: 10 })).toHaveLength(10);
    expect(() => makeWorkload({ ...base })).toThrow(/duration or a number of requests/);
    expect(() => makeWorkload({ ...base, inputLen: [0, 5], requests: 1 })).toThrow(/prompt lengths/);
  });
});

describe('make-adapters', () => {
  const tmp = tempDir('troupe-bench-adapters-');
  afterAll(() => tmp.cleanup());
  const config = parseModelConfig(DEMO_MODEL, 'config.json');

  it('writes PEFT adapters that troupe loads, each different, with the intended scale', () => {
    const res = makeAdapters({ hfConfig: DEMO_MODEL, outDir: tmp.path, count: 3, rank: 8, modules: ['q_proj', 'v_proj'], seed: 1 });
    expect(res).toMatchObject({ written: 3, skipped: 0 });
    const loaded = ['a0000', 'a0001', 'a0002'].map((n) => loadAdapterWeights(join(tmp.path, n), config));
    for (const { info, weights } of loaded) {
      expect(info).toMatchObject({ rank: 8, alpha: 16, scaling: 2, targetModules: ['q_proj', 'v_proj'] });
      expect(weights.weights).toHaveLength(config.numLayers * 2);
      const w = weights.weights[0]!;
      const rms = (a: Float32Array) => Math.sqrt(a.reduce((s, v) => s + v * v, 0) / a.length);
      // Within sqrt(2) of the targets 1/sqrt(in) and gain / (scaling sqrt(r)).
      expect(rms(w.a) * Math.sqrt(config.hiddenSize)).toBeGreaterThan(0.7);
      expect(rms(w.a) * Math.sqrt(config.hiddenSize)).toBeLessThan(1.42);
      expect(rms(w.b) / (0.02 / (2 * Math.sqrt(8)))).toBeGreaterThan(0.7);
      expect(rms(w.b) / (0.02 / (2 * Math.sqrt(8)))).toBeLessThan(1.42);
      expect(Math.abs(w.a.reduce((s, v) => s + v, 0) / w.a.length)).toBeLessThan(0.2 * rms(w.a));
    }
    expect(loaded[1]!.weights.weights[0]!.a).not.toEqual(loaded[0]!.weights.weights[0]!.a);
  });

  it('keeps adapters already present and rewrites those of another shape', () => {
    const dir = join(tmp.path, 'resume');
    makeAdapters({ hfConfig: DEMO_MODEL, outDir: dir, count: 2, rank: 4, modules: ['o_proj'] });
    const before = statSync(join(dir, 'a0001', 'adapter_model.safetensors')).mtimeMs;
    expect(makeAdapters({ hfConfig: DEMO_MODEL, outDir: dir, count: 3, rank: 4, modules: ['o_proj'] })).toMatchObject({ written: 1, skipped: 2 });
    expect(statSync(join(dir, 'a0001', 'adapter_model.safetensors')).mtimeMs).toBe(before);
    expect(makeAdapters({ hfConfig: DEMO_MODEL, outDir: dir, count: 1, rank: 8, modules: ['o_proj'] })).toMatchObject({ written: 1, skipped: 0 });
    expect(JSON.parse(readFileSync(join(dir, 'a0000', 'adapter_config.json'), 'utf8')).r).toBe(8);
  });

  it('links the names past `distinct` to the distinct adapters, and gives them weights of their own again without it', () => {
    const dir = join(tmp.path, 'shared');
    const spec = { hfConfig: DEMO_MODEL, outDir: dir, rank: 4, modules: ['v_proj'] };
    expect(makeAdapters({ ...spec, count: 5, distinct: 2 })).toMatchObject({ written: 2, linked: 3, skipped: 0 });
    expect(['a0002', 'a0003', 'a0004'].map((n) => readlinkSync(join(dir, n)))).toEqual(['a0000', 'a0001', 'a0000']);
    // A linked name loads as the adapter it links to.
    const a = (n: string) => loadAdapterWeights(join(dir, n), config).weights.weights[0]!.a;
    expect(a('a0003')).toEqual(a('a0001'));
    expect(makeAdapters({ ...spec, count: 5, distinct: 2 })).toMatchObject({ written: 0, linked: 0, skipped: 5 });
    expect(makeAdapters({ ...spec, count: 5 })).toMatchObject({ written: 3, linked: 0, skipped: 2 });
    expect(lstatSync(join(dir, 'a0003')).isSymbolicLink()).toBe(false);
    expect(a('a0003')).not.toEqual(a('a0001'));
    // A range past the distinct ones writes the adapters its links need.
    const part = join(tmp.path, 'shared-part');
    expect(makeAdapters({ ...spec, outDir: part, start: 3, count: 1, distinct: 2 })).toMatchObject({ written: 0, linked: 1 });
    expect(readlinkSync(join(part, 'a0003'))).toBe('a0001');
    expect(loadAdapterWeights(join(part, 'a0003'), config).info.rank).toBe(4);
  });

  it('sizes the 8B adapters as planned: rank 16 on all modules, rank 8 on q/k/v/o', () => {
    const llama8b = LLAMA_8B_CONFIG;
    const all = ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'];
    // Per layer, rank x (in + out) summed over the modules, in bf16.
    expect(planAdapters(llama8b, { rank: 16, modules: all }).dataBytes).toBe(32 * 16 * (8192 + 5120 + 5120 + 8192 + 3 * (4096 + 14336)) * 2);
    expect(planAdapters(llama8b, { rank: 8, modules: all.slice(0, 4) }).dataBytes).toBe(32 * 8 * (8192 + 5120 + 5120 + 8192) * 2);
  });
});

describe('streaming client', () => {
  let server: Server;
  let url = '';
  // Each script is a list of [delay ms, raw SSE text] written in order.
  const scripts: Record<string, Array<[number, string]>> = {};
  const ev = (n: number, extra: object = {}) =>
    `data: ${JSON.stringify({ text: 'x', meta_info: { completion_tokens: n, prompt_tokens: 5, ...extra } })}\n\n`;
  scripts.coalesced = [
    [30, ev(1)],
    [40, ev(2)],
    [40, ev(5)],
    [0, 'data: [DONE]\n\n'],
  ];
  scripts.error = [
    [10, ev(1)],
    [10, `data: ${JSON.stringify({ error: { message: 'boom', code: 500 } })}\n\n`],
    [0, 'data: [DONE]\n\n'],
  ];
  scripts.truncated = [[10, ev(1)]];

  afterAll(() => new Promise<void>((r) => server.close(() => r())));

  const start = () =>
    new Promise<void>((resolve) => {
      server = createServer((req, res) => {
        let body = '';
        req.on('data', (c) => (body += c));
        req.on('end', async () => {
          const name = JSON.parse(body).lora_path as string;
          if (name === 'unknown') {
            res.writeHead(400, { 'content-type': 'application/json' }).end('{"error":{"message":"unknown adapter"}}');
            return;
          }
          res.writeHead(200, { 'content-type': 'text/event-stream' });
          for (const [delay, text] of scripts[name]!) {
            await new Promise((r) => setTimeout(r, delay));
            res.write(text);
          }
          res.end();
        });
      }).listen(0, '127.0.0.1', () => {
        url = `http://127.0.0.1:${(server.address() as { port: number }).port}`;
        resolve();
      });
    });

  it('times the first token, and spreads coalesced tokens over their gap', async () => {
    await start();
    const r = await streamGenerate(url, { lora_path: 'coalesced' });
    expect(r).toMatchObject({ ok: true, outputTokens: 5, promptTokens: 5 });
    expect(r.ttft).toBeGreaterThanOrEqual(0.025);
    // One latency for token 2, three equal ones for the three tokens that came together.
    expect(r.itls).toHaveLength(4);
    expect(r.itls[1]).toBeCloseTo(r.itls[2], 9);
    expect(r.itls[2]).toBeCloseTo(r.itls[3], 9);
    expect(r.itls[1] * 3).toBeGreaterThanOrEqual(0.035);
    expect(r.e2e).toBeGreaterThanOrEqual(r.ttft);
  });

  it('counts an error event, an HTTP error and a stream without [DONE] as failures', async () => {
    expect(await streamGenerate(url, { lora_path: 'error' })).toMatchObject({ ok: false, error: 'error event: boom' });
    expect(await streamGenerate(url, { lora_path: 'unknown' })).toMatchObject({
      ok: false,
      error: expect.stringMatching(/^HTTP 400: .*unknown adapter/),
    });
    expect(await streamGenerate(url, { lora_path: 'truncated' })).toMatchObject({ ok: false, error: 'stream ended without [DONE]' });
    const cut = new AbortController();
    const pending = streamGenerate(url, { lora_path: 'coalesced' }, cut.signal);
    cut.abort();
    expect(await pending).toMatchObject({ ok: false, error: expect.stringMatching(/^cut by the benchmark/) });
  });
});

describe('reported figures', () => {
  it('counts failed requests as missing the SLO', () => {
    const ok = (ttft: number) => ({ ok: true, ttft, e2e: ttft + 1, itls: [0.01, 0.03], outputTokens: 3 });
    const s = summarize([ok(1), ok(7), ok(2), { ok: false, ttft: 0.5, e2e: 0.5, itls: [], outputTokens: 1, error: 'x' }], 10, 6);
    expect(s).toMatchObject({ requests: 4, succeeded: 3, failed: 1, requestThroughput: 0.3, outputTokenThroughput: 0.9, sloAttainment: 0.5 });
    expect(s.ttft.p50).toBe(2);
    expect(percentile([4, 1, 3, 2], 50)).toBe(2.5);
    expect(percentile([], 50)).toBeNull();
  });

  it('takes adapter loads, load time and evictions as /metrics deltas', () => {
    const scrape = (loads: number, evict: number) =>
      parseMetrics(
        [
          '# HELP troupe_adapter_loads_total x',
          `troupe_adapter_loads_total{adapter="a0001",stage="disk_to_cpu"} ${loads}`,
          `troupe_adapter_loads_total{adapter="a0002",stage="disk_to_cpu"} 1`,
          `troupe_adapter_loads_total{adapter="a0001",stage="cpu_to_gpu"} ${2 * loads}`,
          `troupe_adapter_load_seconds_sum{adapter="a0001",stage="cpu_to_gpu"} ${0.5 * loads}`,
          `troupe_adapter_evictions_total{adapter="we\\"ird",from="gpu"} ${evict}`,
        ].join('\n'),
      );
    const d = adapterActivity(scrape(1, 0), scrape(4, 2));
    expect(d.loads).toEqual({ disk_to_cpu: 3, cpu_to_gpu: 6 });
    expect(d.loadSeconds).toEqual({ cpu_to_gpu: 1.5 });
    expect(d.evictions).toEqual({ gpu: 2 });
    expect(parseMetrics('x{adapter="we\\"ird"} 1')[0].labels.adapter).toBe('we"ird');
  });

  it('reads the LoRA slots the decode steps reached between two scrapes, on average', () => {
    const scrape = (steps: number, slots: number) =>
      parseMetrics([`troupe_engine_decode_steps_total ${steps}`, `troupe_engine_decode_step_lora_slots_sum ${slots}`].join('\n'));
    // 40 decode steps between the scrapes, reaching 100 slots in all.
    expect(engineShare(scrape(10, 20), scrape(50, 120), 1000).decodeStepLoraSlots).toBe(2.5);
    expect(engineShare(scrape(10, 20), scrape(10, 20), 1000).decodeStepLoraSlots).toBeNull();
  });

  it("reads the decode steps' histogram between two scrapes: the bounds that hold its share, and the slow steps", () => {
    const scrape = (counts: number[]) =>
      parseMetrics(
        ['0.005', '0.0075', '0.02', '0.05', '0.5', '+Inf']
          .map((le, i) => `troupe_engine_decode_step_duration_seconds_bucket{le="${le}"} ${counts[i]}`)
          .join('\n'),
      );
    // Between the scrapes: 90 steps within 5 ms, 8 more within 7.5, one within 50 and one within 500.
    const d = engineShare(scrape([10, 10, 10, 10, 10, 10]), scrape([100, 108, 108, 109, 110, 110]), 1000);
    expect(d.decodeStepBuckets).toEqual({ steps: 100, over20Ms: 2, p50UpToMs: 5, p90UpToMs: 5, p99UpToMs: 50, allUpToMs: 500 });
    // Without decode steps, or from a server without the histogram, nothing.
    expect(stepBuckets({})).toBeNull();
    expect(stepBuckets({ '0.005': 0, '+Inf': 0 })).toBeNull();
    // Steps past the last bound leave that share unbounded.
    expect(stepBuckets({ '+Inf': 2, '0.01': 1 })).toMatchObject({ p50UpToMs: 10, allUpToMs: null, over20Ms: 1 });
  });
});

describe('capacity search', () => {
  // A server that meets the SLO for 99% of requests up to `cap` req/s.
  const probeUpTo = (cap: number) => async (rate: number) => ({ summary: { sloAttainment: rate <= cap ? 0.995 : 0.5 } });
  const cfg = { target: 0.99, start: 1, max: 256, min: 0.05, bisections: 4 };

  it('doubles to bracket the capacity, then bisects', async () => {
    const c = await searchCapacity(cfg, probeUpTo(5.3));
    expect(c.probes.map((p: { rate: number }) => p.rate)).toEqual([1, 2, 4, 8, 6, 5, 5.5, 5.25]);
    expect(c).toMatchObject({ rate: 5.25, bound: 'bracketed', lowestFailing: 5.5 });
  });

  it('halves when the first probe fails, and says when the bounds are reached', async () => {
    const low = await searchCapacity(cfg, probeUpTo(0.3));
    expect(low.probes.map((p: { rate: number }) => p.rate)).toEqual([1, 0.5, 0.25, 0.38, 0.32, 0.29, 0.3]);
    expect(low).toMatchObject({ rate: 0.3, bound: 'bracketed', lowestFailing: 0.32 });
    expect(await searchCapacity(cfg, probeUpTo(1000))).toMatchObject({ rate: 256, bound: 'at-least' });
    expect(await searchCapacity(cfg, probeUpTo(0.01))).toMatchObject({ rate: 0, bound: 'below-min' });
  });
});

describe('server command line', () => {
  const names = Array.from({ length: 20 }, (_, i) => `a${String(i).padStart(4, '0')}`);
  const opts = (server: object) => ({
    model: 'demo-model',
    adapters: '/adapters',
    server: {
      maxLorasPerBatch: 8,
      maxLoadedLoras: null,
      enableLoraOverlapLoading: false,
      maxLoraRank: null,
      loraTargetModules: null,
      device: 'cpu',
      extraArgs: [],
      ...server,
    },
  });
  const validated = (args: string[]) => validateFlags(parseArgs(args).flags).options;

  it('names every adapter at start when the CPU cache is unlimited', () => {
    const o = validated(serverArgs(opts({ extraArgs: ['--max-total-tokens', '4096'] }), names));
    expect(o.loraPaths.map((a) => a.name)).toEqual(names);
    expect(o.loraPaths[3]!.path).toBe('/adapters/a0003');
    expect(o.maxTotalTokens).toBe(4096);
  });

  it('names only as many as --max-loaded-loras holds, which troupe accepts with overlap loading', () => {
    const o = validated(serverArgs(opts({ maxLoadedLoras: 16, enableLoraOverlapLoading: true }), names));
    expect(o.loraPaths).toHaveLength(16);
    expect(o).toMatchObject({ maxLoadedLoras: 16, enableLoraOverlapLoading: true, maxLorasPerBatch: 8 });
  });
});

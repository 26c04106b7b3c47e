// The CUDA backend against the CPU backend on the test checkpoint of make_checkpoint.py
// (TROUPE_GPU_CHECKPOINT, default /tmp/troupe-llama-1b): the same batches (prefill chunks,
// decodes, every sampling mode and the penalties) give close logprobs and the same tokens. The
// CPU backend keeps activations in f32; the CUDA one rounds GEMM inputs and the KV cache to
// bf16, so logprobs agree within the parity bar and greedy tokens wherever the CPU's top-2 gap
// exceeds twice that.
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { addon, engineOptions, logSoftmax, makeBatch, maxAbsDiff, openCheckpoint, prompt, type SeqStep } from '../engine-fixtures.js';

const dir = process.env.TROUPE_GPU_CHECKPOINT ?? '/tmp/troupe-llama-1b';
const ckpt = openCheckpoint(dir);
const vocab = ckpt.config.vocabSize;
const opts = { blockSize: 16, kvBlocks: 256, loraSlots: 0, loraModules: [], cudaGraphMaxBs: 16 };
const cpu = addon.createEngine(ckpt.config, ckpt.tensors, engineOptions({ ...opts, device: 'cpu' }));
const gpu = addon.createEngine(ckpt.config, ckpt.tensors, engineOptions({ ...opts, device: 'cuda' }));

afterAll(() => {
  addon.destroyEngine(cpu);
  addon.destroyEngine(gpu);
});

// The CUDA side rounds to bf16 as transformers' bf16 forward does, so the bar is the parity bar
// or, on a checkpoint where transformers' own bf16 forward drifts further from float32 (its
// reference.json records how far), a quarter above that drift.
const refFile = join(dir, 'reference.json');
const bf16Drift = existsSync(refFile) ? (JSON.parse(readFileSync(refFile, 'utf8')) as { bf16MaxAbsDiff: number }).bf16MaxAbsDiff : 0;
const TOL = Math.max(0.05, 1.25 * bf16Drift);

/** Expects equal tokens for every row whose CPU top-2 logprob gap (topLogprobs >= 2) is not a near-tie. */
function expectSameUnlessNearTie(a: { tokens: Int32Array; topLogprobValues: Float32Array }, b: { tokens: Int32Array }, topN: number): void {
  for (let i = 0; i < a.tokens.length; i++) {
    if (a.topLogprobValues[i * topN]! - a.topLogprobValues[i * topN + 1]! > 2 * TOL) expect(b.tokens[i]).toBe(a.tokens[i]);
  }
}

describe('CUDA backend vs CPU backend', () => {
  it('prefill chunks and decodes give the same greedy tokens and logprobs', () => {
    const lens = [3, 20, 40, 70];
    const prompts = lens.map((n, i) => prompt(n, i + 1, vocab));
    const blocks = lens.map((_, i) => Array.from({ length: 8 }, (_, k) => i * 8 + k));
    let worst = 0;
    let lastTokens: number[] = [];
    // Two prefill chunks, then decodes fed with the CPU's tokens.
    const half = prompts.map((p) => Math.max(1, Math.floor(p.length / 2)));
    const steps: SeqStep[][] = [
      prompts.map((p, i) => ({ tokens: p.slice(0, half[i]), cached: 0, blocks: blocks[i]!, sample: false })),
      prompts.map((p, i) => ({ tokens: p.slice(half[i]), cached: half[i]!, blocks: blocks[i]! })),
    ];
    let cached = prompts.map((p) => p.length);
    for (let s = 0; s < 10; s++) {
      const batchSeqs = s < 2 ? steps[s]! : [];
      const seqs = batchSeqs.length > 0 ? batchSeqs : lastTokens.map((t, i) => ({ tokens: [t], cached: cached[i]!, blocks: blocks[i]! }));
      const batch = makeBatch(seqs, { maxBlocksPerSeq: 8, topLogprobs: 3 });
      const a = addon.step(cpu, batch);
      const b = addon.step(gpu, batch);
      expectSameUnlessNearTie(a, b, 3);
      if (s >= 1) {
        worst = Math.max(worst, maxAbsDiff(a.logprobs, b.logprobs), maxAbsDiff(a.topLogprobValues, b.topLogprobValues));
        lastTokens = Array.from(a.tokens);
        if (s >= 2) cached = cached.map((c) => c + 1);
      }
    }
    console.log(`CPU vs CUDA: max |logprob diff| ${worst.toFixed(4)} (bar ${TOL.toFixed(4)}; transformers bf16 drift ${bf16Drift.toFixed(4)})`);
    expect(worst).toBeLessThan(TOL);
  });

  it('greedy choices under repetition, frequency and presence penalties match the CPU backend', () => {
    const p = Array.from({ length: 6 }, (_, i) => prompt(12, 40 + i, vocab));
    const blocks = (i: number) => [i * 2, i * 2 + 1];
    // Each row's unpenalized choice is among its generated tokens, so the penalties bite.
    const plain = addon.step(
      gpu,
      makeBatch(
        p.map((tokens, i) => ({ tokens, cached: 0, blocks: blocks(i) })),
        {},
      ),
    );
    const seen = (i: number, extra: number[] = []) => [...p[i]!, plain.tokens[i]!, ...extra];
    const variants: Array<Partial<SeqStep>> = [
      { repetitionPenalty: 1.5, penaltyTokens: seen(0) },
      { frequencyPenalty: 1, presencePenalty: 0.5, penaltyTokens: seen(1, [plain.tokens[1]!, 11]) },
      { repetitionPenalty: 2, penaltyTokens: seen(2) },
      { presencePenalty: 2, penaltyTokens: seen(3, [12]) },
      { frequencyPenalty: -1, penaltyTokens: seen(4, [13]) },
      { repetitionPenalty: 1.2, frequencyPenalty: 0.5, penaltyTokens: seen(5) },
    ];
    const seqs: SeqStep[] = p.map((tokens, i) => ({ tokens, cached: 0, blocks: blocks(i), temperature: 0, penaltyPromptLen: 12, ...variants[i] }));
    const batch = makeBatch(seqs, { returnLogits: true });
    const a = addon.step(cpu, batch);
    const b = addon.step(gpu, batch);
    let compared = 0;
    seqs.forEach((q, i) => {
      // The penalized top-2 gap from the CPU's raw logits, as types.ts defines the penalties.
      const l = Float64Array.from(a.logits!.subarray(i * vocab, (i + 1) * vocab));
      const gen = new Map<number, number>();
      q.penaltyTokens!.slice(12).forEach((t) => gen.set(t, (gen.get(t) ?? 0) + 1));
      for (const t of new Set(q.penaltyTokens)) {
        if (q.repetitionPenalty) l[t] = l[t]! > 0 ? l[t]! / q.repetitionPenalty : l[t]! * q.repetitionPenalty;
        const n = gen.get(t) ?? 0;
        l[t] = l[t]! - (q.frequencyPenalty ?? 0) * n - (n > 0 ? (q.presencePenalty ?? 0) : 0);
      }
      const order = Array.from(l.keys()).sort((x, y) => l[y]! - l[x]!);
      expect(a.tokens[i]).toBe(order[0]);
      if (l[order[0]!]! - l[order[1]!]! > 2 * TOL) {
        expect(b.tokens[i]).toBe(a.tokens[i]);
        compared++;
      }
    });
    expect(compared).toBeGreaterThanOrEqual(3);
    expect(maxAbsDiff(a.logprobs, b.logprobs)).toBeLessThan(TOL);
    expect(Array.from(b.tokens)).not.toEqual(Array.from(plain.tokens));
  });
});

// Seeded sampling on the GPU, checked against the distribution of the GPU's own logits (the two
// backends' logits differ by rounding, and a draw over 128k tokens in id order moves with it).
// Rows with top-k, top-p or min-p are drawn on the GPU itself, or with
// TROUPE_CUDA_SAMPLE_FILTERS=0 (read when an engine starts) on the host from the downloaded row:
// both ways here.
describe.each([
  { filters: 'GPU', env: undefined },
  { filters: 'host', env: '0' },
])('sampling on the GPU, filtered rows on the $filters', ({ env }) => {
  const engine = (() => {
    if (env === undefined) return gpu;
    process.env.TROUPE_CUDA_SAMPLE_FILTERS = env;
    try {
      return addon.createEngine(ckpt.config, ckpt.tensors, engineOptions({ ...opts, device: 'cuda' }));
    } finally {
      delete process.env.TROUPE_CUDA_SAMPLE_FILTERS;
    }
  })();
  afterAll(() => {
    if (engine !== gpu) addon.destroyEngine(engine);
  });
  const ROWS = 256;
  const p = prompt(16, 77, vocab);
  const rows = (over: Partial<SeqStep>): SeqStep[] =>
    Array.from({ length: ROWS }, (_, i) => ({ tokens: p, cached: 0, blocks: [i], temperature: 1, seed: 1000 + i, ...over }));
  const run = (over: Partial<SeqStep>) => addon.step(engine, makeBatch(rows(over), { returnLogits: true }));
  const probs = (logits: Float32Array, t: number): Float64Array =>
    logSoftmax(Float32Array.from(logits.subarray(0, vocab), (v) => v / t)).map((v) => Math.exp(v));
  /** Each token's count within 4.5 standard deviations of ROWS draws from `expected` (probabilities). */
  const expectCounts = (tokens: Int32Array, expected: Map<number, number>): void => {
    const counts = new Map<number, number>();
    for (const tok of tokens) counts.set(tok, (counts.get(tok) ?? 0) + 1);
    for (const [tok, q] of expected) {
      const sd = Math.sqrt(ROWS * q * (1 - q));
      expect(Math.abs((counts.get(tok) ?? 0) - ROWS * q)).toBeLessThanOrEqual(4.5 * sd + 1);
    }
  };

  it('draws follow softmax(logits / T) and repeat for the same seed', () => {
    for (const t of [1, 0.5]) {
      const r = run({ temperature: t });
      const pr = probs(r.logits!, t);
      // The five likeliest tokens.
      const top = Array.from(pr.keys())
        .sort((x, y) => pr[y]! - pr[x]!)
        .slice(0, 5);
      expectCounts(r.tokens, new Map(top.map((tok) => [tok, pr[tok]!])));
      expect(Array.from(run({ temperature: t }).tokens)).toEqual(Array.from(r.tokens));
    }
  });

  it('top-k, top-p and min-p keep every draw inside the filtered set', () => {
    const r = run({ topK: 3 });
    const pr = probs(r.logits!, 1);
    const order = Array.from(pr.keys()).sort((x, y) => pr[y]! - pr[x]!);
    expect(new Set(r.tokens).size).toBeGreaterThan(1);
    for (const tok of r.tokens) expect(order.slice(0, 3)).toContain(tok);
    const nucleus = (() => {
      let c = 0;
      const keep: number[] = [];
      for (const tok of order) {
        keep.push(tok);
        c += pr[tok]!;
        if (c >= 0.5) break;
      }
      return keep;
    })();
    for (const tok of run({ topP: 0.5 }).tokens) expect(nucleus).toContain(tok);
    const floor = 0.3 * pr[order[0]!]!;
    for (const tok of run({ minP: 0.3 }).tokens) expect(pr[tok]!).toBeGreaterThanOrEqual(floor * 0.99);
  });

  it('filtered draws follow the renormalized probabilities of the kept tokens and repeat for the same seed', () => {
    // Thresholds from this prompt's own distribution, so that each filter keeps three or more
    // tokens however peaked the random checkpoint's logits are: top-p between the top two's and
    // the top three's mass, min-p just under the third token's share of the first's.
    const logits = run({}).logits!;
    const sorted = (t: number): number[] => Array.from(probs(logits, t)).sort((x, y) => y - x);
    const [p1, p2, p3] = sorted(1);
    const [q1, , q3] = sorted(0.7);
    const cases: Partial<SeqStep>[] = [{ topK: 4 }, { topP: p1! + p2! + p3! / 2 }, { minP: (0.9 * q3!) / q1!, temperature: 0.7 }];
    for (const over of cases) {
      const r = run(over);
      const t = over.temperature ?? 1;
      const pr = probs(r.logits!, t);
      const order = Array.from(pr.keys()).sort((x, y) => pr[y]! - pr[x]!);
      // The kept prefix as native/sampling.cc walks it.
      const kept: number[] = [];
      let before = 0;
      for (const tok of order) {
        const q = pr[tok]!;
        if (kept.length > 0 && (before > (over.topP ?? 1) || q < pr[order[0]!]! * (over.minP ?? 0))) break;
        if ('topK' in over && kept.length >= over.topK!) break;
        kept.push(tok);
        before += q;
      }
      expect(kept.length).toBeGreaterThan(1);
      for (const tok of r.tokens) expect(kept).toContain(tok);
      // The five likeliest kept tokens, at their share of the kept mass.
      expectCounts(r.tokens, new Map(kept.slice(0, 5).map((tok) => [tok, pr[tok]! / before])));
      expect(Array.from(run(over).tokens)).toEqual(Array.from(r.tokens));
    }
  });
});

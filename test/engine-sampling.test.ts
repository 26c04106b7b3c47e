// Sampling in the native step: seeded reproducibility, greedy equivalences, the filters, and
// log-softmax values checked against the returned logits.
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { makeRandomCheckpoint } from '../src/model/demo.js';
import type { Checkpoint } from '../src/model/checkpoint.js';
import type { StepResult } from '../src/engine/types.js';
import {
  SMALL_MODEL,
  addon,
  argmax,
  createEngine,
  logSoftmax,
  logitsRow,
  openCheckpoint,
  prompt,
  step,
  tempDir,
  type SeqStep,
} from './engine-fixtures.js';

const VOCAB = SMALL_MODEL.vocab_size;
const tmp = tempDir('sampling');
let ckpt: Checkpoint;
let h: number;
const P = prompt(6, 5);

beforeAll(() => {
  makeRandomCheckpoint(join(tmp.dir, 'base'), SMALL_MODEL, 3, 'BF16');
  ckpt = openCheckpoint(join(tmp.dir, 'base'));
  h = createEngine(ckpt, { kvBlocks: 256, blockSize: 8 });
});

afterAll(() => {
  addon.destroyEngine(h);
  tmp.cleanup();
});

/** n copies of the same prompt, each in its own block, with per-copy sampling options. */
function copies(n: number, opts: (i: number) => Partial<SeqStep>, extra: { topLogprobs?: number } = {}): StepResult {
  return step(
    h,
    Array.from({ length: n }, (_, i) => ({ tokens: P, cached: 0, blocks: [i], ...opts(i) })),
    { returnLogits: true, ...extra },
  );
}

/** Token ids sorted by logit, highest first. */
function ranked(l: Float32Array): number[] {
  return [...l.keys()].sort((a, b) => l[b]! - l[a]! || a - b);
}

describe('sampling', () => {
  it('repeats a seed exactly, in any batch position and any step', () => {
    const a = copies(16, (i) => ({ temperature: 1.5, seed: 1000 + (i % 4), draws: 3 }));
    for (let i = 4; i < 16; i++) expect(a.tokens[i]).toBe(a.tokens[i % 4]);
    const b = copies(5, (i) => ({ temperature: 1.5, seed: 1003 - i, draws: 3 }));
    expect(Array.from(b.tokens.subarray(0, 4))).toEqual([a.tokens[3], a.tokens[2], a.tokens[1], a.tokens[0]]);
  });

  it('gives different tokens for different seeds and for later draws of one seed', () => {
    const bySeed = copies(32, (i) => ({ temperature: 4, seed: i }));
    expect(new Set(bySeed.tokens).size).toBeGreaterThan(5);
    const byDraw = copies(32, (i) => ({ temperature: 4, seed: 7, draws: i }));
    expect(new Set(byDraw.tokens).size).toBeGreaterThan(5);
  });

  it('is greedy at temperature 0 and with top_k 1, whatever the seed', () => {
    const r = copies(6, (i) => (i < 3 ? { temperature: 0, seed: i } : { temperature: 2, topK: 1, seed: i }));
    const greedy = argmax(logitsRow(r, 0, VOCAB));
    expect(Array.from(r.tokens)).toEqual(new Array(6).fill(greedy));
  });

  it('keeps to the top k, the top-p prefix and the min-p set', () => {
    const logits = logitsRow(
      copies(1, () => ({})),
      0,
      VOCAB,
    ).slice();
    const order = ranked(logits);
    const probs = logSoftmax(logits).map((x) => Math.exp(x));
    const topK = copies(64, (i) => ({ temperature: 1, topK: 5, seed: i }));
    for (const t of topK.tokens) expect(order.slice(0, 5)).toContain(t);
    expect(new Set(topK.tokens).size).toBeGreaterThan(1);

    // Top-p keeps the shortest prefix of the ranking whose mass exceeds p; this p keeps two tokens.
    const p = probs[order[0]!]! + 0.5 * probs[order[1]!]!;
    let mass = 0;
    let keep = 0;
    while (mass <= p) mass += probs[order[keep++]!]!;
    const topP = copies(64, (i) => ({ temperature: 1, topP: p, seed: i }));
    for (const t of topP.tokens) expect(order.slice(0, keep)).toContain(t);
    expect(keep).toBe(2);
    expect(new Set(topP.tokens).size).toBe(2);

    const minP = 0.9;
    const allowed = order.filter((t) => probs[t]! >= minP * probs[order[0]!]!);
    const mp = copies(64, (i) => ({ temperature: 1, minP, seed: i }));
    for (const t of mp.tokens) expect(allowed).toContain(t);
    const only = copies(4, (i) => ({ temperature: 1, minP: 1, seed: i }));
    expect(Array.from(only.tokens)).toEqual(new Array(4).fill(order[0]));
  });

  it('returns log-softmax values of the raw logits for the chosen token and the alternatives', () => {
    const r = copies(8, (i) => ({ temperature: i === 0 ? 0 : 3, seed: i }), { topLogprobs: 5 });
    for (let i = 0; i < 8; i++) {
      const logits = logitsRow(r, i, VOCAB);
      const lsm = logSoftmax(logits);
      const tok = r.tokens[i]!;
      expect(r.logprobs[i]).toBeCloseTo(lsm[tok]!, 5);
      const ids = Array.from(r.topIds.subarray(i * 5, i * 5 + 5));
      const vals = Array.from(r.topLogprobValues.subarray(i * 5, i * 5 + 5));
      expect(ids).toEqual(ranked(logits).slice(0, 5));
      vals.forEach((v, j) => expect(v).toBeCloseTo(lsm[ids[j]!]!, 5));
      for (let j = 1; j < 5; j++) expect(vals[j]!).toBeLessThanOrEqual(vals[j - 1]!);
      expect(vals.reduce((s, v) => s + Math.exp(v), 0)).toBeLessThanOrEqual(1);
    }
  });

  it('samples nothing for rows with sample = 0', () => {
    const r = step(
      h,
      [
        { tokens: P, cached: 0, blocks: [0], sample: false },
        { tokens: P, cached: 0, blocks: [1] },
      ],
      { topLogprobs: 2 },
    );
    expect(r.tokens[0]).toBe(-1);
    expect(r.tokens[1]).toBeGreaterThanOrEqual(0);
    expect(r.logits).toBeNull();
    expect(Array.from(r.topIds.subarray(0, 2))).toEqual([-1, -1]);
  });

  it('follows the sampling distribution (chi-square over the top tokens)', () => {
    // Each seed is an independent draw from softmax(logits / 1.5).
    const n = 250;
    const r = copies(n, (i) => ({ temperature: 1.5, seed: 90_000 + i }));
    const logits = logitsRow(r, 0, VOCAB);
    const probs = logSoftmax(Float32Array.from(logits, (x) => x / 1.5)).map((x) => Math.exp(x));
    const order = ranked(logits);
    const counts = new Map<number, number>();
    for (const t of r.tokens) counts.set(t, (counts.get(t) ?? 0) + 1);
    // The three likeliest tokens and the rest as one bucket.
    const buckets = [order[0]!, order[1]!, order[2]!];
    let chi = 0;
    let restObs = n;
    let restExp = n;
    for (const t of buckets) {
      const e = n * probs[t]!;
      const o = counts.get(t) ?? 0;
      restObs -= o;
      restExp -= e;
      if (e > 5) chi += (o - e) ** 2 / e;
    }
    if (restExp > 5) chi += (restObs - restExp) ** 2 / restExp;
    // 3 degrees of freedom: p = 0.001 at 16.3.
    expect(chi).toBeLessThan(16.3);
  });
});

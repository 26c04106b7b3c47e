// The native sampler (sampleToken through addon.sampleLogits) is total: whatever the logits
// (NaN, +/-Inf, ties, huge or denormal values) and whatever values the batch can carry, it gives
// a token id in [0, vocab) and logprobs that are never NaN, under the rules of native/sampling.h.
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import type { SampleOutput, SampleParams } from '../src/engine/types.js';
import { addon } from './engine-fixtures.js';

/** Two SIMD blocks of 16 and a tail. */
const V = 37;
const f32 = Math.fround;
const GREEDY_BELOW = f32(1e-6);

function row(fill: (i: number) => number, n = V): Float32Array {
  return Float32Array.from({ length: n }, (_, i) => fill(i));
}

/** Deterministic ordinary logits in [-8, 8), with a unique maximum at index 11. */
const ordinary = (i: number): number => (i === 11 ? 9 : (((i * 7919) % 97) / 97) * 16 - 8);

const FAMILIES: Record<string, Float32Array> = {
  'all NaN': row(() => NaN),
  'NaN but one finite': row((i) => (i === 5 ? -3 : NaN)),
  'NaN but one +Inf': row((i) => (i === 30 ? Infinity : NaN)),
  'two +Inf among NaN and -Inf': row((i) => (i === 4 || i === 20 ? Infinity : i % 2 ? NaN : -Infinity)),
  '+Inf among finite': row((i) => (i === 17 ? Infinity : ordinary(i))),
  'finite among -Inf': row((i) => (i === 9 || i === 33 ? i : -Infinity)),
  'all -Inf': row(() => -Infinity),
  'all equal': row(() => 0.25),
  'all 3e38': row(() => 3e38),
  '+/-3e38': row((i) => (i % 3 === 0 ? 3e38 : -3e38)),
  denormals: row((i) => i * 1e-45),
  ordinary: row(ordinary),
};

/** NaN as -Inf (the sampler's rule), as a plain number array. */
function clean(l: Float32Array): number[] {
  return Array.from(l, (x) => (Number.isNaN(x) ? -Infinity : x));
}

/** The penalties of native/sampling.cc in float32 arithmetic, NaN results as -Inf. */
function penalize(l: Float32Array, p: SampleParams): number[] {
  const x = clean(l);
  const toks = Array.from(p.penaltyTokens ?? []);
  const r = f32(p.repetitionPenalty ?? 1);
  const fr = f32(p.frequencyPenalty ?? 0);
  const pr = f32(p.presencePenalty ?? 0);
  if (toks.length === 0 || (r === 1 && fr === 0 && pr === 0)) return x;
  const inVocab = (t: number): boolean => t >= 0 && t < x.length;
  if (r !== 1) for (const t of new Set(toks)) if (inVocab(t)) x[t] = x[t]! > 0 ? f32(x[t]! / r) : f32(x[t]! * r);
  if (fr !== 0 || pr !== 0) {
    const start = Math.min(Math.max(p.promptLen ?? 0, 0), toks.length);
    const counts = new Map<number, number>();
    for (const t of toks.slice(start)) counts.set(t, (counts.get(t) ?? 0) + 1);
    for (const [t, c] of counts) if (inVocab(t)) x[t] = f32(x[t]! - f32(f32(fr * c) + pr));
  }
  for (const t of toks) if (inVocab(t) && Number.isNaN(x[t])) x[t] = -Infinity;
  return x;
}

function argmax(x: number[]): number {
  let best = 0;
  for (let i = 1; i < x.length; i++) if (x[i]! > x[best]!) best = i;
  return best;
}

function isGreedy(p: SampleParams, vocab: number): boolean {
  const k = p.topK ?? -1;
  return !(f32(p.temperature ?? 1) >= GREEDY_BELOW) || (k === 1 && vocab > 1);
}

/** log-softmax in float64 with the sampler's rules: +Inf logits share the mass, a row of -Inf has none. */
function logSoftmax(l: Float32Array): number[] {
  const x = clean(l);
  const m = Math.max(...x);
  if (m === Infinity) {
    const count = x.filter((v) => v === Infinity).length;
    return x.map((v) => (v === Infinity ? -Math.log(count) : -Infinity));
  }
  if (m === -Infinity) return x.map(() => -Infinity);
  const logSum = Math.log(x.reduce((s, v) => s + Math.exp(v - m), 0));
  return x.map((v) => v - m - logSum);
}

function expectClose(got: number, want: number): void {
  const w = f32(want);
  if (!Number.isFinite(w)) expect(got).toBe(w);
  else expect(Math.abs(got - w)).toBeLessThanOrEqual(1e-4 * Math.max(1, Math.abs(w)) + 1e-5);
}

/** The invariants every call must meet; returns the output for further checks. */
function checkedSample(logits: Float32Array, p: SampleParams, topN = 0): SampleOutput {
  const vocab = logits.length;
  const r = addon.sampleLogits(logits, p, topN);
  const where = `logits [${Array.from(logits.subarray(0, 6)).join(', ')}, ...] params ${JSON.stringify(p)}`;
  expect(Number.isInteger(r.token), where).toBe(true);
  expect(r.token >= 0 && r.token < vocab, where).toBe(true);
  expect(Number.isNaN(r.logprob), where).toBe(false);
  expect(r.topIds.length).toBe(Math.min(topN, vocab));
  for (const id of r.topIds) expect(id >= 0 && id < vocab, where).toBe(true);
  for (const v of r.topValues) expect(Number.isNaN(v), where).toBe(false);

  const pen = penalize(logits, p);
  const best = Math.max(...pen);
  if (isGreedy(p, vocab)) {
    expect(r.token, `greedy: ${where}`).toBe(argmax(pen));
  } else if (best === -Infinity) {
    expect(r.token, `no mass anywhere: ${where}`).toBe(0);
  } else if (best === Infinity) {
    expect(pen[r.token], `+Inf takes all the mass: ${where}`).toBe(Infinity);
  } else {
    expect(pen[r.token]! > -Infinity, `a token with mass: ${where}`).toBe(true);
  }
  return r;
}

describe('sampleToken over extreme logits and parameters', () => {
  const temperatures = [0, 1e-45, 3e-39, 1e-7, 1e-6, 1, 1e30, Infinity];
  const topPs = [1e-45, 0.9, 1];
  const topKs = [-1, 1, 2, V, V + 1, 2 ** 31 - 1];
  const minPs = [0, 0.5, 1];
  // Index 11 holds the ordinary rows' maximum, 17 the +Inf of one family, 5 a lone finite value.
  const penalties: SampleParams[] = [
    {},
    { repetitionPenalty: 1e-45, penaltyTokens: Int32Array.of(11, 3, 5, 17), promptLen: 2 },
    { repetitionPenalty: 1e-39, penaltyTokens: Int32Array.of(2, 9, 30), promptLen: 3 },
    { repetitionPenalty: 2, frequencyPenalty: 2, presencePenalty: 2, penaltyTokens: Int32Array.of(11, 11, 4, 20), promptLen: 1 },
  ];

  for (const [family, logits] of Object.entries(FAMILIES)) {
    it(`${family}: a valid token for every parameter combination`, () => {
      const want = logSoftmax(logits);
      let calls = 0;
      for (const temperature of temperatures)
        for (const topP of topPs)
          for (const topK of topKs)
            for (const minP of minPs)
              for (const pen of penalties) {
                const r = checkedSample(logits, { temperature, topP, topK, minP, seed: calls++, ...pen }, 3);
                expectClose(r.logprob, want[r.token]!);
                r.topIds.forEach((id, j) => expectClose(r.topValues[j]!, want[id]!));
              }
      expect(calls).toBe(temperatures.length * topPs.length * topKs.length * minPs.length * penalties.length);
    });
  }

  it('treats a row without any usable logit as token 0 with logprob -Inf', () => {
    for (const logits of [FAMILIES['all NaN']!, FAMILIES['all -Inf']!]) {
      for (const temperature of [0, 1, Infinity]) {
        const r = addon.sampleLogits(logits, { temperature, topP: 0.5, seed: 9 }, 2);
        expect(r).toMatchObject({ token: 0, logprob: -Infinity });
        expect(Array.from(r.topIds)).toEqual([0, 1]);
        expect(Array.from(r.topValues)).toEqual([-Infinity, -Infinity]);
      }
    }
  });

  it('takes the only finite logit among NaN, with logprob 0', () => {
    for (const temperature of [0, 0.7, 1e30, Infinity]) {
      for (const topP of [1e-45, 1]) {
        const r = addon.sampleLogits(FAMILIES['NaN but one finite']!, { temperature, topP, seed: 3 }, 0);
        expect(r).toEqual({ token: 5, logprob: 0, topIds: new Int32Array(0), topValues: new Float32Array(0) });
      }
    }
  });

  it('splits the mass evenly between +Inf logits', () => {
    const logits = FAMILIES['two +Inf among NaN and -Inf']!;
    const seen = new Map<number, number>();
    for (let seed = 0; seed < 200; seed++) {
      const r = addon.sampleLogits(logits, { temperature: 1, seed }, 0);
      expect(r.logprob).toBeCloseTo(-Math.log(2), 6);
      seen.set(r.token, (seen.get(r.token) ?? 0) + 1);
    }
    expect([...seen.keys()].sort((a, b) => a - b)).toEqual([4, 20]);
    expect(Math.min(...seen.values())).toBeGreaterThan(50);
  });

  it('makes a penalty that overflows a logit to +Inf win, and reports the raw logprob', () => {
    const logits = FAMILIES.ordinary!;
    const want = logSoftmax(logits);
    // ordinary(3) > 0: dividing it by 1e-45 overflows to +Inf.
    expect(logits[3]).toBeGreaterThan(0);
    for (const temperature of [0, 1, Infinity]) {
      for (let seed = 0; seed < 20; seed++) {
        const r = addon.sampleLogits(logits, { temperature, seed, repetitionPenalty: 1e-45, penaltyTokens: Int32Array.of(3) }, 0);
        expect(r.token).toBe(3);
        expectClose(r.logprob, want[3]!);
      }
    }
  });

  it('is uniform over the tokens above -Inf at temperature +Inf', () => {
    const logits = Float32Array.of(30, 0, -Infinity, -25, NaN, 1e-3);
    const counts = new Array<number>(logits.length).fill(0);
    for (let seed = 0; seed < 800; seed++) counts[addon.sampleLogits(logits, { temperature: Infinity, seed }, 0).token]!++;
    expect(counts[2]).toBe(0);
    expect(counts[4]).toBe(0);
    for (const i of [0, 1, 3, 5]) expect(counts[i]).toBeGreaterThan(120);
  });

  it('is greedy below temperature 1e-6 and samples from 1e-6 up', () => {
    // At 1e-6 the gap of 0.01 is ten thousand temperatures wide: still the maximum.
    const logits = Float32Array.of(0.5, 1, 0.99, -2);
    for (const temperature of [0, 1e-45, 3e-39, 1e-7, 1e-6]) {
      for (let seed = 0; seed < 10; seed++) expect(addon.sampleLogits(logits, { temperature, seed }, 0).token).toBe(1);
    }
    const tied = Float32Array.of(0, 2, 2, 2);
    const atEps = new Set(Array.from({ length: 60 }, (_, seed) => addon.sampleLogits(tied, { temperature: 1e-6, seed }, 0).token));
    expect([...atEps].sort()).toEqual([1, 2, 3]);
    const below = new Set(Array.from({ length: 60 }, (_, seed) => addon.sampleLogits(tied, { temperature: 9e-7, seed }, 0).token));
    expect([...below]).toEqual([1]);
  });

  it('keeps at least the most likely token under the tightest top_p and min_p', () => {
    const logits = FAMILIES.ordinary!;
    for (let seed = 0; seed < 30; seed++) {
      expect(addon.sampleLogits(logits, { temperature: 1, topP: 1e-45, seed }, 0).token).toBe(11);
      expect(addon.sampleLogits(logits, { temperature: 1, minP: 1, seed }, 0).token).toBe(11);
      expect(addon.sampleLogits(logits, { temperature: 1, topK: 2, topP: 1e-45, minP: 1, seed }, 0).token).toBe(11);
    }
  });

  it('treats top_k <= 0 or >= vocab as off', () => {
    const logits = row((i) => (i % 5) / 4);
    const draw = (topK: number, seed: number): number => addon.sampleLogits(logits, { temperature: 1, topK, seed }, 0).token;
    for (let seed = 0; seed < 40; seed++) {
      const off = draw(-1, seed);
      for (const k of [0, -(2 ** 31), V, V + 1, 2 ** 31 - 1]) expect(draw(k, seed)).toBe(off);
    }
  });

  it('clamps topN to the vocabulary', () => {
    const r = addon.sampleLogits(Float32Array.of(1, 3, 2), { temperature: 0 }, 200000);
    expect(Array.from(r.topIds)).toEqual([1, 2, 0]);
    expect(r.token).toBe(1);
  });

  it('holds for random logits and parameters (property)', () => {
    const special = fc.constantFrom(NaN, Infinity, -Infinity, 0, -0, 3e38, -3e38, 1e-45, -1e-45, 3e-39);
    const logit = fc.oneof(fc.float(), fc.float({ min: -20, max: 20, noNaN: true }), special);
    const anyFloat = fc.oneof(fc.float(), special);
    const params = fc.record(
      {
        temperature: fc.oneof(anyFloat, fc.constantFrom(0, 1e-7, 1e-6, 0.7, 1, 1e30)),
        topK: fc.oneof(fc.integer({ min: -(2 ** 31), max: 2 ** 31 - 1 }), fc.integer({ min: -1, max: 80 })),
        topP: fc.oneof(anyFloat, fc.double({ min: 0, max: 1, noNaN: true })),
        minP: fc.oneof(anyFloat, fc.double({ min: 0, max: 1, noNaN: true })),
        seed: fc.nat({ max: 2 ** 32 - 1 }),
        draws: fc.nat({ max: 2 ** 32 - 1 }),
        frequencyPenalty: fc.oneof(anyFloat, fc.double({ min: -2, max: 2, noNaN: true })),
        presencePenalty: fc.oneof(anyFloat, fc.double({ min: -2, max: 2, noNaN: true })),
        repetitionPenalty: fc.oneof(anyFloat, fc.double({ min: 1e-45, max: 2, noNaN: true })),
        penaltyTokens: fc.array(fc.integer({ min: -3, max: 90 }), { maxLength: 12 }).map((a) => Int32Array.from(a)),
        promptLen: fc.integer({ min: -2, max: 14 }),
      },
      { requiredKeys: ['temperature', 'seed'] },
    );
    fc.assert(
      fc.property(fc.array(logit, { minLength: 1, maxLength: 70 }), params, fc.nat({ max: 90 }), (values, p, topN) => {
        checkedSample(Float32Array.from(values), p, topN);
      }),
      { seed: 20240611, numRuns: 2000 },
    );
  });
});

// Frequency, presence and repetition penalties in the native sampler: the greedy choice follows
// the penalized logits (recomputed here from the raw logits the step returns), while the
// reported logprobs stay those of the raw logits.
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { makeRandomCheckpoint } from '../src/model/demo.js';
import { SMALL_MODEL, addon, argmax, createEngine, logitsRow, openCheckpoint, prompt, step, tempDir, type SeqStep } from './engine-fixtures.js';

const VOCAB = SMALL_MODEL.vocab_size;
const tmp = tempDir('penalties');
let h: number;
const P = prompt(6, 11);

beforeAll(() => {
  makeRandomCheckpoint(join(tmp.dir, 'base'), SMALL_MODEL, 5, 'BF16');
  h = createEngine(openCheckpoint(join(tmp.dir, 'base')), { kvBlocks: 64, blockSize: 8 });
});

afterAll(() => {
  addon.destroyEngine(h);
  tmp.cleanup();
});

/** Token ids sorted by logit, highest first. */
const ranked = (l: Float32Array): number[] => [...l.keys()].sort((a, b) => l[b]! - l[a]! || a - b);

interface Pen {
  f?: number;
  p?: number;
  r?: number;
  history: number[];
  promptLen: number;
}

/** The formula: repetition over prompt and generated tokens, then frequency and presence over generated ones. */
function penalize(raw: Float32Array, pen: Pen): Float32Array {
  const out = Float32Array.from(raw);
  const r = pen.r ?? 1;
  for (const t of new Set(pen.history)) out[t] = out[t]! > 0 ? out[t]! / r : out[t]! * r;
  const counts = new Map<number, number>();
  for (const t of pen.history.slice(pen.promptLen)) counts.set(t, (counts.get(t) ?? 0) + 1);
  for (const [t, c] of counts) out[t] = out[t]! - (pen.f ?? 0) * c - (pen.p ?? 0);
  return out;
}

function logSoftmaxAt(l: Float32Array, i: number): number {
  let m = -Infinity;
  for (const x of l) m = Math.max(m, x);
  let s = 0;
  for (const x of l) s += Math.exp(x - m);
  return l[i]! - m - Math.log(s);
}

describe('penalties', () => {
  it('change the greedy choice exactly as the formulas say', () => {
    const plain = step(h, [{ tokens: P, cached: 0, blocks: [0] }], { returnLogits: true });
    const order = ranked(logitsRow(plain, 0, VOCAB));
    const top = order.slice(0, 6);
    // Generated history: the top token three times, the next ones once; prompt tokens first.
    const generated = [top[0]!, top[0]!, top[0]!, top[1]!, top[2]!];
    const history = [...P, ...generated];
    const cases: Pen[] = [
      { f: 0.8, history, promptLen: P.length },
      { p: 2, history: [...P, top[0]!, top[0]!], promptLen: P.length },
      { r: 2, history: [...top, ...P], promptLen: top.length + P.length },
      { f: -0.5, p: 0.3, r: 1.5, history, promptLen: P.length },
      // Frequency and presence only count generated tokens: the top token in the prompt alone is not penalized.
      { f: 2, p: 2, history: [top[0]!, ...P], promptLen: P.length + 1 },
    ];
    const seqs: SeqStep[] = cases.map((c, i) => ({
      tokens: P,
      cached: 0,
      blocks: [i + 1],
      frequencyPenalty: c.f ?? 0,
      presencePenalty: c.p ?? 0,
      repetitionPenalty: c.r ?? 1,
      penaltyTokens: c.history,
      penaltyPromptLen: c.promptLen,
    }));
    const r = step(h, seqs, { returnLogits: true });
    cases.forEach((c, i) => {
      const raw = logitsRow(r, i, VOCAB);
      const want = argmax(penalize(raw, c));
      expect(r.tokens[i]).toBe(want);
      expect(r.logprobs[i]).toBeCloseTo(logSoftmaxAt(raw, want), 5);
    });
    expect(r.tokens[0]).not.toBe(order[0]);
    expect(r.tokens[1]).not.toBe(order[0]);
    expect(r.tokens[2]).not.toBe(order[0]);
    expect(r.tokens[4]).toBe(order[0]);
  });

  it('apply to sampled choices too: the likeliest tokens, penalized hard, are no longer drawn', () => {
    const plain = step(h, [{ tokens: P, cached: 0, blocks: [0], temperature: 0.5, seed: 3 }], { returnLogits: true });
    const order = ranked(logitsRow(plain, 0, VOCAB));
    const banned = order.slice(0, 3);
    const history = [...P];
    for (let k = 0; k < 5; k++) history.push(...banned);
    const r = step(h, [
      {
        tokens: P,
        cached: 0,
        blocks: [0],
        temperature: 0.5,
        seed: 3,
        presencePenalty: 2,
        frequencyPenalty: 2,
        penaltyTokens: history,
        penaltyPromptLen: P.length,
      },
    ]);
    expect(banned).toContain(plain.tokens[0]);
    expect(banned).not.toContain(r.tokens[0]);
  });

  it('fails the row of out-of-range penalties and inconsistent history offsets, naming the field', () => {
    const bad = (s: Partial<SeqStep>): string | null | undefined =>
      step(h, [{ tokens: P, cached: 0, blocks: [0], penaltyTokens: P, penaltyPromptLen: P.length, ...s }]).errors?.[0];
    expect(bad({ repetitionPenalty: 0 })).toMatch(/repetitionPenalty must be in \(0, 2\]/);
    expect(bad({ frequencyPenalty: 2.5 })).toMatch(/frequencyPenalty must be in \[-2, 2\]/);
    expect(bad({ presencePenalty: -3 })).toMatch(/presencePenalty must be in \[-2, 2\]/);
    expect(bad({ penaltyPromptLen: P.length + 1 })).toMatch(/penaltyPromptLens/);
    expect(bad({ penaltyTokens: [VOCAB], penaltyPromptLen: 0 })).toMatch(/penalty token id 1000 is outside the vocabulary/);
  });
});

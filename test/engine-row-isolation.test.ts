// One sequence's malformed sampling values fail that sequence only: the step returns an error
// for its row and the other rows' tokens as if it were not there. Values the sampler can take
// (temperature +Inf or 1e-45, more top logprobs than the vocabulary) are no errors at all.
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { makeRandomCheckpoint } from '../src/model/demo.js';
import type { Checkpoint } from '../src/model/checkpoint.js';
import { SMALL_MODEL, addon, argmax, createEngine, logitsRow, openCheckpoint, prompt, step, tempDir, type SeqStep } from './engine-fixtures.js';

const VOCAB = SMALL_MODEL.vocab_size;
const tmp = tempDir('row-isolation');
let ckpt: Checkpoint;
let h: number;
const A = prompt(6, 21);
const B = prompt(5, 22);

beforeAll(() => {
  makeRandomCheckpoint(join(tmp.dir, 'base'), SMALL_MODEL, 9, 'BF16');
  ckpt = openCheckpoint(join(tmp.dir, 'base'));
  h = createEngine(ckpt, { kvBlocks: 64, blockSize: 8 });
});

afterAll(() => {
  addon.destroyEngine(h);
  tmp.cleanup();
});

const good: SeqStep = { tokens: B, cached: 0, blocks: [1], temperature: 0.8, seed: 12, topK: 20 };

describe('a row with malformed sampling values', () => {
  const cases: Array<[string, Partial<SeqStep>, RegExp]> = [
    ['a NaN temperature', { temperature: NaN }, /temperature must be a number >= 0, got nan/],
    ['a negative temperature', { temperature: -1 }, /temperature must be a number >= 0, got -1/],
    ['top_p 0', { temperature: 1, topP: 0 }, /topP must be in \(0, 1\], got 0/],
    ['top_p above 1', { temperature: 1, topP: 1.5 }, /topP must be in \(0, 1\]/],
    ['min_p NaN', { temperature: 1, minP: NaN }, /minP must be in \[0, 1\]/],
    ['repetition_penalty 0', { repetitionPenalty: 0, penaltyTokens: A, penaltyPromptLen: A.length }, /repetitionPenalty must be in \(0, 2\]/],
    ['frequency_penalty 2.5', { frequencyPenalty: 2.5, penaltyTokens: A, penaltyPromptLen: A.length }, /frequencyPenalty must be in \[-2, 2\]/],
    ['presence_penalty -3', { presencePenalty: -3, penaltyTokens: A, penaltyPromptLen: A.length }, /presencePenalty must be in \[-2, 2\]/],
    ['a prompt length past its penalty tokens', { repetitionPenalty: 1.2, penaltyTokens: A, penaltyPromptLen: A.length + 1 }, /penaltyPromptLens/],
    [
      'a penalty token outside the vocabulary',
      { repetitionPenalty: 1.2, penaltyTokens: [...A, VOCAB], penaltyPromptLen: A.length },
      /penalty token id 1000 is outside the vocabulary \[0, 1000\)/,
    ],
  ];
  for (const [what, bad, message] of cases) {
    it(`${what}: fails that row, the other row samples as if alone`, () => {
      const alone = step(h, [good], { returnLogits: true, topLogprobs: 2 });
      expect(alone.errors).toBeNull();
      for (const order of [0, 1]) {
        const rows: SeqStep[] = [{ tokens: A, cached: 0, blocks: [0], ...bad }, good];
        if (order === 1) rows.reverse();
        const r = step(h, rows, { returnLogits: true, topLogprobs: 2 });
        const badRow = order === 0 ? 0 : 1;
        const goodRow = 1 - badRow;
        expect(r.errors).not.toBeNull();
        expect(r.errors![badRow]).toMatch(message);
        expect(r.errors![goodRow]).toBeNull();
        expect(r.tokens[badRow]).toBe(-1);
        expect(r.tokens[goodRow]).toBe(alone.tokens[0]);
        expect(r.logprobs[goodRow]).toBe(alone.logprobs[0]);
        expect(Array.from(r.topIds.subarray(goodRow * 2, goodRow * 2 + 2))).toEqual(Array.from(alone.topIds));
        expect(logitsRow(r, goodRow, VOCAB)).toEqual(logitsRow(alone, 0, VOCAB));
      }
    });
  }

  it('fails every malformed row of a batch and none of the others', () => {
    const r = step(h, [
      { tokens: A, cached: 0, blocks: [0], temperature: NaN },
      { ...good, blocks: [1] },
      { tokens: B, cached: 0, blocks: [2], temperature: 1, topP: -1 },
      { tokens: A, cached: 0, blocks: [3], temperature: 0 },
    ]);
    expect(r.errors!.map((e) => e !== null)).toEqual([true, false, true, false]);
    expect(r.tokens[1]).toBeGreaterThanOrEqual(0);
    expect(r.tokens[3]).toBeGreaterThanOrEqual(0);
  });

  it('is no error on a row that does not sample', () => {
    const r = step(h, [{ tokens: A, cached: 0, blocks: [0], sample: false, temperature: NaN }, good]);
    expect(r.errors).toBeNull();
    expect(r.tokens[0]).toBe(-1);
  });
});

describe('values the sampler takes', () => {
  it('clamps topLogprobs beyond the vocabulary to the whole vocabulary', () => {
    const r = step(h, [{ tokens: A, cached: 0, blocks: [0] }, good], { topLogprobs: 200000, returnLogits: true });
    expect(r.errors).toBeNull();
    expect(r.topIds.length).toBe(2 * VOCAB);
    expect(r.topLogprobValues.length).toBe(2 * VOCAB);
    const ids = Array.from(r.topIds.subarray(0, VOCAB));
    expect(new Set(ids).size).toBe(VOCAB);
    expect(ids[0]).toBe(argmax(logitsRow(r, 0, VOCAB)));
    expect(r.tokens[0]).toBe(ids[0]);
  });

  it('samples uniformly at temperature +Inf (what 1e300 becomes as float32)', () => {
    const seqs: SeqStep[] = Array.from({ length: 24 }, (_, i) => ({ tokens: A, cached: 0, blocks: [i], temperature: 1e300, seed: i }));
    const r = step(h, seqs);
    expect(r.errors).toBeNull();
    for (const t of r.tokens) expect(t >= 0 && t < VOCAB).toBe(true);
    expect(new Set(r.tokens).size).toBeGreaterThan(15);
    for (const lp of r.logprobs) expect(Number.isFinite(lp)).toBe(true);
  });

  it('is greedy at temperature 1e-45 with top_p 0.9, and with repetition_penalty 1e-45 gives a token', () => {
    const r = step(
      h,
      [
        { tokens: A, cached: 0, blocks: [0], temperature: 1e-45, topP: 0.9, seed: 4 },
        { tokens: A, cached: 0, blocks: [1], temperature: 3e-39, minP: 0.5, seed: 5 },
        { tokens: A, cached: 0, blocks: [2], temperature: 1, topP: 0.9, repetitionPenalty: 1e-45, penaltyTokens: A, penaltyPromptLen: A.length },
        { tokens: A, cached: 0, blocks: [3], temperature: 1, minP: 0.5, repetitionPenalty: 1e-39, penaltyTokens: A, penaltyPromptLen: A.length },
      ],
      { returnLogits: true },
    );
    expect(r.errors).toBeNull();
    const greedy = argmax(logitsRow(r, 0, VOCAB));
    expect(r.tokens[0]).toBe(greedy);
    expect(r.tokens[1]).toBe(greedy);
    for (const i of [2, 3]) {
      expect(r.tokens[i]! >= 0 && r.tokens[i]! < VOCAB).toBe(true);
      expect(Number.isNaN(r.logprobs[i])).toBe(false);
      // The prompt's positive logits divided by the penalty overflow to +Inf and take all the mass.
      const logits = logitsRow(r, i, VOCAB);
      if (A.some((t) => logits[t]! > 0)) expect(A).toContain(r.tokens[i]);
    }
  });
});

// The CUDA sampler's guarantees (native/sampling.h) on the test checkpoint of make_checkpoint.py:
// temperatures below 1e-6 are greedy, +Inf is uniform, penalties that overflow logits to +Inf
// still give a token, logprobs are never NaN, and a row with malformed sampling values fails
// alone, on the kernel's path (no filter) and on the host's (filters, long top-N) alike.
import { afterAll, describe, expect, it } from 'vitest';
import { addon, argmax, engineOptions, logitsRow, makeBatch, openCheckpoint, prompt, type SeqStep } from '../engine-fixtures.js';

const dir = process.env.TROUPE_GPU_CHECKPOINT ?? '/tmp/troupe-llama-1b';
const ckpt = openCheckpoint(dir);
const vocab = ckpt.config.vocabSize;
const gpu = addon.createEngine(
  ckpt.config,
  ckpt.tensors,
  engineOptions({ blockSize: 16, kvBlocks: 256, loraSlots: 0, loraModules: [], cudaGraphMaxBs: 16, device: 'cuda' }),
);

afterAll(() => addon.destroyEngine(gpu));

const P = prompt(12, 3, vocab);
const row = (i: number, o: Partial<SeqStep>): SeqStep => ({ tokens: P, cached: 0, blocks: [i], seed: i, ...o });

function expectValid(r: { tokens: Int32Array; logprobs: Float32Array }, i: number): void {
  expect(Number.isInteger(r.tokens[i]) && r.tokens[i]! >= 0 && r.tokens[i]! < vocab).toBe(true);
  expect(Number.isNaN(r.logprobs[i])).toBe(false);
}

describe('CUDA sampling at the extremes', () => {
  for (const topLogprobs of [0, 5, vocab + 7]) {
    it(`gives a token to every well-formed row and an error to each malformed one (topLogprobs ${topLogprobs})`, () => {
      const seqs = [
        row(0, { temperature: 0 }),
        row(1, { temperature: NaN }),
        row(2, { temperature: 1e-45, topP: 0.9 }),
        row(3, { temperature: 3e-39 }),
        row(4, { temperature: Infinity }),
        row(5, { temperature: 1, repetitionPenalty: 0.5, penaltyTokens: [...P, vocab], penaltyPromptLen: P.length }),
        row(6, { temperature: 1, repetitionPenalty: 1e-45, penaltyTokens: P, penaltyPromptLen: P.length }),
        row(7, { temperature: 0, repetitionPenalty: 1e-45, penaltyTokens: P, penaltyPromptLen: P.length }),
        row(8, { temperature: 1, topP: 0.9, repetitionPenalty: 1e-39, penaltyTokens: P, penaltyPromptLen: P.length }),
        row(9, { temperature: 1, topK: 2 ** 31 - 1, minP: 1 }),
      ];
      const r = addon.step(gpu, makeBatch(seqs, { topLogprobs, returnLogits: true }));
      expect(r.errors).not.toBeNull();
      expect(r.errors!.map((e) => e !== null)).toEqual([false, true, false, false, false, true, false, false, false, false]);
      expect(r.errors![1]).toMatch(/temperature must be a number >= 0/);
      expect(r.errors![5]).toMatch(/penalty token id \d+ is outside the vocabulary/);
      const width = Math.min(topLogprobs, vocab);
      expect(r.topIds.length).toBe(seqs.length * width);
      for (const v of r.topLogprobValues) expect(Number.isNaN(v)).toBe(false);
      for (let i = 0; i < seqs.length; i++) {
        if (i === 1 || i === 5) {
          expect(r.tokens[i]).toBe(-1);
          continue;
        }
        expectValid(r, i);
      }
      // Greedy, or min_p 1 (only the most likely token is kept), over each row's own logits.
      for (const i of [0, 2, 3, 9]) expect(r.tokens[i]).toBe(argmax(logitsRow(r, i, vocab)));
      // Positive prompt logits divided by 1e-45 overflow to +Inf and take all the mass.
      for (const i of [6, 7]) {
        const logits = logitsRow(r, i, vocab);
        if (P.some((t) => logits[t]! > 0)) expect(P).toContain(r.tokens[i]);
      }
    });
  }

  it('samples uniformly at temperature +Inf', () => {
    const seqs = Array.from({ length: 32 }, (_, i) => row(i, { temperature: Infinity }));
    const r = addon.step(gpu, makeBatch(seqs));
    expect(r.errors).toBeNull();
    for (let i = 0; i < seqs.length; i++) expectValid(r, i);
    expect(new Set(r.tokens).size).toBeGreaterThan(24);
  });
});

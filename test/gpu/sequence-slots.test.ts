// The engine's sequence table on the CUDA backend (TROUPE_GPU_TESTS=1, on the checkpoint of
// make_checkpoint.py): requests decoded with their values, blocks and penalty counts kept in
// sequence slots get exactly the tokens of sending every row's values, blocks and history each
// step. In the resident form the CUDA backend keeps each sequence's values on the device and a
// penalized sequence's token counts there too (native/cuda/sample_table.h), which the sampling
// kernel reads and adds to (greedy, plain temperature and top-k rows) and the host adds the tokens
// it samples to; the per-row form sends the values and the history every step.
import { afterAll, describe, expect, it } from 'vitest';
import { addon, engineOptions, openCheckpoint, prompt } from '../engine-fixtures.js';
import { decode, type EnginePair, type Req } from '../sequence-slots-fixtures.js';

const dir = process.env.TROUPE_GPU_CHECKPOINT ?? '/tmp/troupe-llama-1b';
const ckpt = openCheckpoint(dir);
const vocab = ckpt.config.vocabSize;
const opts = engineOptions({ blockSize: 16, kvBlocks: 256, loraSlots: 0, loraModules: [], cudaGraphMaxBs: 16, device: 'cuda' });
const engines: EnginePair = {
  perRow: addon.createEngine(ckpt.config, ckpt.tensors, opts),
  resident: addon.createEngine(ckpt.config, ckpt.tensors, opts),
  blockSize: 16,
};

afterAll(() => {
  addon.destroyEngine(engines.perRow);
  addon.destroyEngine(engines.resident);
});

describe('sequence slots on CUDA', () => {
  it("give the tokens of sending every row's values, blocks and history each step", () => {
    const reqs: Req[] = [
      { prompt: prompt(12, 1, vocab), block: 1, frequencyPenalty: 1.5, presencePenalty: 1, repetitionPenalty: 1.8 },
      { prompt: prompt(14, 2, vocab), block: 2, temperature: 0.9, seed: 5, repetitionPenalty: 1.5 },
      { prompt: prompt(10, 3, vocab), block: 3, temperature: 1.1, topK: 40, seed: 6, presencePenalty: 2 },
      { prompt: prompt(15, 4, vocab), block: 4 },
    ];
    // 24 steps take every request past a block boundary (16 and 32 tokens).
    const got = decode(engines, reqs, [7, 0, 3, 12], 24);
    expect(got.resident).toEqual(got.perRow);
  });

  it("keep each penalized sequence's counts on the device: slots refilled, steps sampled on the host", () => {
    const penalized = { frequencyPenalty: 1.2, presencePenalty: 0.5, repetitionPenalty: 1.6 };
    const first: Req[] = [
      { prompt: prompt(12, 5, vocab), block: 1, ...penalized },
      { prompt: prompt(13, 6, vocab), block: 2 },
      { prompt: prompt(11, 7, vocab), block: 3, temperature: 0.8, seed: 9, ...penalized },
    ];
    const slots = [4, 9, 2];
    const before = decode(engines, first, slots, 12);
    expect(before.resident).toEqual(before.perRow);
    // The same slots take new sequences: one loses its penalty (its count row goes back), one
    // gains one (a row cleared of the last sequence's counts), one keeps one over new tokens.
    const second: Req[] = [
      { prompt: prompt(12, 8, vocab), block: 1 },
      { prompt: prompt(14, 9, vocab), block: 2, repetitionPenalty: 1.8, presencePenalty: 1 },
      { prompt: prompt(10, 10, vocab), block: 3, ...penalized },
    ];
    // Every third step asks more alternatives than the GPU sampler gives, so the host samples its
    // rows and their tokens must reach the device's counts.
    const got = decode(engines, second, slots, 18, (k) => (k % 3 === 1 ? 100 : 0));
    expect(got.resident).toEqual(got.perRow);
  });
});

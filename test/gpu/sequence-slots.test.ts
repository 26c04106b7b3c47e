// The engine's sequence table on the CUDA backend (TROUPE_GPU_TESTS=1, on the checkpoint of
// make_checkpoint.py): requests decoded with their values, blocks and penalty counts kept in
// sequence slots get exactly the tokens of sending every row's values, blocks and history each
// step. The resident form hands the sampler the engine's counts of each penalized sequence's
// tokens, on the kernel's path (greedy and plain temperature) and the host's (top-k), where the
// per-row form counts the history itself.
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
});

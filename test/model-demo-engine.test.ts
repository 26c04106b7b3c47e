// The demo model run through the native engine against token ids from an independent float64
// NumPy implementation of the Llama forward pass (greedy, seed 0). This pins both the demo
// generator's output and the engine's reading of it, and checks that each demo adapter and
// its merged equivalent steer generation away from the base model.
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadNative } from '../src/engine/native.js';
import { LORA_MODULES, type NativeAddon } from '../src/engine/types.js';
import { loadAdapterWeights } from '../src/model/adapter.js';
import { openCheckpoint } from '../src/model/checkpoint.js';
import { makeDemo } from '../src/model/demo.js';
import { mergeAdapter } from '../src/model/merge.js';
import { tempDir } from './model-fixtures.js';

const PROMPT = [128000, 9906, 1917, 11, 856, 836, 374];
const REFERENCE = {
  base: [76971, 23684, 111619, 64693, 63126, 33849, 3259, 114392],
  'demo-a': [88990, 106004, 19316, 15847, 64899, 81983, 37040, 39488],
  'demo-b': [69885, 54209, 49385, 87397, 98607, 31583, 48486, 85200],
};

const tmp = tempDir('troupe-demo-engine-');
const demo = join(tmp.path, 'demo');
let addon: NativeAddon;
const handles: number[] = [];

beforeAll(() => {
  addon = loadNative();
  makeDemo(demo);
});
afterAll(() => {
  for (const h of handles) addon.destroyEngine(h);
  tmp.cleanup();
});

function engine(dir: string): number {
  const ckpt = openCheckpoint(dir);
  const h = addon.createEngine(ckpt.config, ckpt.tensors, {
    device: 'cpu',
    blockSize: 16,
    kvBlocks: 8,
    memFractionStatic: 0.8,
    loraSlots: 2,
    maxLoraRank: 16,
    loraModules: [...LORA_MODULES],
    threads: 0,
    cudaGraphMaxBs: 0,
  });
  handles.push(h);
  return h;
}

/** Greedy decoding of one sequence: a prefill step, then one step per token. */
function greedy(h: number, slot: number, steps: number): number[] {
  const out: number[] = [];
  let tokens = PROMPT;
  let start = 0;
  while (out.length < steps) {
    const r = addon.step(h, {
      tokens: Int32Array.from(tokens),
      positions: Int32Array.from(tokens, (_, i) => start + i),
      seqStarts: Int32Array.from([0, tokens.length]),
      contextLens: Int32Array.from([start + tokens.length]),
      blockTables: Int32Array.from([0, 1]),
      maxBlocksPerSeq: 2,
      loraSlots: Int32Array.from([slot]),
      sample: Uint8Array.from([1]),
      temperature: Float32Array.from([0]),
      topK: Int32Array.from([-1]),
      topP: Float32Array.from([1]),
      minP: Float32Array.from([0]),
      seeds: Uint32Array.from([0]),
      draws: Uint32Array.from([0]),
      topLogprobs: 0,
      returnLogits: false,
      frequencyPenalty: Float32Array.from([0]),
      presencePenalty: Float32Array.from([0]),
      repetitionPenalty: Float32Array.from([1]),
      penaltyTokens: new Int32Array(0),
      penaltyStarts: new Int32Array(2),
      penaltyPromptLens: new Int32Array(1),
    });
    start += tokens.length;
    tokens = [r.tokens[0]!];
    out.push(r.tokens[0]!);
  }
  return out;
}

describe('demo model on the engine', () => {
  it('matches the reference for the base model and both adapters', () => {
    const h = engine(demo);
    const config = openCheckpoint(demo).config;
    addon.loadLoraSlot(h, 0, loadAdapterWeights(join(demo, 'adapters', 'demo-a'), config).weights);
    addon.loadLoraSlot(h, 1, loadAdapterWeights(join(demo, 'adapters', 'demo-b'), config).weights);
    expect(greedy(h, -1, 8)).toEqual(REFERENCE.base);
    expect(greedy(h, 0, 8)).toEqual(REFERENCE['demo-a']);
    expect(greedy(h, 1, 8)).toEqual(REFERENCE['demo-b']);
  });

  it('gives the adapter output from the merged checkpoint without LoRA', () => {
    const merged = join(tmp.path, 'merged-a');
    mergeAdapter(demo, join(demo, 'adapters', 'demo-a'), merged);
    expect(greedy(engine(merged), -1, 8)).toEqual(REFERENCE['demo-a']);
  });
});

// Bad checkpoints, bad batches and bad adapters produce errors that name the problem, and an
// engine that refused a batch keeps working. Also: handles work from other threads.
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { makeRandomAdapter, makeRandomCheckpoint } from '../src/model/demo.js';
import { loadAdapterWeights } from '../src/model/adapter.js';
import type { Checkpoint } from '../src/model/checkpoint.js';
import { ADDON_RELATIVE_PATH } from '../src/engine/native.js';
import { packageRoot } from '../src/paths.js';
import { SMALL_MODEL, addon, createEngine, engineOptions, logitsRow, makeBatch, openCheckpoint, prompt, step, tempDir } from './engine-fixtures.js';

const VOCAB = SMALL_MODEL.vocab_size;
const tmp = tempDir('errors');
let ckpt: Checkpoint;
let h: number;
const P = prompt(7, 1);

beforeAll(() => {
  makeRandomCheckpoint(join(tmp.dir, 'base'), SMALL_MODEL, 5, 'BF16');
  makeRandomAdapter(join(tmp.dir, 'wide'), { rank: 16, alpha: 16, targetModules: ['q_proj', 'down_proj'], seed: 6 }, SMALL_MODEL);
  ckpt = openCheckpoint(join(tmp.dir, 'base'));
  h = createEngine(ckpt, { kvBlocks: 8, loraSlots: 2, maxLoraRank: 8, loraModules: ['q_proj', 'v_proj'] });
});

afterAll(() => {
  addon.destroyEngine(h);
  tmp.cleanup();
});

function good() {
  return step(h, [{ tokens: P, cached: 0, blocks: [0, 1] }], { returnLogits: true });
}

describe('checkpoint errors', () => {
  it('names a missing tensor', () => {
    const tensors = ckpt.tensors.filter((t) => t.name !== 'model.layers.1.mlp.up_proj.weight');
    expect(() => addon.createEngine(ckpt.config, tensors, engineOptions())).toThrow(/missing tensor model\.layers\.1\.mlp\.up_proj\.weight/);
  });

  it('names a tensor of the wrong shape', () => {
    const tensors = ckpt.tensors.map((t) => (t.name === 'model.layers.0.self_attn.k_proj.weight' ? { ...t, shape: [16, 128] } : t));
    expect(() => addon.createEngine(ckpt.config, tensors, engineOptions())).toThrow(
      /model\.layers\.0\.self_attn\.k_proj\.weight has shape \[16, 128\], expected \[32, 64\]/,
    );
  });

  it('needs lm_head.weight when the embeddings are not tied', () => {
    expect(() => addon.createEngine({ ...ckpt.config, tieWordEmbeddings: false }, ckpt.tensors, engineOptions())).toThrow(/lm_head\.weight/);
  });

  it('names a file it cannot read', () => {
    const tensors = ckpt.tensors.map((t) => ({ ...t, file: join(tmp.dir, 'nope.safetensors') }));
    expect(() => addon.createEngine(ckpt.config, tensors, engineOptions())).toThrow(/nope\.safetensors: cannot open/);
  });

  it('rejects arguments of the wrong type with a TypeError naming the field', () => {
    expect(() => addon.createEngine({ ...ckpt.config, hiddenSize: '64' } as never, ckpt.tensors, engineOptions())).toThrow(TypeError);
    expect(() => addon.createEngine({ ...ckpt.config, hiddenSize: '64' } as never, ckpt.tensors, engineOptions())).toThrow(/config\.hiddenSize/);
    expect(() => addon.createEngine(ckpt.config, ckpt.tensors, engineOptions({ loraModules: ['qkv_proj' as never] }))).toThrow(/qkv_proj/);
    expect(() => addon.createEngine(ckpt.config, ckpt.tensors, engineOptions({ device: 'cuda' }))).toThrow(/no CUDA backend/);
  });

  it('takes the LoRA kernel families by name and names the ones it does not know', () => {
    expect(() => addon.createEngine(ckpt.config, ckpt.tensors, engineOptions({ loraKernel: 'wmma' as never }))).toThrow(
      /options\.loraKernel must be "fma", "mma", "mma-pdl", "mma-overlap" or "fused", got "wmma"/,
    );
    // The CPU backend has one LoRA path and takes every family.
    for (const loraKernel of ['fma', 'mma', 'mma-pdl', 'mma-overlap', 'fused'] as const) addon.destroyEngine(createEngine(ckpt, { loraKernel }));
  });
});

describe('batch errors', () => {
  const cases: Array<[string, () => unknown, RegExp]> = [
    [
      'a block id out of range',
      () => step(h, [{ tokens: P, cached: 0, blocks: [0, 8] }]),
      /block table entry 1 is block 8, outside the KV cache's \[0, 8\)/,
    ],
    ['a missing block', () => step(h, [{ tokens: P, cached: 0, blocks: [0] }], { maxBlocksPerSeq: 2 }), /block table entry 1 is block -1/],
    ['a LoRA slot out of range', () => step(h, [{ tokens: P, cached: 0, blocks: [0, 1], slot: 5 }]), /LoRA slot 5 is outside \[0, 2\)/],
    ['an empty LoRA slot', () => step(h, [{ tokens: P, cached: 0, blocks: [0, 1], slot: 1 }]), /LoRA slot 1 holds no adapter/],
    ['a token outside the vocabulary', () => step(h, [{ tokens: [VOCAB], cached: 0, blocks: [0] }]), /token id 1000 is outside the vocabulary/],
    [
      'positions that disagree with contextLens',
      () => addon.step(h, { ...makeBatch([{ tokens: P, cached: 0, blocks: [0, 1] }]), contextLens: Int32Array.of(9) }),
      /position 0 but contextLens 9 puts it at 2/,
    ],
    [
      'seqStarts that go backwards',
      () =>
        addon.step(h, {
          ...makeBatch([
            { tokens: P, cached: 0, blocks: [0, 1] },
            { tokens: [5], cached: 0, blocks: [2] },
          ]),
          seqStarts: Int32Array.of(0, 100, 8),
        }),
      /seqStarts must increase \(sequence 1 has no tokens\)/,
    ],
    [
      'arrays of the wrong length',
      () => addon.step(h, { ...makeBatch([{ tokens: P, cached: 0, blocks: [0, 1] }]), topP: new Float32Array(2) }),
      /batch\.topP has 2 elements, expected 1/,
    ],
  ];
  for (const [what, run, message] of cases) {
    it(`rejects ${what} and keeps working`, () => {
      const before = good();
      expect(run).toThrow(message);
      expect(logitsRow(good(), 0, VOCAB)).toEqual(logitsRow(before, 0, VOCAB));
    });
  }

  it('fails only the row of a bad top_p, as a row error, and keeps working', () => {
    const before = good();
    const r = step(h, [{ tokens: P, cached: 0, blocks: [0, 1], temperature: 1, topP: 0 }]);
    expect(r.errors).toEqual([expect.stringMatching(/topP must be in \(0, 1\]/)]);
    expect(r.tokens[0]).toBe(-1);
    expect(logitsRow(good(), 0, VOCAB)).toEqual(logitsRow(before, 0, VOCAB));
  });

  it('rejects a typed array of the wrong type with a TypeError', () => {
    const bad = { ...makeBatch([{ tokens: P, cached: 0, blocks: [0, 1] }]), tokens: Float32Array.from(P) };
    expect(() => addon.step(h, bad as never)).toThrow(TypeError);
    expect(() => addon.step(h, bad as never)).toThrow(/batch\.tokens must be an Int32Array/);
  });
});

describe('adapter errors', () => {
  it('refuses a rank above maxLoraRank and a module the pool does not hold', () => {
    const wide = loadAdapterWeights(join(tmp.dir, 'wide'), ckpt.config).weights;
    expect(() => addon.loadLoraSlot(h, 0, wide)).toThrow(/rank 16 is outside \[1, 8\]/);
    const narrow = { ...wide, rank: 8, weights: [] };
    expect(() => addon.loadLoraSlot(h, 2, narrow)).toThrow(/slot 2 is outside \[0, 2\)/);
    const down = {
      rank: 8,
      scaling: 1,
      weights: [{ layer: 0, module: 'down_proj' as const, a: new Float32Array(8 * 160), b: new Float32Array(64 * 8) }],
    };
    expect(() => addon.loadLoraSlot(h, 0, down)).toThrow(/targets down_proj, which the LoRA pool does not hold/);
    const shortA = { rank: 8, scaling: 1, weights: [{ layer: 1, module: 'q_proj' as const, a: new Float32Array(10), b: new Float32Array(64 * 8) }] };
    expect(() => addon.loadLoraSlot(h, 0, shortA)).toThrow(/layer 1 q_proj: A has 10 values, expected rank 8 x 64/);
  });
});

describe('a pool cut into slots of a lower rank', () => {
  it('takes an adapter only at a multiple of its span, within the pool', () => {
    const cut = createEngine(ckpt, { kvBlocks: 8, loraSlots: 4, maxLoraRank: 16, loraSlotRank: 8, loraModules: ['q_proj', 'down_proj'] });
    try {
      expect(addon.engineInfo(cut)).toMatchObject({ loraSlots: 4, maxLoraRank: 16, loraSlotRank: 8 });
      const wide = loadAdapterWeights(join(tmp.dir, 'wide'), ckpt.config).weights;
      for (const slot of [1, 3]) {
        expect(() => addon.loadLoraSlot(cut, slot, wide)).toThrow(
          /an adapter of rank 16 takes 2 slots of rank 8, from a multiple of 2 within \[0, 4\)/,
        );
      }
      addon.loadLoraSlot(cut, 2, wide);
      // Without loraSlotRank, one slot an adapter: the max rank.
      expect(addon.engineInfo(h).loraSlotRank).toBe(8);
    } finally {
      addon.destroyEngine(cut);
    }
  });

  it('refuses a slot rank above the max rank', () => {
    expect(() => createEngine(ckpt, { kvBlocks: 8, loraSlots: 4, maxLoraRank: 16, loraSlotRank: 32 })).toThrow(
      /loraSlotRank 32 exceeds maxLoraRank 16/,
    );
  });
});

describe('handles', () => {
  it('fails clearly on a destroyed handle', () => {
    const other = createEngine(ckpt, { kvBlocks: 2 });
    addon.destroyEngine(other);
    expect(() => addon.engineInfo(other)).toThrow(/no engine with handle/);
  });

  it('can be used from a worker thread that loads the addon', async () => {
    const want = Array.from(logitsRow(good(), 0, VOCAB).subarray(0, 8));
    const code = `
      const { parentPort, workerData } = require('node:worker_threads');
      const addon = require(workerData.file);
      const r = addon.step(workerData.handle, workerData.batch);
      parentPort.postMessage({ info: addon.engineInfo(workerData.handle), logits: Array.from(r.logits.subarray(0, 8)) });
    `;
    const batch = makeBatch([{ tokens: P, cached: 0, blocks: [0, 1] }], { returnLogits: true });
    const worker = new Worker(code, { eval: true, workerData: { file: join(packageRoot(), ADDON_RELATIVE_PATH), handle: h, batch } });
    const msg = await new Promise<{ info: { kvBlocks: number }; logits: number[] }>((resolve, reject) => {
      worker.once('message', resolve);
      worker.once('error', reject);
    });
    await worker.terminate();
    expect(msg.info.kvBlocks).toBe(8);
    expect(msg.logits).toEqual(want);
  });
});

// The CPU engine against references: merged checkpoints for LoRA, single-request runs for
// batch invariance, one-shot prefill for chunked prefill over a paged cache.
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { makeRandomAdapter, makeRandomCheckpoint } from '../src/model/demo.js';
import { mergeAdapter } from '../src/model/merge.js';
import type { Checkpoint } from '../src/model/checkpoint.js';
import {
  SMALL_MODEL,
  addon,
  argmax,
  createEngine,
  drive,
  loadSlot,
  logitsRow,
  maxAbs,
  maxAbsDiff,
  openCheckpoint,
  prompt,
  step,
  tempDir,
} from './engine-fixtures.js';
import { readWeights, referenceLogits } from './engine-reference.js';

const VOCAB = SMALL_MODEL.vocab_size;
const tmp = tempDir('engine');
let base: Checkpoint;
let adapterA: string;
let adapterB: string;
let mergedA: Checkpoint;
let mergedB: Checkpoint;
const handles: number[] = [];

function engine(ckpt: Checkpoint, over: Parameters<typeof createEngine>[1] = {}): number {
  const h = createEngine(ckpt, over);
  handles.push(h);
  return h;
}

/** An engine over the base model with adapter A in slot 0 and adapter B in slot 1. */
function loraEngine(): number {
  const h = engine(base);
  loadSlot(h, 0, adapterA, base);
  loadSlot(h, 1, adapterB, base);
  return h;
}

beforeAll(() => {
  const dir = tmp.dir;
  makeRandomCheckpoint(join(dir, 'base'), SMALL_MODEL, 11, 'BF16');
  adapterA = join(dir, 'lora-a');
  adapterB = join(dir, 'lora-b');
  // The demo adapters' kinds: rank 8 on q/v (F32) and rank 16 on all seven modules (BF16).
  makeRandomAdapter(adapterA, { rank: 8, alpha: 16, targetModules: ['q_proj', 'v_proj'], seed: 12, dtype: 'F32' }, SMALL_MODEL);
  makeRandomAdapter(
    adapterB,
    { rank: 16, alpha: 32, targetModules: ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'], seed: 13, dtype: 'BF16' },
    SMALL_MODEL,
  );
  mergeAdapter(join(dir, 'base'), adapterA, join(dir, 'merged-a'));
  mergeAdapter(join(dir, 'base'), adapterB, join(dir, 'merged-b'));
  base = openCheckpoint(join(dir, 'base'));
  mergedA = openCheckpoint(join(dir, 'merged-a'));
  mergedB = openCheckpoint(join(dir, 'merged-b'));
});

afterAll(() => {
  for (const h of handles) addon.destroyEngine(h);
  tmp.cleanup();
});

describe('native addon', () => {
  it('reports a CPU-only build with the reason', () => {
    const info = addon.buildInfo();
    expect(info.cuda).toBe(false);
    expect(info.cudaReason.length).toBeGreaterThan(10);
    expect(info.version).toMatch(/^\d+\.\d+\.\d+/);
    expect(addon.cudaDeviceCount()).toBe(0);
  });

  it('describes the engine it created', () => {
    const h = engine(base, { kvBlocks: 10, blockSize: 8, loraSlots: 3, maxLoraRank: 32 });
    expect(addon.engineInfo(h)).toMatchObject({ device: 'cpu', kvBlocks: 10, blockSize: 8, loraSlots: 3, maxLoraRank: 32, loraKernel: 'cpu' });
    // Without a LoRA pool there is no LoRA path to name.
    expect(addon.engineInfo(engine(base, { kvBlocks: 10, loraSlots: 0 })).loraKernel).toBe('none');
  });

  it('sizes the KV cache itself when kvBlocks is 0', () => {
    const h = engine(base, { kvBlocks: 0 });
    expect(addon.engineInfo(h).kvBlocks).toBeGreaterThan(100);
  });
});

describe('forward', () => {
  it('matches a float64 reference forward (llama3 rope scaling, GQA, tied embeddings)', () => {
    // Every rope branch is used: with original_max_position_embeddings 64 and head_dim 16 the
    // wavelengths fall below, between and above the 16..64 band.
    const weights = readWeights(base);
    const h = engine(base);
    const p = prompt(40, 61);
    const got = drive(h, [{ prompt: p, blocks: Array.from({ length: 10 }, (_, i) => 20 + i), chunks: [17, 23], decodes: 0 }], VOCAB)[0]!.logits[0]!;
    const want = referenceLogits(base.config, weights, p);
    // float32 against float64 over two layers: a few float32 roundings per sum of 64..160 terms.
    expect(maxAbsDiff(got, Float32Array.from(want))).toBeLessThanOrEqual(1e-4 * maxAbs(got));
    expect(maxAbs(got)).toBeGreaterThan(1);
  });
});

describe('LoRA matches merged weights', () => {
  // The reference merges W + scaling * B A in float64 and stores float32; the engine computes
  // W x + scaling * B (A x) in float32. Both are exact up to float32 rounding of a few sums per
  // layer, so the logits agree to ~1e-6 of their scale; 1e-4 of the scale leaves room for
  // rounding growth through the layers while an adapter changes logits by far more (checked).
  const TOLERANCE = 1e-4;

  it('gives each row of a base/A/B batch the logits of its merged model, at prefill and decode', () => {
    const h = loraEngine();
    const reqs = [
      { prompt: prompt(9, 1), slot: -1, ref: base },
      { prompt: prompt(6, 2), slot: 0, ref: mergedA },
      { prompt: prompt(11, 3), slot: 1, ref: mergedB },
      { prompt: prompt(7, 4), slot: 0, ref: mergedA },
      { prompt: prompt(5, 5), slot: 1, ref: mergedB },
    ];
    const mixed = drive(
      h,
      reqs.map((r, i) => ({ prompt: r.prompt, slot: r.slot, blocks: [i * 4, i * 4 + 1, i * 4 + 2, i * 4 + 3], decodes: 3 })),
      VOCAB,
    );
    const plainBase = engine(base, { loraSlots: 0, maxLoraRank: 0 });
    reqs.forEach((r, i) => {
      const refHandle = r.ref === base ? plainBase : engine(r.ref, { loraSlots: 0 });
      const ref = drive(refHandle, [{ prompt: r.prompt, blocks: [0, 1, 2, 3], decodes: 3 }], VOCAB)[0]!;
      expect(mixed[i]!.tokens).toEqual(ref.tokens);
      ref.logits.forEach((want, k) => {
        const got = mixed[i]!.logits[k]!;
        expect(maxAbsDiff(got, want)).toBeLessThanOrEqual(TOLERANCE * maxAbs(want));
        if (r.slot >= 0) {
          // The adapter must matter, or the comparison proves nothing.
          const baseOnly = drive(plainBase, [{ prompt: r.prompt, blocks: [8, 9, 10, 11], decodes: 0 }], VOCAB)[0]!.logits[0]!;
          if (k === 0) expect(maxAbsDiff(got, baseOnly)).toBeGreaterThan(100 * TOLERANCE * maxAbs(want));
        }
      });
    });
  });

  it('stops applying an adapter once its slot is cleared', () => {
    const h = loraEngine();
    const p = prompt(8, 9);
    const withA = drive(h, [{ prompt: p, slot: 0, blocks: [0, 1], decodes: 0 }], VOCAB)[0]!.logits[0]!;
    addon.clearLoraSlot(h, 0);
    expect(() => step(h, [{ tokens: p, cached: 0, blocks: [0, 1], slot: 0 }])).toThrow(/slot 0 holds no adapter/);
    const plain = drive(engine(base), [{ prompt: p, blocks: [0, 1], decodes: 0 }], VOCAB)[0]!.logits[0]!;
    const baseRow = drive(h, [{ prompt: p, blocks: [0, 1], decodes: 0 }], VOCAB)[0]!.logits[0]!;
    expect(baseRow).toEqual(plain);
    expect(withA).not.toEqual(plain);
  });
});

describe('batch invariance', () => {
  it('gives a request the same greedy tokens and bitwise logits alone and in a mixed batch', () => {
    const target = { prompt: prompt(13, 21), slot: 1, decodes: 8 };
    const alone = drive(loraEngine(), [{ ...target, blocks: [0, 1, 2, 3, 4, 5] }], VOCAB)[0]!;
    const mixed = drive(
      loraEngine(),
      [
        { prompt: prompt(20, 22), slot: -1, blocks: [6, 7, 8, 9, 10, 11, 12], chunks: [7, 7, 6], decodes: 5 },
        { prompt: prompt(5, 23), slot: 0, blocks: [13, 14, 15, 16], join: 1, decodes: 9 },
        { ...target, blocks: [30, 3, 17, 25, 1, 40], join: 1, chunks: [4, 9] },
        { prompt: prompt(3, 24), slot: 1, blocks: [20, 21, 22, 23], join: 2, decodes: 6 },
        { prompt: prompt(9, 25), slot: 0, blocks: [50, 51, 52, 53, 54], decodes: 3 },
      ],
      VOCAB,
    )[2]!;
    expect(mixed.tokens).toEqual(alone.tokens);
    expect(mixed.tokens).toHaveLength(9);
    mixed.logits.forEach((l, k) => expect(l).toEqual(alone.logits[k]));
  });
});

describe('paged KV cache', () => {
  it('gives chunked prefill over scattered blocks the logits of one-shot prefill', () => {
    const p = prompt(37, 31);
    const h = engine(base);
    const oneShot = drive(h, [{ prompt: p, blocks: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], decodes: 4 }], VOCAB)[0]!;
    const scattered = [44, 3, 61, 17, 12, 50, 29, 36, 20, 58, 13, 47];
    const chunked = drive(h, [{ prompt: p, blocks: scattered, chunks: [5, 16, 1, 15], decodes: 4 }], VOCAB)[0]!;
    expect(chunked.tokens).toEqual(oneShot.tokens);
    chunked.logits.forEach((l, k) => expect(l).toEqual(oneShot.logits[k]));
  });

  it('attends only to its own sequence when another sequence fills other blocks', () => {
    const h = engine(base);
    const p = prompt(10, 41);
    const alone = step(h, [{ tokens: p, cached: 0, blocks: [0, 1, 2] }], { returnLogits: true });
    const withOther = step(
      h,
      [
        { tokens: prompt(10, 42), cached: 0, blocks: [3, 4, 5] },
        { tokens: p, cached: 0, blocks: [6, 7, 8] },
      ],
      { returnLogits: true },
    );
    expect(logitsRow(withOther, 1, VOCAB)).toEqual(logitsRow(alone, 0, VOCAB));
    expect(argmax(logitsRow(alone, 0, VOCAB))).toBe(alone.tokens[0]);
  });
});

describe('checkpoint dtypes', () => {
  it('reads F16 weights and an untied lm_head exactly as their float32 values', async () => {
    const { readSafetensorsHeader, readTensorBytes, toFloat32, writeSafetensors } = await import('../src/model/safetensors.js');
    const { mkdirSync, copyFileSync } = await import('node:fs');
    const untied = { ...SMALL_MODEL, tie_word_embeddings: false, rope_scaling: null, torch_dtype: 'float16' };
    const f16Dir = join(tmp.dir, 'f16');
    const f32Dir = join(tmp.dir, 'f32');
    makeRandomCheckpoint(f16Dir, untied, 17, 'F16');
    mkdirSync(f32Dir, { recursive: true });
    const header = readSafetensorsHeader(join(f16Dir, 'model.safetensors'));
    const tensors = [...header.tensors.values()].map((e) => {
      const f = toFloat32(readTensorBytes(e), e.dtype);
      return { name: e.name, dtype: 'F32', shape: e.shape, data: new Uint8Array(f.buffer) };
    });
    writeSafetensors(join(f32Dir, 'model.safetensors'), tensors);
    for (const f of ['config.json', 'tokenizer.json', 'tokenizer_config.json']) copyFileSync(join(f16Dir, f), join(f32Dir, f));
    const a = openCheckpoint(f16Dir);
    const b = openCheckpoint(f32Dir);
    expect(a.tensors.find((t) => t.name === 'lm_head.weight')?.dtype).toBe('F16');
    const p = prompt(12, 51);
    const ra = drive(engine(a), [{ prompt: p, blocks: [0, 1, 2, 3], decodes: 2 }], VOCAB)[0]!;
    const rb = drive(engine(b), [{ prompt: p, blocks: [0, 1, 2, 3], decodes: 2 }], VOCAB)[0]!;
    expect(ra.tokens).toEqual(rb.tokens);
    ra.logits.forEach((l, k) => expect(l).toEqual(rb.logits[k]));
  });
});

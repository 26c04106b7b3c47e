import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadAdapterWeights } from '../src/model/adapter.js';
import { openCheckpoint } from '../src/model/checkpoint.js';
import { makeRandomAdapter, makeRandomCheckpoint } from '../src/model/demo.js';
import { mergeAdapter } from '../src/model/merge.js';
import { readTensorBytes, toFloat32 } from '../src/model/safetensors.js';
import { TINY, tempDir } from './model-fixtures.js';

const tmp = tempDir('troupe-merge-');
const model = join(tmp.path, 'model');
const adapter = join(tmp.path, 'adapter');
const merged = join(tmp.path, 'merged');

beforeAll(() => {
  makeRandomCheckpoint(model, TINY, 3);
  makeRandomAdapter(adapter, { rank: 4, alpha: 6, targetModules: ['k_proj', 'down_proj'], seed: 4, useRslora: true }, TINY);
  mergeAdapter(model, adapter, merged);
});
afterAll(() => tmp.cleanup());

const load = (dir: string) => new Map(openCheckpoint(dir).tensors.map((t) => [t.name, toFloat32(readTensorBytes(t), t.dtype)]));

describe('mergeAdapter', () => {
  it('writes a float32 checkpoint with the same config and tokenizer', () => {
    const ckpt = openCheckpoint(merged);
    expect(ckpt.config).toEqual({ ...openCheckpoint(model).config, torchDtype: 'F32' });
    expect(ckpt.tensors.every((t) => t.dtype === 'F32')).toBe(true);
    expect(readFileSync(ckpt.tokenizerJson).equals(readFileSync(join(model, 'tokenizer.json')))).toBe(true);
  });

  it('adds scaling * B A to targeted weights and leaves the rest as they were', () => {
    const base = load(model);
    const out = load(merged);
    const { weights } = loadAdapterWeights(adapter, openCheckpoint(model).config);
    expect(weights.scaling).toBeCloseTo(6 / 2, 12);
    const targeted = new Set<string>();
    for (const w of weights.weights) {
      const name = `model.layers.${w.layer}.${w.module === 'down_proj' ? 'mlp' : 'self_attn'}.${w.module}.weight`;
      targeted.add(name);
      const W = base.get(name)!;
      const M = out.get(name)!;
      const cols = w.a.length / 4;
      const rows = w.b.length / 4;
      let maxErr = 0;
      let maxDelta = 0;
      for (let o = 0; o < rows; o++) {
        for (let i = 0; i < cols; i++) {
          let d = 0;
          for (let r = 0; r < 4; r++) d += w.b[o * 4 + r]! * w.a[r * cols + i]!;
          maxDelta = Math.max(maxDelta, Math.abs(3 * d));
          maxErr = Math.max(maxErr, Math.abs(M[o * cols + i]! - (W[o * cols + i]! + 3 * d)));
        }
      }
      expect(maxDelta).toBeGreaterThan(0.01);
      expect(maxErr).toBeLessThan(1e-6);
    }
    expect(targeted.size).toBe(4);
    for (const [name, values] of base) {
      if (!targeted.has(name)) expect(out.get(name), name).toEqual(values);
    }
  });
});

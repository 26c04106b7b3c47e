import { mkdirSync, readFileSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { runMakeDemo } from '../src/cli/make-demo.js';
import { loadAdapterWeights, readAdapterInfo } from '../src/model/adapter.js';
import { openCheckpoint } from '../src/model/checkpoint.js';
import { DEMO_MODEL, Rng, makeDemo } from '../src/model/demo.js';
import { readTensorBytes, toFloat32 } from '../src/model/safetensors.js';
import { LORA_MODULES } from '../src/engine/types.js';
import { tempDir } from './model-fixtures.js';

const tmp = tempDir('troupe-demo-');
const first = join(tmp.path, 'first');

function files(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const p = join(dir, name);
    return statSync(p).isDirectory() ? files(p) : [p];
  });
}

beforeAll(() => makeDemo(first));
afterAll(() => tmp.cleanup());

describe('Rng', () => {
  it('is deterministic and roughly standard normal', () => {
    const a = new Rng(42);
    const b = new Rng(42);
    const xs = Array.from({ length: 20000 }, () => a.normal());
    expect(Array.from({ length: 20000 }, () => b.normal())).toEqual(xs);
    expect(new Rng(43).normal()).not.toBe(xs[0]);
    const mean = xs.reduce((s, x) => s + x, 0) / xs.length;
    const variance = xs.reduce((s, x) => s + (x - mean) ** 2, 0) / xs.length;
    expect(Math.abs(mean)).toBeLessThan(0.03);
    expect(Math.abs(variance - 1)).toBeLessThan(0.05);
  });
});

describe('makeDemo', () => {
  it('writes the documented layout', () => {
    expect(
      files(first)
        .map((f) => relative(first, f))
        .sort(),
    ).toEqual([
      'adapters/demo-a/adapter_config.json',
      'adapters/demo-a/adapter_model.safetensors',
      'adapters/demo-b/adapter_config.json',
      'adapters/demo-b/adapter_model.safetensors',
      'config.json',
      'generation_config.json',
      'model.safetensors',
      'tokenizer.json',
      'tokenizer_config.json',
    ]);
    expect(JSON.parse(readFileSync(join(first, 'config.json'), 'utf8'))).toEqual(DEMO_MODEL);
  });

  it('is a valid bf16 Llama checkpoint with unit norms and random weights', () => {
    const ckpt = openCheckpoint(first);
    expect(ckpt.config).toMatchObject({
      hiddenSize: 256,
      intermediateSize: 768,
      numLayers: 4,
      numHeads: 8,
      numKvHeads: 4,
      headDim: 32,
      vocabSize: 128256,
      tieWordEmbeddings: true,
      torchDtype: 'BF16',
    });
    expect(ckpt.tensors.every((t) => t.dtype === 'BF16')).toBe(true);
    const byName = new Map(ckpt.tensors.map((t) => [t.name, t]));
    expect(new Set(toFloat32(readTensorBytes(byName.get('model.layers.2.post_attention_layernorm.weight')!), 'BF16'))).toEqual(new Set([1]));
    const std = (name: string): number => {
      const w = toFloat32(readTensorBytes(byName.get(name)!), 'BF16');
      return Math.sqrt(w.reduce((s, x) => s + x * x, 0) / w.length);
    };
    expect(std('model.layers.3.self_attn.q_proj.weight')).toBeCloseTo(0.04, 3);
    expect(std('model.layers.0.self_attn.v_proj.weight')).toBeCloseTo(0.02, 3);
    expect(std('model.layers.1.mlp.down_proj.weight')).toBeCloseTo(1.28, 1);
  });

  it('makes demo-a (q/v, rank 8) and demo-b (all seven, rank 16) with non-zero lora_B', () => {
    const config = openCheckpoint(first).config;
    const a = loadAdapterWeights(join(first, 'adapters', 'demo-a'), config);
    expect(a.info).toMatchObject({ rank: 8, targetModules: ['q_proj', 'v_proj'] });
    expect(a.weights.weights).toHaveLength(4 * 2);
    const b = loadAdapterWeights(join(first, 'adapters', 'demo-b'), config);
    expect(b.info).toMatchObject({ rank: 16, targetModules: [...LORA_MODULES] });
    expect(b.weights.weights).toHaveLength(4 * 7);
    for (const w of [...a.weights.weights, ...b.weights.weights]) {
      expect(w.b.some((x) => x !== 0)).toBe(true);
      expect(w.a.some((x) => x !== 0)).toBe(true);
    }
    const cfg = JSON.parse(readFileSync(join(first, 'adapters', 'demo-a', 'adapter_config.json'), 'utf8'));
    expect(cfg).toMatchObject({ peft_type: 'LORA', task_type: 'CAUSAL_LM', r: 8, lora_alpha: 16, bias: 'none', lora_dropout: 0, use_rslora: false });
    expect(readAdapterInfo(join(first, 'adapters', 'demo-b')).scaling).toBe(2);
  });

  it('is byte-identical for the same seed and differs for another', () => {
    const again = join(tmp.path, 'again');
    makeDemo(again, { seed: 0 });
    for (const f of files(first)) {
      expect(readFileSync(f).equals(readFileSync(join(again, relative(first, f)))), relative(first, f)).toBe(true);
    }
    const other = join(tmp.path, 'other');
    makeDemo(other, { seed: 1 });
    for (const f of ['model.safetensors', 'adapters/demo-a/adapter_model.safetensors', 'adapters/demo-b/adapter_model.safetensors']) {
      expect(readFileSync(join(first, f)).equals(readFileSync(join(other, f))), f).toBe(false);
    }
    expect(readFileSync(join(first, 'config.json')).equals(readFileSync(join(other, 'config.json')))).toBe(true);
  });
});

describe('troupe make-demo', () => {
  it('writes the demo for --seed and lists the files', () => {
    const out: string[] = [];
    const spy = vi.spyOn(process.stdout, 'write').mockImplementation((chunk) => (out.push(String(chunk)), true));
    const dir = join(tmp.path, 'cli');
    try {
      runMakeDemo([dir, '--seed', '1']);
    } finally {
      spy.mockRestore();
    }
    expect(readFileSync(join(dir, 'model.safetensors')).equals(readFileSync(join(tmp.path, 'other', 'model.safetensors')))).toBe(true);
    const text = out.join('');
    expect(text).toContain(`to ${dir}`);
    expect(text).toMatch(/adapters\/demo-b\/adapter_model\.safetensors\s+\d/);
  });

  it('copies the trained demo model for --trained and names its adapters in the serve command', () => {
    const source = join(tmp.path, 'trained-source');
    mkdirSync(join(source, 'adapters', 'style'), { recursive: true });
    writeFileSync(join(source, 'config.json'), '{}');
    writeFileSync(join(source, 'model.safetensors'), 'weights');
    writeFileSync(join(source, 'adapters', 'style', 'adapter_config.json'), '{}');
    const out: string[] = [];
    const spy = vi.spyOn(process.stdout, 'write').mockImplementation((chunk) => (out.push(String(chunk)), true));
    const dir = join(tmp.path, 'trained-copy');
    try {
      runMakeDemo([dir, '--trained'], undefined, source);
    } finally {
      spy.mockRestore();
    }
    expect(readFileSync(join(dir, 'model.safetensors'), 'utf8')).toBe('weights');
    const text = out.join('');
    expect(text).toContain(`Wrote the trained demo model to ${dir}`);
    expect(text).toMatch(/adapters\/style\/adapter_config\.json\s+2 B/);
    expect(text).toContain(`--lora-paths style=${join(dir, 'adapters', 'style')}`);
    // Into a folder that holds something, with a seed, or without a trained model: refused.
    expect(() => runMakeDemo([dir, '--trained'], undefined, source)).toThrow(/trained-copy is not empty/);
    expect(() => runMakeDemo([join(tmp.path, 't2'), '--trained', '--seed', '3'], undefined, source)).toThrow(/--seed is for the generated model/);
    expect(() => runMakeDemo([join(tmp.path, 't3'), '--trained'], undefined, join(tmp.path, 'nothing'))).toThrow(
      /no trained demo model in .*nothing/,
    );
  });

  it('uses the default directory and rejects bad arguments', () => {
    expect(() => runMakeDemo(['--seed', 'x'], 'd')).toThrow(/--seed needs a non-negative integer, got "x"/);
    expect(() => runMakeDemo(['--fast'], 'd')).toThrow(/unknown option --fast/);
    expect(() => runMakeDemo(['a', 'b'])).toThrow(/more than one directory/);
    expect(() => runMakeDemo([])).toThrow(/no directory given/);
  });
});

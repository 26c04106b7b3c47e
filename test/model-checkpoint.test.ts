import { cpSync, renameSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openCheckpoint } from '../src/model/checkpoint.js';
import { makeRandomCheckpoint } from '../src/model/demo.js';
import { readTensorBytes, toFloat32, writeSafetensors } from '../src/model/safetensors.js';
import { TINY, readAll, rewrite, tempDir } from './model-fixtures.js';

const tmp = tempDir('troupe-ckpt-');
const base = join(tmp.path, 'base');
let n = 0;

beforeAll(() => makeRandomCheckpoint(base, TINY, 7));
afterAll(() => tmp.cleanup());

/** A fresh copy of the base checkpoint to break. */
function copy(): string {
  const dir = join(tmp.path, `c${n++}`);
  cpSync(base, dir, { recursive: true });
  return dir;
}

/** Splits model.safetensors into two shards with an index, as save_pretrained does for large models. */
function shard(dir: string): { first: string[]; second: string[] } {
  const all = readAll(join(dir, 'model.safetensors'));
  const half = Math.ceil(all.length / 2);
  const files = ['model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors'];
  const parts = [all.slice(0, half), all.slice(half)];
  const weightMap: Record<string, string> = {};
  parts.forEach((p, i) => {
    writeSafetensors(join(dir, files[i]!), p, { format: 'pt' });
    for (const t of p) weightMap[t.name] = files[i]!;
  });
  writeFileSync(join(dir, 'model.safetensors.index.json'), JSON.stringify({ metadata: { total_size: 0 }, weight_map: weightMap }));
  rmSync(join(dir, 'model.safetensors'));
  return { first: parts[0]!.map((t) => t.name), second: parts[1]!.map((t) => t.name) };
}

describe('openCheckpoint', () => {
  it('opens a single-file checkpoint', () => {
    const ckpt = openCheckpoint(base);
    expect(ckpt.dir).toBe(base);
    expect(ckpt.config).toMatchObject({ hiddenSize: 16, numLayers: 2, numKvHeads: 2, headDim: 4, vocabSize: 40, torchDtype: 'BF16' });
    expect(ckpt.tokenizerJson).toBe(join(base, 'tokenizer.json'));
    expect(ckpt.tokenizerConfigJson).toBe(join(base, 'tokenizer_config.json'));
    // embed + 9 per layer + norm + lm_head (untied)
    expect(ckpt.tensors).toHaveLength(1 + 9 * 2 + 2);
    const byName = new Map(ckpt.tensors.map((t) => [t.name, t]));
    expect(byName.get('model.embed_tokens.weight')!.shape).toEqual([40, 16]);
    expect(byName.get('model.layers.1.self_attn.k_proj.weight')!.shape).toEqual([8, 16]);
    expect(byName.get('model.layers.1.mlp.down_proj.weight')!.shape).toEqual([16, 24]);
    expect(byName.get('lm_head.weight')!.shape).toEqual([40, 16]);
    for (const t of ckpt.tensors) {
      expect(t.file).toBe(join(base, 'model.safetensors'));
      expect(t.dtype).toBe('BF16');
      expect(t.nbytes).toBe(t.shape.reduce((a, b) => a * b, 1) * 2);
    }
    // The offsets point at the real data: norms are written as ones.
    const norm = byName.get('model.norm.weight')!;
    expect([...toFloat32(readTensorBytes(norm), 'BF16')]).toEqual(new Array(16).fill(1));
  });

  it('adds end-of-sequence ids from generation_config.json', () => {
    const dir = copy();
    writeFileSync(join(dir, 'generation_config.json'), JSON.stringify({ eos_token_id: [2, 9] }));
    expect(openCheckpoint(dir).config.eosTokenIds).toEqual([2, 9]);
    writeFileSync(join(dir, 'generation_config.json'), JSON.stringify({ eos_token_id: 'x' }));
    expect(() => openCheckpoint(dir)).toThrow(/generation_config\.json: eos_token_id/);
  });

  it('accepts F32 and F16 checkpoints, and tied ones without lm_head', () => {
    const f16 = join(tmp.path, 'f16');
    makeRandomCheckpoint(f16, { ...TINY, tie_word_embeddings: true }, 1, 'F16');
    const ckpt = openCheckpoint(f16);
    expect(ckpt.config.torchDtype).toBe('F16');
    expect(ckpt.tensors.every((t) => t.dtype === 'F16')).toBe(true);
    expect(ckpt.tensors.map((t) => t.name)).not.toContain('lm_head.weight');
    const f32 = join(tmp.path, 'f32');
    makeRandomCheckpoint(f32, TINY, 1, 'F32');
    expect(openCheckpoint(f32).tensors.every((t) => t.dtype === 'F32')).toBe(true);
  });

  it('ignores rotary inv_freq buffers and a redundant lm_head in tied models', () => {
    const dir = copy();
    writeFileSync(join(dir, 'config.json'), JSON.stringify({ ...TINY, tie_word_embeddings: true }));
    rewrite(join(dir, 'model.safetensors'), (ts) => [
      ...ts,
      { name: 'model.layers.0.self_attn.rotary_emb.inv_freq', dtype: 'F32', shape: [2], data: new Uint8Array(8) },
    ]);
    const names = openCheckpoint(dir).tensors.map((t) => t.name);
    expect(names).not.toContain('lm_head.weight');
    expect(names).not.toContain('model.layers.0.self_attn.rotary_emb.inv_freq');
  });

  it('opens a sharded checkpoint through model.safetensors.index.json', () => {
    const dir = copy();
    const { first, second } = shard(dir);
    const ckpt = openCheckpoint(dir);
    const byName = new Map(ckpt.tensors.map((t) => [t.name, t]));
    expect(ckpt.tensors).toHaveLength(first.length + second.length);
    expect(byName.get(first[0]!)!.file).toBe(join(dir, 'model-00001-of-00002.safetensors'));
    expect(byName.get(second[0]!)!.file).toBe(join(dir, 'model-00002-of-00002.safetensors'));
    // Same bytes as the unsharded original.
    const orig = new Map(openCheckpoint(base).tensors.map((t) => [t.name, t]));
    const name = second[second.length - 1]!;
    expect(readTensorBytes(byName.get(name)!).equals(readTensorBytes(orig.get(name)!))).toBe(true);
  });

  it('names a missing shard and the tensor listed in it', () => {
    const dir = copy();
    const { second } = shard(dir);
    rmSync(join(dir, 'model-00002-of-00002.safetensors'));
    expect(() => openCheckpoint(dir)).toThrow(
      new RegExp(`shard "model-00002-of-00002\\.safetensors" \\(holding tensor "${second[0]!.replace(/\./g, '\\.')}"\\) does not exist`),
    );
  });

  it('names a tensor the index maps to a shard that lacks it', () => {
    const dir = copy();
    const { first } = shard(dir);
    const victim = first[1]!;
    rewrite(join(dir, 'model-00001-of-00002.safetensors'), (ts) => ts.filter((t) => t.name !== victim));
    expect(() => openCheckpoint(dir)).toThrow(
      `model-00001-of-00002.safetensors: tensor "${victim}" is listed in model.safetensors.index.json but missing from this shard`,
    );
  });

  it('names a tensor missing from the checkpoint', () => {
    const dir = copy();
    rewrite(join(dir, 'model.safetensors'), (ts) => ts.filter((t) => t.name !== 'model.layers.1.mlp.up_proj.weight'));
    expect(() => openCheckpoint(dir)).toThrow(/tensor "model\.layers\.1\.mlp\.up_proj\.weight" is missing/);
  });

  it('names the file and tensor of a wrong shape', () => {
    const dir = copy();
    rewrite(join(dir, 'model.safetensors'), (ts) =>
      ts.map((t) => (t.name === 'model.layers.0.self_attn.v_proj.weight' ? { ...t, shape: [16, 8] } : t)),
    );
    expect(() => openCheckpoint(dir)).toThrow(
      `${join(dir, 'model.safetensors')}: tensor "model.layers.0.self_attn.v_proj.weight" has shape [16, 8] but config.json implies [8, 16]`,
    );
  });

  it('names the file and tensor of an integer dtype', () => {
    const dir = copy();
    rewrite(join(dir, 'model.safetensors'), (ts) => ts.map((t) => (t.name === 'model.norm.weight' ? { ...t, dtype: 'I16' } : t)));
    expect(() => openCheckpoint(dir)).toThrow(
      `${join(dir, 'model.safetensors')}: tensor "model.norm.weight" has dtype I16; only F32, F16 and BF16 are supported`,
    );
  });

  it('refuses unexpected tensors such as biases', () => {
    const dir = copy();
    rewrite(join(dir, 'model.safetensors'), (ts) => [
      ...ts,
      { name: 'model.layers.0.self_attn.q_proj.bias', dtype: 'BF16', shape: [16], data: new Uint8Array(32) },
    ]);
    expect(() => openCheckpoint(dir)).toThrow(/unexpected tensor "model\.layers\.0\.self_attn\.q_proj\.bias"/);
  });

  it('passes on a corrupt shard as an error naming its path', () => {
    const dir = copy();
    writeFileSync(join(dir, 'model.safetensors'), Buffer.alloc(4));
    expect(() => openCheckpoint(dir)).toThrow(`${join(dir, 'model.safetensors')}: file is 4 bytes, too short for the 8-byte header length`);
  });

  it('names missing files', () => {
    expect(() => openCheckpoint(join(tmp.path, 'nope'))).toThrow(/is not a directory/);
    let dir = copy();
    rmSync(join(dir, 'config.json'));
    expect(() => openCheckpoint(dir)).toThrow(/config\.json: missing/);
    dir = copy();
    rmSync(join(dir, 'tokenizer.json'));
    expect(() => openCheckpoint(dir)).toThrow(/tokenizer\.json: missing/);
    dir = copy();
    rmSync(join(dir, 'tokenizer_config.json'));
    expect(() => openCheckpoint(dir)).toThrow(/tokenizer_config\.json: missing/);
    dir = copy();
    renameSync(join(dir, 'model.safetensors'), join(dir, 'pytorch_model.bin'));
    expect(() => openCheckpoint(dir)).toThrow(/only pickled pytorch_model\.bin weights found/);
    rmSync(join(dir, 'pytorch_model.bin'));
    expect(() => openCheckpoint(dir)).toThrow(/no model\.safetensors or model\.safetensors\.index\.json/);
    writeFileSync(join(dir, 'model.safetensors.index.json'), '{"weight_map": 3}');
    expect(() => openCheckpoint(dir)).toThrow(/weight_map: missing or not an object/);
    writeFileSync(join(dir, 'config.json'), '{oops');
    expect(() => openCheckpoint(dir)).toThrow(/config\.json: is not valid JSON \(at position 1\)$/);
  });

  it('never quotes what a model file holds in its errors', () => {
    const secret = join(tmp.path, 'passwd');
    writeFileSync(secret, 'root:x:0:0:root:/root:/bin/bash\n');
    const seen: string[] = [];
    const messageOf = (dir: string): string => {
      try {
        openCheckpoint(dir);
      } catch (err) {
        seen.push((err as Error).message);
        return (err as Error).message;
      }
      throw new Error('expected an error');
    };
    let dir = copy();
    rmSync(join(dir, 'config.json'));
    symlinkSync(secret, join(dir, 'config.json'));
    expect(messageOf(dir)).toBe(`${join(dir, 'config.json')}: is not valid JSON (at position 0)`);
    dir = copy();
    writeFileSync(join(dir, 'generation_config.json'), JSON.stringify({ eos_token_id: 'root:x:0:0' }));
    expect(messageOf(dir)).toMatch(/generation_config\.json: eos_token_id: must be a token id or a list of them, got a string$/);
    dir = copy();
    const { first } = shard(dir);
    const index = join(dir, 'model.safetensors.index.json');
    writeFileSync(index, JSON.stringify({ weight_map: { [first[0]!]: '../root:x:0:0' } }));
    expect(messageOf(dir)).toMatch(/weight_map: the shard of tensor ".*" is not a file name in the model directory \(got a string\)$/);
    expect(seen.join('\n')).not.toContain('root:');
  });
});

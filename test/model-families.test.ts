// config.json of the Qwen2, Qwen3 and Mistral families (as published, and as transformers 5
// writes rope settings) mapped onto the engine's family flags; what none of the flags can
// express (a window on some layers only, experts, o_proj biases, other rope kinds) refused by
// name; and the bias and per-head norm tensors a checkpoint of each family must hold.
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { openCheckpoint } from '../src/model/checkpoint.js';
import { parseModelConfig } from '../src/model/config.js';
import { makeRandomCheckpoint } from '../src/model/demo.js';
import { TroupeError } from '../src/errors.js';
import { TINY, rewrite, tempDir } from './model-fixtures.js';

const FILE = '/models/x/config.json';
const parse = (json: unknown) => parseModelConfig(json, FILE);

// Qwen2.5-7B-Instruct's config.json, as published.
const QWEN25_7B = {
  architectures: ['Qwen2ForCausalLM'],
  attention_dropout: 0.0,
  bos_token_id: 151643,
  eos_token_id: 151645,
  hidden_act: 'silu',
  hidden_size: 3584,
  initializer_range: 0.02,
  intermediate_size: 18944,
  max_position_embeddings: 32768,
  max_window_layers: 28,
  model_type: 'qwen2',
  num_attention_heads: 28,
  num_hidden_layers: 28,
  num_key_value_heads: 4,
  rms_norm_eps: 1e-6,
  rope_theta: 1000000.0,
  sliding_window: 131072,
  tie_word_embeddings: false,
  torch_dtype: 'bfloat16',
  transformers_version: '4.43.1',
  use_cache: true,
  use_sliding_window: false,
  vocab_size: 152064,
};

// Qwen3-8B's config.json, as published.
const QWEN3_8B = {
  architectures: ['Qwen3ForCausalLM'],
  attention_bias: false,
  attention_dropout: 0.0,
  bos_token_id: 151643,
  eos_token_id: 151645,
  head_dim: 128,
  hidden_act: 'silu',
  hidden_size: 4096,
  initializer_range: 0.02,
  intermediate_size: 12288,
  max_position_embeddings: 40960,
  max_window_layers: 36,
  model_type: 'qwen3',
  num_attention_heads: 32,
  num_hidden_layers: 36,
  num_key_value_heads: 8,
  rms_norm_eps: 1e-6,
  rope_scaling: null,
  rope_theta: 1000000,
  sliding_window: null,
  tie_word_embeddings: false,
  torch_dtype: 'bfloat16',
  transformers_version: '4.51.0',
  use_cache: true,
  use_sliding_window: false,
  vocab_size: 151936,
};

// Mistral-7B-v0.1's config.json, as published.
const MISTRAL_7B = {
  architectures: ['MistralForCausalLM'],
  bos_token_id: 1,
  eos_token_id: 2,
  hidden_act: 'silu',
  hidden_size: 4096,
  initializer_range: 0.02,
  intermediate_size: 14336,
  max_position_embeddings: 32768,
  model_type: 'mistral',
  num_attention_heads: 32,
  num_hidden_layers: 32,
  num_key_value_heads: 8,
  rms_norm_eps: 1e-5,
  rope_theta: 10000.0,
  sliding_window: 4096,
  tie_word_embeddings: false,
  torch_dtype: 'bfloat16',
  transformers_version: '4.34.0.dev0',
  use_cache: true,
  vocab_size: 32000,
};

const layers = (n: number, f: (i: number) => string): string[] => Array.from({ length: n }, (_, i) => f(i));

describe('family configs', () => {
  it('maps Qwen2.5 7B: q/k/v biases, a window that is configured but off', () => {
    expect(parse(QWEN25_7B)).toMatchObject({
      family: 'qwen2',
      architecture: 'Qwen2ForCausalLM',
      qkvBias: true,
      qkNorm: false,
      slidingWindow: 0,
      hiddenSize: 3584,
      numHeads: 28,
      numKvHeads: 4,
      headDim: 128,
      ropeTheta: 1000000,
      ropeScaling: null,
      tieWordEmbeddings: false,
      eosTokenIds: [151645],
    });
  });

  it('maps Qwen3 8B: per-head q/k norms, head_dim from the config', () => {
    expect(parse(QWEN3_8B)).toMatchObject({
      family: 'qwen3',
      architecture: 'Qwen3ForCausalLM',
      qkvBias: false,
      qkNorm: true,
      slidingWindow: 0,
      headDim: 128,
      numLayers: 36,
    });
    // Qwen3-0.6B's heads are wider than hidden_size / num_attention_heads.
    expect(parse({ ...QWEN3_8B, hidden_size: 1024, num_attention_heads: 16 }).headDim).toBe(128);
  });

  it("maps Mistral 7B: the sliding window of every layer, transformers' 4096 when absent, none when null", () => {
    expect(parse(MISTRAL_7B)).toMatchObject({
      family: 'mistral',
      architecture: 'MistralForCausalLM',
      qkvBias: false,
      qkNorm: false,
      slidingWindow: 4096,
      tieWordEmbeddings: false,
    });
    expect(parse({ ...MISTRAL_7B, sliding_window: null, rope_theta: 1000000.0, vocab_size: 32768 }).slidingWindow).toBe(0);
    expect(parse({ ...MISTRAL_7B, sliding_window: undefined }).slidingWindow).toBe(4096);
    expect(parse({ ...MISTRAL_7B, layer_types: layers(32, () => 'sliding_attention') }).slidingWindow).toBe(4096);
  });

  it('takes the family from architectures when model_type is missing', () => {
    expect(parse({ ...QWEN25_7B, model_type: undefined }).family).toBe('qwen2');
    expect(parse({ ...MISTRAL_7B, model_type: null }).family).toBe('mistral');
  });

  it('reads the Qwen window layout: none on the first max_window_layers layers, or as layer_types says', () => {
    // Every layer at or past max_window_layers slides: all of them, or none.
    expect(parse({ ...QWEN25_7B, use_sliding_window: true, max_window_layers: 0, sliding_window: 4096 }).slidingWindow).toBe(4096);
    expect(parse({ ...QWEN25_7B, use_sliding_window: true, max_window_layers: 28 }).slidingWindow).toBe(0);
    // transformers writes the layer types out; a window left null then slides nowhere.
    expect(parse({ ...QWEN3_8B, layer_types: layers(36, () => 'full_attention') }).slidingWindow).toBe(0);
  });

  it("reads rope settings from transformers 5's rope_parameters", () => {
    const v5 = { ...QWEN3_8B, rope_theta: undefined, rope_scaling: undefined };
    expect(parse({ ...v5, rope_parameters: { rope_type: 'default', rope_theta: 5000000 } })).toMatchObject({ ropeTheta: 5000000, ropeScaling: null });
    const llama3 = {
      rope_type: 'llama3',
      rope_theta: 500000,
      factor: 8,
      low_freq_factor: 1,
      high_freq_factor: 4,
      original_max_position_embeddings: 8192,
    };
    expect(parse({ ...v5, rope_parameters: llama3 })).toMatchObject({
      ropeTheta: 500000,
      ropeScaling: { factor: 8, originalMaxPositionEmbeddings: 8192 },
    });
  });

  it.each([
    [
      { ...QWEN25_7B, use_sliding_window: true, max_window_layers: 21 },
      /max_window_layers: puts the sliding window on 7 of the 28 layers; only a window on every layer \(Mistral's layout\) or on none is supported$/,
    ],
    [
      {
        ...QWEN3_8B,
        use_sliding_window: true,
        sliding_window: 4096,
        layer_types: layers(36, (i) => (i % 2 ? 'sliding_attention' : 'full_attention')),
      },
      /layer_types: puts the sliding window on 18 of the 36 layers/,
    ],
    [
      { ...QWEN3_8B, layer_types: layers(36, () => 'sliding_attention') },
      /layer_types: names sliding_attention layers, but no sliding window is set/,
    ],
    [
      { ...MISTRAL_7B, layer_types: layers(32, (i) => (i % 2 ? 'sliding_attention' : 'full_attention')) },
      /layer_types: disagrees with sliding_window \(4096\), which mistral applies to every layer$/,
    ],
    [{ ...QWEN3_8B, layer_types: ['full_attention'] }, /layer_types: must list "full_attention" or "sliding_attention" for each of the 36 layers/],
    [{ ...MISTRAL_7B, sliding_window: 0 }, /sliding_window: must be a positive integer, got 0$/],
    [{ ...QWEN25_7B, use_sliding_window: 'yes' }, /use_sliding_window: must be true or false, got a string$/],
    [{ ...QWEN3_8B, attention_bias: true }, /attention_bias: true is not supported for qwen3/],
    [{ ...QWEN3_8B, num_experts: 128 }, /num_experts: 128: mixture-of-experts layers are not supported$/],
    [{ ...MISTRAL_7B, num_local_experts: 8 }, /num_local_experts: 8: mixture-of-experts layers are not supported$/],
    [
      { ...QWEN3_8B, model_type: 'qwen3_moe', architectures: ['Qwen3MoeForCausalLM'] },
      /model_type: "qwen3_moe" is not supported; troupe serves llama, mistral, qwen2 and qwen3$/,
    ],
    [{ ...QWEN25_7B, architectures: ['LlamaForCausalLM'] }, /architectures: does not list Qwen2ForCausalLM, the architecture of model_type "qwen2"$/],
    [
      { ...QWEN25_7B, rope_scaling: { type: 'yarn', factor: 4.0, original_max_position_embeddings: 32768 } },
      /rope_scaling\.rope_type: "yarn" is not supported; only "llama3" \(or no rope scaling\) is$/,
    ],
    [
      { ...QWEN3_8B, rope_scaling: undefined, rope_parameters: { rope_type: 'yarn', rope_theta: 1e6, factor: 4 } },
      /rope_parameters\.rope_type: "yarn" is not supported/,
    ],
    [
      { ...QWEN3_8B, rope_parameters: { full_attention: { rope_type: 'default' } } },
      /rope_parameters: per-layer-type rope parameters are not supported$/,
    ],
    [{ ...QWEN3_8B, partial_rotary_factor: 0.5 }, /partial_rotary_factor: 0.5 is not supported/],
  ])('refuses %#, naming the field', (json, message) => {
    const err = (() => {
      try {
        parse(json);
      } catch (e) {
        return e;
      }
      return null;
    })();
    expect(err).toBeInstanceOf(TroupeError);
    expect((err as TroupeError).message).toMatch(message);
    expect((err as TroupeError).message.startsWith(`${FILE}: `)).toBe(true);
  });
});

describe('family checkpoints', () => {
  const tmp = tempDir('troupe-families-');
  afterAll(() => tmp.cleanup());
  const QWEN2 = { ...TINY, architectures: ['Qwen2ForCausalLM'], model_type: 'qwen2' };
  const QWEN3 = { ...TINY, architectures: ['Qwen3ForCausalLM'], model_type: 'qwen3', head_dim: 8 };

  it('holds the q/k/v biases of Qwen2 and the per-head norms of Qwen3', () => {
    makeRandomCheckpoint(join(tmp.path, 'qwen2'), QWEN2, 3);
    makeRandomCheckpoint(join(tmp.path, 'qwen3'), QWEN3, 3);
    const q2 = new Map(openCheckpoint(join(tmp.path, 'qwen2')).tensors.map((t) => [t.name, t.shape]));
    expect(q2.size).toBe(1 + 12 * 2 + 2);
    expect(q2.get('model.layers.1.self_attn.q_proj.bias')).toEqual([16]);
    expect(q2.get('model.layers.1.self_attn.v_proj.bias')).toEqual([8]);
    const q3 = new Map(openCheckpoint(join(tmp.path, 'qwen3')).tensors.map((t) => [t.name, t.shape]));
    expect(q3.size).toBe(1 + 11 * 2 + 2);
    expect(q3.get('model.layers.0.self_attn.q_proj.weight')).toEqual([32, 16]);
    expect(q3.get('model.layers.0.self_attn.k_norm.weight')).toEqual([8]);
  });

  it('names a missing bias, and a bias a model without them does not have', () => {
    const dir = join(tmp.path, 'qwen2');
    rewrite(join(dir, 'model.safetensors'), (ts) => ts.filter((t) => t.name !== 'model.layers.0.self_attn.k_proj.bias'));
    expect(() => openCheckpoint(dir)).toThrow(/tensor "model\.layers\.0\.self_attn\.k_proj\.bias" is missing from the checkpoint/);
    makeRandomCheckpoint(join(tmp.path, 'llama'), TINY, 3);
    const file = join(tmp.path, 'llama', 'model.safetensors');
    rewrite(file, (ts) => [...ts, { name: 'model.layers.0.self_attn.q_proj.bias', dtype: 'BF16', shape: [16], data: new Uint8Array(32) }]);
    expect(() => openCheckpoint(join(tmp.path, 'llama'))).toThrow(
      /unexpected tensor "model\.layers\.0\.self_attn\.q_proj\.bias" \(not part of a 2-layer llama model without biases\)/,
    );
  });
});

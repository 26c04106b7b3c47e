// The CPU engine on the families other than Llama: Qwen2 (q/k/v biases; tied and untied
// embeddings), Qwen3 (per-head q/k RMSNorm, head_dim from config wider than hidden/heads) and
// Mistral (a sliding window far shorter than the prompts). Each small random checkpoint is run
// in one batch of the base model and two adapters through chunked prefill and decodes, and every
// sampled position is compared with the float64 reference forward of engine-reference.ts;
// turning the family's difference off in the reference must move it far from the engine, so the
// comparison shows the engine honours it. --tp-size 2 (4 for Qwen2, whose 2 KV heads with their
// biases are then shared by ranks) gives what one rank gives.
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { AdapterWeights, ModelConfig } from '../src/engine/types.js';
import { LORA_MODULES } from '../src/engine/types.js';
import { loadAdapterWeights } from '../src/model/adapter.js';
import type { Checkpoint } from '../src/model/checkpoint.js';
import { makeRandomAdapter, makeRandomCheckpoint } from '../src/model/demo.js';
import {
  addon,
  argmax,
  createEngine,
  drive,
  engineOptions,
  loadSlot,
  logSoftmax,
  logitsRow,
  makeBatch,
  maxAbs,
  maxAbsDiff,
  openCheckpoint,
  prompt,
  tempDir,
  type SeqStep,
} from './engine-fixtures.js';
import { readWeights, referenceLogits } from './engine-reference.js';
import { startRanks } from './tp-fixtures.js';

const COMMON = {
  hidden_size: 64,
  intermediate_size: 160,
  num_hidden_layers: 2,
  num_attention_heads: 4,
  num_key_value_heads: 2,
  vocab_size: 1000,
  max_position_embeddings: 512,
  initializer_range: 0.08,
  bos_token_id: 1,
  eos_token_id: 2,
  hidden_act: 'silu',
  torch_dtype: 'bfloat16',
};

/** config.json of each model, shaped as the family's published configs are (their window fields included). */
const MODELS = {
  qwen2: {
    ...COMMON,
    architectures: ['Qwen2ForCausalLM'],
    model_type: 'qwen2',
    rms_norm_eps: 1e-6,
    rope_theta: 1000000.0,
    tie_word_embeddings: true,
    use_sliding_window: false,
    sliding_window: 32768,
    max_window_layers: 21,
  },
  'qwen2-untied': {
    ...COMMON,
    architectures: ['Qwen2ForCausalLM'],
    model_type: 'qwen2',
    rms_norm_eps: 1e-6,
    rope_theta: 1000000.0,
    tie_word_embeddings: false,
    vocab_size: 999,
    use_sliding_window: false,
    sliding_window: 131072,
    max_window_layers: 28,
  },
  qwen3: {
    ...COMMON,
    architectures: ['Qwen3ForCausalLM'],
    model_type: 'qwen3',
    head_dim: 32,
    rms_norm_eps: 1e-6,
    rope_theta: 1000000.0,
    tie_word_embeddings: true,
    attention_bias: false,
    use_sliding_window: false,
    sliding_window: null,
    max_window_layers: 28,
  },
  mistral: {
    ...COMMON,
    architectures: ['MistralForCausalLM'],
    model_type: 'mistral',
    rms_norm_eps: 1e-5,
    rope_theta: 10000.0,
    tie_word_embeddings: false,
    sliding_window: 5,
  },
};
type Model = keyof typeof MODELS;
const NAMES = Object.keys(MODELS) as Model[];

/** The reference with the model's family difference turned off. */
const WITHOUT: Record<Model, (c: ModelConfig) => ModelConfig> = {
  qwen2: (c) => ({ ...c, qkvBias: false }),
  'qwen2-untied': (c) => ({ ...c, qkvBias: false }),
  qwen3: (c) => ({ ...c, qkNorm: false }),
  mistral: (c) => ({ ...c, slidingWindow: 0 }),
};

// float32 against float64 over two layers, as in engine.test.ts.
const TOLERANCE = 1e-4;

const tmp = tempDir('families');
const ckpts = {} as Record<Model, Checkpoint>;
const handles: number[] = [];

beforeAll(() => {
  for (const name of NAMES) {
    const dir = join(tmp.dir, name);
    makeRandomCheckpoint(dir, MODELS[name], 21, 'BF16');
    makeRandomAdapter(join(dir, 'qv'), { rank: 8, alpha: 16, targetModules: ['q_proj', 'v_proj'], seed: 22, bStd: 0.2, dtype: 'F32' }, MODELS[name]);
    makeRandomAdapter(join(dir, 'all'), { rank: 16, alpha: 16, targetModules: [...LORA_MODULES], seed: 23, bStd: 0.2, dtype: 'BF16' }, MODELS[name]);
    ckpts[name] = openCheckpoint(dir);
  }
});

afterAll(() => {
  for (const h of handles) addon.destroyEngine(h);
  tmp.cleanup();
});

describe('parsed configs', () => {
  it("carry each family's flags to the engine", () => {
    expect(ckpts.qwen2.config).toMatchObject({
      family: 'qwen2',
      architecture: 'Qwen2ForCausalLM',
      qkvBias: true,
      qkNorm: false,
      slidingWindow: 0,
      tieWordEmbeddings: true,
    });
    expect(ckpts['qwen2-untied'].config).toMatchObject({ qkvBias: true, tieWordEmbeddings: false });
    expect(ckpts.qwen3.config).toMatchObject({ family: 'qwen3', qkvBias: false, qkNorm: true, slidingWindow: 0, headDim: 32 });
    expect(ckpts.mistral.config).toMatchObject({ family: 'mistral', qkvBias: false, qkNorm: false, slidingWindow: 5 });
    expect(ckpts.qwen2.tensors.map((t) => t.name)).toContain('model.layers.1.self_attn.k_proj.bias');
    expect(ckpts.qwen3.tensors.find((t) => t.name === 'model.layers.0.self_attn.q_norm.weight')?.shape).toEqual([32]);
  });
});

describe.each(NAMES)('%s against the float64 reference', (name) => {
  it('gives every row of a base/adapter batch the reference logits, at chunked prefill and at decode', () => {
    const ckpt = ckpts[name];
    const { config } = ckpt;
    const vocab = config.vocabSize;
    const h = createEngine(ckpt);
    handles.push(h);
    const adapters: Array<AdapterWeights | undefined> = [undefined];
    for (const [slot, dir] of ['qv', 'all'].entries()) {
      loadSlot(h, slot, join(ckpt.dir, dir), ckpt);
      adapters.push(loadAdapterWeights(join(ckpt.dir, dir), config).weights);
    }
    const reqs = [
      { prompt: prompt(14, 1, vocab), slot: -1, chunks: [5, 9] },
      { prompt: prompt(11, 2, vocab), slot: 0, join: 1 },
      { prompt: prompt(13, 3, vocab), slot: 1, chunks: [6, 7] },
      { prompt: prompt(9, 4, vocab), slot: 0 },
    ];
    const out = drive(
      h,
      reqs.map((r, i) => ({ ...r, blocks: Array.from({ length: 5 }, (_, k) => i * 5 + k), decodes: 3 })),
      vocab,
    );
    const weights = readWeights(ckpt);
    reqs.forEach((r, i) => {
      const lora = adapters[r.slot + 1];
      out[i]!.logits.forEach((got, k) => {
        const context = [...r.prompt, ...out[i]!.tokens.slice(0, k)];
        const want = referenceLogits(config, weights, context, lora);
        expect(maxAbsDiff(got, Float32Array.from(want))).toBeLessThanOrEqual(TOLERANCE * maxAbs(got));
        expect(out[i]!.tokens[k]).toBe(argmax(got));
        if (k > 0) return;
        // What the comparison would miss: the family's difference, and the adapter.
        const without = referenceLogits(WITHOUT[name](config), weights, context, lora);
        expect(maxAbsDiff(got, Float32Array.from(without))).toBeGreaterThan(100 * TOLERANCE * maxAbs(got));
        if (lora !== undefined) {
          expect(maxAbsDiff(got, Float32Array.from(referenceLogits(config, weights, context)))).toBeGreaterThan(100 * TOLERANCE * maxAbs(got));
        }
      });
    });
    expect(maxAbs(out[0]!.logits[0]!)).toBeGreaterThan(1);
  });
});

/** Base, qv and all on two prompts each: a prefill in two chunks, then decodes fed a fixed token stream. */
async function tensorParallelRun(name: Model, tp: number): Promise<{ logprobs: Float64Array[]; greedy: number[] }> {
  const ckpt = ckpts[name];
  const vocab = ckpt.config.vocabSize;
  const group = await startRanks(ckpt, tp, engineOptions({ kvBlocks: 64, loraSlots: 2, maxLoraRank: 16 }));
  try {
    await group.loadSlot(0, join(ckpt.dir, 'qv'));
    await group.loadSlot(1, join(ckpt.dir, 'all'));
    const seqs = [-1, -1, 0, 0, 1, 1].map((slot, i) => ({
      slot,
      tokens: prompt(10, 50 + (i % 2), vocab),
      blocks: Array.from({ length: 5 }, (_, k) => i * 5 + k),
    }));
    const logprobs: Float64Array[] = [];
    const greedy: number[] = [];
    const step = async (parts: SeqStep[]): Promise<void> => {
      const r = await group.step(makeBatch(parts, { maxBlocksPerSeq: 5, returnLogits: true }));
      parts.forEach((p, i) => {
        if (p.sample === false) return;
        logprobs.push(logSoftmax(logitsRow(r, i, vocab)));
        greedy.push(r.tokens[i]!);
      });
    };
    await step(seqs.map((s) => ({ ...s, tokens: s.tokens.slice(0, 4), cached: 0, sample: false })));
    await step(seqs.map((s) => ({ ...s, tokens: s.tokens.slice(4), cached: 4 })));
    for (let d = 0; d < 4; d++) {
      await step(seqs.map((s, i) => ({ ...s, tokens: [prompt(1, 100 * d + (i % 2), vocab)[0]!], cached: s.tokens.length + d })));
    }
    return { logprobs, greedy };
  } finally {
    await group.close();
  }
}

describe.each(NAMES)('%s with tensor parallelism on the CPU', (name) => {
  let one: Awaited<ReturnType<typeof tensorParallelRun>>;
  beforeAll(async () => {
    one = await tensorParallelRun(name, 1);
  });

  it.each(name === 'qwen2' ? [2, 4] : [2])('%i ranks give the logprobs (within 1e-4) and greedy tokens of one rank', async (tp) => {
    const many = await tensorParallelRun(name, tp);
    let max = 0;
    many.logprobs.forEach((lp, k) => lp.forEach((v, j) => (max = Math.max(max, Math.abs(v - one.logprobs[k]![j]!)))));
    expect(max).toBeLessThan(1e-4);
    expect(many.greedy).toEqual(one.greedy);
  });
});

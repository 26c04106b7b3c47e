// Shared helpers for the engine tests: small random checkpoints, engine construction and a
// builder for StepBatch, so each test states only the sequences it runs.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';
import { afterAll } from 'vitest';
import { ADDON_RELATIVE_PATH, loadNative } from '../src/engine/native.js';
import { packageRoot } from '../src/paths.js';
import { LORA_MODULES, type EngineOptions, type NativeAddon, type SampleParams, type StepBatch, type StepResult } from '../src/engine/types.js';
import { openCheckpoint, type Checkpoint } from '../src/model/checkpoint.js';
import { loadAdapterWeights } from '../src/model/adapter.js';
import { makeRandomAdapter, makeRandomCheckpoint } from '../src/model/demo.js';
import { parseArgs } from '../src/config/parse.js';
import { validateFlags } from '../src/config/validate.js';
import { createEngine as createServeEngine, type LocalTroupeEngine } from '../src/troupe.js';

export const addon: NativeAddon = loadNative();

/** A Llama 3.1-style model small enough to build in milliseconds (llama3 rope scaling, GQA, tied embeddings). */
export const SMALL_MODEL = {
  architectures: ['LlamaForCausalLM'],
  model_type: 'llama',
  hidden_size: 64,
  intermediate_size: 160,
  num_hidden_layers: 2,
  num_attention_heads: 4,
  num_key_value_heads: 2,
  head_dim: 16,
  vocab_size: 1000,
  rms_norm_eps: 1e-5,
  rope_theta: 500000.0,
  rope_scaling: { rope_type: 'llama3', factor: 8.0, low_freq_factor: 1.0, high_freq_factor: 4.0, original_max_position_embeddings: 64 },
  max_position_embeddings: 512,
  tie_word_embeddings: true,
  initializer_range: 0.08,
  bos_token_id: 1,
  eos_token_id: 2,
  hidden_act: 'silu',
  torch_dtype: 'bfloat16',
};

export function tempDir(prefix: string): { dir: string; cleanup: () => void } {
  const dir = mkdtempSync(join(tmpdir(), `troupe-${prefix}-`));
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

/**
 * A small random bf16 checkpoint (seed `base`) and one rank-8 adapter on every module per seed of
 * `adapterSeeds`, in a temporary folder; engines made by engine() are destroyed, and the folder
 * removed, after the calling file's tests.
 */
export function smallWorld(prefix: string, base: number, adapterSeeds: number[]) {
  const tmp = tempDir(prefix);
  makeRandomCheckpoint(join(tmp.dir, 'base'), SMALL_MODEL, base, 'BF16');
  const ckpt = openCheckpoint(join(tmp.dir, 'base'));
  const adapters = adapterSeeds.map((seed) => {
    const dir = join(tmp.dir, `adapter-${seed}`);
    makeRandomAdapter(dir, { rank: 8, alpha: 16, targetModules: [...LORA_MODULES], seed, dtype: 'BF16', bStd: 0.2 }, SMALL_MODEL);
    return dir;
  });
  const handles: number[] = [];
  afterAll(() => {
    for (const h of handles) addon.destroyEngine(h);
    tmp.cleanup();
  });
  const engine = (over: Partial<EngineOptions>): number => {
    const h = createEngine(ckpt, over);
    handles.push(h);
    return h;
  };
  return { dir: tmp.dir, ckpt, adapters, engine };
}

export function engineOptions(over: Partial<EngineOptions> = {}): EngineOptions {
  return {
    device: 'cpu',
    blockSize: 4,
    kvBlocks: 64,
    memFractionStatic: 0.9,
    loraSlots: 4,
    maxLoraRank: 16,
    loraModules: [...LORA_MODULES],
    threads: 0,
    cudaGraphMaxBs: 0,
    ...over,
  };
}

export function createEngine(ckpt: Checkpoint, over: Partial<EngineOptions> = {}): number {
  return addon.createEngine(ckpt.config, ckpt.tensors, engineOptions(over));
}

export function loadSlot(handle: number, slot: number, adapterDir: string, ckpt: Checkpoint): void {
  addon.loadLoraSlot(handle, slot, loadAdapterWeights(adapterDir, ckpt.config).weights);
}

export { openCheckpoint };

/** One sequence's part of a step: the tokens it runs now after `cached` tokens already in its blocks. */
export interface SeqStep extends Omit<SampleParams, 'penaltyTokens' | 'promptLen'> {
  tokens: number[];
  cached: number;
  blocks: number[];
  slot?: number;
  sample?: boolean;
  /** Tokens the penalties look at: the first penaltyPromptLen are the prompt, the rest generated. */
  penaltyTokens?: number[];
  penaltyPromptLen?: number;
}

export function makeBatch(seqs: SeqStep[], opts: { maxBlocksPerSeq?: number; topLogprobs?: number; returnLogits?: boolean } = {}): StepBatch {
  const n = seqs.length;
  const maxBlocks = opts.maxBlocksPerSeq ?? Math.max(1, ...seqs.map((s) => s.blocks.length));
  const tokens: number[] = [];
  const positions: number[] = [];
  const seqStarts = [0];
  const blockTables = new Int32Array(n * maxBlocks).fill(-1);
  seqs.forEach((s, i) => {
    s.tokens.forEach((t, j) => {
      tokens.push(t);
      positions.push(s.cached + j);
    });
    seqStarts.push(tokens.length);
    blockTables.set(s.blocks, i * maxBlocks);
  });
  return {
    tokens: Int32Array.from(tokens),
    positions: Int32Array.from(positions),
    seqStarts: Int32Array.from(seqStarts),
    contextLens: Int32Array.from(seqs.map((s) => s.cached + s.tokens.length)),
    blockTables,
    maxBlocksPerSeq: maxBlocks,
    loraSlots: Int32Array.from(seqs.map((s) => s.slot ?? -1)),
    sample: Uint8Array.from(seqs.map((s) => (s.sample === false ? 0 : 1))),
    temperature: Float32Array.from(seqs.map((s) => s.temperature ?? 0)),
    topK: Int32Array.from(seqs.map((s) => s.topK ?? -1)),
    topP: Float32Array.from(seqs.map((s) => s.topP ?? 1)),
    minP: Float32Array.from(seqs.map((s) => s.minP ?? 0)),
    seeds: Uint32Array.from(seqs.map((s) => s.seed ?? 0)),
    draws: Uint32Array.from(seqs.map((s) => s.draws ?? 0)),
    frequencyPenalty: Float32Array.from(seqs.map((s) => s.frequencyPenalty ?? 0)),
    presencePenalty: Float32Array.from(seqs.map((s) => s.presencePenalty ?? 0)),
    repetitionPenalty: Float32Array.from(seqs.map((s) => s.repetitionPenalty ?? 1)),
    penaltyTokens: Int32Array.from(seqs.flatMap((s) => s.penaltyTokens ?? [])),
    penaltyStarts: Int32Array.from(seqs.reduce((acc, s) => [...acc, acc[acc.length - 1]! + (s.penaltyTokens?.length ?? 0)], [0])),
    penaltyPromptLens: Int32Array.from(seqs.map((s) => s.penaltyPromptLen ?? 0)),
    topLogprobs: opts.topLogprobs ?? 0,
    returnLogits: opts.returnLogits ?? false,
  };
}

export function step(handle: number, seqs: SeqStep[], opts: Parameters<typeof makeBatch>[1] = {}): StepResult {
  return addon.step(handle, makeBatch(seqs, opts));
}

/**
 * Runs one step on a worker thread (engine handles work from any thread that loads the addon),
 * so a step that blocks leaves this thread free; done() says whether its result has come.
 */
export function stepOnWorker(handle: number, batch: StepBatch): { result: Promise<StepResult>; done: () => boolean } {
  const code = `
    const { parentPort, workerData } = require('node:worker_threads');
    const addon = require(workerData.file);
    parentPort.postMessage(addon.step(workerData.handle, workerData.batch));
  `;
  const worker = new Worker(code, { eval: true, workerData: { file: join(packageRoot(), ADDON_RELATIVE_PATH), handle, batch } });
  let finished = false;
  const result = new Promise<StepResult>((resolve, reject) => {
    worker.once('message', (r: StepResult) => {
      finished = true;
      resolve(r);
    });
    worker.once('error', reject);
  }).finally(() => worker.terminate());
  return { result, done: () => finished };
}

/** Row i of the n x vocab logits. */
export function logitsRow(r: StepResult, i: number, vocab: number): Float32Array {
  if (r.logits === null) throw new Error('step returned no logits');
  return r.logits.subarray(i * vocab, (i + 1) * vocab);
}

export function argmax(v: Float32Array): number {
  let best = 0;
  for (let i = 1; i < v.length; i++) if (v[i]! > v[best]!) best = i;
  return best;
}

export function maxAbs(v: Float32Array): number {
  let m = 0;
  for (const x of v) m = Math.max(m, Math.abs(x));
  return m;
}

/** log softmax of one row of logits, in float64. */
export function logSoftmax(l: Float32Array): Float64Array {
  let m = -Infinity;
  for (const x of l) m = Math.max(m, x);
  let s = 0;
  for (const x of l) s += Math.exp(x - m);
  const z = m + Math.log(s);
  return Float64Array.from(l, (x) => x - z);
}

export function maxAbsDiff(a: Float32Array, b: Float32Array): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

/** Deterministic token ids in [3, vocab) for prompts. */
export function prompt(len: number, seed: number, vocab = SMALL_MODEL.vocab_size): number[] {
  const out: number[] = [];
  let x = seed * 7919 + 17;
  for (let i = 0; i < len; i++) {
    x = (x * 1103515245 + 12345) % 2147483648;
    out.push(3 + (x % (vocab - 3)));
  }
  return out;
}

/** A request driven through the engine: its prompt in chunks, then greedy decodes. */
export interface DriveRequest {
  prompt: number[];
  blocks: number[];
  slot?: number;
  chunks?: number[]; // prompt chunk sizes; default the whole prompt at once
  join?: number; // step index at which it enters the batch
  decodes: number;
}

export interface DriveResult {
  tokens: number[]; // generated tokens (first from the prefill's last position)
  logits: Float32Array[]; // logits of every sampled position, in order
}

/** Runs requests together, step by step, like a scheduler would: each step mixes prefill chunks and decodes. */
export function drive(handle: number, reqs: DriveRequest[], vocab: number): DriveResult[] {
  const state = reqs.map(() => ({ done: 0, chunk: 0, cached: 0, out: { tokens: [] as number[], logits: [] as Float32Array[] } }));
  for (let stepIndex = 0; ; stepIndex++) {
    const active: number[] = [];
    const seqs: SeqStep[] = [];
    reqs.forEach((r, i) => {
      const s = state[i]!;
      if ((r.join ?? 0) > stepIndex || s.out.tokens.length > r.decodes) return;
      let tokens: number[];
      let sample = true;
      if (s.done < r.prompt.length) {
        const size = r.chunks?.[s.chunk] ?? r.prompt.length - s.done;
        tokens = r.prompt.slice(s.done, s.done + size);
        sample = s.done + size === r.prompt.length;
      } else {
        tokens = [s.out.tokens[s.out.tokens.length - 1]!];
      }
      active.push(i);
      seqs.push({ tokens, cached: s.cached, blocks: r.blocks, slot: r.slot ?? -1, sample });
    });
    if (active.length === 0 && reqs.every((r) => (r.join ?? 0) <= stepIndex)) break;
    if (active.length === 0) continue;
    const res = step(handle, seqs, { returnLogits: true });
    active.forEach((i, j) => {
      const s = state[i]!;
      const seq = seqs[j]!;
      s.cached += seq.tokens.length;
      if (s.done < reqs[i]!.prompt.length) {
        s.done += seq.tokens.length;
        s.chunk++;
      }
      if (seq.sample !== false) {
        s.out.tokens.push(res.tokens[j]!);
        s.out.logits.push(logitsRow(res, j, vocab).slice());
      }
    });
  }
  return state.map((s) => s.out);
}

/**
 * troupe's engine on the CPU over the demo model that makeDemo wrote to `dir`, as `troupe serve`
 * builds it: its adapters a and b, three adapters a batch, KV blocks of 8 tokens, and `extra` flags.
 */
export function demoEngine(dir: string, extra: string[]): Promise<LocalTroupeEngine> {
  const flags = ['--model-path', dir, '--device', 'cpu', '--lora-paths', `a=${join(dir, 'adapters', 'demo-a')}`];
  flags.push(`b=${join(dir, 'adapters', 'demo-b')}`, '--max-loras-per-batch', '3', '--page-size', '8', ...extra);
  return createServeEngine(validateFlags(parseArgs(flags).flags).options);
}

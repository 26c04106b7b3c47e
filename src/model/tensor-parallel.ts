// How --tp-size N splits the model across N ranks, as Megatron-LM does and SGLang and vLLM
// follow: q/k/v and gate/up are column-parallel (each rank owns whole attention heads and a
// contiguous part of the intermediate features), o and down are row-parallel (each rank owns the
// matching input columns, and the partial outputs are all-reduced), the embedding and lm_head
// are vocab-parallel, norms are replicated, and q/k/v biases are split like their weights' rows.
// LoRA follows S-LoRA: for column-parallel modules A is replicated and B is sliced like the base
// output; for row-parallel ones A is sliced like the base input, its rank-r output is
// all-reduced, and B is replicated. Every rank's pool slot is filled from the same host copy by
// slicing it here.
import { badRequest } from '../errors.js';
import {
  LORA_MODULES,
  type AdapterSlice,
  type AdapterWeights,
  type LoraModule,
  type ModelConfig,
  type TensorParallelRank,
  type TensorRef,
} from '../engine/types.js';
import { moduleDims } from './adapter.js';

export interface Range {
  start: number;
  count: number;
}

/** What one rank owns. */
export interface RankShard {
  rank: number;
  tpSize: number;
  heads: Range; // query heads
  kvHeads: Range; // KV heads (one, shared with other ranks, when tpSize > numKvHeads)
  inter: Range; // intermediate (MLP) features
  vocab: Range; // embedding and lm_head rows
  vocabPart: number; // every rank's vocab rows before the last rank's remainder (its gathered logits' width)
}

/** The shards of every rank, or an error naming the dimension tpSize does not divide. */
export function planTensorParallel(config: ModelConfig, tpSize: number): RankShard[] {
  const fail = (what: string): never => {
    throw badRequest(`--tp-size ${tpSize}: ${what}`);
  };
  if (!Number.isInteger(tpSize) || tpSize < 1) fail('must be a positive integer');
  if (config.numHeads % tpSize !== 0) fail(`does not divide the ${config.numHeads} attention heads`);
  if (config.intermediateSize % tpSize !== 0) fail(`does not divide intermediate_size ${config.intermediateSize}`);
  const kv = config.numKvHeads;
  if (kv % tpSize !== 0 && tpSize % kv !== 0) {
    fail(`the ${kv} KV heads can neither be split evenly over ${tpSize} ranks nor replicated (${tpSize} is not a multiple of ${kv})`);
  }
  const headsPer = config.numHeads / tpSize;
  const interPer = config.intermediateSize / tpSize;
  const vocabPer = Math.ceil(config.vocabSize / tpSize);
  return Array.from({ length: tpSize }, (_, rank) => ({
    rank,
    tpSize,
    heads: { start: rank * headsPer, count: headsPer },
    // More ranks than KV heads: each rank keeps the one KV head its query heads use.
    kvHeads: kv >= tpSize ? { start: (rank * kv) / tpSize, count: kv / tpSize } : { start: Math.floor((rank * kv) / tpSize), count: 1 },
    inter: { start: rank * interPer, count: interPer },
    vocab: { start: Math.min(rank * vocabPer, config.vocabSize), count: Math.max(0, Math.min(vocabPer, config.vocabSize - rank * vocabPer)) },
    vocabPart: vocabPer,
  }));
}

/** A contiguous band of rows (column-parallel and vocab-parallel weights): the reference just narrows. */
function rowsOf(ref: TensorRef, rows: Range): TensorRef {
  const rowBytes = (ref.nbytes / ref.shape[0]!) | 0;
  return { ...ref, offset: ref.offset + rows.start * rowBytes, nbytes: rows.count * rowBytes, shape: [rows.count, ...ref.shape.slice(1)] };
}

/** A band of columns (row-parallel weights): every row's piece, a full row apart in the file. */
function columnsOf(ref: TensorRef, columns: Range): TensorRef {
  const [rows, cols] = ref.shape as [number, number];
  const elem = ref.nbytes / (rows * cols);
  return {
    ...ref,
    offset: ref.offset + columns.start * elem,
    nbytes: rows * columns.count * elem,
    shape: [rows, columns.count],
    rowPitch: cols * elem,
  };
}

function headRows(shard: Range, headDim: number): Range {
  return { start: shard.start * headDim, count: shard.count * headDim };
}

/**
 * A rank's part of one checkpoint tensor; norms (Qwen3's per-head q and k norms too) and anything
 * else are replicated whole. The q/k/v biases go with their output rows.
 */
export function shardTensor(ref: TensorRef, config: ModelConfig, shard: RankShard): TensorRef {
  const d = config.headDim;
  const kind = /(?:(q_proj|k_proj|v_proj)\.bias|(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj|embed_tokens|lm_head)\.weight)$/
    .exec(ref.name)
    ?.slice(1)
    .find((g) => g !== undefined);
  switch (kind) {
    case 'q_proj':
      return rowsOf(ref, headRows(shard.heads, d));
    case 'k_proj':
    case 'v_proj':
      return rowsOf(ref, headRows(shard.kvHeads, d));
    case 'gate_proj':
    case 'up_proj':
      return rowsOf(ref, shard.inter);
    case 'embed_tokens':
    case 'lm_head':
      return rowsOf(ref, shard.vocab);
    case 'o_proj':
      return columnsOf(ref, headRows(shard.heads, d));
    case 'down_proj':
      return columnsOf(ref, shard.inter);
    default:
      return ref;
  }
}

/** What the native engine of one rank is told about its place in the group. */
export function rankOptions(shard: RankShard, group: string): TensorParallelRank {
  return {
    rank: shard.rank,
    size: shard.tpSize,
    group,
    numHeads: shard.heads.count,
    numKvHeads: shard.kvHeads.count,
    intermediateSize: shard.inter.count,
    vocabStart: shard.vocab.start,
    vocabCount: shard.vocab.count,
    vocabPart: shard.vocabPart,
  };
}

const COLUMN_PARALLEL: ReadonlySet<LoraModule> = new Set(['q_proj', 'k_proj', 'v_proj', 'gate_proj', 'up_proj']);

/** The output rows (column-parallel) or input columns (row-parallel) a rank owns of a module. */
function moduleRange(m: LoraModule, config: ModelConfig, shard: RankShard): Range {
  const d = config.headDim;
  if (m === 'q_proj' || m === 'o_proj') return headRows(shard.heads, d);
  if (m === 'k_proj' || m === 'v_proj') return headRows(shard.kvHeads, d);
  return shard.inter;
}

/**
 * What a rank's pool slot takes of each module's factors: for column-parallel modules the rank's
 * output rows of B (A whole), for row-parallel ones its input columns of A (B whole). The native
 * fill slices the host copy by these (fillLoraSlot).
 */
export function adapterSlices(config: ModelConfig, shard: RankShard): AdapterSlice[] {
  return LORA_MODULES.map((module) => {
    const dims = moduleDims(config, module);
    const range = moduleRange(module, config, shard);
    return COLUMN_PARALLEL.has(module)
      ? { module, inStart: 0, inCount: dims.in, outStart: range.start, outCount: range.count }
      : { module, inStart: range.start, inCount: range.count, outStart: 0, outCount: dims.out };
  });
}

/** A rank's slice of an adapter held as float32 in JS: what its pool slot holds. */
export function shardAdapter(adapter: AdapterWeights, config: ModelConfig, shard: RankShard): AdapterWeights {
  const r = adapter.rank;
  const slices = new Map(adapterSlices(config, shard).map((s) => [s.module, s]));
  return {
    rank: r,
    scaling: adapter.scaling,
    weights: adapter.weights.map((w) => {
      const s = slices.get(w.module)!;
      // B is [out][rank]: keep the slice's output rows.
      const b = w.b.slice(s.outStart * r, (s.outStart + s.outCount) * r);
      // A is [rank][in]: keep the slice's input columns of every row.
      const inDim = w.a.length / r;
      const a = new Float32Array(r * s.inCount);
      for (let i = 0; i < r; i++) a.set(w.a.subarray(i * inDim + s.inStart, i * inDim + s.inStart + s.inCount), i * s.inCount);
      return { ...w, a, b };
    }),
  };
}

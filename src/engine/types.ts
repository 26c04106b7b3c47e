// The engine boundary: every type that crosses from TypeScript into the native addon.
// The CPU and CUDA backends implement the same functions (see native.ts), so the
// scheduler and executor never know which one runs.

/** The seven linear layers a LoRA adapter may target, in the order the native pool uses. */
export const LORA_MODULES = ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'] as const;
export type LoraModule = (typeof LORA_MODULES)[number];

export type DType = 'F32' | 'F16' | 'BF16';

/** Llama 3.1 style rope scaling ("rope_type": "llama3"); absent means plain RoPE. */
export interface RopeScaling {
  factor: number;
  lowFreqFactor: number;
  highFreqFactor: number;
  originalMaxPositionEmbeddings: number;
}

/** The decoder families troupe serves (config.json's model_type); src/model/families.ts says how they differ. */
export type ModelFamily = 'llama' | 'mistral' | 'qwen2' | 'qwen3';

/** What the engine needs of config.json, in the names the native code uses. */
export interface ModelConfig {
  family: ModelFamily;
  architecture: string; // e.g. LlamaForCausalLM
  hiddenSize: number;
  intermediateSize: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  vocabSize: number;
  rmsNormEps: number;
  ropeTheta: number;
  ropeScaling: RopeScaling | null;
  maxPositionEmbeddings: number;
  tieWordEmbeddings: boolean;
  /** q_proj, k_proj and v_proj carry biases (Qwen2). */
  qkvBias: boolean;
  /** RMSNorm over each head of q and k, before RoPE (Qwen3). */
  qkNorm: boolean;
  /** Each position attends to at most this many positions, itself included (Mistral); 0 is unlimited. */
  slidingWindow: number;
  bosTokenId: number | null;
  eosTokenIds: number[];
  torchDtype: DType;
}

/** One tensor of a checkpoint, as validated by the safetensors reader; the native code reads the bytes itself. */
export interface TensorRef {
  name: string; // Hugging Face name, e.g. model.layers.0.self_attn.q_proj.weight
  file: string; // absolute path of the .safetensors file
  offset: number; // absolute byte offset of the data in the file
  nbytes: number;
  dtype: DType;
  shape: number[];
  /** Bytes from one row's start to the next in the file when the rows are not contiguous (a band of columns). */
  rowPitch?: number;
}

/** This engine's place in a tensor-parallel group (planned by src/model/tensor-parallel.ts). */
export interface TensorParallelRank {
  rank: number;
  size: number;
  /** Ranks with the same group id in one process exchange activations. */
  group: string;
  /** The rank's query heads, KV heads and MLP features. */
  numHeads: number;
  numKvHeads: number;
  intermediateSize: number;
  /** The embedding and lm_head rows it holds; vocabPart is every rank's share before the last rank's remainder. */
  vocabStart: number;
  vocabCount: number;
  vocabPart: number;
}

export interface EngineOptions {
  device: 'cpu' | 'cuda';
  /** Tokens per KV block. */
  blockSize: number;
  /** KV blocks to allocate; 0 lets the backend size the cache (CUDA: memFractionStatic of free memory). */
  kvBlocks: number;
  memFractionStatic: number;
  /** LoRA pool: slots (max_loras_per_batch), the largest rank, and the modules the pool holds. */
  loraSlots: number;
  maxLoraRank: number;
  loraModules: LoraModule[];
  /**
   * Ranks per pool slot (lora-slots.ts): an adapter takes loraSlotSpan(rank) consecutive slots.
   * Absent: maxLoraRank, one slot an adapter (the CUDA backend's only layout).
   */
  loraSlotRank?: number;
  /** Worker threads for the CPU backend; 0 = all cores. */
  threads: number;
  cudaGraphMaxBs: number;
  /** CUDA LoRA kernels (--lora-backend, --max-lora-chunk-size); default csgmv with chunks of 16. */
  loraBackend?: 'csgmv' | 'sgmv';
  loraChunkSize?: number;
  /**
   * How the CUDA backend runs the LoRA shrink/expand: CUDA-core FMA loops, tensor-core mma.sync
   * (compute capability 8.0+), mma with programmatic dependent launch (9.0+), or mma with each
   * shrink on a second stream beside the base projection, or fused: the mma shrink, with the
   * expand folded into the base projection's GEMM (B factors in padding columns of the base
   * weights). Absent: fused on 8.0+, fma below (TROUPE_LORA_KERNEL names one for engines that
   * leave it absent, such as the server's). Tests and benchmarks compare them.
   */
  loraKernel?: 'fma' | 'mma' | 'mma-pdl' | 'mma-overlap' | 'fused';
  /** Tensor parallelism; absent = one rank holding the whole model. */
  tp?: TensorParallelRank;
  /** The GPU this engine runs on (CUDA); 0 when absent. */
  cudaDevice?: number;
  /**
   * Tensor-parallel ranks on distinct GPUs with peer access send messages up to 2 MiB through
   * one-shot peer-to-peer kernels and the rest through NCCL; false: everything through NCCL.
   * Absent: true.
   */
  customAllReduce?: boolean;
}

export interface EngineInfo {
  device: 'cpu' | 'cuda';
  deviceName: string;
  kvBlocks: number;
  blockSize: number;
  loraSlots: number;
  maxLoraRank: number;
  loraSlotRank: number;
  /** How tensor-parallel ranks exchange activations: none (one rank), host (through host memory), nccl, or p2p+nccl (small messages through peer-to-peer kernels). */
  collective: 'none' | 'host' | 'nccl' | 'p2p+nccl';
  /** How LoRA deltas are computed: none (no LoRA pool), cpu, or the CUDA loraKernel in use (after the automatic choice). */
  loraKernel: 'none' | 'cpu' | NonNullable<EngineOptions['loraKernel']>;
}

/** Sampling values, one entry per sequence (a step's rows, or the sequences filling sequence slots). */
export interface SamplingColumns {
  temperature: Float32Array; // below 1e-6 = greedy; +Inf = uniform
  topK: Int32Array; // <= 0 or >= vocab = off
  topP: Float32Array; // 1 = off
  minP: Float32Array; // 0 = off
  // Penalties, as SGLang and OpenAI define them: frequency and presence over the tokens the
  // sequence generated so far; repetition (divide positive logits, multiply negative ones)
  // over its prompt and generated tokens.
  frequencyPenalty: Float32Array; // per sequence; 0 = off
  presencePenalty: Float32Array; // 0 = off
  repetitionPenalty: Float32Array; // 1 = off
  penaltyTokens: Int32Array; // for each sequence with a penalty: its prompt tokens then its generated tokens
  penaltyStarts: Int32Array; // n + 1 offsets into penaltyTokens (an empty range when a sequence has no penalty)
  penaltyPromptLens: Int32Array; // per sequence: how many of its penaltyTokens are prompt tokens
  seeds: Uint32Array; // per sequence random seed
}

/** Sequences' values for the engine to keep: entry u fills sequence slot slots[u]. */
export interface SeqUpdate extends SamplingColumns {
  slots: Int32Array;
}

/**
 * One forward step over a batch of sequences (prefill chunks and decodes mixed). Each
 * sequence contributes the tokens it has not run yet; the native code writes their K/V
 * into the sequence's blocks and attends over contextLens[i] tokens. Its sampling values and
 * block tables are either every row's own (the SamplingColumns, blockTables) or, in the resident
 * form the scheduler sends, kept by the engine per sequence slot: `seqSlots` names each row's
 * slot, `seqUpdate` fills the slots of sequences new to them, and `blockAppends` carries only
 * the blocks each row gained. The engine counts each token it samples for a penalized slot in
 * that slot, so a sequence's values, blocks and history are sent once, not every step.
 */
export interface StepBatch extends Partial<SamplingColumns> {
  tokens: Int32Array; // new tokens of all sequences, concatenated
  positions: Int32Array; // absolute position of each token
  seqStarts: Int32Array; // n + 1 offsets into tokens
  contextLens: Int32Array; // per sequence: tokens in the KV cache after this step
  blockTables?: Int32Array; // n x maxBlocksPerSeq, padded with -1 (absent in the resident form)
  maxBlocksPerSeq?: number;
  // The resident form's block table: row i's blocks new since its slot's last step (all of them
  // in the step that fills its slot), at blockAppends[blockAppendStarts[i], blockAppendStarts[i + 1]).
  blockAppends?: Int32Array;
  blockAppendStarts?: Int32Array;
  loraSlots: Int32Array; // per sequence: LoRA pool slot, -1 for the base model
  sample: Uint8Array; // per sequence: 1 to sample a token from its last position
  seqSlots?: Int32Array; // the resident form: per sequence, its sampling slot
  seqUpdate?: SeqUpdate; // the resident form: the slots this step fills (before its rows read them)
  draws: Uint32Array; // per sequence: how many tokens it sampled before, so a seed gives one sequence
  topLogprobs: number; // alternatives to return per sampled token (0 = only the chosen one; more than the vocabulary = all)
  returnLogits: boolean; // full last-position logits per sampled sequence (tests, debugging)
  /**
   * Overlap scheduling (the executor's, never the engine's): pairs (index, row) naming inputs
   * that are the tokens the step before this one samples: the executor writes row `row` of that
   * step's result into `tokens[index]` before it runs this one. Absent when every input is
   * known. (A penalized sequence's history needs no feed: the engine appended that token.)
   */
  feed?: Int32Array;
}

export interface StepResult {
  tokens: Int32Array; // per sequence; -1 where sample = 0 or the sequence failed
  /** Per sequence: log-softmax of the chosen token (before penalties and temperature); finite or -Inf (no mass), never NaN. */
  logprobs: Float32Array;
  topIds: Int32Array; // n x min(topLogprobs, vocab)
  topLogprobValues: Float32Array; // n x min(topLogprobs, vocab)
  logits: Float32Array | null; // n x vocab when returnLogits
  /**
   * Null when every sequence is fine; else per sequence why it got no token (malformed
   * sampling values, or sampling it failed) or null. Only those sequences failed: the others'
   * tokens stand. A malformed batch structure still throws for the whole step.
   */
  errors: Array<string | null> | null;
  /** Milliseconds the executor spent in the native step (set by the executor, not the engine). */
  stepMs?: number;
  /** Milliseconds from the end of the executor's previous step to the start of this one; absent for its first. */
  waitMs?: number;
}

/** The parameters of one sampleToken call (native/sampling.h); absent ones are off (temperature 1). */
export interface SampleParams {
  temperature?: number;
  topK?: number;
  topP?: number;
  minP?: number;
  seed?: number;
  draws?: number;
  frequencyPenalty?: number;
  presencePenalty?: number;
  repetitionPenalty?: number;
  /** Prompt then generated tokens the penalties look at; the first promptLen are the prompt. */
  penaltyTokens?: Int32Array;
  promptLen?: number;
}

export interface SampleOutput {
  token: number;
  /** Raw log-softmax of the token: finite or -Inf, never NaN. */
  logprob: number;
  topIds: Int32Array;
  topValues: Float32Array;
}

/** One adapter's weights, laid out for a pool slot: per layer and module, A (rank x in) and B (out x rank). */
export interface AdapterWeights {
  rank: number;
  scaling: number;
  weights: Array<{ layer: number; module: LoraModule; a: Float32Array; b: Float32Array }>;
}

/** One LoRA factor of adapter_model.safetensors, its name and shape checked against the model (src/model/adapter.ts). */
export interface AdapterTensor {
  name: string; // shown in the native reader's errors
  layer: number;
  module: LoraModule;
  factor: 'A' | 'B'; // A is rank x in, B is out x rank
  offset: number; // absolute byte offset of the values in the file
  nbytes: number;
  dtype: DType;
  shape: [number, number];
}

/** What the native reader reads: an adapter's weights file and the tensors in it, every lora_A with its lora_B. */
export interface AdapterFile {
  file: string;
  rank: number;
  scaling: number;
  tensors: AdapterTensor[];
}

/**
 * An adapter's weights read by native code into host memory, in the file's dtypes and checked
 * for NaN/Inf: the loader's CPU copy. Freed by destroyHostAdapter (or when the thread that
 * read it ends), never by the garbage collector.
 */
export interface HostAdapter {
  handle: number;
  bytes: number;
  /** Page-locked (CUDA builds with a GPU, when asked): copies into a GPU slot are DMA from it. */
  pageLocked: boolean;
}

/**
 * The part of one module's factors a tensor-parallel rank's slot takes: columns
 * [inStart, inStart + inCount) of A and rows [outStart, outStart + outCount) of B.
 */
export interface AdapterSlice {
  module: LoraModule;
  inStart: number;
  inCount: number;
  outStart: number;
  outCount: number;
}

/** Everything the addon exports (native/binding.cc). Handles are process-wide, so any worker thread may use one. */
export interface NativeAddon {
  buildInfo(): { cuda: boolean; cudaReason: string; version: string; nccl: boolean };
  cudaDeviceCount(): number;
  createEngine(config: ModelConfig, tensors: TensorRef[], options: EngineOptions): number;
  engineInfo(handle: number): EngineInfo;
  step(handle: number, batch: StepBatch): StepResult;
  /** The step's sampler on one row of logits (float32 values, as the engine sees them), with the min(topN, vocab) best alternatives. */
  sampleLogits(logits: Float32Array, params: SampleParams, topN: number): SampleOutput;
  /** Fills a slot from float32 values in JS memory; returns when the slot holds them. */
  loadLoraSlot(handle: number, slot: number, adapter: AdapterWeights): void;
  clearLoraSlot(handle: number, slot: number): void;
  /**
   * Reads and checks an adapter's values on a thread of libuv's pool (pieces of the file read by a few
   * threads into one buffer, which may be a recycled one). Rejects naming the file and tensor; the error's invalidAdapter is true when the
   * file's contents are at fault (NaN/Inf, truncated) rather than the machine.
   */
  readAdapter(adapter: AdapterFile, options: { pageLocked: boolean }): Promise<HostAdapter>;
  /** Frees a host adapter now (a fill still copying from it keeps it until that copy is done). */
  destroyHostAdapter(host: number): void;
  /**
   * Fills a slot from a host adapter (sliced per module under tensor parallelism) off the JS
   * thread; resolves once the slot holds it (on CUDA: the copies are done). Steps that do not
   * use the slot run meanwhile; one that uses it waits for the fill.
   */
  fillLoraSlot(handle: number, slot: number, host: number, slices?: AdapterSlice[]): Promise<void>;
  /**
   * Exchanges what pool slots a and b hold (either may be empty) by copies within the engine's
   * memory, off this thread; like a fill it waits for the steps using either slot, and steps that
   * use neither run meanwhile.
   */
  swapLoraSlots(handle: number, a: number, b: number): Promise<void>;
  /** Test hooks: writes (fills, clears) of the slot stop once they have claimed it, until released. */
  holdLoraSlotWrites(handle: number, slot: number): void;
  releaseLoraSlotWrites(handle: number, slot: number): void;
  /** Test hook: resolves once a write of the slot is stopped at the hold, or a step waits for the slot. */
  waitForLoraSlot(handle: number, slot: number, event: 'write-held' | 'step-waiting'): Promise<void>;
  destroyEngine(handle: number): void;
  /** Fails the collectives of every rank of a tensor-parallel group (one rank died); false if no such group. */
  abortTensorParallel(group: string, reason: string): boolean;
}

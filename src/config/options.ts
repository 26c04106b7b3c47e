// The validated server options: what `troupe serve` flags and `createEngine` both produce.
// flags.ts holds the one table of flags (names, defaults, help) that fills this in.
import type { AdapterSpec } from '../api.js';
import type { LoraModule } from '../engine/types.js';

export type LogLevel = 'debug' | 'info' | 'warning' | 'error';

export interface ServeOptions {
  modelPath: string;
  tokenizerPath: string | null;
  host: string;
  port: number;
  servedModelName: string | null;
  /** Bearer token every route but the health probes and /metrics require; null = open. */
  apiKey: string | null;
  /** Host header values accepted; empty = decided by host (loopback names only on a loopback address). */
  allowedHosts: string[];
  /** Largest request body in bytes (413 above it). */
  maxRequestBytes: number;
  /** Largest top_logprobs_num a request may ask for. */
  maxTopLogprobsNum: number;
  /** Tokenizer threads for short prompts and detokenization (long prompts get one more). */
  tokenizerWorkerNum: number;
  /** Seconds running requests get to finish after a shutdown signal. */
  gracefulShutdownTimeout: number;
  /** Directories /load_lora_adapter may read from; empty = any. */
  loraAllowedDirs: string[];
  enableLora: boolean;
  loraPaths: AdapterSpec[];
  maxLorasPerBatch: number;
  /** GPU pool slots; null = maxLorasPerBatch (see plan.ts gpuLoraSlots). */
  maxGpuLoras: number | null;
  maxLoadedLoras: number | null;
  loraEvictionPolicy: 'lru' | 'fifo';
  loraBackend: 'csgmv' | 'sgmv';
  maxLoraRank: number | null;
  loraTargetModules: LoraModule[] | null;
  maxLoraChunkSize: number;
  enableLoraOverlapLoading: boolean;
  tpSize: number;
  /** GPU of rank r: baseGpuId + r * gpuIdStep. */
  baseGpuId: number;
  gpuIdStep: number;
  cudaGraphMaxBs: number;
  /** --disable-custom-all-reduce: every tensor-parallel collective through NCCL. */
  disableCustomAllReduce: boolean;
  /** --disable-overlap-schedule: each step scheduled only after the last one ends. */
  disableOverlapSchedule: boolean;
  /** --disable-radix-cache: no computed blocks kept for later requests with the same prefix. */
  disableRadixCache: boolean;
  memFractionStatic: number;
  device: 'auto' | 'cpu' | 'cuda';
  /** Steps a request may wait for a place before an adapter's running requests give theirs up; 0: never. */
  maxPlaceWaitSteps: number;
  /** --dtype as given; planEngine checks it against the backend chosen. */
  dtype: 'auto' | 'bfloat16' | 'half' | 'float16' | 'float' | 'float32';
  logLevel: LogLevel;
  /** Most sequences in one batch. */
  maxRunningRequests: number;
  /** Most prompt tokens one step prefills; longer prompts are prefilled in chunks. */
  chunkedPrefillSize: number;
  /** KV cache size in tokens; null lets the backend size it. */
  maxTotalTokens: number | null;
  /** Tokens per KV block. */
  pageSize: number;
  /** Longest prompt + output; null means the model's max_position_embeddings. */
  contextLength: number | null;
}

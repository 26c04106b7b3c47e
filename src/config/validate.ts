// Raw flag values -> ServeOptions, enforcing the same combination rules SGLang applies to
// its LoRA server arguments, so a command line SGLang rejects is rejected here too, with
// a message that names the flags involved.
import type { AdapterSpec } from '../api.js';
import { MAX_SEQUENCE_SLOTS } from '../scheduler/sequence-slots.js';
import { LORA_MODULES, type LoraModule } from '../engine/types.js';
import type { LogLevel, ServeOptions } from './options.js';
import { FlagError, parseArgs, type RawFlags } from './parse.js';

export interface Validated {
  options: ServeOptions;
  warnings: string[];
}

export function validateFlags(flags: RawFlags): Validated {
  const warnings: string[] = [];
  const str = (name: string): string | null => (flags.get(name) as string | null) ?? null;
  const num = (name: string): number | null => (flags.get(name) as number | null) ?? null;
  const bool = (name: string): boolean | null => (flags.get(name) as boolean | null) ?? null;
  const list = (name: string): string[] => (flags.get(name) as string[] | null) ?? [];

  const atLeast = (name: string, min: number): number | null => {
    const v = num(name);
    if (v !== null && v < min) throw new FlagError(`--${name} must be at least ${min}, got ${v}`);
    return v;
  };

  const atMost = (name: string, v: number, max: number): number => {
    if (v > max) throw new FlagError(`--${name} must be at most ${max}, got ${v}`);
    return v;
  };

  const port = atMost('port', atLeast('port', 1)!, 65535);
  const maxLorasPerBatch = atLeast('max-loras-per-batch', 1)!;
  const maxLoadedLoras = atLeast('max-loaded-loras', 1);
  const maxGpuLoras = atLeast('max-gpu-loras', 1);
  const maxLoraRank = atLeast('max-lora-rank', 1);
  const pageSize = atLeast('page-size', 1)!;
  const chunkedPrefillSize = atLeast('chunked-prefill-size', 1)!;
  const tpSize = atLeast('tp-size', 1)!;
  const memFractionStatic = num('mem-fraction-static')!;
  if (!(memFractionStatic > 0 && memFractionStatic < 1)) {
    throw new FlagError(`--mem-fraction-static must be between 0 and 1 (exclusive), got ${memFractionStatic}`);
  }
  if (chunkedPrefillSize % pageSize !== 0) {
    throw new FlagError(`--chunked-prefill-size (${chunkedPrefillSize}) must be divisible by --page-size (${pageSize})`);
  }

  const servedModelName = str('served-model-name');
  if (servedModelName !== null && servedModelName.includes(':')) {
    throw new FlagError(`--served-model-name "${servedModelName}" cannot contain ":" (the OpenAI API uses model:adapter)`);
  }

  let loraPaths = list('lora-paths').map(parseLoraPath);
  let enableLora = bool('enable-lora');
  if (loraPaths.length > 0) {
    if (enableLora === null) enableLora = true;
    else if (!enableLora) {
      warnings.push('--enable-lora is false, so the adapters in --lora-paths are ignored');
      loraPaths = [];
    }
  }
  enableLora ??= false;

  const chunk = num('max-lora-chunk-size')!;
  if (!(chunk >= 16 && chunk <= 128 && (chunk & (chunk - 1)) === 0)) {
    throw new FlagError(`--max-lora-chunk-size must be a power of 2 from 16 to 128, got ${chunk}`);
  }

  const targets = list('lora-target-modules');
  let loraTargetModules: LoraModule[] | null = null;
  if (targets.length > 0) {
    if (targets.includes('all')) {
      if (targets.length > 1) throw new FlagError('--lora-target-modules: "all" must be the only module given');
      loraTargetModules = [...LORA_MODULES];
    } else {
      loraTargetModules = LORA_MODULES.filter((m) => targets.includes(m));
    }
  }

  const graceful = num('graceful-shutdown-timeout')!;
  if (!(graceful >= 0)) throw new FlagError(`--graceful-shutdown-timeout must be at least 0, got ${graceful}`);
  const apiKey = str('api-key');
  if (apiKey !== null && apiKey.trim() === '') throw new FlagError('--api-key must not be blank');

  const overlap = bool('enable-lora-overlap-loading') ?? false;
  const backend = str('lora-backend')!;
  const options: ServeOptions = {
    modelPath: str('model-path') ?? '',
    tokenizerPath: str('tokenizer-path'),
    host: str('host')!,
    port,
    servedModelName,
    apiKey,
    allowedHosts: list('allowed-hosts'),
    maxRequestBytes: atLeast('max-request-bytes', 1024)!,
    maxTopLogprobsNum: atLeast('max-top-logprobs-num', 0)!,
    tokenizerWorkerNum: atLeast('tokenizer-worker-num', 1)!,
    gracefulShutdownTimeout: graceful,
    loraAllowedDirs: list('lora-allowed-dirs'),
    enableLora,
    loraPaths,
    maxLorasPerBatch,
    maxGpuLoras,
    maxLoadedLoras,
    loraEvictionPolicy: str('lora-eviction-policy') as 'lru' | 'fifo',
    // SGLang's triton backend is a segment-per-request SGMV; the name stays valid here.
    loraBackend: backend === 'triton' ? 'sgmv' : (backend as 'csgmv' | 'sgmv'),
    maxLoraRank,
    loraTargetModules,
    maxLoraChunkSize: chunk,
    enableLoraOverlapLoading: enableLora && overlap,
    tpSize,
    baseGpuId: atLeast('base-gpu-id', 0)!,
    gpuIdStep: atLeast('gpu-id-step', 0)!,
    cudaGraphMaxBs: bool('disable-cuda-graph') ? 0 : atLeast('cuda-graph-max-bs', 0)!,
    disableOverlapSchedule: bool('disable-overlap-schedule') ?? false,
    disableRadixCache: bool('disable-radix-cache') ?? false,
    disableCustomAllReduce: bool('disable-custom-all-reduce') ?? false,
    memFractionStatic,
    device: str('device') as 'auto' | 'cpu' | 'cuda',
    dtype: str('dtype') as ServeOptions['dtype'],
    maxPlaceWaitSteps: atLeast('max-place-wait-steps', 0)!,
    logLevel: str('log-level') as LogLevel,
    maxRunningRequests: atMost('max-running-requests', atLeast('max-running-requests', 1)!, MAX_SEQUENCE_SLOTS),
    chunkedPrefillSize,
    maxTotalTokens: atLeast('max-total-tokens', 1),
    pageSize,
    contextLength: atLeast('context-length', 1),
  };
  checkLoraRules(options, overlap);
  return { options, warnings };
}

/** One --lora-paths item: PATH, NAME=PATH, or {"lora_name", "lora_path", "pinned"}. */
export function parseLoraPath(item: string): AdapterSpec {
  const text = item.trim();
  if (text.startsWith('{')) {
    let obj: unknown;
    try {
      obj = JSON.parse(text);
    } catch (err) {
      throw new FlagError(`--lora-paths: ${JSON.stringify(item)} is not valid JSON: ${(err as Error).message}`);
    }
    const o = obj as Record<string, unknown>;
    if (typeof o.lora_name !== 'string' || o.lora_name === '' || typeof o.lora_path !== 'string' || o.lora_path === '') {
      throw new FlagError(`--lora-paths: ${item} needs string fields "lora_name" and "lora_path"`);
    }
    const unknown = Object.keys(o).filter((k) => !['lora_name', 'lora_path', 'pinned'].includes(k));
    if (unknown.length > 0) throw new FlagError(`--lora-paths: ${item} has unknown field "${unknown[0]}"`);
    if (o.pinned !== undefined && typeof o.pinned !== 'boolean') throw new FlagError(`--lora-paths: "pinned" in ${item} must be true or false`);
    return { name: o.lora_name, path: o.lora_path, pinned: o.pinned === true };
  }
  const eq = text.indexOf('=');
  if (eq === -1) {
    if (text === '') throw new FlagError('--lora-paths: empty adapter path');
    return { name: text, path: text, pinned: false };
  }
  const name = text.slice(0, eq);
  const path = text.slice(eq + 1);
  if (name === '' || path === '') throw new FlagError(`--lora-paths: "${item}" must be NAME=PATH with both parts non-empty`);
  return { name, path, pinned: false };
}

/**
 * SGLang's rules for combining the LoRA options; shared by the CLI and createEngine, so an
 * embedded engine refuses what `troupe serve` refuses.
 */
export function checkLoraRules(o: ServeOptions, overlapAsked = o.enableLoraOverlapLoading): void {
  if (!o.enableLora) return;
  const { loraPaths, maxLoraRank, loraTargetModules, maxLoadedLoras, maxLorasPerBatch, maxGpuLoras } = o;
  if (maxLorasPerBatch < 1) throw new FlagError(`--max-loras-per-batch must be at least 1, got ${maxLorasPerBatch}`);
  const names = new Set<string>();
  for (const a of loraPaths) {
    if (names.has(a.name)) throw new FlagError(`--lora-paths names the adapter "${a.name}" twice`);
    names.add(a.name);
  }
  if (loraPaths.length === 0 && (maxLoraRank === null || loraTargetModules === null)) {
    throw new FlagError('without --lora-paths, both --max-lora-rank and --lora-target-modules are required to size the LoRA pool');
  }
  if (maxLoadedLoras !== null) {
    if (maxLoadedLoras < maxLorasPerBatch) {
      throw new FlagError(`--max-loaded-loras (${maxLoadedLoras}) must be at least --max-loras-per-batch (${maxLorasPerBatch})`);
    }
    if (loraPaths.length > maxLoadedLoras) {
      throw new FlagError(`--lora-paths lists ${loraPaths.length} adapters, more than --max-loaded-loras (${maxLoadedLoras})`);
    }
  }
  if (maxGpuLoras !== null) {
    if (maxGpuLoras < maxLorasPerBatch) {
      throw new FlagError(`--max-gpu-loras (${maxGpuLoras}) must be at least --max-loras-per-batch (${maxLorasPerBatch})`);
    }
    // A slot's adapter keeps its CPU copy, so the GPU cannot hold more than CPU memory may.
    if (maxLoadedLoras !== null && maxGpuLoras > maxLoadedLoras) {
      throw new FlagError(`--max-gpu-loras (${maxGpuLoras}) must be at most --max-loaded-loras (${maxLoadedLoras})`);
    }
  }
  if (overlapAsked && (maxLoadedLoras === null || maxLoadedLoras > 2 * maxLorasPerBatch)) {
    throw new FlagError(
      `--enable-lora-overlap-loading keeps adapters in pinned CPU memory, so --max-loaded-loras must be set and at most 2 x --max-loras-per-batch (${2 * maxLorasPerBatch})` +
        (maxLoadedLoras === null ? '; it is not set' : `; it is ${maxLoadedLoras}`),
    );
  }
  const pinned = loraPaths.filter((a) => a.pinned).length;
  if (pinned > maxLorasPerBatch - 1) {
    throw new FlagError(
      `${pinned} pinned adapters leave no pool slot for others: at most --max-loras-per-batch - 1 (${maxLorasPerBatch - 1}) may be pinned`,
    );
  }
}

/**
 * Options for an embedded engine: the flag defaults, overridden by what the caller gives.
 * As on the command line, giving loraPaths turns LoRA on unless enableLora says otherwise.
 */
export function resolveServeOptions(given: Partial<ServeOptions> & { modelPath: string }): ServeOptions {
  const defaults = validateFlags(parseArgs([]).flags).options;
  const loraPaths = (given.loraPaths ?? []).map((a) => ({ ...a, pinned: a.pinned ?? false }));
  const options: ServeOptions = {
    ...defaults,
    ...given,
    loraPaths,
    enableLora: given.enableLora ?? loraPaths.length > 0,
  };
  checkLoraRules(options);
  return options;
}

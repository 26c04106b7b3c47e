// Turns server options and the checkpoint into the engine's and scheduler's settings:
// which device, how big the KV cache and the LoRA pool are, and what each tensor-parallel
// rank holds and where it runs.
import { availableParallelism } from 'node:os';
import type { ServeOptions } from '../config/options.js';
import { LORA_MODULES, type EngineOptions, type LoraModule, type ModelConfig, type NativeAddon, type TensorRef } from '../engine/types.js';
import { badRequest } from '../errors.js';
import { cudaSlotRuns, loraPoolSlots, loraSlotRank } from '../engine/lora-slots.js';
import type { AdapterInfo } from '../model/adapter.js';
import { planTensorParallel, rankOptions, shardTensor } from '../model/tensor-parallel.js';

/** KV cache of the CPU backend when --max-total-tokens is not given. */
export const CPU_DEFAULT_TOTAL_TOKENS = 32768;
/**
 * SGLang's default page size is 1 token; our KV blocks hold 16 when it is left at 1.
 * There is no prefix cache to share pages, so the page size only sets allocation grain
 * and 16 keeps block tables short.
 */
export const BLOCK_SIZE_FOR_PAGE_SIZE_1 = 16;
/** Pool rank when LoRA is enabled with neither --max-lora-rank nor --lora-paths to infer it from. */
export const DEFAULT_MAX_LORA_RANK = 16;

export interface EnginePlan {
  engine: EngineOptions;
  loraEnabled: boolean;
  contextLength: number;
}

type Log = (level: 'debug' | 'info' | 'warning' | 'error', msg: string) => void;

export function chooseDevice(wanted: ServeOptions['device'], native: Pick<NativeAddon, 'buildInfo' | 'cudaDeviceCount'>, log: Log): 'cpu' | 'cuda' {
  const build = native.buildInfo();
  const gpus = build.cuda ? native.cudaDeviceCount() : 0;
  if (wanted === 'cpu') return 'cpu';
  if (wanted === 'cuda') {
    if (!build.cuda) throw badRequest(`--device cuda: the native addon was built without CUDA (${build.cudaReason})`);
    if (gpus === 0) throw badRequest('--device cuda: no CUDA device is visible');
    return 'cuda';
  }
  const device = build.cuda && gpus > 0 ? 'cuda' : 'cpu';
  log(
    'info',
    device === 'cuda'
      ? `device auto: using CUDA (${gpus} device${gpus === 1 ? '' : 's'} visible)`
      : `device auto: using the CPU (${build.cuda ? 'no CUDA device visible' : `addon built without CUDA: ${build.cudaReason}`})`,
  );
  return device;
}

/** What each backend computes in, by the names --dtype accepts for it (SGLang's spellings). */
const COMPUTE_DTYPES: Record<'cpu' | 'cuda', readonly string[]> = { cuda: ['bfloat16'], cpu: ['float32', 'float'] };

/** --dtype must be auto or name what the chosen backend computes in: another would be silently ignored. */
export function checkDtype(dtype: ServeOptions['dtype'], device: 'cpu' | 'cuda'): void {
  if (dtype === 'auto' || COMPUTE_DTYPES[device].includes(dtype)) return;
  const other = device === 'cuda' ? 'cpu' : 'cuda';
  const where = COMPUTE_DTYPES[other].includes(dtype) ? ` (the ${other} backend's)` : '';
  throw badRequest(
    `--dtype ${dtype}: the ${device} backend computes in ${COMPUTE_DTYPES[device][0]}, not ${dtype}${where}; pass --dtype auto or ${COMPUTE_DTYPES[device][0]}`,
  );
}

export function planEngine(opts: ServeOptions, config: ModelConfig, device: 'cpu' | 'cuda', adapterInfos: AdapterInfo[], log: Log): EnginePlan {
  checkDtype(opts.dtype, device);
  const loraEnabled = opts.enableLora || opts.loraPaths.length > 0;
  const blockSize = opts.pageSize === 1 ? BLOCK_SIZE_FOR_PAGE_SIZE_1 : opts.pageSize;
  const totalTokens = opts.maxTotalTokens ?? (device === 'cpu' ? CPU_DEFAULT_TOTAL_TOKENS : null);
  const kvBlocks = totalTokens === null ? 0 : Math.ceil(totalTokens / blockSize);

  let maxLoraRank = opts.maxLoraRank ?? 0;
  if (opts.maxLoraRank === null) {
    maxLoraRank = adapterInfos.length > 0 ? Math.max(...adapterInfos.map((a) => a.rank)) : DEFAULT_MAX_LORA_RANK;
    if (loraEnabled) log('info', `max LoRA rank ${maxLoraRank} (${adapterInfos.length > 0 ? 'from --lora-paths' : 'default'})`);
  }
  let loraModules: LoraModule[];
  if (opts.loraTargetModules !== null) {
    loraModules = [...opts.loraTargetModules];
  } else if (adapterInfos.length > 0) {
    const used = new Set(adapterInfos.flatMap((a) => a.targetModules));
    loraModules = LORA_MODULES.filter((m) => used.has(m));
  } else {
    loraModules = [...LORA_MODULES];
  }
  const slotRank = loraSlotRank(device, maxLoraRank, undefined, cudaSlotRuns(opts.loraBackend));

  return {
    loraEnabled,
    contextLength: opts.contextLength ?? config.maxPositionEmbeddings,
    engine: {
      device,
      blockSize,
      kvBlocks,
      memFractionStatic: opts.memFractionStatic,
      loraSlots: loraEnabled ? loraPoolSlots(gpuLoraSlots(opts), maxLoraRank, slotRank) : 0,
      maxLoraRank: loraEnabled ? maxLoraRank : 0,
      loraSlotRank: loraEnabled ? slotRank : undefined,
      loraModules: loraEnabled ? loraModules : [],
      threads: 0,
      cudaGraphMaxBs: opts.cudaGraphMaxBs,
      loraBackend: opts.loraBackend,
      loraChunkSize: opts.maxLoraChunkSize,
      customAllReduce: !opts.disableCustomAllReduce,
    },
  };
}

/**
 * The adapters of --max-lora-rank that the GPU pool holds: --max-gpu-loras, by default
 * --max-loras-per-batch (SGLang's pool). More than one batch uses keep adapters on the GPU
 * between their batches. Engines that cut the pool into slots of a lower rank hold more adapters
 * of lower ranks (lora-slots.ts).
 */
export function gpuLoraSlots(opts: Pick<ServeOptions, 'maxGpuLoras' | 'maxLorasPerBatch'>): number {
  return opts.maxGpuLoras ?? opts.maxLorasPerBatch;
}

/**
 * Whether the scheduler moves the adapters that requests want to low pool slots: where the
 * engine's kernels read every slot up to the highest a step uses (CUDA's fused kernels), so a
 * batch in low slots reads fewer; elsewhere (the CPU, the other CUDA kernels, which read each
 * step's slots alone) a move would only cost its copy. TROUPE_LORA_COMPACT=0 or 1 decides instead.
 */
export function compactsSlots(loraKernel: string, env: string | undefined): boolean {
  if (env === undefined || env === '') return loraKernel === 'fused';
  if (env === '0' || env === '1') return env === '1';
  throw new RangeError(`TROUPE_LORA_COMPACT must be 0 or 1, got ${JSON.stringify(env)}`);
}

/** What one rank's executor is given to build its engine. */
export interface RankPlan {
  config: ModelConfig;
  tensors: TensorRef[];
  options: EngineOptions;
}

/**
 * One engine per rank: its part of every tensor, its place in the group and its GPU
 * (--base-gpu-id + rank x --gpu-id-step). On the CPU the ranks split the cores.
 */
export function planRanks(
  plan: EnginePlan,
  config: ModelConfig,
  tensors: TensorRef[],
  opts: Pick<ServeOptions, 'tpSize' | 'baseGpuId' | 'gpuIdStep'>,
  group: string,
  gpus: number,
): RankPlan[] {
  const shards = planTensorParallel(config, opts.tpSize);
  const device = (rank: number): number => opts.baseGpuId + rank * opts.gpuIdStep;
  if (plan.engine.device === 'cuda') {
    const highest = Math.max(opts.baseGpuId, device(shards.length - 1));
    if (highest >= gpus) {
      // Checked before any weight is read: a 140 GB model should not load for minutes first.
      const ranks = opts.gpuIdStep === 0 ? `all ranks on GPU ${opts.baseGpuId}` : `ranks on GPUs ${opts.baseGpuId} to ${highest}`;
      throw badRequest(
        `--tp-size ${opts.tpSize} needs ${highest + 1} GPUs (${ranks} with --base-gpu-id ${opts.baseGpuId} and --gpu-id-step ${opts.gpuIdStep}), ` +
          `but ${gpus} ${gpus === 1 ? 'is' : 'are'} visible (--gpu-id-step 0 puts every rank on one GPU)`,
      );
    }
  }
  const threads = opts.tpSize > 1 ? Math.max(1, Math.floor(availableParallelism() / opts.tpSize)) : plan.engine.threads;
  return shards.map((shard) => ({
    config,
    tensors: tensors.map((t) => shardTensor(t, config, shard)),
    options: { ...plan.engine, threads, tp: rankOptions(shard, group), cudaDevice: device(shard.rank) },
  }));
}

/** Why an adapter cannot live in the LoRA pool, or null if it fits. */
export function poolMismatch(
  name: string,
  rank: number,
  modules: readonly LoraModule[],
  pool: { maxLoraRank: number; loraModules: readonly LoraModule[] },
): string | null {
  if (rank > pool.maxLoraRank) return `adapter '${name}' has rank ${rank}, above --max-lora-rank ${pool.maxLoraRank}`;
  const outside = modules.filter((m) => !pool.loraModules.includes(m));
  if (outside.length > 0) {
    return `adapter '${name}' targets ${outside.join(', ')}, not in --lora-target-modules (${pool.loraModules.join(', ') || 'none'})`;
  }
  return null;
}

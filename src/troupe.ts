// createEngine: opens the checkpoint, picks the device, sizes the KV cache and LoRA pool,
// starts the actors (an executor per tensor-parallel rank, the loader, the scheduler) and the
// tokenizer pool, and registers the --lora-paths adapters. The step loop then runs between
// the scheduler and executor threads.
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { Engine, type EngineLog, type LocalTroupeEngine } from './actors/engine.js';
import { chooseDevice, compactsSlots, gpuLoraSlots, planEngine, planRanks } from './actors/plan.js';
import { initRanks } from './actors/ranks.js';
import { Supervisor } from './actors/supervisor.js';
import type { ServeOptions } from './config/options.js';
import { resolveServeOptions } from './config/validate.js';
import { loadNative } from './engine/native.js';
import type { EngineInfo } from './engine/types.js';
import { badRequest } from './errors.js';
import { readAdapterInfo } from './model/adapter.js';
import { openCheckpoint } from './model/checkpoint.js';
import { createTokenizerPool } from './tokenizer/pool.js';

/** Any ServeOptions left out take the `troupe serve` defaults (see config/flags.ts). */
export type CreateEngineOptions = Partial<ServeOptions> & { modelPath: string; log?: EngineLog };
export type { EngineLog, LocalTroupeEngine };

export async function createEngine(given: CreateEngineOptions): Promise<LocalTroupeEngine> {
  const log: EngineLog = given.log ?? (() => {});
  const options = resolveServeOptions(given);
  const ckpt = openCheckpoint(options.modelPath);
  // openCheckpoint checked that the model directory's tokenizer files exist; these are their paths.
  let tokenizerFile = ckpt.tokenizerJson;
  let tokenizerConfigFile: string | null = ckpt.tokenizerConfigJson;
  if (options.tokenizerPath) {
    tokenizerFile = join(options.tokenizerPath, 'tokenizer.json');
    if (!existsSync(tokenizerFile)) throw badRequest(`--tokenizer-path: ${tokenizerFile} does not exist`);
    const cfg = join(options.tokenizerPath, 'tokenizer_config.json');
    tokenizerConfigFile = existsSync(cfg) ? cfg : null;
  }
  const native = loadNative();
  const device = chooseDevice(options.device, native, log);
  const plan = planEngine(
    options,
    ckpt.config,
    device,
    options.loraPaths.map((a) => readAdapterInfo(a.path)),
    log,
  );
  const gpus = device === 'cuda' ? native.cudaDeviceCount() : 0;

  const supervisor = new Supervisor(options.tpSize, log);
  const tokenizer = createTokenizerPool(tokenizerFile, tokenizerConfigFile, options.tokenizerWorkerNum);
  try {
    const ranks = planRanks(plan, ckpt.config, ckpt.tensors, options, supervisor.tpGroup, gpus);
    const { scheduler, executors } = supervisor.actors;
    const tokenizerReady = tokenizer.ready();
    tokenizerReady.catch(() => {}); // awaited below; an earlier failure must not leave it unhandled
    // All ranks build their engines at once: they meet in collectives while they start.
    const inits = await initRanks(executors, ranks);
    const info = inits[0]!.info;
    const tp = options.tpSize > 1 ? `, tensor parallel over ${options.tpSize} ranks (${info.collective})` : '';
    log('info', `engine on ${info.deviceName}: ${info.kvBlocks} KV blocks of ${info.blockSize} tokens, ${loraPoolText(info)}${tp}`);
    await supervisor.initLoader({
      type: 'init',
      handles: inits.map((i) => i.handle),
      config: ckpt.config,
      tpSize: options.tpSize,
      maxLoraRank: plan.engine.maxLoraRank,
      loraModules: plan.engine.loraModules,
    });
    await scheduler.call({
      type: 'init',
      options: {
        blockSize: info.blockSize,
        numBlocks: info.kvBlocks,
        maxRunningRequests: options.maxRunningRequests,
        chunkedPrefillSize: options.chunkedPrefillSize,
        // Counts the base model too, so it stays at least 1 when the pool has no slots.
        maxLorasPerBatch: options.maxLorasPerBatch,
        gpuSlots: plan.loraEnabled ? info.loraSlots : gpuLoraSlots(options),
        loraSlotRank: plan.loraEnabled ? info.loraSlotRank : undefined,
        maxLoadedLoras: options.maxLoadedLoras,
        evictionPolicy: options.loraEvictionPolicy,
        overlapLoading: options.enableLoraOverlapLoading,
        maxPlaceWaitSteps: options.maxPlaceWaitSteps,
        overlapSchedule: !options.disableOverlapSchedule,
        prefixCache: !options.disableRadixCache,
        eosTokenIds: ckpt.config.eosTokenIds,
        contextLength: plan.contextLength,
        maxLoraRank: plan.engine.maxLoraRank,
        loraModules: plan.engine.loraModules,
        compactSlots: compactsSlots(info.loraKernel, process.env.TROUPE_LORA_COMPACT),
      },
    });
    await tokenizerReady;
    const engine = new Engine(options, ckpt.config, plan, info, supervisor, tokenizer, log);
    await Promise.all(options.loraPaths.map((spec) => engine.loadAdapter(spec)));
    return engine;
  } catch (err) {
    await Promise.allSettled([supervisor.close(), tokenizer.close()]);
    throw err;
  }
}

/** The engine's LoRA pool in words, for the start-up log. */
function loraPoolText(info: EngineInfo): string {
  const cut =
    info.loraSlotRank < info.maxLoraRank
      ? ` of rank ${info.loraSlotRank}, an adapter taking 1-${info.maxLoraRank / info.loraSlotRank} by its rank`
      : '';
  return `${info.loraSlots} LoRA slots${cut} (rank <= ${info.maxLoraRank}, ${info.loraKernel} kernels)`;
}

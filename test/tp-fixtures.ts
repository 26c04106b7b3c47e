// Runs a tensor-parallel group the way the server does, one executor actor per rank, each sent
// the same batch, so tests can drive ranks step by step (teacher forcing, returned logits)
// without the scheduler. Adapters go into every rank's slot as that rank's slice.
import { Supervisor } from '../src/actors/supervisor.js';
import { planRanks, type EnginePlan } from '../src/actors/plan.js';
import { fillSlot, initRanks, stepRanks } from '../src/actors/ranks.js';
import type { EngineInfo, EngineOptions, StepBatch, StepResult } from '../src/engine/types.js';
import { readAdapterHost } from '../src/model/adapter.js';
import type { Checkpoint } from '../src/model/checkpoint.js';
import { planTensorParallel } from '../src/model/tensor-parallel.js';
import { addon } from './engine-fixtures.js';

export interface RankGroup {
  info: EngineInfo;
  step(batch: StepBatch): Promise<StepResult>;
  /** Reads the adapter into native host memory, fills the slot of every rank with its slice, and frees the copy. */
  loadSlot(slot: number, adapterDir: string): Promise<void>;
  /** One rank alone (the others are not sent the batch). */
  stepRank(rank: number, batch: StepBatch): Promise<StepResult>;
  /** Ends a rank's thread, as a crash would. */
  kill(rank: number): Promise<void>;
  close(): Promise<void>;
}

export async function startRanks(
  ckpt: Checkpoint,
  tpSize: number,
  engine: EngineOptions,
  gpus: { baseGpuId?: number; gpuIdStep?: number; count?: number } = {},
): Promise<RankGroup> {
  const sup = new Supervisor(tpSize);
  try {
    const plan: EnginePlan = { engine, loraEnabled: engine.loraSlots > 0, contextLength: ckpt.config.maxPositionEmbeddings };
    const opts = { tpSize, baseGpuId: gpus.baseGpuId ?? 0, gpuIdStep: gpus.gpuIdStep ?? 1 };
    const ranks = planRanks(plan, ckpt.config, ckpt.tensors, opts, sup.tpGroup, gpus.count ?? 0);
    const inits = await initRanks(sup.actors.executors, ranks);
    const shards = planTensorParallel(ckpt.config, tpSize);
    return {
      info: inits[0]!.info,
      step: (batch) => stepRanks(sup.actors.executors, batch),
      stepRank: (rank, batch) => sup.actors.executors[rank]!.call({ type: 'step', batch }),
      async kill(rank) {
        const w = sup.worker(rank === 0 ? 'executor' : `executor-${rank}`);
        const exited = new Promise((r) => w.once('exit', r));
        await w.terminate();
        await exited;
      },
      async loadSlot(slot, adapterDir) {
        const handles = inits.map((i) => i.handle);
        const { host } = await readAdapterHost(addon, adapterDir, ckpt.config, { pageLocked: engine.device === 'cuda' });
        try {
          await fillSlot(addon, handles, shards, ckpt.config, slot, host.handle);
        } finally {
          addon.destroyHostAdapter(host.handle);
        }
      },
      close: () => sup.close(),
    };
  } catch (err) {
    await sup.close();
    throw err;
  }
}

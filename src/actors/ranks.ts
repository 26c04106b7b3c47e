// What every tensor-parallel rank receives together: building the engines (they meet in
// collectives while they start), running a step (rank 0 samples, so its result is the step's;
// settled rather than raced, so no rank is left running when the caller moves on), and an
// adapter's slices for a pool slot.
import type { AdapterWeights, EngineInfo, ModelConfig, NativeAddon, StepBatch, StepResult } from '../engine/types.js';
import { shardAdapter, type RankShard } from '../model/tensor-parallel.js';
import type { Mailbox } from './mailbox.js';
import type { RankPlan } from './plan.js';
import type { ExecutorMsg, ExecutorReplies } from './protocol.js';

export type ExecutorBox = Mailbox<never, Record<never, never>, ExecutorMsg, ExecutorReplies>;

async function allRanks<T>(calls: Array<Promise<T>>): Promise<T[]> {
  const results = await Promise.allSettled(calls);
  const failed = results.find((r) => r.status === 'rejected');
  if (failed) throw failed.reason;
  return results.map((r) => (r as PromiseFulfilledResult<T>).value);
}

export function initRanks(executors: ExecutorBox[], ranks: RankPlan[]): Promise<Array<{ handle: number; info: EngineInfo }>> {
  return allRanks(ranks.map((r, i) => executors[i]!.call({ type: 'init', ...r })));
}

/**
 * Fills pool slot `slot` of every rank (handles and shards by rank) with that rank's slice of
 * one host copy. If a rank refuses it, the ranks already filled are cleared: ranks must agree on
 * which slots hold adapters.
 */
export function fillSlot(native: NativeAddon, handles: number[], shards: RankShard[], config: ModelConfig, slot: number, weights: AdapterWeights): void {
  let filled = 0;
  try {
    for (; filled < handles.length; filled++) native.loadLoraSlot(handles[filled]!, slot, shardAdapter(weights, config, shards[filled]!));
  } catch (err) {
    for (let r = 0; r < filled; r++) native.clearLoraSlot(handles[r]!, slot);
    throw err;
  }
}

export async function stepRanks(executors: ExecutorBox[], batch: StepBatch): Promise<StepResult> {
  return (await allRanks(executors.map((e) => e.call({ type: 'step', batch }))))[0]!;
}

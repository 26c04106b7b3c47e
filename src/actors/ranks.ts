// What every tensor-parallel rank receives together: building the engines (they meet in
// collectives while they start), running a step (rank 0 samples, so its result is the step's;
// settled rather than raced, so no rank is left running when the caller moves on), an
// adapter's slices for a pool slot, and two slots' exchange.
import type { EngineInfo, ModelConfig, NativeAddon, StepBatch, StepResult } from '../engine/types.js';
import { adapterSlices, type RankShard } from '../model/tensor-parallel.js';
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
 * one host copy, all ranks at once, off this thread. If a rank refuses it, the ranks that took
 * it are cleared: ranks must agree on which slots hold adapters.
 */
export async function fillSlot(
  native: NativeAddon,
  handles: number[],
  shards: RankShard[],
  config: ModelConfig,
  slot: number,
  host: number,
): Promise<void> {
  // One rank takes everything: no slices to pass.
  const fills = handles.map((h, r) => native.fillLoraSlot(h, slot, host, handles.length > 1 ? adapterSlices(config, shards[r]!) : undefined));
  const results = await Promise.allSettled(fills);
  const failed = results.find((r) => r.status === 'rejected');
  if (!failed) return;
  results.forEach((r, i) => {
    if (r.status === 'fulfilled') native.clearLoraSlot(handles[i]!, slot);
  });
  throw failed.reason;
}

/**
 * Exchanges pool slots a and b of every rank, all ranks at once. If any rank fails, both slots
 * are cleared on every rank, so that the ranks agree that they are empty.
 */
export async function swapSlots(native: NativeAddon, handles: number[], a: number, b: number): Promise<void> {
  const results = await Promise.allSettled(handles.map((h) => native.swapLoraSlots(h, a, b)));
  const failed = results.find((r) => r.status === 'rejected');
  if (!failed) return;
  for (const h of handles) {
    for (const slot of [a, b]) {
      try {
        native.clearLoraSlot(h, slot);
      } catch {
        // A rank that refuses the slot itself refused the exchange too: its failure says why.
      }
    }
  }
  throw failed.reason;
}

export async function stepRanks(executors: ExecutorBox[], batch: StepBatch): Promise<StepResult> {
  return (await allRanks(executors.map((e) => e.call({ type: 'step', batch }))))[0]!;
}

// The calls every tensor-parallel rank receives together: building the engines (they meet in
// collectives while they start) and running a step (rank 0 samples, so its result is the
// step's). Settled rather than raced, so no rank is left running when the caller moves on.
import type { EngineInfo, StepBatch, StepResult } from '../engine/types.js';
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

export async function stepRanks(executors: ExecutorBox[], batch: StepBatch): Promise<StepResult> {
  return (await allRanks(executors.map((e) => e.call({ type: 'step', batch }))))[0]!;
}

// Overlap scheduling's other half: a step is sent before the step ahead of it has sampled, so
// the inputs that are that step's tokens travel as placeholders, and the executor fills them in
// from its result just before it runs the step.
import type { StepBatch } from '../engine/types.js';

/**
 * Writes the fed inputs of `batch` (its `feed` pairs: index into tokens, row) from `previous`,
 * the tokens the step before it sampled. A row with no token (that step failed, or failed the
 * sequence alone) gets token 0: its sequence has ended by the time this step completes, so its
 * row is discarded, and a valid id keeps the step's other rows running.
 */
export function feedInputs(batch: StepBatch, previous: Int32Array | null): void {
  const feed = batch.feed!;
  const tokens = batch.tokens;
  for (let f = 0; f < feed.length; f += 2) {
    const row = feed[f + 1]!;
    const token = previous !== null && row < previous.length ? previous[row]! : -1;
    tokens[feed[f]!] = token >= 0 ? token : 0;
  }
  delete batch.feed;
}

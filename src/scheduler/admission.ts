// Which adapters in a step stop taking new requests so that held-back requests for other
// adapters get a place (AdmissionWalk.run explains the admission rule these serve).
import type { Sequence } from './sequence.js';

/**
 * The most adapters that drain at once, one for each claim short of a place: half the step's
 * places (at least one). One alone starves nobody, but when places are short for many claims
 * they wait their turn one by one; every place draining at once is strict first come first
 * served, whose steps run a few rows while places free. In simulation (bench/serve-sim.js)
 * half keeps the step's other adapters filling it and gets the claims in soonest: within the
 * 6 s first-token SLO it served the most requests with 16, 256 and 1,000 adapters.
 */
export function mostDraining(maxLorasPerBatch: number): number {
  return Math.max(1, Math.floor(maxLorasPerBatch / 2));
}

/** Tokens a running request may still compute: its prompt left to prefill, then its output left. */
export function tokensLeft(s: Sequence, contextLength: number): number {
  const outputLeft = Math.min(s.init.sampling.maxNewTokens - s.generated, contextLength - s.tokenCount);
  return s.pending + Math.max(0, outputLeft);
}

/**
 * The tokens left to each of the step's adapters (`inStep`, whose order `out` takes): the most
 * any of its running requests has. One pass over the running requests, for soonestToFree.
 */
export function tokensLeftByAdapter(inStep: ReadonlyArray<string | null>, running: readonly Sequence[], contextLength: number, out: number[]): void {
  out.length = inStep.length;
  out.fill(0);
  for (let r = 0; r < running.length; r++) {
    const s = running[r]!;
    const d = inStep.indexOf(s.init.lora);
    if (d >= 0) out[d] = Math.max(out[d]!, tokensLeft(s, contextLength));
  }
}

/**
 * Of the step's adapters (`inStep`, in the order of their oldest running request, with the
 * tokens `left` to each: tokensLeftByAdapter) not yet `draining`, the one whose running
 * requests end soonest: the fewest tokens left to compute, the one longest in the step on a
 * tie; undefined when every one drains (null is the base model). Draining it frees a place no
 * later than strict first come first served would (that stopped every adapter, so the first
 * place to free was this one's). The choice holds from step to step: its count only falls while
 * it takes nothing new, and no other adapter's falls faster.
 */
export function soonestToFree(
  inStep: ReadonlyArray<string | null>,
  left: readonly number[],
  draining: ReadonlyArray<string | null>,
): string | null | undefined {
  let best: string | null | undefined = undefined;
  let fewest = Infinity;
  for (let d = 0; d < inStep.length; d++) {
    const lora = inStep[d]!;
    if (draining.includes(lora)) continue;
    if (left[d]! < fewest) {
      best = lora;
      fewest = left[d]!;
    }
  }
  return best;
}

/**
 * The adapter of the step (null is the base model) whose running requests give up its place
 * when a request has waited too long for one (StepPlanner.pauseForPlace): the one with the
 * fewest running requests, so the fewest recompute their cache; on a tie the one with the most
 * tokens left, which would hold its place longest. Pinned adapters keep theirs (their slot
 * would not free), and an adapter with a request that was paused once is not paused again, so
 * no request waits twice. Undefined when no adapter qualifies.
 */
export function adapterToPause(running: readonly Sequence[], pinned: ReadonlySet<string>, contextLength: number): string | null | undefined {
  const count = new Map<string | null, number>();
  const left = new Map<string | null, number>();
  const barred = new Set<string | null>();
  for (let r = 0; r < running.length; r++) {
    const s = running[r]!;
    const lora = s.init.lora;
    if (s.pausedForPlace || (lora !== null && pinned.has(lora))) barred.add(lora);
    count.set(lora, (count.get(lora) ?? 0) + 1);
    left.set(lora, Math.max(left.get(lora) ?? 0, tokensLeft(s, contextLength)));
  }
  let best: string | null | undefined = undefined;
  for (const [lora, n] of count) {
    if (barred.has(lora)) continue;
    if (best === undefined || n < count.get(best)! || (n === count.get(best)! && left.get(lora)! > left.get(best)!)) best = lora;
  }
  return best;
}

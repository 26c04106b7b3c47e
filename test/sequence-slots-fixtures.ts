// The resident form of a step (sequence slots, native/sequence_table.h) made from a per-row
// batch, and a decode loop that runs the same requests both ways on two engines, for the CPU
// and CUDA tests of the sequence table.
import { expect } from 'vitest';
import type { SeqUpdate, StepBatch } from '../src/engine/types.js';
import { addon, makeBatch, type SeqStep } from './engine-fixtures.js';

const COLUMNS = [
  'temperature',
  'topK',
  'topP',
  'minP',
  'frequencyPenalty',
  'presencePenalty',
  'repetitionPenalty',
  'seeds',
  'penaltyPromptLens',
] as const;

/**
 * The per-row batch in the resident form: rows name `slots`, the rows in `fill` fill theirs, and
 * each row sends the blocks of its table past the first `sent[i]` (all of them when it fills).
 */
export function residentForm(batch: StepBatch, slots: number[], fill: number[], sent: number[] = slots.map(() => 0)): StepBatch {
  const {
    temperature,
    topK,
    topP,
    minP,
    frequencyPenalty,
    presencePenalty,
    repetitionPenalty,
    penaltyTokens,
    penaltyStarts,
    penaltyPromptLens,
    seeds,
    blockTables,
    maxBlocksPerSeq,
    ...rest
  } = batch;
  const columns = { temperature, topK, topP, minP, frequencyPenalty, presencePenalty, repetitionPenalty, seeds, penaltyPromptLens };
  const appends: number[] = [];
  const appendStarts = [0];
  slots.forEach((_, i) => {
    const row = Array.from(blockTables!.subarray(i * maxBlocksPerSeq!, (i + 1) * maxBlocksPerSeq!)).filter((b) => b >= 0);
    appends.push(...row.slice(fill.includes(i) ? 0 : sent[i]));
    appendStarts.push(appends.length);
  });
  const out: StepBatch = {
    ...rest,
    seqSlots: Int32Array.from(slots),
    blockAppends: Int32Array.from(appends),
    blockAppendStarts: Int32Array.from(appendStarts),
  };
  if (fill.length === 0) return out;
  const pick = <T extends Int32Array | Float32Array | Uint32Array>(a: T): T =>
    a.constructor === Float32Array
      ? (Float32Array.from(fill, (i) => a[i]!) as T)
      : a.constructor === Uint32Array
        ? (Uint32Array.from(fill, (i) => a[i]!) as T)
        : (Int32Array.from(fill, (i) => a[i]!) as T);
  const update = { slots: Int32Array.from(fill, (i) => slots[i]!) } as Partial<SeqUpdate>;
  for (const c of COLUMNS) (update as Record<string, unknown>)[c] = pick(columns[c]!);
  const tokens: number[] = [];
  const starts = [0];
  for (const i of fill) {
    tokens.push(...penaltyTokens!.subarray(penaltyStarts![i]!, penaltyStarts![i + 1]!));
    starts.push(tokens.length);
  }
  update.penaltyTokens = Int32Array.from(tokens);
  update.penaltyStarts = Int32Array.from(starts);
  out.seqUpdate = update as SeqUpdate;
  return out;
}

export interface Req extends Omit<SeqStep, 'tokens' | 'cached' | 'blocks'> {
  prompt: number[];
  /** Its KV cache blocks are 4 block, 4 block + 1, ...: one more whenever its context needs it. */
  block: number;
}

/** Two engines of one checkpoint with KV blocks of `blockSize` tokens: one gets the per-row form, the other the resident one. */
export interface EnginePair {
  perRow: number;
  resident: number;
  blockSize: number;
}

/**
 * Samples `steps` tokens for each request, prefill first; the resident engine gets each
 * request's values in its first step only. Every decode step feeds the prompt's first token
 * again rather than the sampled one, so that an unpenalized greedy row keeps choosing the same
 * token and a penalty's history visibly steers the choice. `topLogprobs` gives each step's count
 * of alternatives (none unless given).
 */
export function decode(
  engines: EnginePair,
  reqs: Req[],
  slots: number[],
  steps: number,
  topLogprobs: (step: number) => number = () => 0,
): { perRow: number[][]; resident: number[][] } {
  const blocksFor = (tokens: number): number => Math.ceil(tokens / engines.blockSize);
  const got = { perRow: reqs.map(() => [] as number[]), resident: reqs.map(() => [] as number[]) };
  for (let k = 0; k <= steps - 1; k++) {
    for (const form of ['perRow', 'resident'] as const) {
      const out = got[form];
      const seqs: SeqStep[] = reqs.map((r, i) => {
        const penalized = (r.frequencyPenalty ?? 0) !== 0 || (r.presencePenalty ?? 0) !== 0 || (r.repetitionPenalty ?? 1) !== 1;
        return {
          ...r,
          tokens: k === 0 ? r.prompt : [r.prompt[0]!],
          cached: k === 0 ? 0 : r.prompt.length + k - 1,
          blocks: Array.from({ length: blocksFor(r.prompt.length + k) }, (_, j) => 4 * r.block + j),
          draws: k,
          penaltyTokens: penalized ? [...r.prompt, ...out[i]!] : [],
          penaltyPromptLen: penalized ? r.prompt.length : 0,
        };
      });
      const batch = makeBatch(seqs, { topLogprobs: topLogprobs(k) });
      // The resident engine holds the blocks of the step before.
      const before = reqs.map((r) => (k === 0 ? 0 : blocksFor(r.prompt.length + k - 1)));
      const result =
        form === 'perRow'
          ? addon.step(engines.perRow, batch)
          : addon.step(engines.resident, residentForm(batch, slots, k === 0 ? reqs.map((_, i) => i) : [], before));
      expect(result.errors).toBeNull();
      reqs.forEach((_, i) => out[i]!.push(result.tokens[i]!));
    }
  }
  return got;
}

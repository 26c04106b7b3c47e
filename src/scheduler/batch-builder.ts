// Packs the chosen sequences' new tokens into the engine's flat StepBatch layout.
import type { StepBatch } from '../engine/types.js';
import type { Sequence } from './sequence.js';

export interface StepEntry {
  seq: Sequence;
  /** Its first position this step: the tokens before it are in the cache or computed by steps in flight. */
  start: number;
  /** New tokens this step runs: seq.tokens[start, start + chunk). */
  chunk: number;
  /** Whether this step reaches the end of its tokens and so samples the next one. */
  sample: boolean;
  /** LoRA pool slot, -1 for the base model. */
  slot: number;
  /**
   * The row of the step before this one whose sampled token is this entry's last input (overlap
   * scheduling: that step was still running when this one was built), or -1.
   */
  feedRow: number;
  /** The sequence's epoch when the entry was made: a row whose sequence left the running list since is stale. */
  epoch: number;
}

/** top_k as the engine takes it: beyond int32 (which would wrap, 2^32 + 1 to 1) or not a positive number is off (-1). */
function topKOf(k: number): number {
  return k >= 1 && k <= 0x7fffffff ? Math.floor(k) : -1;
}

/** Whether the sequence sends its history: it samples with a penalty that needs it. */
function sendsHistory(e: StepEntry): boolean {
  const sp = e.seq.init.sampling;
  return e.sample && (sp.frequencyPenalty !== 0 || sp.presencePenalty !== 0 || sp.repetitionPenalty !== 1);
}

/**
 * The batch of the first `n` entries. Its arrays are new each step: the caller may keep a
 * batch while later steps are scheduled. Plain loops, and sizes counted before anything is
 * allocated; the arrays are views of one buffer, so a step allocates one backing store rather
 * than one per array (each its own allocation, and each for the collector to sweep).
 */
export function buildBatch(entries: readonly StepEntry[], n = entries.length): StepBatch {
  let total = 0;
  let maxBlocksPerSeq = 1;
  let historyLength = 0;
  // Inputs fed from the step in flight: a fed entry's token, and its history's last token.
  let fed = 0;
  for (let i = 0; i < n; i++) {
    const e = entries[i]!;
    total += e.chunk;
    maxBlocksPerSeq = Math.max(maxBlocksPerSeq, e.seq.blocks.length);
    const fedHere = e.feedRow >= 0 ? 1 : 0;
    fed += fedHere;
    if (sendsHistory(e)) {
      historyLength += e.seq.tokens.length + fedHere;
      fed += fedHere;
    }
  }
  // The 4-byte arrays first, the one byte array (sample) after them, so that every view is aligned.
  const words = 2 * total + 2 * (n + 1) + n * maxBlocksPerSeq + 12 * n + historyLength;
  const buffer = new ArrayBuffer(4 * words + n);
  let at = 0;
  const i32 = (length: number): Int32Array => {
    const a = new Int32Array(buffer, at, length);
    at += 4 * length;
    return a;
  };
  const f32 = (length: number): Float32Array => {
    const a = new Float32Array(buffer, at, length);
    at += 4 * length;
    return a;
  };
  const u32 = (length: number): Uint32Array => {
    const a = new Uint32Array(buffer, at, length);
    at += 4 * length;
    return a;
  };
  const b: StepBatch = {
    tokens: i32(total),
    positions: i32(total),
    seqStarts: i32(n + 1),
    contextLens: i32(n),
    blockTables: i32(n * maxBlocksPerSeq).fill(-1),
    maxBlocksPerSeq,
    loraSlots: i32(n),
    sample: new Uint8Array(buffer, 4 * words, n),
    temperature: f32(n),
    topK: i32(n),
    topP: f32(n),
    minP: f32(n),
    frequencyPenalty: f32(n),
    presencePenalty: f32(n),
    repetitionPenalty: f32(n),
    penaltyTokens: i32(historyLength),
    penaltyStarts: i32(n + 1),
    penaltyPromptLens: i32(n),
    seeds: u32(n),
    draws: u32(n),
    topLogprobs: 0,
    returnLogits: false,
  };
  // A fed entry is one decode token, which the step in flight samples: 0 stands in for it.
  const feed = fed > 0 ? new Int32Array(3 * fed) : null;
  let fedAt = 0;
  // The arrays as locals: the loops below write thousands of tokens in a step that admits a
  // cohort of requests, and a property read each time costs more than the write.
  const { tokens, positions, seqStarts, contextLens, blockTables, loraSlots, sample, temperature, topK, topP, minP } = b;
  const { frequencyPenalty, presencePenalty, repetitionPenalty, penaltyTokens, penaltyStarts, penaltyPromptLens, seeds, draws } = b;
  let off = 0;
  let history = 0;
  let topLogprobs = 0;
  for (let i = 0; i < n; i++) {
    const e = entries[i]!;
    const s = e.seq;
    const start = e.start;
    const chunk = e.chunk;
    const fedRow = e.feedRow;
    seqStarts[i] = off;
    if (fedRow >= 0) {
      for (let j = 0; j < chunk; j++) {
        tokens[off + j] = 0;
        positions[off + j] = start + j;
      }
      feed![fedAt++] = 0;
      feed![fedAt++] = off;
      feed![fedAt++] = fedRow;
    } else {
      const from = s.tokens;
      for (let j = 0; j < chunk; j++) {
        tokens[off + j] = from[start + j]!;
        positions[off + j] = start + j;
      }
    }
    off += chunk;
    contextLens[i] = start + chunk;
    const row = i * maxBlocksPerSeq;
    const blocks = s.blocks;
    for (let j = 0; j < blocks.length; j++) blockTables[row + j] = blocks[j]!;
    loraSlots[i] = e.slot;
    sample[i] = e.sample ? 1 : 0;
    const sp = s.init.sampling;
    temperature[i] = sp.temperature;
    topK[i] = topKOf(sp.topK);
    topP[i] = sp.topP;
    minP[i] = sp.minP;
    frequencyPenalty[i] = sp.frequencyPenalty;
    presencePenalty[i] = sp.presencePenalty;
    repetitionPenalty[i] = sp.repetitionPenalty;
    penaltyStarts[i] = history;
    // Only sequences that sample with a penalty send their history; s.tokens is prompt then output.
    if (sendsHistory(e)) {
      const all = s.tokens;
      for (let j = 0; j < all.length; j++) penaltyTokens[history + j] = all[j]!;
      history += all.length;
      if (fedRow >= 0) {
        feed![fedAt++] = 1;
        feed![fedAt++] = history++;
        feed![fedAt++] = fedRow;
      }
      penaltyPromptLens[i] = s.init.promptIds.length;
    }
    seeds[i] = s.init.seed >>> 0;
    draws[i] = s.generated + (fedRow >= 0 ? 1 : 0);
    if (e.sample) topLogprobs = Math.max(topLogprobs, s.init.topLogprobsNum);
  }
  b.topLogprobs = topLogprobs;
  b.seqStarts[n] = off;
  b.penaltyStarts[n] = history;
  if (feed !== null) b.feed = feed;
  return b;
}

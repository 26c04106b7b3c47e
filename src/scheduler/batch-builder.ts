// Packs the chosen sequences' new tokens into the engine's flat StepBatch layout.
import type { SeqUpdate, StepBatch } from '../engine/types.js';
import type { SequenceSlots } from './sequence-slots.js';
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

/** Whether the engine keeps the sequence's tokens: it samples with a penalty that needs them. */
function keepsHistory(s: Sequence): boolean {
  const sp = s.init.sampling;
  return sp.frequencyPenalty !== 0 || sp.presencePenalty !== 0 || sp.repetitionPenalty !== 1;
}

/**
 * The batch of the first `n` entries, in the resident form: each row names its sequence's slot
 * and sends the blocks it gained since its slot's last step; the sequences that have not filled
 * their slot since taking it send their sampling values now (with their tokens, when a penalty
 * looks at them) and all of their blocks. Its arrays are new each
 * step: the caller may keep a batch while later steps are scheduled. Plain loops, and sizes
 * counted before anything is allocated; the arrays are views of one buffer, so a step allocates
 * one backing store rather than one per array (each its own allocation, and each for the
 * collector to sweep).
 */
export function buildBatch(entries: readonly StepEntry[], n: number, slots: SequenceSlots): StepBatch {
  let total = 0;
  let appends = 0;
  let fed = 0;
  let fresh = 0;
  let historyLength = 0;
  for (let i = 0; i < n; i++) {
    const e = entries[i]!;
    total += e.chunk;
    if (e.feedRow >= 0) fed++;
    const s = e.seq;
    appends += s.blocks.length - (s.slotFilled ? s.blocksSent : 0);
    if (!s.slotFilled) {
      fresh++;
      if (keepsHistory(s)) historyLength += s.tokenCount;
    }
  }
  // The 4-byte arrays first, the one byte array (sample) after them, so that every view is aligned.
  const words = 2 * total + 2 * (n + 1) + appends + 4 * n;
  const buffer = new ArrayBuffer(4 * words + n);
  const view = viewsOf(buffer);
  const b: StepBatch = {
    tokens: view(Int32Array, total),
    positions: view(Int32Array, total),
    seqStarts: view(Int32Array, n + 1),
    contextLens: view(Int32Array, n),
    blockAppends: view(Int32Array, appends),
    blockAppendStarts: view(Int32Array, n + 1),
    loraSlots: view(Int32Array, n),
    seqSlots: view(Int32Array, n),
    draws: view(Uint32Array, n),
    sample: new Uint8Array(buffer, 4 * words, n),
    topLogprobs: 0,
    returnLogits: false,
  };
  const update = fresh > 0 ? seqUpdate(fresh, historyLength) : null;
  let u = 0;
  let history = 0;
  // A fed entry is one decode token, which the step in flight samples: 0 stands in for it.
  const feed = fed > 0 ? new Int32Array(2 * fed) : null;
  let fedAt = 0;
  // The arrays as locals: the loops below write thousands of tokens in a step that admits a
  // cohort of requests, and a property read each time costs more than the write.
  const { tokens, positions, seqStarts, contextLens, loraSlots, sample, draws } = b;
  const seqSlots = b.seqSlots!;
  const blockAppends = b.blockAppends!;
  const blockAppendStarts = b.blockAppendStarts!;
  let appended = 0;
  let off = 0;
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
      feed![fedAt++] = off;
      feed![fedAt++] = fedRow;
    } else {
      const from = s.pool.data;
      const at = s.tokenOffset + start;
      for (let j = 0; j < chunk; j++) {
        tokens[off + j] = from[at + j]!;
        positions[off + j] = start + j;
      }
    }
    off += chunk;
    contextLens[i] = start + chunk;
    loraSlots[i] = e.slot;
    sample[i] = e.sample ? 1 : 0;
    seqSlots[i] = slots.of(s);
    if (!s.slotFilled) {
      history = fill(update!, u++, s, history);
      s.slotFilled = true;
      s.blocksSent = 0;
    }
    // The blocks it gained since its slot's last step; a filled slot starts with none.
    blockAppendStarts[i] = appended;
    const blocks = s.blocks;
    for (let j = s.blocksSent; j < blocks.length; j++) blockAppends[appended++] = blocks[j]!;
    s.blocksSent = blocks.length;
    draws[i] = s.generated + (fedRow >= 0 ? 1 : 0);
    if (e.sample) topLogprobs = Math.max(topLogprobs, s.init.topLogprobsNum);
  }
  b.topLogprobs = topLogprobs;
  b.seqStarts[n] = off;
  blockAppendStarts[n] = appended;
  if (update !== null) b.seqUpdate = update;
  if (feed !== null) b.feed = feed;
  return b;
}

/** Makes consecutive views of 4-byte elements over `buffer`, from its start. */
function viewsOf(buffer: ArrayBuffer): <T>(make: new (b: ArrayBuffer, at: number, length: number) => T, length: number) => T {
  let at = 0;
  return (make, length) => {
    const a = new make(buffer, at, length);
    at += 4 * length;
    return a;
  };
}

/** Empty columns for `count` sequences with `historyLength` tokens between them, in one buffer. */
function seqUpdate(count: number, historyLength: number): SeqUpdate {
  const view = viewsOf(new ArrayBuffer(4 * (11 * count + 1 + historyLength)));
  return {
    slots: view(Int32Array, count),
    temperature: view(Float32Array, count),
    topK: view(Int32Array, count),
    topP: view(Float32Array, count),
    minP: view(Float32Array, count),
    frequencyPenalty: view(Float32Array, count),
    presencePenalty: view(Float32Array, count),
    repetitionPenalty: view(Float32Array, count),
    seeds: view(Uint32Array, count),
    penaltyPromptLens: view(Int32Array, count),
    penaltyStarts: view(Int32Array, count + 1),
    penaltyTokens: view(Int32Array, historyLength),
  };
}

/** Writes sequence `s`'s values as entry `u` of the update; returns where its tokens end. */
function fill(c: SeqUpdate, u: number, s: Sequence, history: number): number {
  const sp = s.init.sampling;
  c.slots[u] = s.seqSlot;
  c.temperature[u] = sp.temperature;
  c.topK[u] = topKOf(sp.topK);
  c.topP[u] = sp.topP;
  c.minP[u] = sp.minP;
  c.frequencyPenalty[u] = sp.frequencyPenalty;
  c.presencePenalty[u] = sp.presencePenalty;
  c.repetitionPenalty[u] = sp.repetitionPenalty;
  c.seeds[u] = s.init.seed >>> 0;
  c.penaltyStarts[u] = history;
  // Prompt then output (after a preemption, the output so far as well): the engine adds each
  // token it samples from here on.
  if (keepsHistory(s)) {
    c.penaltyTokens.set(s.tokens(), history);
    history += s.tokenCount;
    c.penaltyPromptLens[u] = s.promptLength;
  }
  c.penaltyStarts[u + 1] = history;
  return history;
}

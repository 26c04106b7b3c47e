// The resident form of a step's sampling values and blocks: the engine keeps each sequence's
// values, block table and (when it samples with a penalty) its tokens and their counts, to which
// it adds every token it samples, in the sequence slot a batch fills once; later batches name
// only the slot and the blocks it gained. Decoding this way gives the tokens of sending every
// row's values, blocks and history each step (the samplers count that history themselves), and
// a batch that names a slot nobody filled, or fills one badly, is refused whole, leaving the
// table as it was.
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { SeqUpdate, StepBatch } from '../src/engine/types.js';
import { makeRandomCheckpoint } from '../src/model/demo.js';
import { SMALL_MODEL, addon, createEngine, makeBatch, openCheckpoint, prompt, tempDir, type SeqStep } from './engine-fixtures.js';

const tmp = tempDir('sequence-slots');
let perRow: number;
let resident: number;

beforeAll(() => {
  makeRandomCheckpoint(join(tmp.dir, 'base'), SMALL_MODEL, 5, 'BF16');
  const ckpt = openCheckpoint(join(tmp.dir, 'base'));
  perRow = createEngine(ckpt, { kvBlocks: 64, blockSize: 8 });
  resident = createEngine(ckpt, { kvBlocks: 64, blockSize: 8 });
});

afterAll(() => {
  addon.destroyEngine(perRow);
  addon.destroyEngine(resident);
  tmp.cleanup();
});

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
function residentForm(batch: StepBatch, slots: number[], fill: number[], sent: number[] = slots.map(() => 0)): StepBatch {
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

interface Req extends Omit<SeqStep, 'tokens' | 'cached' | 'blocks'> {
  prompt: number[];
  /** Its KV cache blocks are 4 block, 4 block + 1, ...: one of 8 tokens more whenever its context needs it. */
  block: number;
}

const BLOCK_SIZE = 8;

/** The blocks a request's context of `tokens` tokens takes. */
const blocksFor = (tokens: number): number => Math.ceil(tokens / BLOCK_SIZE);

/**
 * Samples `steps` tokens for each request, prefill first; the resident engine gets each
 * request's values in its first step only. Every decode step feeds the prompt's first token
 * again rather than the sampled one, so that an unpenalized greedy row keeps choosing the same
 * token and a penalty's history visibly steers the choice.
 */
function decode(reqs: Req[], slots: number[], steps: number): { perRow: number[][]; resident: number[][] } {
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
      const batch = makeBatch(seqs);
      // The resident engine holds the blocks of the step before.
      const before = reqs.map((r) => (k === 0 ? 0 : blocksFor(r.prompt.length + k - 1)));
      const result =
        form === 'perRow'
          ? addon.step(perRow, batch)
          : addon.step(resident, residentForm(batch, slots, k === 0 ? reqs.map((_, i) => i) : [], before));
      expect(result.errors).toBeNull();
      reqs.forEach((_, i) => out[i]!.push(result.tokens[i]!));
    }
  }
  return got;
}

describe('sampling slots', () => {
  it("give the tokens of sending every row's values and history each step, penalties included", () => {
    const reqs: Req[] = [
      { prompt: prompt(6, 11), block: 1, frequencyPenalty: 0.8, presencePenalty: 0.5, repetitionPenalty: 1.5 },
      { prompt: prompt(5, 12), block: 2, temperature: 0.8, seed: 7 },
      { prompt: prompt(4, 13), block: 3, temperature: 1.2, topK: 20, seed: 9, repetitionPenalty: 1.8 },
    ];
    const got = decode(reqs, [4, 0, 9], 7);
    expect(got.resident).toEqual(got.perRow);
    // The history matters: unpenalized, the greedy row repeats a token; penalized, it never does.
    const plain = decode([{ prompt: reqs[0]!.prompt, block: 4 }], [4], 7);
    expect(new Set(plain.perRow[0]).size).toBeLessThan(7);
    expect(new Set(got.resident[0]).size).toBe(7);
  });

  it('start from the new sequence when a slot is filled again', () => {
    const first = decode([{ prompt: prompt(6, 21), block: 5, repetitionPenalty: 2 }], [3], 4);
    expect(first.resident).toEqual(first.perRow);
    // Slot 3 now holds another sequence's values, with no penalty and a history of its own.
    const again = decode([{ prompt: prompt(6, 21), block: 6, presencePenalty: 1.5 }], [3], 5);
    expect(again.resident).toEqual(again.perRow);
  });

  it('refuse a batch that names an empty slot or fills one badly, and keep the table as it was', () => {
    const one = (slots: number[], fill: number[], over: Partial<SeqUpdate> = {}): StepBatch => {
      const b = residentForm(makeBatch([{ tokens: prompt(3, 31), cached: 0, blocks: [60] }]), slots, fill);
      if (b.seqUpdate) Object.assign(b.seqUpdate, over);
      return b;
    };
    expect(() => addon.step(resident, one([40], []))).toThrow(/batch\.seqSlots\[0\] is 40, a slot that holds no sequence/);
    expect(() => addon.step(resident, one([70000], [0]))).toThrow(/batch\.seqUpdate\.slots\[0\] is 70000, outside \[0, 65536\)/);
    expect(() => addon.step(resident, one([41], [0], { temperature: new Float32Array(2) }))).toThrow(
      /batch\.seqUpdate\.temperature has 2 elements, expected 1/,
    );
    expect(() => addon.step(resident, one([41], [0], { penaltyStarts: Int32Array.from([0, -1]) }))).toThrow(
      /batch\.seqUpdate\.penaltyStarts must not decrease/,
    );
    const badBlocks = one([41], [0]);
    badBlocks.blockAppendStarts = Int32Array.from([0, 2]);
    expect(() => addon.step(resident, badBlocks)).toThrow(/batch\.blockAppends has 1 elements, expected 2/);
    badBlocks.blockAppendStarts = Int32Array.from([0]);
    expect(() => addon.step(resident, badBlocks)).toThrow(/batch\.blockAppendStarts has 1 elements, expected 2/);
    // Slot 41 was never stored by the refused batches.
    expect(() => addon.step(resident, one([41], []))).toThrow(/seqSlots\[0\] is 41/);
    const missing = one([41], [0]);
    missing.seqSlots = Int32Array.from([41, 42]);
    expect(() => addon.step(resident, missing)).toThrow(/batch\.seqSlots has 2 elements, expected 1/);
  });

  it('fail only the row whose stored values are out of range, naming the value', () => {
    const b = residentForm(
      makeBatch([
        { tokens: prompt(3, 41), cached: 0, blocks: [61], temperature: Number.NaN },
        { tokens: prompt(3, 42), cached: 0, blocks: [62] },
      ]),
      [50, 51],
      [0, 1],
    );
    const r = addon.step(resident, b);
    expect(r.errors?.[0]).toMatch(/temperature must be a number >= 0, got nan/);
    expect(r.errors?.[1]).toBeNull();
    expect(r.tokens[1]).toBeGreaterThanOrEqual(0);
  });
});

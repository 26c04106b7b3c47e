// The resident form of a step's sampling values and blocks: the engine keeps each sequence's
// values, block table and (when it samples with a penalty) the counts of its tokens, to which
// it adds every token it samples, in the sequence slot a batch fills once; later batches name
// only the slot and the blocks it gained. Decoding this way gives the tokens of sending every
// row's values, blocks and history each step (the samplers count that history themselves), and
// a batch that names a slot nobody filled, or fills one badly, is refused whole, leaving the
// table as it was.
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { SeqUpdate, StepBatch } from '../src/engine/types.js';
import { makeRandomCheckpoint } from '../src/model/demo.js';
import { SMALL_MODEL, addon, createEngine, makeBatch, openCheckpoint, prompt, tempDir } from './engine-fixtures.js';
import { decode, residentForm, type EnginePair } from './sequence-slots-fixtures.js';

const tmp = tempDir('sequence-slots');
let perRow: number;
let resident: number;

beforeAll(() => {
  makeRandomCheckpoint(join(tmp.dir, 'base'), SMALL_MODEL, 5, 'BF16');
  const ckpt = openCheckpoint(join(tmp.dir, 'base'));
  perRow = createEngine(ckpt, { kvBlocks: 64, blockSize: 8 });
  resident = createEngine(ckpt, { kvBlocks: 64, blockSize: 8 });
});

const engines = (): EnginePair => ({ perRow, resident, blockSize: 8 });

afterAll(() => {
  addon.destroyEngine(perRow);
  addon.destroyEngine(resident);
  tmp.cleanup();
});

describe('sampling slots', () => {
  it("give the tokens of sending every row's values and history each step, penalties included", () => {
    const reqs: Req[] = [
      { prompt: prompt(6, 11), block: 1, frequencyPenalty: 0.8, presencePenalty: 0.5, repetitionPenalty: 1.5 },
      { prompt: prompt(5, 12), block: 2, temperature: 0.8, seed: 7 },
      { prompt: prompt(4, 13), block: 3, temperature: 1.2, topK: 20, seed: 9, repetitionPenalty: 1.8 },
    ];
    const got = decode(engines(), reqs, [4, 0, 9], 7);
    expect(got.resident).toEqual(got.perRow);
    // The history matters: unpenalized, the greedy row repeats a token; penalized, it never does.
    const plain = decode(engines(), [{ prompt: reqs[0]!.prompt, block: 4 }], [4], 7);
    expect(new Set(plain.perRow[0]).size).toBeLessThan(7);
    expect(new Set(got.resident[0]).size).toBe(7);
  });

  it('start from the new sequence when a slot is filled again', () => {
    const first = decode(engines(), [{ prompt: prompt(6, 21), block: 5, repetitionPenalty: 2 }], [3], 4);
    expect(first.resident).toEqual(first.perRow);
    // Slot 3 now holds another sequence's values, with no penalty and a history of its own.
    const again = decode(engines(), [{ prompt: prompt(6, 21), block: 6, presencePenalty: 1.5 }], [3], 5);
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

  it('fail only the rows whose stored penalty tokens fall outside the vocabulary, at every step they sample', () => {
    const vocab = SMALL_MODEL.vocab_size;
    const rows = (tokens: number[][]) =>
      makeBatch(
        tokens.map((penaltyTokens, i) => ({
          tokens: prompt(3, 51 + i),
          cached: 0,
          blocks: [55 + i],
          repetitionPenalty: 1.5,
          penaltyTokens,
          penaltyPromptLen: penaltyTokens.length,
        })),
      );
    const slots = [60, 61, 62];
    const filled = addon.step(
      resident,
      residentForm(
        rows([
          [5, vocab + 3, 2],
          [7, -1],
          [4, 6],
        ]),
        slots,
        [0, 1, 2],
      ),
    );
    const later = addon.step(resident, residentForm(rows([[], [], []]), slots, []));
    for (const r of [filled, later]) {
      expect(r.errors?.[0]).toMatch(new RegExp(`penalty token id ${vocab + 3} is outside the vocabulary \\[0, ${vocab}\\)`));
      expect(r.errors?.[1]).toMatch(/penalty token id -1 is outside the vocabulary/);
      expect(r.errors?.[2]).toBeNull();
      expect(r.tokens[2]).toBeGreaterThanOrEqual(0);
    }
  });
});

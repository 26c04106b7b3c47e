// The engine's reference and batch-invariance checks (engine.test.ts) on the trained demo model
// (models/demo) and its style adapters: six layers of trained bf16 weights rather than two of
// random ones. Skipped, with the reason in the suite's name, while models/demo does not exist.
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { AdapterWeights } from '../src/engine/types.js';
import { trainedDemo } from '../src/cli/demo-model.js';
import { loadAdapterWeights } from '../src/model/adapter.js';
import type { Checkpoint } from '../src/model/checkpoint.js';
import { trainedDemoDir } from '../src/paths.js';
import { addon, argmax, createEngine, drive, maxAbs, maxAbsDiff, openCheckpoint, prompt } from './engine-fixtures.js';
import { readWeights, referenceLogits } from './engine-reference.js';

const DIR = trainedDemoDir();
const PRESENT = existsSync(join(DIR, 'config.json'));
// float32 against float64, as in engine.test.ts (six layers here: measured about 3e-7 of the scale).
const TOLERANCE = 1e-4;

describe.skipIf(!PRESENT)(
  PRESENT ? `the engine on the trained demo model in ${DIR}` : `the engine on the trained demo model (skipped: ${DIR} is missing)`,
  () => {
    let ckpt: Checkpoint;
    /** The adapters in slots 0, 1, ... in the order of trainedDemo's list. */
    let adapters: AdapterWeights[];
    const handles: number[] = [];

    /** An engine with every demo adapter in its slot. */
    function engine(): number {
      const h = createEngine(ckpt, { loraSlots: adapters.length, maxLoraRank: Math.max(...adapters.map((a) => a.rank)), kvBlocks: 128 });
      handles.push(h);
      adapters.forEach((a, slot) => addon.loadLoraSlot(h, slot, a));
      return h;
    }

    beforeAll(() => {
      ckpt = openCheckpoint(DIR);
      adapters = trainedDemo(DIR).adapters.map((a) => loadAdapterWeights(a.path, ckpt.config).weights);
    });

    afterAll(() => {
      for (const h of handles) addon.destroyEngine(h);
    });

    it('gives every row of a base/adapter batch the float64 reference logits, at chunked prefill and at decode', () => {
      const { config } = ckpt;
      const vocab = config.vocabSize;
      expect(adapters.length).toBeGreaterThanOrEqual(2);
      const reqs = [
        { prompt: prompt(14, 1, vocab), slot: -1, chunks: [5, 9] },
        ...adapters.map((_, slot) => ({ prompt: prompt(9 + slot, 2 + slot, vocab), slot, join: slot % 2, chunks: [4, 5 + slot] })),
      ];
      const out = drive(
        engine(),
        reqs.map((r, i) => ({ ...r, blocks: Array.from({ length: 6 }, (_, k) => i * 6 + k), decodes: 3 })),
        vocab,
      );
      const weights = readWeights(ckpt);
      reqs.forEach((r, i) => {
        const lora = r.slot >= 0 ? adapters[r.slot] : undefined;
        out[i]!.logits.forEach((got, k) => {
          const context = [...r.prompt, ...out[i]!.tokens.slice(0, k)];
          const want = referenceLogits(config, weights, context, lora);
          expect(maxAbsDiff(got, Float32Array.from(want))).toBeLessThanOrEqual(TOLERANCE * maxAbs(got));
          expect(out[i]!.tokens[k]).toBe(argmax(got));
          // The adapter must matter, or the comparison proves nothing about it.
          if (k === 0 && lora !== undefined) {
            expect(maxAbsDiff(got, Float32Array.from(referenceLogits(config, weights, context)))).toBeGreaterThan(100 * TOLERANCE * maxAbs(got));
          }
        });
      });
      expect(maxAbs(out[0]!.logits[0]!)).toBeGreaterThan(1);
    });

    it('gives a request the same greedy tokens and bitwise logits alone and in a mixed batch', () => {
      const vocab = ckpt.config.vocabSize;
      const target = { prompt: prompt(13, 21, vocab), slot: 0, decodes: 8 };
      const alone = drive(engine(), [{ ...target, blocks: [0, 1, 2, 3, 4, 5] }], vocab)[0]!;
      const others = adapters.map((_, slot) => ({
        prompt: prompt(5 + 3 * slot, 30 + slot, vocab),
        slot,
        blocks: [40 + 6 * slot, 41 + 6 * slot, 42 + 6 * slot, 43 + 6 * slot, 44 + 6 * slot],
        join: slot % 3,
        decodes: 4 + slot,
      }));
      const mixed = drive(
        engine(),
        [
          { prompt: prompt(20, 22, vocab), slot: -1, blocks: [6, 7, 8, 9, 10, 11, 12], chunks: [7, 7, 6], decodes: 5 },
          { ...target, blocks: [30, 3, 17, 25, 1, 33], join: 1, chunks: [4, 9] },
          ...others,
        ],
        vocab,
      )[1]!;
      expect(mixed.tokens).toEqual(alone.tokens);
      expect(mixed.tokens).toHaveLength(9);
      mixed.logits.forEach((l, k) => expect(l).toEqual(alone.logits[k]));
    });
  },
);

// SGLang's multi-adapter batch scenarios on the demo model, with --max-loras-per-batch 2 so a
// batch naming two adapters and the base model must be split: test_lora_overlap_loading.py
// (test_mixed_batch: the same outputs with --enable-lora-overlap-loading as without) and the
// batch-splitting case of test_multi_lora_backend.py (test_ci_lora_models_batch_splitting,
// run_lora_batch_splitting_equivalence_test). SGLang compares by ROUGE-L and checks only that
// the outputs of different adapters differ; greedy CPU outputs are compared exactly here, each
// against the output its (prompt, adapter) gives alone.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { LocalTroupeEngine } from '../src/troupe.js';
import { appFor, generateIds, makeWorld, startEngine, type App, type World } from './adapter-fixtures.js';

// SGLang's TEST_MULTIPLE_BATCH_PROMPTS[:3].
const PROMPTS = ['AI is a field of computer science focused on', 'Computer science is the study of', 'Write a short story.'];
const MAX_NEW_TOKENS = 8;
// CI_MULTI_LORA_MODELS' case: two adapters, max_loaded_loras within twice max_loras_per_batch.
const ARGS = ['--max-loras-per-batch', '2', '--max-loaded-loras', '4'];

let world: World;
const engines: LocalTroupeEngine[] = [];
let plain: App;
let overlap: App;
/** Each (prompt, adapter)'s output alone, on the engine without overlap loading. */
const alone = new Map<string, number[]>();

beforeAll(async () => {
  world = makeWorld('sglang-batches');
  const lora = ['--lora-paths', `lora0=${world.demoA}`, `lora1=${world.demoB}`];
  const [a, b] = await Promise.all([startEngine(world, [...lora, ...ARGS]), startEngine(world, [...lora, ...ARGS, '--enable-lora-overlap-loading'])]);
  engines.push(a!, b!);
  plain = appFor(a!);
  overlap = appFor(b!);
  for (const prompt of PROMPTS) {
    for (const lora of [null, 'lora0', 'lora1']) alone.set(`${prompt}|${lora}`, (await generateIds(plain, [prompt], [lora], MAX_NEW_TOKENS))[0]!);
  }
}, 120_000);
afterAll(async () => {
  await Promise.all(engines.map((e) => e.close()));
  world?.cleanup();
});

const aloneFor = (prompts: string[], loras: Array<string | null>): number[][] => prompts.map((p, i) => alone.get(`${p}|${loras[i]}`)!);

describe('test_lora_overlap_loading.py', () => {
  // test_mixed_batch: each configuration of adapters over three prompts, with and without
  // overlap loading, gives the same outputs (and each the one its row gives alone).
  it('test_mixed_batch: overlap loading changes no output of mixed batches', async () => {
    const configs: Array<Array<string | null>> = [
      [null, 'lora0', 'lora1'],
      ['lora0', null, 'lora1'],
      ['lora0', 'lora1', null],
      ['lora1', 'lora0', 'lora1'],
    ];
    for (const loras of configs) {
      const without = await generateIds(plain, PROMPTS, loras, MAX_NEW_TOKENS);
      const withOverlap = await generateIds(overlap, PROMPTS, loras, MAX_NEW_TOKENS);
      expect(withOverlap, JSON.stringify(loras)).toEqual(without);
      expect(without, JSON.stringify(loras)).toEqual(aloneFor(PROMPTS, loras));
    }
  }, 120_000);
});

describe('test_multi_lora_backend.py', () => {
  // test_ci_lora_models_batch_splitting: one prompt three times, with more distinct adapters
  // (the base model counting as one) than a batch holds; outputs of different adapters differ.
  it('test_ci_lora_models_batch_splitting: batches split past max_loras_per_batch give each row its own output', async () => {
    const prompts = [PROMPTS[0]!, PROMPTS[0]!, PROMPTS[0]!];
    const cases: Array<Array<string | null>> = [
      [null, 'lora0', 'lora1'],
      ['lora0', null, 'lora1'],
      ['lora0', 'lora1', null],
      [null, 'lora0', null],
      ['lora0', 'lora1', 'lora0'],
      [null, null, null],
    ];
    for (const loras of cases) {
      for (const app of [plain, overlap]) {
        const outputs = await generateIds(app, prompts, loras, MAX_NEW_TOKENS);
        expect(outputs, JSON.stringify(loras)).toEqual(aloneFor(prompts, loras));
        if (new Set(loras).size >= 2) expect(new Set(outputs.map((o) => o.join())).size, JSON.stringify(loras)).toBeGreaterThan(1);
      }
    }
  }, 120_000);
});

// SGLang's dynamic LoRA update scenarios about the LoRA pool's shape
// (test/registered/lora/test_lora_update.py, TARGET_MODULE_TESTS and MAX_LORA_RANK_TESTS) on the
// demo model: a request naming an adapter never loaded is refused with "never been loaded", and
// loading one the pool cannot hold (rank or modules) with "incompatible", both as 400s.
import { afterAll, beforeAll, describe, it } from 'vitest';
import { makeWorld, type World } from './adapter-fixtures.js';
import { forward, load, runUpdateCase, StaticOutputs } from './sglang-lora-ops.js';

const ALL = ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'] as const;

let world: World;
let statics: StaticOutputs;
// nvidia/llama-3.1-nemoguard-8b-topic-control (every module) and
// algoprog/fact-generation-llama-3.1-8b-instruct-lora (no up_proj or down_proj).
let WIDE: string;
let NARROW: string;
// Ranks 4, 32 and 256 in SGLang's test, with --max-lora-rank 32; here 2, 8 and 16 with 8.
let R4: string;
let R32: string;
let R256: string;

beforeAll(() => {
  world = makeWorld('sglang-shapes');
  WIDE = world.adapter('wide', { rank: 8, modules: [...ALL] });
  NARROW = world.adapter('narrow', { rank: 8, modules: ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj'] });
  R4 = world.adapter('r2', { rank: 2, modules: [...ALL] });
  R32 = world.adapter('r8', { rank: 8, modules: [...ALL] });
  R256 = world.adapter('r16', { rank: 16, modules: [...ALL] });
  statics = new StaticOutputs(world, [WIDE, NARROW, R4, R32, R256]);
});
afterAll(async () => {
  await statics?.close();
  world?.cleanup();
});

describe('test_lora_update.py TARGET_MODULE_TESTS', () => {
  // TARGET_MODULE_TESTS[0] "Test explicitly specified lora-target-modules."
  it('explicitly specified lora-target-modules', async () => {
    await runUpdateCase(world, statics, {
      initial: [NARROW],
      args: ['--max-loras-per-batch', '3', '--lora-target-modules', 'all', '--max-lora-rank', '16'],
      ops: [forward(NARROW), forward(WIDE, { error: 'never been loaded' }), load(WIDE), forward([NARROW, WIDE, null])],
    });
  }, 120_000);

  // TARGET_MODULE_TESTS[1] "Test inferred lora-target-modules - start with larger adapter".
  it('inferred lora-target-modules, starting with the larger adapter', async () => {
    await runUpdateCase(world, statics, {
      initial: [WIDE],
      args: ['--max-loras-per-batch', '3', '--max-lora-rank', '16'],
      ops: [forward(WIDE), forward(NARROW, { error: 'never been loaded' }), load(NARROW), forward([NARROW, WIDE, null])],
    });
  }, 120_000);

  // TARGET_MODULE_TESTS[2] "Test inferred lora-target-modules - start with smaller adapter": the
  // pool holds only the smaller adapter's modules, so the larger one is incompatible.
  it('inferred lora-target-modules, starting with the smaller adapter', async () => {
    await runUpdateCase(world, statics, {
      initial: [NARROW],
      args: ['--max-loras-per-batch', '3', '--max-lora-rank', '16'],
      ops: [forward(NARROW), forward(WIDE, { error: 'never been loaded' }), load(WIDE, { error: 'incompatible' }), forward([NARROW, null])],
    });
  }, 120_000);
});

describe('test_lora_update.py MAX_LORA_RANK_TESTS', () => {
  // MAX_LORA_RANK_TESTS[0] "Test explicitly specified max-lora-rank."
  it('explicitly specified max-lora-rank', async () => {
    await runUpdateCase(world, statics, {
      initial: [R4],
      args: ['--max-loras-per-batch', '3', '--max-lora-rank', '8'],
      ops: [
        forward(R4),
        forward(R256, { error: 'never been loaded' }),
        forward(R32, { error: 'never been loaded' }),
        load(R32),
        forward([R32, R4, null]),
        load(R256, { error: 'incompatible' }),
        // A load that was refused leaves nothing to load again.
        forward(R256, { error: 'never been loaded' }),
        forward([R32, R4, null]),
      ],
    });
  }, 120_000);

  // MAX_LORA_RANK_TESTS[1] "test implicitly inferred max-lora-rank": the pool's rank is the
  // initial adapter's.
  it('implicitly inferred max-lora-rank', async () => {
    await runUpdateCase(world, statics, {
      initial: [R32],
      args: ['--max-loras-per-batch', '3'],
      ops: [
        forward(R32),
        load(R256, { error: 'incompatible' }),
        forward(R256, { error: 'never been loaded' }),
        load(R4),
        forward(R4),
        forward([R4, R32, null]),
      ],
    });
  }, 120_000);
});

// SGLang's adapter eviction scenarios on the demo model: the loaded set past --max-loaded-loras
// and pinning (test/registered/lora/test_lora_update.py, MAX_LOADED_LORAS_TESTS and
// EVICTION_TESTS), and pool-slot eviction keeping every adapter's outputs
// (test/registered/lora/test_lora_eviction.py).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { appFor, generateIds, makeWorld, post, startEngine, type World } from './adapter-fixtures.js';
import { forward, load, runUpdateCase, StaticOutputs, unload } from './sglang-lora-ops.js';

const ALL = ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'] as const;

let world: World;
let statics: StaticOutputs;
// Stand-ins for philschmid/...-text-to-sql-lora, nvidia/...-topic-control,
// pbevan11/...-ocr-correction and algoprog/fact-generation-...-lora.
let SQL: string;
let TOPIC: string;
let OCR: string;
let FACT: string;

beforeAll(() => {
  world = makeWorld('sglang-eviction');
  SQL = world.demoB;
  TOPIC = world.adapter('topic', { rank: 4, modules: [...ALL] });
  OCR = world.adapter('ocr', { rank: 8, modules: [...ALL] });
  FACT = world.adapter('fact', { rank: 8, modules: ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj'] });
  statics = new StaticOutputs(world, [SQL, TOPIC, OCR, FACT]);
});
afterAll(async () => {
  await statics?.close();
  world?.cleanup();
});

describe('test_lora_update.py MAX_LOADED_LORAS_TESTS', () => {
  // MAX_LOADED_LORAS_TESTS[0] "Test max_loaded_loras limit as well as implicit eviction and
  // reloading": loading past the limit evicts the least recently used adapter from the loaded
  // set, a request naming an evicted adapter loads it again (evicting another), and an adapter
  // a request names is never the one evicted for it.
  it('max_loaded_loras limit with implicit eviction and reloading', async () => {
    await runUpdateCase(world, statics, {
      initial: [SQL],
      args: ['--max-loras-per-batch', '2', '--max-loaded-loras', '2'],
      ops: [
        load(TOPIC),
        load(OCR, { evicts: [SQL] }),
        forward([TOPIC, SQL], { evicts: [OCR] }),
        unload(SQL),
        forward([TOPIC]),
        load(SQL),
        forward([TOPIC, OCR], { evicts: [SQL] }),
        unload(TOPIC),
        load(FACT),
        forward([TOPIC, SQL], { evicts: [OCR, FACT] }),
      ],
    });
  }, 120_000);

  // MAX_LOADED_LORAS_TESTS[1] "Test implicit eviction and reloading with pinned LoRA adapters":
  // a pinned adapter is never evicted, and pinning every slot is refused ("starvation").
  it('implicit eviction and reloading with pinned adapters', async () => {
    await runUpdateCase(world, statics, {
      initial: [{ lora_name: SQL, lora_path: SQL, pinned: true }],
      args: ['--max-loras-per-batch', '2', '--max-loaded-loras', '2'],
      ops: [
        load(TOPIC),
        load(OCR, { evicts: [TOPIC] }),
        forward([SQL, TOPIC], { evicts: [OCR] }),
        load({ name: OCR, pinned: true }, { error: 'starvation' }),
        unload(SQL),
        load({ name: OCR, pinned: true }),
        forward([TOPIC, OCR]),
      ],
    });
  }, 120_000);
});

describe('test_lora_update.py EVICTION_TESTS', () => {
  // EVICTION_TESTS[0] "dynamic lora update with evictions": pins are limited to
  // max_loras_per_batch - 1, and adapters share the one slot left to them batch after batch.
  it('dynamic lora update with evictions', async () => {
    await runUpdateCase(world, statics, {
      args: ['--enable-lora', '--max-loras-per-batch', '2', '--max-lora-rank', '16', '--lora-target-modules', 'all'],
      ops: [
        load({ name: 'lora1', path: SQL, pinned: true }),
        load({ name: 'lora2', path: TOPIC, pinned: true }, { error: 'starvation' }),
        load({ name: 'lora2', path: TOPIC }),
        load({ name: 'lora3', path: OCR }),
        unload('lora1'),
        unload('lora3'),
        load({ name: 'lora3', path: OCR, pinned: true }),
        load({ name: 'lora1', path: SQL, pinned: true }, { error: 'starvation' }),
        load({ name: 'lora1', path: SQL }),
        forward(['lora1', 'lora2']),
        forward(['lora1', 'lora3']),
        forward(['lora1', 'lora2']),
        forward(['lora1', 'lora2', null]),
      ],
    });
  }, 120_000);
});

describe('test_lora_eviction.py', () => {
  // SGLang's eviction prompts: a general one and a SQL instruction.
  const PROMPTS = [
    'AI is a field of computer science focused on',
    '### Instruction:\nCompose a SQL query that uses the following table: users, and returns the user_id and name of all users ' +
      "whose name that does not have a duplicate in the table.\n### Response:\nSELECT user_id, name FROM users WHERE name LIKE 'A%';",
  ];
  // valadapt-llama-3.1-8B-it-chinese (q and v only) and the SQL adapter (every module).
  const paths = (): string[] => [world.demoA, SQL];
  const ARGS = ['--enable-lora', '--max-loras-per-batch', '1', '--max-lora-rank', '16', '--lora-target-modules', 'all'];

  /**
   * SGLang's _run_test: every (adapter, prompt) alone, in order (or reversed), `repeat` times;
   * with one slot each adapter evicts the other. Outputs must match the first ones seen.
   */
  async function runSequence(history: Map<string, number[]>, o: { reverse?: boolean; repeat?: number; reuseName?: boolean }): Promise<void> {
    const ordered = o.reverse ? [...paths()].reverse() : paths();
    const initial = o.reuseName ? [] : ['--lora-paths', ...paths()];
    const engine = await startEngine(world, [...initial, ...ARGS]);
    try {
      const app = appFor(engine);
      for (let i = 0; i < (o.repeat ?? 2); i++) {
        for (const path of ordered) {
          const name = o.reuseName ? 'lora' : path;
          if (o.reuseName) expect((await post(app, '/load_lora_adapter', { lora_name: name, lora_path: path })).status).toBe(200);
          for (const prompt of PROMPTS) {
            const [ids] = await generateIds(app, [prompt], [name], 8);
            const key = `${path}|${prompt}`;
            const before = history.get(key);
            if (before) expect(ids, `${key} on repeat ${i}`).toEqual(before);
            else history.set(key, ids!);
          }
          if (o.reuseName) expect((await post(app, '/unload_lora_adapter', { lora_name: name })).status).toBe(200);
        }
      }
    } finally {
      await engine.close();
    }
  }

  // test_lora_eviction.py, test_lora_eviction_with_different_target_modules.
  it("evicting adapters with different target modules keeps each adapter's outputs", async () => {
    const history = new Map<string, number[]>();
    await runSequence(history, {});
    await runSequence(history, { reverse: true });
    expect(history.size).toBe(4);
  }, 120_000);

  // test_lora_eviction.py, test_lora_eviction_with_reused_lora_name: one name loaded and
  // unloaded with each adapter in turn gives the outputs each adapter gives under its own name.
  it("reusing one name for different adapters gives each adapter's outputs", async () => {
    const history = new Map<string, number[]>();
    await runSequence(history, { reuseName: true, repeat: 1 });
    await runSequence(history, { reuseName: false, repeat: 1 });
    expect(history.size).toBe(4);
  }, 120_000);
});

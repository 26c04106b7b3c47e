// SGLang's dynamic LoRA update scenarios (test/registered/lora/test_lora_update.py, BASIC_TESTS
// and test_v1_models_endpoint_with_lora) on the demo model: three adapters of different ranks and
// modules stand for SGLang's Llama adapters, named by their directories as SGLang names them.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { appFor, post, startEngine, makeWorld, type World } from './adapter-fixtures.js';
import { forward, load, runUpdateCase, StaticOutputs, unload } from './sglang-lora-ops.js';

let world: World;
let statics: StaticOutputs;
// Stand-ins for philschmid/code-llama-3-1-8b-text-to-sql-lora, Nutanix/..._lora_4_alpha_16 (or
// nvidia/llama-3.1-nemoguard-8b-topic-control) and pbevan11/llama-3.1-8b-ocr-correction.
let SQL: string;
let TOPIC: string;
let OCR: string;

beforeAll(() => {
  world = makeWorld('sglang-update');
  SQL = world.demoB; // rank 16, every module
  TOPIC = world.adapter('topic', { rank: 4, modules: ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj'] });
  OCR = world.adapter('ocr', { rank: 8, modules: ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'] });
  statics = new StaticOutputs(world, [SQL, TOPIC, OCR]);
});
afterAll(async () => {
  await statics?.close();
  world?.cleanup();
});

describe('test_lora_update.py BASIC_TESTS', () => {
  // test_lora_update.py, BASIC_TESTS[0] "dynamic lora update with initial lora_paths": the three
  // --lora-paths forms; an adapter unloaded and then named by a request is loaded again, after
  // which loading it explicitly is refused as already loaded.
  it('dynamic lora update with initial lora_paths', async () => {
    await runUpdateCase(world, statics, {
      initial: [SQL, `${TOPIC}=${TOPIC}`, { lora_name: OCR, lora_path: OCR, pinned: false }],
      args: ['--max-loras-per-batch', '3'],
      ops: [
        load(SQL, { error: 'already loaded' }),
        unload(SQL),
        load(SQL),
        forward([SQL, TOPIC, OCR]),
        unload(TOPIC),
        unload(OCR),
        forward(SQL),
        forward(TOPIC),
        forward(OCR),
        load(TOPIC, { error: 'already loaded' }),
        load(OCR, { error: 'already loaded' }),
        forward([SQL, TOPIC, OCR]),
        unload(SQL),
        forward(SQL),
        forward([TOPIC, OCR]),
        unload(TOPIC),
        unload(OCR),
        forward(TOPIC),
        forward(OCR),
        forward(null),
      ],
    });
  }, 120_000);

  // test_lora_update.py, BASIC_TESTS[1] "dynamic lora update without initial lora_paths".
  it('dynamic lora update without initial lora_paths', async () => {
    await runUpdateCase(world, statics, {
      args: ['--enable-lora', '--max-lora-rank', '16', '--lora-target-modules', 'all', '--max-loras-per-batch', '4'],
      ops: [
        load(SQL),
        load(TOPIC),
        load(OCR),
        load(SQL, { error: 'already loaded' }),
        unload(SQL),
        load(SQL),
        forward([SQL, TOPIC, OCR, null]),
        unload(SQL),
        forward(SQL),
        forward([null, TOPIC, OCR, null]),
        unload(TOPIC),
        unload(OCR),
        forward(TOPIC),
        forward(OCR),
        forward(null),
        load(SQL, { error: 'already loaded' }),
        load(TOPIC, { error: 'already loaded' }),
        load(OCR, { error: 'already loaded' }),
        forward([SQL, TOPIC, OCR, null]),
      ],
    });
  }, 120_000);
});

// test_lora_update.py, test_v1_models_endpoint_with_lora: /v1/models lists the base model (no
// parent) and each loaded adapter with id = its name, root = its path and the base as parent.
describe('test_lora_update.py test_v1_models_endpoint_with_lora', () => {
  it('lists the base model, then each loaded adapter by name, following loads and unloads', async () => {
    const engine = await startEngine(world, ['--enable-lora', '--max-lora-rank', '16', '--lora-target-modules', 'all', '--max-loras-per-batch', '2']);
    try {
      const app = appFor(engine);
      const models = async (): Promise<Array<Record<string, unknown>>> => {
        const body = await (await app.request('/v1/models')).json();
        expect(body.object).toBe('list');
        return body.data;
      };
      const only = await models();
      expect(only).toHaveLength(1);
      expect(only[0]).toMatchObject({ id: 'demo', object: 'model', root: 'demo', parent: null, max_model_len: 1024 });

      expect((await post(app, '/load_lora_adapter', { lora_name: 'adapter1', lora_path: SQL })).status).toBe(200);
      const one = (await models()).filter((m) => m.parent);
      expect(one).toEqual([expect.objectContaining({ id: 'adapter1', object: 'model', root: SQL, parent: 'demo', max_model_len: null })]);

      expect((await post(app, '/load_lora_adapter', { lora_name: 'adapter2', lora_path: TOPIC })).status).toBe(200);
      const two = await models();
      expect(two).toHaveLength(3);
      expect(new Set(two.filter((m) => m.parent).map((m) => m.id))).toEqual(new Set(['adapter1', 'adapter2']));

      expect((await post(app, '/unload_lora_adapter', { lora_name: 'adapter1' })).status).toBe(200);
      const left = await models();
      expect(left).toHaveLength(2);
      expect(left.filter((m) => m.parent).map((m) => m.id)).toEqual(['adapter2']);
    } finally {
      await engine.close();
    }
  }, 120_000);
});

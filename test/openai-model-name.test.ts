// The OpenAI `model` field and lora_path, read as SGLang reads them
// (python/sglang/srt/entrypoints/openai/serving_base.py, OpenAIServingBase._parse_model_parameter
// and _resolve_lora_path), the same on /v1/completions and /v1/chat/completions: both parts of
// "<served>:<adapter>" trimmed, lora_path one adapter for every prompt or a list with one per
// prompt (every choice of a prompt on its adapter), and the adapter in model winning.
import { beforeEach, describe, expect, it } from 'vitest';
import type { EchoEngine } from './http-echo-engine.js';
import { echoApp, expectOpenAiError, postTo } from './openai-fixtures.js';

let engine: EchoEngine;
let post: ReturnType<typeof postTo>;

beforeEach(() => {
  const made = echoApp();
  engine = made.engine;
  engine.adapterPaths.set('demo-b', '/models/demo-b');
  post = postTo(made.app);
});

const USER = [{ role: 'user', content: 'hi' }];
const routes: Array<[string, Record<string, unknown>]> = [
  ['/v1/completions', { prompt: 'x' }],
  ['/v1/chat/completions', { messages: USER }],
];

describe('the model field', () => {
  it('trims both parts of "<served>:<adapter>" on both routes, and echoes the model as given', async () => {
    const cases: Array<[string, string | null]> = [
      [' demo : demo-a ', 'demo-a'],
      ['demo:   ', null],
      ['  demo:demo-b', 'demo-b'],
      [' demo ', null],
    ];
    for (const [path, body] of routes) {
      for (const [model, lora] of cases) {
        const res = await post(path, { ...body, model });
        expect(res.status, `${path} ${JSON.stringify(model)}`).toBe(200);
        expect((await res.json()).model).toBe(model);
        expect(engine.requests.at(-1)!.lora).toBe(lora);
      }
    }
  });

  it('answers 404 naming the model when the served name does not match after trimming, and 400 for an adapter never loaded', async () => {
    for (const [path, body] of routes) {
      await expectOpenAiError(await post(path, { ...body, model: 'dem o:demo-a' }), 404, 'model', 'does not exist');
      // The engine refuses it, with SGLang's words and status.
      await expectOpenAiError(await post(path, { ...body, model: ' demo : ghost ' }), 400, null, "has never been loaded: 'ghost'");
    }
  });
});

describe('lora_path as a list', () => {
  it('runs each completions prompt on its own adapter, every choice of it too', async () => {
    const res = await post('/v1/completions', { model: 'demo', prompt: ['a', 'b'], n: 2, lora_path: ['demo-a', null] });
    expect(res.status).toBe(200);
    const body = await res.json();
    expect(body.choices.map((c: { text: string }) => c.text)).toEqual([
      '[demo-a] a -> ABC',
      '[demo-a] a -> ABC',
      '[base] b -> ABC',
      '[base] b -> ABC',
    ]);
    expect(engine.requests.map((r) => r.lora)).toEqual(['demo-a', 'demo-a', null, null]);
  });

  it('takes a list of one on chat, which has one prompt', async () => {
    const res = await post('/v1/chat/completions', { model: 'demo', messages: USER, lora_path: ['demo-b'] });
    expect(res.status).toBe(200);
    expect(engine.requests[0]!.lora).toBe('demo-b');
  });

  it('lets an adapter in model win over the list', async () => {
    expect((await post('/v1/completions', { model: 'demo:demo-b', prompt: ['a', 'b'], lora_path: ['demo-a', 'ghost', null] })).status).toBe(200);
    expect(engine.requests.map((r) => r.lora)).toEqual(['demo-b', 'demo-b']);
  });

  it('refuses a list of the wrong length and a wrong type naming lora_path, and an adapter never loaded', async () => {
    await expectOpenAiError(
      await post('/v1/completions', { model: 'demo', prompt: ['a', 'b'], lora_path: ['demo-a'] }),
      400,
      'lora_path',
      'list of 1',
      '2 prompts',
    );
    await expectOpenAiError(
      await post('/v1/chat/completions', { model: 'demo', messages: USER, lora_path: ['demo-a', null] }),
      400,
      'lora_path',
      'list of 2',
    );
    await expectOpenAiError(await post('/v1/completions', { model: 'demo', prompt: 'a', lora_path: [5] }), 400, 'lora_path', 'lora_path[0]');
    expect(engine.requests).toHaveLength(0);
    // An adapter never loaded is the engine's refusal, as in SGLang.
    await expectOpenAiError(
      await post('/v1/completions', { model: 'demo', prompt: ['a', 'b'], lora_path: [null, 'ghost'] }),
      400,
      null,
      "never been loaded: 'ghost'",
    );
  });
});

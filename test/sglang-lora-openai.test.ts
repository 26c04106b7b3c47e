// SGLang's OpenAI-compatible LoRA scenarios: the official client against a real server
// (test/registered/lora/test_lora_openai_compatible.py), with demo-a loaded as SGLang's
// "tool_calling" adapter, and the model-field parsing and adapter resolution cases
// (test/registered/lora/test_lora_openai_api.py) on the HTTP app over the echo engine.
// Where SGLang's test only checks that an answer came, these also check which adapter gave it.
import { join } from 'node:path';
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { LocalTroupeEngine } from '../src/troupe.js';
import { appFor, makeWorld, post, startEngine, type World } from './adapter-fixtures.js';
import { useDemoServer } from './demo-server.js';
import { EchoEngine } from './http-echo-engine.js';
import { createApp } from '../src/http/app.js';

const demo = useDemoServer();
let client: OpenAI;
const USER = (content: string): OpenAI.Chat.ChatCompletionMessageParam[] => [{ role: 'user', content }];
/** SGLang's extra_body: fields the client does not know, sent as they are. */
type Extra<T> = T & { lora_path?: string | null };

beforeAll(async () => {
  await demo().engine.loadAdapter({ name: 'tool_calling', path: join(demo().dir, 'adapters', 'demo-a') });
  client = new OpenAI({ baseURL: `${demo().base}/v1`, apiKey: 'EMPTY', maxRetries: 0 });
});

const chat = async (model: string, content: string, extra: { lora_path?: string | null } = {}): Promise<string> => {
  const params: Extra<OpenAI.Chat.ChatCompletionCreateParamsNonStreaming> = {
    model,
    messages: USER(content),
    max_tokens: 12,
    temperature: 0,
    ...extra,
  };
  const res = await client.chat.completions.create(params);
  const text = res.choices[0]!.message.content;
  expect(text).not.toBeNull();
  return text!;
};
const ASK = 'What tools do you have available?';

describe('test_lora_openai_compatible.py TestLoRAOpenAICompatible', () => {
  // test_model_adapter_syntax: "<model>:<adapter>" picks the adapter.
  it('test_model_adapter_syntax: the adapter named in model answers', async () => {
    const viaModel = await chat('demo:tool_calling', ASK);
    expect(viaModel.length).toBeGreaterThan(0);
    expect(viaModel).not.toBe(await chat('demo', ASK));
  });

  // test_explicit_lora_path: lora_path in the body (SGLang's extra_body) picks it too.
  it('test_explicit_lora_path: lora_path gives the same answer as the model syntax', async () => {
    expect(await chat('demo', ASK, { lora_path: 'tool_calling' })).toBe(await chat('demo:tool_calling', ASK));
  });

  // test_priority_model_over_explicit: the adapter in model wins over lora_path (here they differ).
  it('test_priority_model_over_explicit: the adapter in model wins over lora_path', async () => {
    expect(await chat('demo:tool_calling', ASK, { lora_path: 'demo-b' })).toBe(await chat('demo:tool_calling', ASK));
  });

  // test_base_model_no_adapter.
  it('test_base_model_no_adapter: the served name alone is the base model', async () => {
    expect((await chat('demo', 'Hello, how are you?')).length).toBeGreaterThan(0);
  });

  // test_completions_api_with_adapter.
  it('test_completions_api_with_adapter: completions take the model syntax too', async () => {
    const res = await client.completions.create({ model: 'demo:tool_calling', prompt: ASK, max_tokens: 12, temperature: 0 });
    const base = await client.completions.create({ model: 'demo', prompt: ASK, max_tokens: 12, temperature: 0 });
    expect(res.choices[0]!.text.length).toBeGreaterThan(0);
    expect(res.choices[0]!.text).not.toBe(base.choices[0]!.text);
  });

  // test_streaming_with_adapter: the streamed content is the non-streamed answer.
  it('test_streaming_with_adapter: a stream on the adapter carries its answer', async () => {
    const stream = await client.chat.completions.create({
      model: 'demo:tool_calling',
      messages: USER(ASK),
      max_tokens: 12,
      temperature: 0,
      stream: true,
    });
    let collected = '';
    for await (const chunk of stream) collected += chunk.choices[0]?.delta.content ?? '';
    expect(collected).toBe(await chat('demo:tool_calling', ASK));
  });

  // test_multiple_adapters: an adapter and the base model in sequence.
  it('test_multiple_adapters: the adapter, then the base model', async () => {
    const tool = await chat('demo:tool_calling', ASK);
    const base = await chat('demo', 'Hello, how are you?');
    expect(tool.length).toBeGreaterThan(0);
    expect(base.length).toBeGreaterThan(0);
  });
});

describe('test_lora_openai_compatible.py TestLoRAEdgeCases', () => {
  it('test_model_with_colon_no_adapter: "<model>:" is the base model', async () => {
    expect(await chat('demo:', 'Hello!')).toBe(await chat('demo', 'Hello!'));
  });

  it('test_explicit_lora_path_none: lora_path null is the base model', async () => {
    expect(await chat('demo', 'Hello!', { lora_path: null })).toBe(await chat('demo', 'Hello!'));
  });

  it("test_invalid_adapter_name: an adapter never loaded is a 400 with SGLang's words", async () => {
    const err = await chat('demo:nonexistent', 'Hello!').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(OpenAI.BadRequestError);
    expect((err as Error).message).toContain("has never been loaded: 'nonexistent'");
  });
});

describe('test_lora_openai_compatible.py TestLoRADisabledError', () => {
  let world: World;
  let engine: LocalTroupeEngine;
  let plain: OpenAI;
  let app: ReturnType<typeof appFor>;
  beforeAll(async () => {
    world = makeWorld('sglang-openai-plain');
    engine = await startEngine(world, []);
    app = appFor(engine);
    plain = new OpenAI({
      baseURL: 'http://localhost/v1',
      apiKey: 'EMPTY',
      maxRetries: 0,
      fetch: (url, init) => Promise.resolve(app.request(String(url), init)),
    });
  }, 120_000);
  afterAll(async () => {
    await engine?.close();
    world?.cleanup();
  });

  // test_lora_disabled_error; the message names the adapter and --enable-lora as SGLang's does
  // (test_lora_openai_api.py, TestValidateLoraEnabled).
  it('test_lora_disabled_error: naming an adapter on a server without LoRA says LoRA is not enabled', async () => {
    const err = await plain.chat.completions.create({ model: 'demo:tool_calling', messages: USER(ASK), max_tokens: 4 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(OpenAI.BadRequestError);
    const message = (err as Error).message;
    expect(message).toContain("LoRA adapter 'tool_calling' was requested, but LoRA is not enabled");
    expect(message).toContain('--enable-lora');
    const ok = await plain.chat.completions.create({ model: 'demo', messages: USER('Hello!'), max_tokens: 4 });
    expect(ok.choices[0]!.message.content).not.toBeNull();
  });

  // SGLang's load_lora_adapter and unload_lora_adapter refuse the same way, with 400.
  it('loading or unloading an adapter on a server without LoRA is a 400 saying LoRA is not enabled', async () => {
    for (const [path, body] of [
      ['/load_lora_adapter', { lora_name: 'x', lora_path: world.demoA }],
      ['/unload_lora_adapter', { lora_name: 'x' }],
    ] as const) {
      const { status, json } = await post(app, path, body);
      expect(status, path).toBe(400);
      expect(json).toMatchObject({ success: false, loaded_adapters: {} });
      expect(json.error_message, path).toMatch(/^LoRA is not enabled\. Please set `--enable-lora` to enable LoRA/);
    }
  });
});

describe('test_lora_openai_api.py', () => {
  /** The adapter each prompt of a completions request ran on, on the echo engine serving `served`. */
  async function resolved(served: string, body: Record<string, unknown>): Promise<{ status: number; loras: Array<string | null> }> {
    const engine = new EchoEngine();
    for (const n of [
      'sql-expert',
      'python-expert',
      'adapter-name',
      'adapter:extra',
      'adapter1',
      'adapter2',
      'other-adapter',
      'preferred-adapter',
      'adapter-名前',
      'adapter_v2.1-final',
    ]) {
      engine.adapterPaths.set(n, `/adapters/${n}`);
    }
    const app = createApp(engine, { servedModelName: served });
    const res = await app.request('/v1/completions', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ prompt: 'x', max_tokens: 1, ...body }),
    });
    return { status: res.status, loras: engine.requests.map((r) => r.lora) };
  }

  it('TestParseModelParameter: split at the first colon, both parts trimmed, an empty adapter is none', async () => {
    expect(await resolved('llama-3.1-8B', { model: 'llama-3.1-8B' })).toEqual({ status: 200, loras: [null] });
    expect(await resolved('llama-3.1-8B', { model: 'llama-3.1-8B:sql-expert' })).toEqual({ status: 200, loras: ['sql-expert'] });
    expect(await resolved('meta-llama/Llama-3.1-8B-Instruct', { model: 'meta-llama/Llama-3.1-8B-Instruct:adapter-name' })).toEqual({
      status: 200,
      loras: ['adapter-name'],
    });
    expect(await resolved('model', { model: 'model:adapter:extra' })).toEqual({ status: 200, loras: ['adapter:extra'] });
    expect(await resolved('model-name', { model: ' model-name : adapter-name ' })).toEqual({ status: 200, loras: ['adapter-name'] });
    expect(await resolved('model-name', { model: 'model-name:' })).toEqual({ status: 200, loras: [null] });
    expect(await resolved('model-name', { model: 'model-name:   ' })).toEqual({ status: 200, loras: [null] });
  });

  it('TestResolveLoraPath: the adapter in model wins over lora_path, a string or a list', async () => {
    expect(await resolved('model', { model: 'model:sql-expert' })).toEqual({ status: 200, loras: ['sql-expert'] });
    expect(await resolved('model-name', { model: 'model-name', lora_path: 'python-expert' })).toEqual({ status: 200, loras: ['python-expert'] });
    expect(await resolved('model', { model: 'model:sql-expert', lora_path: 'python-expert' })).toEqual({ status: 200, loras: ['sql-expert'] });
    const three = { prompt: ['a', 'b', 'c'] };
    expect(await resolved('model-name', { ...three, model: 'model-name', lora_path: ['adapter1', 'adapter2', null] })).toEqual({
      status: 200,
      loras: ['adapter1', 'adapter2', null],
    });
    expect(await resolved('model', { prompt: ['a', 'b'], model: 'model:sql-expert', lora_path: ['adapter1', 'adapter2'] })).toEqual({
      status: 200,
      loras: ['sql-expert', 'sql-expert'],
    });
    expect(await resolved('org/model-v2.1', { model: 'org/model-v2.1:adapter-name', lora_path: 'other-adapter' })).toEqual({
      status: 200,
      loras: ['adapter-name'],
    });
  });

  it('TestIntegrationScenarios and TestEdgeCases: batches, lists with nulls, unicode and special names', async () => {
    expect(
      await resolved('meta-llama/Llama-3.1-8B', {
        prompt: ['a', 'b', 'c'],
        model: 'meta-llama/Llama-3.1-8B',
        lora_path: ['sql-expert', 'python-expert', null],
      }),
    ).toEqual({ status: 200, loras: ['sql-expert', 'python-expert', null] });
    expect(
      await resolved('meta-llama/Llama-3.1-8B', {
        prompt: ['a', 'b'],
        model: 'meta-llama/Llama-3.1-8B:preferred-adapter',
        lora_path: ['adapter1', 'adapter2'],
      }),
    ).toEqual({ status: 200, loras: ['preferred-adapter', 'preferred-adapter'] });
    expect(await resolved('model-name', { prompt: ['a', 'b'], model: 'model-name', lora_path: [null, 'adapter2'] })).toEqual({
      status: 200,
      loras: [null, 'adapter2'],
    });
    expect(await resolved('model-name', { prompt: ['a', 'b'], model: 'model-name', lora_path: [null, null] })).toEqual({
      status: 200,
      loras: [null, null],
    });
    expect(await resolved('model', { model: 'model:adapter-名前' })).toEqual({ status: 200, loras: ['adapter-名前'] });
    expect(await resolved('model', { model: 'model:adapter_v2.1-final' })).toEqual({ status: 200, loras: ['adapter_v2.1-final'] });
    expect(await resolved('model', { model: 'model:adapter-name', lora_path: null })).toEqual({ status: 200, loras: ['adapter-name'] });
  });

  // Deliberate differences: troupe checks the served model name (SGLang takes any) and that a
  // lora_path list has one entry per prompt, and refuses an empty adapter name.
  it('TestEdgeCases where troupe is stricter: an empty or other model name is a 404, an empty list or name a 400', async () => {
    expect((await resolved('model-name', { model: '' })).status).toBe(404);
    expect((await resolved('model-name', { model: ':' })).status).toBe(404);
    expect((await resolved('model-name', { model: 'model-name', lora_path: [] })).status).toBe(400);
    expect((await resolved('model-name', { model: 'model-name', lora_path: '' })).status).toBe(400);
  });
});

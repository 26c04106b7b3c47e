// The OpenAI routes against the real engine on the demo model, over a real socket: adapters as
// models, agreement with /generate, streaming, n, errors, and a cancelled stream freeing its
// request, KV blocks and adapter reference.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { join } from 'node:path';
import { expectOpenAiError, sseEvents } from './openai-fixtures.js';
import { startDemoServer, type DemoServer } from './demo-server.js';

let demo: DemoServer;
let base = '';
let engine: DemoServer['engine'];
const PROMPT = 'List 3 countries and their capitals.';

beforeAll(async () => {
  demo = await startDemoServer();
  base = demo.base;
  engine = demo.engine;
});

afterAll(async () => {
  await demo?.close();
});

const post = (path: string, body: unknown, signal?: AbortSignal): Promise<Response> =>
  fetch(`${base}${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body), signal });

const GREEDY = { max_tokens: 8, temperature: 0, ignore_eos: true };

describe('OpenAI API on the demo model', () => {
  it('completions: an adapter named in model changes the output, and greedy output equals /generate', async () => {
    const texts: Record<string, string> = {};
    for (const [model, lora] of [
      ['demo', null],
      ['demo:demo-a', 'demo-a'],
      ['demo:demo-b', 'demo-b'],
    ] as const) {
      const res = await post('/v1/completions', { model, prompt: PROMPT, ...GREEDY });
      expect(res.status).toBe(200);
      const body = await res.json();
      expect(body.choices[0].finish_reason).toBe('length');
      expect(body.usage.completion_tokens).toBe(8);
      texts[model] = body.choices[0].text;
      const native = await (
        await post('/generate', {
          text: PROMPT,
          lora_path: lora,
          sampling_params: { max_new_tokens: 8, temperature: 0, ignore_eos: true },
        })
      ).json();
      expect(body.choices[0].text).toBe(native.text);
      expect(body.usage.prompt_tokens).toBe(native.meta_info.prompt_tokens);
    }
    expect(texts['demo:demo-a']).not.toBe(texts.demo);
    expect(texts['demo:demo-b']).not.toBe(texts.demo);
  });

  it('chat: renders the Llama 3 template, answers with usage, and streams the same text in SSE chunks ending in [DONE]', async () => {
    const messages = [
      { role: 'system', content: 'You are terse.' },
      { role: 'user', content: PROMPT },
    ];
    const res = await post('/v1/chat/completions', { model: 'demo:demo-a', messages, ...GREEDY, logprobs: true, top_logprobs: 2 });
    expect(res.status).toBe(200);
    const body = await res.json();
    expect(body.object).toBe('chat.completion');
    expect(body.choices[0].message.role).toBe('assistant');
    expect(body.usage.completion_tokens).toBe(8);
    expect(body.usage.prompt_tokens).toBeGreaterThan(20); // the template's headers count too
    const lp = body.choices[0].logprobs.content;
    expect(lp).toHaveLength(8);
    for (const t of lp) {
      expect(t.logprob).toBeLessThanOrEqual(0);
      expect(t.top_logprobs).toHaveLength(2);
      expect(t.top_logprobs[0].logprob).toBeGreaterThanOrEqual(t.logprob); // greedy: the chosen token is the top one
    }
    expect(lp.map((t: { token: string }) => t.token).join('')).toBe(body.choices[0].message.content);

    const stream = await post('/v1/chat/completions', {
      model: 'demo:demo-a',
      messages,
      ...GREEDY,
      stream: true,
      stream_options: { include_usage: true },
    });
    expect(stream.headers.get('content-type')).toContain('text/event-stream');
    const { events, done } = await sseEvents(stream);
    expect(done).toBe(true);
    const usage = events.pop()!;
    expect(usage.choices).toEqual([]);
    expect(usage.usage).toEqual({ ...body.usage, prompt_tokens_details: { cached_tokens: expect.any(Number) } });
    // The same messages a second time: their beginning comes from the prefix cache.
    expect(body.usage.prompt_tokens_details.cached_tokens).toBe(0);
    expect(usage.usage.prompt_tokens_details.cached_tokens).toBeGreaterThan(0);
    expect(events[0]!.choices[0].delta).toEqual({ role: 'assistant', content: '' });
    expect(events[events.length - 1]!.choices[0]).toMatchObject({ delta: {}, finish_reason: 'length' });
    expect(events.map((e) => e.choices[0].delta.content ?? '').join('')).toBe(body.choices[0].message.content);
  });

  // Negative and below-one values reward seen tokens, which moves even this model's peaked choices.
  it('penalties go through the scheduler to the native sampler', async () => {
    const plain = await (await post('/v1/completions', { model: 'demo', prompt: 'the the the the the the', ...GREEDY })).json();
    const res = await post('/v1/completions', {
      model: 'demo',
      prompt: 'the the the the the the',
      ...GREEDY,
      frequency_penalty: -2,
      presence_penalty: -2,
      repetition_penalty: 0.1,
    });
    expect(res.status).toBe(200);
    const body = await res.json();
    expect(body.usage.completion_tokens).toBe(8);
    expect(body.choices[0].text).not.toBe(plain.choices[0].text);
  });

  it('n = 2 gives two choices; seeded sampling repeats per choice', async () => {
    const req = { model: 'demo', prompt: PROMPT, max_tokens: 6, temperature: 1, seed: 11, n: 2, ignore_eos: true };
    const a = await (await post('/v1/completions', req)).json();
    const b = await (await post('/v1/completions', req)).json();
    expect(a.choices.map((c: { index: number }) => c.index)).toEqual([0, 1]);
    expect(a.choices.map((c: { text: string }) => c.text)).toEqual(b.choices.map((c: { text: string }) => c.text));
    expect(a.choices[0].text).not.toBe(a.choices[1].text);
    expect(a.usage.completion_tokens).toBe(12);
  });

  it("lists adapters as models and answers unknown adapters and too long prompts in OpenAI's error shape", async () => {
    const models = await (await fetch(`${base}/v1/models`)).json();
    expect(models.data.map((m: { id: string }) => m.id)).toEqual(['demo', 'demo-a', 'demo-b']);
    await expectOpenAiError(
      await post('/v1/chat/completions', { model: 'demo:nope', messages: [{ role: 'user', content: 'x' }] }),
      400,
      null,
      "never been loaded: 'nope'",
    );
    await expectOpenAiError(await post('/v1/completions', { model: 'demo', prompt: new Array(4100).fill(100) }), 400, 'prompt', 'context length');
    await expectOpenAiError(await post('/v1/completions', { model: 'demo', prompt: 'x', max_tokens: -1 }), 400, 'max_tokens', 'max_tokens');
  });

  it('a stream the client aborts after 3 chunks frees its request, its KV blocks and its adapter', async () => {
    await engine.loadAdapter({ name: 'demo-c', path: join(demo.dir, 'adapters', 'demo-b') });
    const before = await engine.stats();
    const controller = new AbortController();
    const res = await post(
      '/v1/completions',
      { model: 'demo:demo-c', prompt: PROMPT, max_tokens: 4000, ignore_eos: true, stream: true },
      controller.signal,
    );
    expect(res.status).toBe(200);
    const reader = res.body!.getReader();
    const decoder = new TextDecoder();
    let seen = 0;
    let buffered = '';
    while (seen < 3) {
      const { value, done } = await reader.read();
      expect(done).toBe(false);
      buffered += decoder.decode(value, { stream: true });
      seen = buffered.split('\n\n').filter((l) => l.startsWith('data: {')).length;
    }
    expect((await engine.stats()).running).toBe(1);
    controller.abort();
    await reader.cancel().catch(() => {});
    // The scheduler hears of the abort asynchronously; wait for it rather than for a fixed time.
    for (;;) {
      const s = await engine.stats();
      if (s.running === 0 && s.waiting === 0 && s.freeBlocks === before.freeBlocks) break;
      await new Promise((r) => setTimeout(r, 20));
    }
    // Unloading waits for every request using the adapter, so it returns only if the reference was dropped.
    await engine.unloadAdapter('demo-c');
    expect((await engine.adapters()).map((a) => a.name)).not.toContain('demo-c');
  });
});

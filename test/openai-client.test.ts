// The official `openai` client against a real troupe server on the demo model: completions and
// chat, streamed and not, the base model and both adapters, n, stop strings, usage, logprobs.
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startDemoServer, type DemoServer } from './demo-server.js';

let demo: DemoServer;
let client: OpenAI;
const PROMPT = 'List 3 countries and their capitals.';

beforeAll(async () => {
  demo = await startDemoServer();
  client = new OpenAI({ baseURL: `${demo.base}/v1`, apiKey: 'unused', maxRetries: 0 });
});

afterAll(async () => {
  await demo?.close();
});

describe('the openai client', () => {
  it('lists the base model and each adapter', async () => {
    const ids = [];
    for await (const m of client.models.list()) ids.push(m.id);
    expect(ids).toEqual(['demo', 'demo-a', 'demo-b']);
  });

  it('completes with the base model and both adapters, which differ', async () => {
    const texts = new Set<string>();
    for (const model of ['demo', 'demo:demo-a', 'demo:demo-b']) {
      const res = await client.completions.create({ model, prompt: PROMPT, max_tokens: 8, temperature: 0, logprobs: 2 });
      expect(res.choices).toHaveLength(1);
      expect(res.choices[0]!.finish_reason).toBe('length');
      expect(res.usage).toMatchObject({ completion_tokens: 8, total_tokens: res.usage!.prompt_tokens + 8 });
      expect(res.choices[0]!.logprobs!.token_logprobs).toHaveLength(8);
      texts.add(res.choices[0]!.text);
    }
    expect(texts.size).toBe(3);
  });

  it('streams a completion whose pieces join to the non-streamed text', async () => {
    const whole = await client.completions.create({ model: 'demo:demo-a', prompt: PROMPT, max_tokens: 12, temperature: 0 });
    const stream = await client.completions.create({ model: 'demo:demo-a', prompt: PROMPT, max_tokens: 12, temperature: 0, stream: true });
    let text = '';
    for await (const chunk of stream) text += chunk.choices[0]?.text ?? '';
    expect(text).toBe(whole.choices[0]!.text);
  });

  it('chats with n = 2, logprobs and usage', async () => {
    const res = await client.chat.completions.create({
      model: 'demo:demo-b',
      messages: [
        { role: 'system', content: 'Be brief.' },
        { role: 'user', content: PROMPT },
      ],
      max_tokens: 6,
      n: 2,
      seed: 7,
      logprobs: true,
      top_logprobs: 2,
    });
    expect(res.choices.map((c) => c.index)).toEqual([0, 1]);
    let tokens = 0;
    for (const c of res.choices) {
      expect(c.message.role).toBe('assistant');
      const n = c.logprobs!.content!.length;
      expect(n).toBeGreaterThan(0);
      expect(n).toBeLessThanOrEqual(6);
      expect(c.logprobs!.content![0]!.top_logprobs).toHaveLength(2);
      tokens += n;
    }
    // Usage counts every choice's tokens, one logprob entry per token.
    expect(res.usage!.completion_tokens).toBe(tokens);
  });

  it('streams chat with usage at the end', async () => {
    const stream = await client.chat.completions.create({
      model: 'demo',
      messages: [{ role: 'user', content: 'Hello' }],
      max_tokens: 8,
      temperature: 0,
      stream: true,
      stream_options: { include_usage: true },
    });
    let text = '';
    let usage = null;
    for await (const chunk of stream) {
      text += chunk.choices[0]?.delta?.content ?? '';
      if (chunk.usage) usage = chunk.usage;
    }
    const whole = await client.chat.completions.create({
      model: 'demo',
      messages: [{ role: 'user', content: 'Hello' }],
      max_tokens: 8,
      temperature: 0,
    });
    expect(text).toBe(whole.choices[0]!.message.content);
    expect(usage).toMatchObject({ completion_tokens: whole.usage!.completion_tokens });
  });

  it('stops at a stop string and says so', async () => {
    const free = await client.completions.create({ model: 'demo', prompt: PROMPT, max_tokens: 16, temperature: 0 });
    const text = free.choices[0]!.text;
    // Stop at a piece of the greedy text itself, so the stop is sure to be hit.
    const stop = text.slice(Math.floor(text.length / 2), Math.floor(text.length / 2) + 3);
    const res = await client.completions.create({ model: 'demo', prompt: PROMPT, max_tokens: 16, temperature: 0, stop: [stop] });
    expect(res.choices[0]!.finish_reason).toBe('stop');
    expect(res.choices[0]!.text).toBe(text.slice(0, text.indexOf(stop)));
  });

  it('reports an adapter never loaded as a 400 error, as SGLang does', async () => {
    const err = await client.completions.create({ model: 'demo:nope', prompt: PROMPT, max_tokens: 2 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(OpenAI.BadRequestError);
    expect((err as InstanceType<typeof OpenAI.BadRequestError>).message).toMatch(/has never been loaded: 'nope'/);
  });
});

import { beforeEach, describe, expect, it } from 'vitest';
import { TroupeError } from '../src/errors.js';
import { createApp } from '../src/http/app.js';
import { EchoEngine } from './http-echo-engine.js';

let engine: EchoEngine;
let app: ReturnType<typeof createApp>;

beforeEach(() => {
  engine = new EchoEngine();
  app = createApp(engine, { servedModelName: 'demo' });
});

const post = (body: unknown, signal?: AbortSignal): Promise<Response> =>
  Promise.resolve(app.request('/generate', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body), signal }));

/** Splits an SSE body into its data payloads, checking the framing SGLang uses. */
function events(raw: string): string[] {
  expect(raw.endsWith('data: [DONE]\n\n')).toBe(true);
  const parts = raw.split('\n\n');
  expect(parts.pop()).toBe('');
  return parts.map((p) => {
    expect(p.startsWith('data: ')).toBe(true);
    expect(p.includes('\n')).toBe(false);
    return p.slice('data: '.length);
  });
}

interface Item {
  text: string;
  output_ids: number[];
  index?: number;
  meta_info: { finish_reason: unknown; completion_tokens: number; output_token_logprobs?: unknown[] };
}

describe('POST /generate with stream', () => {
  it('sends cumulative items as SSE and ends with [DONE]', async () => {
    const res = await post({ text: 'hi', stream: true });
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toContain('text/event-stream');
    const data = events(await res.text());
    expect(data.at(-1)).toBe('[DONE]');
    const items = data.slice(0, -1).map((d) => JSON.parse(d) as Item);
    expect(items.map((i) => i.text)).toEqual(['[base] hi -> A', '[base] hi -> AB', '[base] hi -> ABC']);
    expect(items.map((i) => i.output_ids)).toEqual([[100], [100, 101], [100, 101, 102]]);
    expect(items.map((i) => i.meta_info.completion_tokens)).toEqual([1, 2, 3]);
    expect(items.map((i) => i.meta_info.finish_reason)).toEqual([null, null, { type: 'length', length: 128 }]);
    expect(items.every((i) => i.index === undefined)).toBe(true);
  });

  it('tags batch items with their index and keeps each prompt in order', async () => {
    const res = await post({ text: ['a', 'b'], lora_path: [null, 'demo-a'], stream: true });
    const items = events(await res.text())
      .slice(0, -1)
      .map((d) => JSON.parse(d) as Item);
    expect(items).toHaveLength(6);
    const byIndex = (i: number): string[] => items.filter((x) => x.index === i).map((x) => x.text);
    expect(byIndex(0)).toEqual(['[base] a -> A', '[base] a -> AB', '[base] a -> ABC']);
    expect(byIndex(1)).toEqual(['[demo-a] b -> A', '[demo-a] b -> AB', '[demo-a] b -> ABC']);
  });

  it('includes logprobs in streamed items with return_logprob', async () => {
    const res = await post({ text: 'a', stream: true, return_logprob: true });
    const items = events(await res.text())
      .slice(0, -1)
      .map((d) => JSON.parse(d) as Item);
    expect(items.at(-1)!.meta_info.output_token_logprobs).toHaveLength(3);
  });

  it('answers an unknown adapter with a JSON 400 before any event', async () => {
    const res = await post({ text: ['a', 'b'], lora_path: ['demo-a', 'ghost'], stream: true });
    expect(res.status).toBe(400);
    expect(res.headers.get('content-type')).toContain('application/json');
    const body = (await res.json()) as { error: { message: string } };
    expect(body.error.message).toContain('ghost');
    // The prompt that had started is stopped too.
    expect(engine.requests[0]!.signal?.aborted).toBe(true);
  });

  it('reports an error after streaming began as an error event, then [DONE]', async () => {
    engine.failWith = new TroupeError('unavailable', 'KV cache exhausted');
    const res = await post({ text: 'a', stream: true });
    expect(res.status).toBe(200);
    const data = events(await res.text());
    expect(data).toHaveLength(3);
    expect(JSON.parse(data[0]!).text).toBe('[base] a -> A');
    expect(JSON.parse(data[1]!)).toEqual({ error: { message: 'KV cache exhausted', type: 'server_error', code: 503 } });
    expect(data[2]).toBe('[DONE]');
  });

  it('stops the engine work when the client cancels the stream', async () => {
    engine.armHang();
    const res = await post({ text: ['a', 'b'], stream: true });
    const reader = res.body!.getReader();
    const first = new TextDecoder().decode((await reader.read()).value);
    expect(first.startsWith('data: {')).toBe(true);
    await engine.waiting;
    expect(engine.requests.every((r) => r.signal?.aborted === false)).toBe(true);
    await reader.cancel();
    expect(engine.requests.every((r) => r.signal?.aborted === true)).toBe(true);
  });
});

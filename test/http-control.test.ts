// SGLang's control routes on the echo engine (python/sglang/srt/entrypoints/http_server.py:
// abort_request, flush_cache, get_server_info): abort by rid or all, answered with an empty 200
// as SGLang does; a flush answered with SGLang's text, also when posted with no body the way
// SGLang's clients post it; the server's arguments under SGLang's names, never the API key.
import { readFileSync } from 'node:fs';
import { beforeEach, describe, expect, it } from 'vitest';
import { createApp } from '../src/http/app.js';
import { EchoEngine } from './http-echo-engine.js';

let engine: EchoEngine;
let app: ReturnType<typeof createApp>;

beforeEach(() => {
  engine = new EchoEngine();
  app = createApp(engine, { servedModelName: 'demo' });
});

const post = (path: string, body: unknown, signal?: AbortSignal): Promise<Response> =>
  Promise.resolve(app.request(path, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body), signal }));

describe('POST /abort_request', () => {
  it('ends a running request by its rid; the request answers with finish reason abort', async () => {
    engine.armHang();
    const pending = post('/generate', { text: 'x', rid: 'job-1' });
    await engine.waiting;
    const res = await post('/abort_request', { rid: 'job-1', abort_message: 'operator stop' });
    expect(res.status).toBe(200);
    expect(await res.text()).toBe('');
    const out = await (await pending).json();
    expect(out.meta_info.finish_reason).toEqual({ type: 'abort', message: 'operator stop' });
    expect(engine.aborts).toEqual([['job-1', 'operator stop']]);
  });

  it('answers 200 for an rid no request has, and ignores an empty rid, as SGLang does', async () => {
    expect((await post('/abort_request', { rid: 'nobody' })).status).toBe(200);
    expect((await post('/abort_request', {})).status).toBe(200);
    expect(engine.aborts).toEqual([['nobody', 'the request was aborted by /abort_request']]);
  });

  it('ends every request with abort_all', async () => {
    engine.armHang();
    const pending = post('/generate', { text: ['a', 'b'], rid: ['a', 'b'] });
    await engine.waiting;
    expect((await post('/abort_request', { abort_all: true })).status).toBe(200);
    const out = await (await pending).json();
    expect(out.map((o: { meta_info: { finish_reason: { type: string } } }) => o.meta_info.finish_reason.type)).toEqual(['abort', 'abort']);
    expect(engine.aborts[0]![0]).toBe('*');
  });

  it('refuses a malformed body naming the field', async () => {
    const res = await post('/abort_request', { rid: 5 });
    expect(res.status).toBe(400);
    expect((await res.json()).error.message).toContain('rid must be a string');
  });
});

describe('/flush_cache', () => {
  const REPLY =
    'Cache flushed.\nPlease check backend logs for more details. (When there are running or waiting requests, the operation will not be performed.)\n';

  it("answers SGLang's text to a bodiless POST without Content-Type (as SGLang's serving benchmark sends it) and to GET", async () => {
    const posted = await app.request('/flush_cache', { method: 'POST' });
    expect(posted.status).toBe(200);
    expect(await posted.text()).toBe(REPLY);
    const got = await app.request('/flush_cache');
    expect(got.status).toBe(200);
    expect(await got.text()).toBe(REPLY);
  });

  it('still refuses a bodiless POST elsewhere', async () => {
    expect((await app.request('/abort_request', { method: 'POST' })).status).toBe(415);
  });
});

describe('GET /get_server_info', () => {
  it("reports the server's arguments under SGLang's names, internal_states and the version, never the API key", async () => {
    const keyed = createApp(engine, {
      servedModelName: 'demo',
      apiKey: 'secret-key',
      maxLorasPerBatch: 3,
      loraPaths: [{ name: 'demo-a', path: '/models/demo-a' }],
    });
    expect((await keyed.request('/get_server_info')).status).toBe(401);
    const res = await keyed.request('/get_server_info', { headers: { authorization: 'Bearer secret-key' } });
    expect(res.status).toBe(200);
    const raw = await res.text();
    expect(raw).not.toContain('secret-key');
    const info = JSON.parse(raw);
    expect(info).not.toHaveProperty('api_key');
    expect(info).toMatchObject({
      model_path: '/models/demo',
      tokenizer_path: '/models/demo',
      served_model_name: 'demo',
      max_loras_per_batch: 3,
      lora_paths: [{ lora_name: 'demo-a', lora_path: '/models/demo-a', pinned: false }],
      tp_size: 1,
      port: 30000,
      max_total_num_tokens: 4096,
      device: 'cpu',
    });
    expect(info.internal_states).toHaveLength(1);
    expect(info.internal_states[0]).toMatchObject({ loaded_lora_adapters: 1 });
    const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string };
    expect(info.version).toBe(pkg.version);
  });
});

import { beforeEach, describe, expect, it } from 'vitest';
import { createApp } from '../src/http/app.js';
import { EchoEngine } from './http-echo-engine.js';

let engine: EchoEngine;
let app: ReturnType<typeof createApp>;

beforeEach(() => {
  engine = new EchoEngine();
  app = createApp(engine, { servedModelName: 'my-model' });
});

const post = (path: string, body: unknown): Promise<Response> =>
  Promise.resolve(
    app.request(path, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: typeof body === 'string' ? body : JSON.stringify(body),
    }),
  );

describe('LoRA adapter endpoints', () => {
  it('loads an adapter and lists every loaded one', async () => {
    const res = await post('/load_lora_adapter', { lora_name: 'tone', lora_path: '/ad/tone', pinned: true });
    expect(res.status).toBe(200);
    expect(await res.json()).toEqual({
      success: true,
      error_message: '',
      loaded_adapters: { 'demo-a': '/models/demo-a', tone: '/ad/tone' },
    });
    // The new adapter is usable right away.
    expect((await post('/generate', { text: 'x', lora_path: 'tone' })).status).toBe(200);
  });

  it('answers a refused load with 400, success false and the reason', async () => {
    const res = await post('/load_lora_adapter', { lora_name: 'bad', lora_path: '/ad/missing' });
    expect(res.status).toBe(400);
    expect(await res.json()).toEqual({
      success: false,
      error_message: 'adapter path /ad/missing has no adapter_config.json',
      loaded_adapters: { 'demo-a': '/models/demo-a' },
    });
  });

  it('unloads an adapter, and refuses one that is not loaded', async () => {
    const ok = await post('/unload_lora_adapter', { lora_name: 'demo-a' });
    expect(ok.status).toBe(200);
    expect(await ok.json()).toEqual({ success: true, error_message: '', loaded_adapters: {} });

    const again = await post('/unload_lora_adapter', { lora_name: 'demo-a' });
    expect(again.status).toBe(400);
    const body = (await again.json()) as { success: boolean; error_message: string };
    expect(body.success).toBe(false);
    expect(body.error_message).toContain('demo-a');
  });

  it('rejects malformed bodies with a named field', async () => {
    const cases: Array<[string, unknown, string]> = [
      ['/load_lora_adapter', { lora_path: '/ad/x' }, 'lora_name'],
      ['/load_lora_adapter', { lora_name: 'x', lora_path: 3 }, 'lora_path'],
      ['/load_lora_adapter', { lora_name: 'x', lora_path: '/p', pinned: 'yes' }, 'pinned'],
      ['/load_lora_adapter', { lora_name: 'x', lora_path: '/p', rank: 4 }, '"rank"'],
      ['/unload_lora_adapter', '{oops', 'malformed JSON'],
    ];
    for (const [path, body, fragment] of cases) {
      const res = await post(path, body);
      expect(res.status).toBe(400);
      expect(((await res.json()) as { error: { message: string } }).error.message).toContain(fragment);
    }
  });
});

describe('health and model info', () => {
  it('answers /health with 200 and an empty body', async () => {
    const res = await app.request('/health');
    expect(res.status).toBe(200);
    expect(await res.text()).toBe('');
  });

  it('runs a one-token greedy generate on the base model for /health_generate', async () => {
    const res = await app.request('/health_generate');
    expect(res.status).toBe(200);
    expect(engine.requests).toHaveLength(1);
    expect(engine.requests[0]).toMatchObject({ inputIds: [0], lora: null, sampling: { maxNewTokens: 1, temperature: 0 } });
  });

  it('answers /health_generate with 503 when generation fails', async () => {
    engine.failWith = new Error('worker died');
    const res = await app.request('/health_generate');
    expect(res.status).toBe(503);
    expect(((await res.json()) as { error: { message: string } }).error.message).toContain('worker died');
  });

  it('describes the model in SGLang shape on /get_model_info', async () => {
    const res = await app.request('/get_model_info');
    expect(await res.json()).toEqual({
      model_path: '/models/demo',
      tokenizer_path: '/models/demo',
      is_generation: true,
      served_model_name: 'my-model',
      max_total_tokens: 4096,
      device: 'cpu',
      tp_size: 1,
      tp_collective: 'none',
    });
  });
});

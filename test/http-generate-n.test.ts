// Parallel sampling on /generate (sampling_params.n), on the echo engine, in SGLang's output
// shape (python/sglang/srt/managers/io_struct.py, GenerateReqInput._handle_parallel_sampling,
// and managers/tokenizer_manager.py, _handle_batch_request): n > 1 makes even a single prompt
// a batch whose items are the samples, prompt by prompt. OpenAI's n runs through the same
// fan-out, so the same n and seed reach the engine as the same requests.
import { beforeEach, describe, expect, it } from 'vitest';
import type { EchoEngine } from './http-echo-engine.js';
import { echoApp, postTo, sseEvents } from './openai-fixtures.js';

let engine: EchoEngine;
let post: ReturnType<typeof postTo>;

beforeEach(() => {
  const made = echoApp();
  engine = made.engine;
  engine.adapterPaths.set('demo-b', '/models/demo-b');
  post = postTo(made.app);
});

interface Item {
  text: string;
  index?: number;
  meta_info: { id: string; completion_tokens: number; finish_reason: unknown };
}

async function errorOf(res: Response): Promise<string> {
  expect(res.status).toBe(400);
  return ((await res.json()) as { error: { message: string } }).error.message;
}

describe('sampling_params.n on /generate', () => {
  it('answers one prompt with n > 1 with a list of n samples, each its own engine request', async () => {
    const res = await post('/generate', { text: 'hi', sampling_params: { n: 3, max_new_tokens: 2, sampling_seed: 7 }, rid: 'r' });
    expect(res.status).toBe(200);
    const items = (await res.json()) as Item[];
    expect(items.map((i) => i.text)).toEqual(['[base] hi -> AB', '[base] hi -> AB', '[base] hi -> AB']);
    expect(items.map((i) => i.meta_info.id)).toEqual(['r_0', 'r_1', 'r_2']);
    expect(engine.requests.map((r) => r.sampling.seed)).toEqual([7, 8, 9]);
    expect(engine.requests.every((r) => r.sampling.maxNewTokens === 2)).toBe(true);
  });

  it("orders the samples prompt by prompt, each with its prompt's adapter", async () => {
    const res = await post('/generate', { text: ['a', 'b'], lora_path: ['demo-a', 'demo-b'], sampling_params: { n: 2 } });
    const items = (await res.json()) as Item[];
    expect(items.map((i) => i.text)).toEqual(['[demo-a] a -> ABC', '[demo-a] a -> ABC', '[demo-b] b -> ABC', '[demo-b] b -> ABC']);
    expect(items.every((i) => i.index === undefined)).toBe(true);
  });

  it('streams the samples tagged with their index', async () => {
    const res = await post('/generate', { text: 'hi', stream: true, sampling_params: { n: 2, max_new_tokens: 2 } });
    const { events, done } = await sseEvents(res);
    expect(done).toBe(true);
    for (const index of [0, 1]) {
      expect(events.filter((e) => e.index === index).map((e) => e.text)).toEqual(['[base] hi -> A', '[base] hi -> AB']);
    }
  });

  it('refuses what SGLang refuses with n > 1, and an n out of range, naming the field', async () => {
    expect(await errorOf(await post('/generate', { text: ['a', 'b'], sampling_params: [{ n: 2 }, { n: 1 }] }))).toContain('same n');
    expect(await errorOf(await post('/generate', { text: ['a', 'b'], sampling_params: { n: 2 }, return_logprob: [true, false] }))).toContain(
      'return_logprob cannot be a list',
    );
    expect(await errorOf(await post('/generate', { text: 'a', sampling_params: { n: 0 } }))).toContain('sampling_params.n must be >= 1');
    expect(await errorOf(await post('/generate', { text: 'a', sampling_params: { n: 129 } }))).toContain('at most 128');
    expect(engine.requests).toHaveLength(0);
  });

  it('sends the engine the same requests for n on /generate as for n on /v1/completions', async () => {
    const seen = (): Array<[string | null, number | null, number]> =>
      engine.requests.splice(0).map((r) => [r.lora, r.sampling.seed, r.sampling.maxNewTokens]);
    expect(
      (await post('/generate', { text: ['a', 'b'], lora_path: 'demo-a', sampling_params: { n: 3, sampling_seed: 5, max_new_tokens: 2 } })).status,
    ).toBe(200);
    const native = seen();
    expect((await post('/v1/completions', { model: 'demo:demo-a', prompt: ['a', 'b'], n: 3, seed: 5, max_tokens: 2 })).status).toBe(200);
    expect(seen()).toEqual(native);
    expect(native.map(([, seed]) => seed)).toEqual([5, 6, 7, 5, 6, 7]);
  });
});

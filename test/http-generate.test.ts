import { beforeEach, describe, expect, it } from 'vitest';
import { createApp } from '../src/http/app.js';
import { EchoEngine } from './http-echo-engine.js';

let engine: EchoEngine;
let logs: string[];
let app: ReturnType<typeof createApp>;

beforeEach(() => {
  engine = new EchoEngine();
  logs = [];
  app = createApp(engine, { servedModelName: 'demo', log: (level, msg) => logs.push(`${level} ${msg}`) });
});

const post = (body: unknown, path = '/generate'): Promise<Response> =>
  Promise.resolve(
    app.request(path, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: typeof body === 'string' ? body : JSON.stringify(body),
    }),
  );

async function expectError(res: Response, status: number, ...fragments: string[]): Promise<string> {
  expect(res.status).toBe(status);
  const body = (await res.json()) as { error: { message: string; type: string; code: number } };
  expect(body.error.code).toBe(status);
  expect(typeof body.error.type).toBe('string');
  for (const f of fragments) expect(body.error.message).toContain(f);
  return body.error.message;
}

describe('POST /generate shapes', () => {
  it('answers a single text prompt with one object and fills every sampling default', async () => {
    const res = await post({ text: 'hello' });
    expect(res.status).toBe(200);
    const body = await res.json();
    expect(Array.isArray(body)).toBe(false);
    expect(body).toEqual({
      text: '[base] hello -> ABC',
      output_ids: [100, 101, 102],
      meta_info: {
        id: 'rid-auto',
        finish_reason: { type: 'length', length: 128 },
        prompt_tokens: 5,
        completion_tokens: 3,
        cached_tokens: 0,
        e2e_latency: 0.25,
      },
    });
    expect(engine.requests).toHaveLength(1);
    const req = engine.requests[0]!;
    expect(req.text).toBe('hello');
    expect(req.inputIds).toBeUndefined();
    expect(req.lora).toBeNull();
    expect(req.returnLogprob).toBe(false);
    expect(req.topLogprobsNum).toBe(0);
    expect(req.signal).toBeInstanceOf(AbortSignal);
    expect(req.sampling).toEqual({
      maxNewTokens: 128,
      temperature: 1,
      topP: 1,
      topK: -1,
      minP: 0,
      seed: null,
      stop: [],
      stopTokenIds: [],
      ignoreEos: false,
      skipSpecialTokens: true,
      frequencyPenalty: 0,
      presencePenalty: 0,
      repetitionPenalty: 1,
    });
  });

  it('answers a text list with a list in prompt order, with lora_path per prompt and null for base', async () => {
    const res = await post({
      text: ['List 3 countries and their capitals.', 'List 3 countries and their capitals.'],
      sampling_params: { max_new_tokens: 32, temperature: 0 },
      lora_path: ['demo-a', null],
    });
    expect(res.status).toBe(200);
    const body = (await res.json()) as Array<{ text: string }>;
    expect(body).toHaveLength(2);
    expect(body[0]!.text).toBe('[demo-a] List 3 countries and their capitals. -> ABC');
    expect(body[1]!.text).toBe('[base] List 3 countries and their capitals. -> ABC');
    expect(engine.requests.map((r) => r.lora)).toEqual(['demo-a', null]);
    for (const r of engine.requests) {
      expect(r.sampling.maxNewTokens).toBe(32);
      expect(r.sampling.temperature).toBe(0);
    }
  });

  it('applies one lora_path string to every prompt of a batch', async () => {
    const res = await post({ text: ['a', 'b'], lora_path: 'demo-a' });
    expect(res.status).toBe(200);
    expect(engine.requests.map((r) => r.lora)).toEqual(['demo-a', 'demo-a']);
  });

  it('gives each prompt its own sampling_params from a list', async () => {
    const res = await post({
      text: ['a', 'b'],
      sampling_params: [
        { max_new_tokens: 1, top_k: 5 },
        { max_new_tokens: 2, top_p: 0.5, seed: 7 },
      ],
    });
    const body = (await res.json()) as Array<{ output_ids: number[] }>;
    expect(body.map((b) => b.output_ids)).toEqual([[100], [100, 101]]);
    expect(engine.requests[0]!.sampling).toMatchObject({ maxNewTokens: 1, topK: 5, topP: 1, seed: null });
    expect(engine.requests[1]!.sampling).toMatchObject({ maxNewTokens: 2, topK: -1, topP: 0.5, seed: 7 });
  });

  it('takes input_ids as a single prompt or, as a list of lists, a batch', async () => {
    const single = await (await post({ input_ids: [1, 2, 3] })).json();
    expect(Array.isArray(single)).toBe(false);
    expect(engine.requests[0]!.inputIds).toEqual([1, 2, 3]);
    expect(engine.requests[0]!.text).toBeUndefined();

    const batch = await (await post({ input_ids: [[4], [5, 6]] })).json();
    expect(batch).toHaveLength(2);
    expect(engine.requests.slice(1).map((r) => r.inputIds)).toEqual([[4], [5, 6]]);
  });

  it('maps every SGLang sampling name onto the engine options', async () => {
    await post({
      text: 'x',
      sampling_params: {
        max_new_tokens: 0,
        temperature: 0.7,
        top_p: 0.9,
        top_k: 40,
        min_p: 0.05,
        stop: 'END',
        stop_token_ids: [128009],
        ignore_eos: true,
        skip_special_tokens: false,
        sampling_seed: 3,
        no_stop_trim: false,
        spaces_between_special_tokens: true,
        frequency_penalty: 0,
        presence_penalty: 0,
        repetition_penalty: 1,
      },
    });
    expect(engine.requests[0]!.sampling).toEqual({
      maxNewTokens: 0,
      temperature: 0.7,
      topP: 0.9,
      topK: 40,
      minP: 0.05,
      seed: 3,
      stop: ['END'],
      stopTokenIds: [128009],
      ignoreEos: true,
      skipSpecialTokens: false,
      frequencyPenalty: 0,
      presencePenalty: 0,
      repetitionPenalty: 1,
    });
  });

  it('treats null sampling values as defaults, as SGLang clients send them', async () => {
    const res = await post({ text: 'x', sampling_params: { stop: null, max_new_tokens: null }, lora_path: null, rid: null });
    expect(res.status).toBe(200);
    expect(engine.requests[0]!.sampling).toMatchObject({ stop: [], maxNewTokens: 128 });
  });

  it('passes rid through, one per prompt of a batch', async () => {
    const body = (await (await post({ text: ['a', 'b'], rid: ['r1', 'r2'] })).json()) as Array<{ meta_info: { id: string } }>;
    expect(body.map((b) => b.meta_info.id)).toEqual(['r1', 'r2']);
    await expectError(await post({ text: ['a', 'b'], rid: ['r1'] }), 400, 'rid', 'list of 1');
  });

  // SGLang's GenerateReqInput._normalize_rid (python/sglang/srt/managers/io_struct.py).
  it('extends one rid for a batch into one id per prompt, <rid>_<i>, as SGLang does', async () => {
    const body = (await (await post({ text: ['a', 'b'], rid: 'r1' })).json()) as Array<{ meta_info: { id: string } }>;
    expect(body.map((b) => b.meta_info.id)).toEqual(['r1_0', 'r1_1']);
    expect(engine.requests.map((r) => r.rid)).toEqual(['r1_0', 'r1_1']);
  });

  it('puts a trimmed stop string back with no_stop_trim', async () => {
    const trimmed = await (await post({ text: 'x', sampling_params: { stop: ['!!'] } })).json();
    expect(trimmed.text).toBe('[base] x -> ABC');
    expect(trimmed.meta_info.finish_reason).toEqual({ type: 'stop', matched: '!!' });
    const kept = await (await post({ text: 'x', sampling_params: { stop: ['!!'], no_stop_trim: true } })).json();
    expect(kept.text).toBe('[base] x -> ABC!!');
  });

  it('adds logprobs in SGLang shape with return_logprob', async () => {
    const plain = await (await post({ text: 'x', return_logprob: true })).json();
    expect(plain.meta_info.input_token_logprobs).toEqual([]);
    expect(plain.meta_info.output_token_logprobs).toEqual([
      [-0.5, 100, null],
      [-0.5, 101, null],
      [-0.5, 102, null],
    ]);
    expect(plain.meta_info).not.toHaveProperty('output_top_logprobs');

    const top = await (await post({ text: 'x', return_logprob: true, top_logprobs_num: 2, return_text_in_logprobs: true })).json();
    expect(engine.requests[1]!.topLogprobsNum).toBe(2);
    expect(top.meta_info.output_token_logprobs[0]).toEqual([-0.5, 100, 't100']);
    expect(top.meta_info.output_top_logprobs).toHaveLength(3);
    expect(top.meta_info.output_top_logprobs[0]).toEqual([
      [-0.5, 100, 't100'],
      [-1.5, 101, 't101'],
    ]);
  });

  it('logs each request at debug level', async () => {
    await post({ text: 'x' });
    expect(logs.some((l) => l.startsWith('debug POST /generate 200'))).toBe(true);
  });
});

describe('POST /generate validation', () => {
  it('rejects text together with input_ids, and neither', async () => {
    await expectError(await post({ text: 'a', input_ids: [1] }), 400, 'text', 'input_ids');
    await expectError(await post({ sampling_params: {} }), 400, 'text', 'input_ids');
    expect(engine.requests).toHaveLength(0);
  });

  it('rejects list lengths that do not match the batch, naming both lengths', async () => {
    await expectError(await post({ text: ['a', 'b'], sampling_params: [{}, {}, {}] }), 400, 'sampling_params', '3', '2');
    await expectError(await post({ text: ['a', 'b', 'c'], lora_path: ['demo-a', null] }), 400, 'lora_path', '2', '3');
    await expectError(await post({ text: 'a', lora_path: ['demo-a', null] }), 400, 'lora_path', '2', '1');
    expect(engine.requests).toHaveLength(0);
  });

  it('rejects malformed JSON, an empty body and a non-object body', async () => {
    await expectError(await post('{"text": "a",'), 400, 'malformed JSON');
    await expectError(await post(''), 400, 'empty');
    await expectError(await post('[1, 2]'), 400, 'JSON object');
  });

  it('answers an unknown adapter with 400 naming it', async () => {
    await expectError(await post({ text: ['a', 'b'], lora_path: [null, 'nope'] }), 400, 'nope');
  });

  it('rejects unknown sampling keys by name', async () => {
    await expectError(await post({ text: 'a', sampling_params: { max_tokens: 4 } }), 400, '"max_tokens"');
    await expectError(await post({ text: 'a', image_data: 'x' }), 400, 'image_data', 'not supported');
  });

  it("passes frequency, presence and repetition penalties to the engine and checks SGLang's ranges", async () => {
    const res = await post({ text: 'a', sampling_params: { frequency_penalty: 0.5, presence_penalty: -1.25, repetition_penalty: 1.1 } });
    expect(res.status).toBe(200);
    const s = engine.requests[0]!.sampling;
    expect([s.frequencyPenalty, s.presencePenalty, s.repetitionPenalty]).toEqual([0.5, -1.25, 1.1]);
    await expectError(await post({ text: 'a', sampling_params: { frequency_penalty: 2.5 } }), 400, 'frequency_penalty', '[-2, 2]', '2.5');
    await expectError(await post({ text: 'a', sampling_params: { presence_penalty: -3 } }), 400, 'presence_penalty', '[-2, 2]');
    await expectError(await post({ text: 'a', sampling_params: { repetition_penalty: 0 } }), 400, 'repetition_penalty', '(0, 2]');
    await expectError(await post({ text: 'a', sampling_params: { repetition_penalty: 'x' } }), 400, 'repetition_penalty', 'number');
    expect(engine.requests).toHaveLength(1);
  });

  it('names the field and what it expected for wrong types and ranges', async () => {
    const cases: Array<[unknown, string[]]> = [
      [{ text: 1 }, ['text', 'string']],
      [{ text: ['a', 2] }, ['text[1]', 'string']],
      [{ input_ids: [1, 'x'] }, ['input_ids[1]', 'integer']],
      [{ input_ids: [] }, ['input_ids', 'empty']],
      [{ text: [] }, ['text', 'empty']],
      [{ text: 'a', stream: 'yes' }, ['stream', 'true or false']],
      [{ text: 'a', sampling_params: 3 }, ['sampling_params', 'object']],
      [{ text: 'a', sampling_params: { temperature: 'hot' } }, ['sampling_params.temperature', 'number']],
      [{ text: 'a', sampling_params: { temperature: -1 } }, ['temperature', '>= 0']],
      [{ text: 'a', sampling_params: { max_new_tokens: 1.5 } }, ['max_new_tokens', 'integer']],
      [{ text: 'a', sampling_params: { max_new_tokens: -1 } }, ['max_new_tokens', '>= 0']],
      [{ text: 'a', sampling_params: { top_p: 0 } }, ['top_p', '(0, 1]']],
      [{ text: 'a', sampling_params: { top_k: 0 } }, ['top_k', '-1']],
      [{ text: 'a', sampling_params: { min_p: 2 } }, ['min_p', '[0, 1]']],
      [{ text: 'a', sampling_params: { stop: [1] } }, ['stop[0]', 'string']],
      [{ text: 'a', sampling_params: { stop_token_ids: 5 } }, ['stop_token_ids', 'list']],
      [{ text: 'a', sampling_params: { seed: 1, sampling_seed: 2 } }, ['sampling_seed', 'seed']],
      [{ text: ['a', 'b'], sampling_params: [{}, { top_k: 'x' }] }, ['sampling_params[1].top_k', 'integer']],
      [{ text: 'a', lora_path: 5 }, ['lora_path', 'adapter name']],
      [{ text: 'a', top_logprobs_num: -1 }, ['top_logprobs_num', '>= 0']],
    ];
    for (const [body, fragments] of cases) await expectError(await post(body), 400, ...fragments);
    expect(engine.requests).toHaveLength(0);
  });
});

describe('errors and aborts', () => {
  it('answers an unexpected engine error with 500 and keeps serving', async () => {
    engine.failWith = new Error('kernel exploded');
    await expectError(await post({ text: 'a' }), 500, 'kernel exploded');
    expect(logs.some((l) => l.startsWith('error') && l.includes('kernel exploded'))).toBe(true);
    engine.failWith = null;
    expect((await post({ text: 'a' })).status).toBe(200);
  });

  it('answers unknown routes with a JSON 404', async () => {
    await expectError(await app.request('/v2/nothing'), 404, '/v2/nothing');
  });

  it('aborts the engine work of every prompt when the client goes away', async () => {
    engine.armHang();
    const client = new AbortController();
    const pending = app.request('/generate', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ text: ['a', 'b'] }),
      signal: client.signal,
    });
    await engine.waiting;
    expect(engine.requests.every((r) => r.signal?.aborted === false)).toBe(true);
    client.abort();
    await Promise.resolve(pending).catch(() => undefined);
    expect(engine.requests).toHaveLength(2);
    expect(engine.requests.every((r) => r.signal?.aborted === true)).toBe(true);
  });
});

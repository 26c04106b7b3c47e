// POST /v1/completions on the echo engine: request mapping, adapter selection by model name,
// response and stream shapes, usage, logprobs, and OpenAI-shaped errors naming the field.
import { beforeEach, describe, expect, it } from 'vitest';
import type { EchoEngine } from './http-echo-engine.js';
import { echoApp, expectOpenAiError, postTo, sseEvents } from './openai-fixtures.js';

let engine: EchoEngine;
let post: ReturnType<typeof postTo>;

beforeEach(() => {
  const made = echoApp();
  engine = made.engine;
  post = postTo(made.app);
});

const complete = (body: Record<string, unknown>): Promise<Response> => post('/v1/completions', { model: 'demo', ...body });

describe('POST /v1/completions', () => {
  it("answers a string prompt in OpenAI's shape with usage, using 16 as the default max_tokens", async () => {
    const res = await complete({ prompt: 'hello' });
    expect(res.status).toBe(200);
    const body = await res.json();
    expect(body.id).toMatch(/^cmpl-/);
    expect(body).toMatchObject({
      object: 'text_completion',
      model: 'demo',
      choices: [{ index: 0, text: '[base] hello -> ABC', logprobs: null, finish_reason: 'length' }],
      usage: { prompt_tokens: 5, completion_tokens: 3, total_tokens: 8, prompt_tokens_details: { cached_tokens: 0 } },
    });
    expect(typeof body.created).toBe('number');
    const req = engine.requests[0]!;
    expect(req.text).toBe('hello');
    expect(req.lora).toBeNull();
    expect(req.sampling.maxNewTokens).toBe(16);
  });

  it('picks the adapter from "<served>:<adapter>", the base from "<served>" and "<served>:", and lets model win over lora_path', async () => {
    const cases: Array<[Record<string, unknown>, string | null]> = [
      [{ model: 'demo:demo-a' }, 'demo-a'],
      [{ model: 'demo' }, null],
      [{ model: 'demo:' }, null],
      [{ model: 'demo-a' }, 'demo-a'],
      [{ model: 'demo', lora_path: 'demo-a' }, 'demo-a'],
      [{ model: 'demo:demo-a', lora_path: 'other' }, 'demo-a'],
    ];
    for (const [fields] of cases) {
      const res = await post('/v1/completions', { prompt: 'x', ...fields });
      expect(res.status).toBe(200);
      expect((await res.json()).model).toBe(fields.model);
    }
    expect(engine.requests.map((r) => r.lora)).toEqual(cases.map(([, l]) => l));
  });

  it("answers an unknown model with 404 naming what is served, and an adapter never loaded with SGLang's 400", async () => {
    await expectOpenAiError(await complete({ model: 'gpt-4', prompt: 'x' }), 404, 'model', "'gpt-4'", 'does not exist', 'demo, demo-a');
    expect(engine.requests).toHaveLength(0);
    await expectOpenAiError(await complete({ model: 'demo:nope', prompt: 'x' }), 400, null, "has never been loaded: 'nope'");
    await expectOpenAiError(await complete({ lora_path: 'nope', prompt: 'x' }), 400, null, "has never been loaded: 'nope'");
  });

  it('runs n choices per prompt for a list of prompts, counting each prompt once in usage', async () => {
    const res = await complete({ prompt: ['ab', 'cde'], n: 2, seed: 7, max_tokens: 2 });
    const body = await res.json();
    expect(body.choices.map((c: { index: number; text: string }) => [c.index, c.text])).toEqual([
      [0, '[base] ab -> AB'],
      [1, '[base] ab -> AB'],
      [2, '[base] cde -> AB'],
      [3, '[base] cde -> AB'],
    ]);
    expect(body.usage).toEqual({ prompt_tokens: 5, completion_tokens: 8, total_tokens: 13, prompt_tokens_details: { cached_tokens: 0 } });
    // Consecutive seeds, so seeded choices differ from each other but repeat across calls.
    expect(engine.requests.map((r) => r.sampling.seed)).toEqual([7, 8, 7, 8]);
  });

  it('takes token ids and lists of token ids as prompts', async () => {
    await complete({ prompt: [5, 6, 7] });
    await complete({ prompt: [[1, 2], [3]] });
    expect(engine.requests.map((r) => r.inputIds)).toEqual([[5, 6, 7], [1, 2], [3]]);
  });

  it("maps OpenAI's sampling fields and SGLang's extras onto the engine's options", async () => {
    await complete({
      prompt: 'x',
      max_tokens: 5,
      temperature: 0.5,
      top_p: 0.9,
      stop: 'END',
      seed: 3,
      frequency_penalty: 0.5,
      presence_penalty: -0.5,
      repetition_penalty: 1.2,
      top_k: 4,
      min_p: 0.1,
      ignore_eos: true,
      user: 'u',
      logit_bias: {},
    });
    const s = engine.requests[0]!.sampling;
    expect(s).toMatchObject({
      maxNewTokens: 5,
      temperature: 0.5,
      topP: 0.9,
      stop: ['END'],
      seed: 3,
      frequencyPenalty: 0.5,
      presencePenalty: -0.5,
      repetitionPenalty: 1.2,
      topK: 4,
      minP: 0.1,
      ignoreEos: true,
    });
  });

  it('reports finish_reason stop when a stop string ends the text', async () => {
    const body = await (await complete({ prompt: 'x', stop: ['B', 'C'] })).json();
    expect(body.choices[0].finish_reason).toBe('stop');
  });

  it('returns logprobs as tokens, token_logprobs, top_logprobs and text_offset', async () => {
    const body = await (await complete({ prompt: 'x', logprobs: 2 })).json();
    expect(engine.requests[0]).toMatchObject({ returnLogprob: true, topLogprobsNum: 2 });
    expect(body.choices[0].logprobs).toEqual({
      tokens: ['t100', 't101', 't102'],
      token_logprobs: [-0.5, -0.5, -0.5],
      top_logprobs: [
        { t100: -0.5, t101: -1.5 },
        { t101: -0.5, t102: -1.5 },
        { t102: -0.5, t103: -1.5 },
      ],
      text_offset: [0, 4, 8],
    });
  });

  it('streams text deltas as text_completion chunks, then a usage chunk and [DONE]', async () => {
    const res = await complete({ prompt: 'hi', stream: true, stream_options: { include_usage: true }, logprobs: 0 });
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toContain('text/event-stream');
    const { events, done } = await sseEvents(res);
    expect(done).toBe(true);
    const usage = events.pop()!;
    expect(usage).toMatchObject({ object: 'text_completion', choices: [], usage: { prompt_tokens: 2, completion_tokens: 3, total_tokens: 5 } });
    for (const e of events) {
      expect(e.object).toBe('text_completion');
      expect(e.usage).toBeNull();
      expect(e.id).toBe(usage.id);
    }
    expect(events.map((e) => e.choices[0].text).join('')).toBe('[base] hi -> ABC');
    expect(events.map((e) => e.choices[0].finish_reason)).toEqual([null, null, 'length']);
    expect(events.flatMap((e) => e.choices[0].logprobs.tokens)).toEqual(['t100', 't101', 't102']);
  });

  it('streams every choice of n with its index, and no usage chunk unless asked', async () => {
    const { events, done } = await sseEvents(await complete({ prompt: 'hi', stream: true, n: 2 }));
    expect(done).toBe(true);
    for (const e of events) expect('usage' in e).toBe(false);
    for (const index of [0, 1]) {
      const mine = events.filter((e) => e.choices[0].index === index);
      expect(mine.map((e) => e.choices[0].text).join('')).toBe('[base] hi -> ABC');
    }
  });

  it('rejects bad requests with 400, naming the field in param and message', async () => {
    const cases: Array<[Record<string, unknown>, string, string[]]> = [
      [{}, 'prompt', ['prompt is required']],
      [{ prompt: 3 }, 'prompt', ['prompt must be']],
      [{ prompt: [] }, 'prompt', ['empty']],
      [{ prompt: ['a', 2] }, 'prompt', ['prompt[1]']],
      [{ prompt: 'x', max_tokens: -1 }, 'max_tokens', ['max_tokens must be >= 0']],
      [{ prompt: 'x', max_tokens: 1.5 }, 'max_tokens', ['max_tokens must be an integer']],
      [{ prompt: 'x', temperature: -1 }, 'temperature', ['temperature must be >= 0']],
      [{ prompt: 'x', top_p: 0 }, 'top_p', ['(0, 1]']],
      [{ prompt: 'x', n: 0 }, 'n', ['n must be >= 1']],
      [{ prompt: 'x', frequency_penalty: 3 }, 'frequency_penalty', ['[-2, 2]']],
      [{ prompt: 'x', logprobs: 21 }, 'logprobs', ['at most 20']],
      [{ prompt: 'x', stream_options: { include_usage: true } }, 'stream_options', ['"stream": true']],
      [{ prompt: 'x', echo: true }, 'echo', ['not supported']],
      [{ prompt: 'x', stop: [''] }, 'stop', ['stop[0] is empty']],
      [{ prompt: 'x', bogus: 1 }, 'bogus', ['unknown field "bogus"']],
      [{ prompt: 'x', model: null }, 'model', ['model is required']],
    ];
    for (const [fields, param, fragments] of cases) {
      await expectOpenAiError(await complete({ ...fields }), 400, param, ...fragments);
    }
    expect(engine.requests).toHaveLength(0);
    await expectOpenAiError(await post('/v1/completions', '{"prompt":'), 400, null, 'malformed JSON');
  });

  it("passes engine errors through with their status in OpenAI's shape", async () => {
    engine.failWith = new Error('boom');
    await expectOpenAiError(await complete({ prompt: 'x' }), 500, null, 'boom');
  });
});

// SGLang's sampling rules as every HTTP route applies them: what reaches the engine for boundary
// values (greedy below 1e-6, top_k at or above 2^30 off, temperatures beyond float32), and
// --max-top-logprobs-num on /generate and both OpenAI routes.
import { describe, expect, it } from 'vitest';
import { checkRequest, completeRequest, type SamplingOptions } from '../src/api.js';
import { TroupeError } from '../src/errors.js';
import { createApp } from '../src/http/app.js';
import { echoApp, expectOpenAiError, postTo } from './openai-fixtures.js';

const { engine, app } = echoApp();
const post = postTo(app);

/** The sampling options the engine got for a /generate call, and for the same values on both OpenAI routes. */
async function samplingVia(values: Record<string, unknown>): Promise<SamplingOptions[]> {
  const got: SamplingOptions[] = [];
  for (const [path, body] of [
    ['/generate', { text: 'x', sampling_params: values }],
    ['/v1/completions', { model: 'demo', prompt: 'x', ...values }],
    ['/v1/chat/completions', { model: 'demo', messages: [{ role: 'user', content: 'x' }], ...values }],
  ] as const) {
    const res = await post(path, body);
    expect(res.status, `${path} ${JSON.stringify(values)}: ${await res.clone().text()}`).toBe(200);
    got.push(engine.requests[engine.requests.length - 1]!.sampling);
  }
  return got;
}

describe('sampling values as the engine gets them', () => {
  it('runs temperatures below 1e-6 greedily (0), as SGLang does, including denormals and -0', async () => {
    for (const t of [1e-45, 3e-39, 5e-7, -0]) {
      for (const s of await samplingVia({ temperature: t, top_p: 0.9 })) {
        expect(Object.is(s.temperature, 0), `temperature ${t}`).toBe(true);
        expect(s.topP).toBe(0.9);
      }
    }
    for (const s of await samplingVia({ temperature: 1e-6 })) expect(s.temperature).toBe(1e-6);
  });

  it('accepts any finite temperature and sends the ones beyond float32 as its largest finite value', async () => {
    for (const s of await samplingVia({ temperature: 1e300 })) {
      expect(Number.isFinite(Math.fround(s.temperature))).toBe(true);
      expect(s.temperature).toBeGreaterThan(3e38);
    }
    for (const s of await samplingVia({ temperature: 1e30 })) expect(s.temperature).toBe(1e30);
  });

  it('keeps top_p and repetition_penalty that float32 would round to 0 above 0 (and repetition_penalty where dividing by it cannot overflow)', async () => {
    for (const tiny of [5e-324, 1e-45, 1e-40]) {
      for (const s of await samplingVia({ top_p: tiny, repetition_penalty: tiny })) {
        expect(Math.fround(s.topP)).toBeGreaterThan(1e-38);
        expect(Math.fround(s.repetitionPenalty)).toBeGreaterThan(0);
        expect(Number.isFinite(Math.fround(100 / Math.fround(s.repetitionPenalty)))).toBe(true);
      }
    }
    for (const s of await samplingVia({ top_p: 1e-3, repetition_penalty: 1e-3 })) {
      expect(s.topP).toBe(1e-3);
      expect(s.repetitionPenalty).toBe(1e-3);
    }
  });

  it('turns top_k at or above 2^30 into -1 (off) instead of wrapping it, and keeps smaller ones', async () => {
    for (const k of [2 ** 30, 2 ** 31, 2 ** 32 + 1, 2 ** 53, 1e20]) {
      for (const s of await samplingVia({ top_k: k })) expect(s.topK, `top_k ${k}`).toBe(-1);
    }
    for (const s of await samplingVia({ top_k: 2 ** 30 - 1 })) expect(s.topK).toBe(2 ** 30 - 1);
  });

  it('refuses what SGLang refuses, with a 400 naming the field, on every route', async () => {
    const bad: Array<[string, unknown, string]> = [
      ['temperature', -1e-45, '>= 0'],
      ['top_p', -0, '(0, 1]'],
      ['top_p', 1.0000001, '(0, 1]'],
      ['top_k', 0, '-1'],
      ['top_k', -2, '-1'],
      ['top_k', 1.5, 'integer'],
      ['min_p', 1.5, '[0, 1]'],
      ['frequency_penalty', 2.5, '[-2, 2]'],
      ['presence_penalty', -3, '[-2, 2]'],
      ['repetition_penalty', 0, '(0, 2]'],
      ['repetition_penalty', 1e300, '(0, 2]'],
      ['temperature', '0.5', 'number'],
    ];
    const before = engine.requests.length;
    for (const [field, value, fragment] of bad) {
      const res = await post('/generate', { text: 'x', sampling_params: { [field]: value } });
      expect(res.status).toBe(400);
      expect((await res.json()).error.message).toContain(fragment);
      await expectOpenAiError(await post('/v1/completions', { model: 'demo', prompt: 'x', [field]: value }), 400, field, fragment);
    }
    expect(engine.requests.length).toBe(before);
  });
});

describe('--max-top-logprobs-num', () => {
  it('refuses more top logprobs than the flag allows with a 400 naming it, on /generate and both OpenAI routes', async () => {
    const res = await post('/generate', { text: ['a', 'b'], return_logprob: true, top_logprobs_num: [1, 200000] });
    expect(res.status).toBe(400);
    const msg = (await res.json()).error.message as string;
    expect(msg).toContain('top_logprobs_num[1]');
    expect(msg).toContain('--max-top-logprobs-num');
    await expectOpenAiError(
      await post('/v1/completions', { model: 'demo', prompt: 'x', logprobs: 21 }),
      400,
      'logprobs',
      'at most 20',
      '--max-top-logprobs-num',
    );
    await expectOpenAiError(
      await post('/v1/chat/completions', { model: 'demo', messages: [{ role: 'user', content: 'x' }], logprobs: true, top_logprobs: 128256 }),
      400,
      'top_logprobs',
      'at most 20',
      '--max-top-logprobs-num',
    );
    expect((await post('/generate', { text: 'a', return_logprob: true, top_logprobs_num: 20 })).status).toBe(200);
  });

  it('follows the value the app is given', async () => {
    const { app: wide } = echoApp();
    const narrow = createApp(engine, { servedModelName: 'demo', maxTopLogprobsNum: 2 });
    const body = JSON.stringify({ text: 'a', return_logprob: true, top_logprobs_num: 3 });
    const req = { method: 'POST', headers: { 'content-type': 'application/json' }, body };
    expect((await narrow.request('/generate', req)).status).toBe(400);
    expect((await wide.request('/generate', req)).status).toBe(200);
  });
});

describe('checkRequest (what Engine.start applies to embedding callers)', () => {
  const limits = { maxTopLogprobsNum: 20, vocabSize: 1000 };
  const check = (sampling: Record<string, unknown>, extra: Record<string, unknown> = {}): ReturnType<typeof checkRequest> =>
    checkRequest({ ...completeRequest({ text: 'x', sampling: sampling as Partial<SamplingOptions> }), ...extra }, limits);
  const refusal = (fn: () => unknown): TroupeError => {
    try {
      fn();
    } catch (err) {
      expect(err).toBeInstanceOf(TroupeError);
      expect((err as TroupeError).status).toBe(400);
      return err as TroupeError;
    }
    throw new Error('expected a refusal');
  };

  it('applies the same rules and names the option as the caller spelled it', () => {
    expect(check({ temperature: 1e-45, topP: 0.9 }).sampling.temperature).toBe(0);
    expect(check({ topK: 2 ** 32 + 1 }).sampling.topK).toBe(-1);
    expect(Number.isFinite(Math.fround(check({ temperature: 1e300 }).sampling.temperature))).toBe(true);
    expect(refusal(() => check({ temperature: Number.NaN })).message).toContain('sampling.temperature');
    expect(refusal(() => check({ temperature: Infinity })).message).toContain('sampling.temperature');
    expect(refusal(() => check({ topP: 0 })).message).toContain('sampling.topP');
    expect(refusal(() => check({ maxNewTokens: '4' })).message).toContain('sampling.maxNewTokens');
    expect(refusal(() => check({ stop: 5 })).message).toContain('sampling.stop');
    expect(refusal(() => check({ seed: -1 })).message).toContain('sampling.seed');
  });

  it('bounds topLogprobsNum by the flag and by the vocabulary', () => {
    expect(refusal(() => check({}, { topLogprobsNum: 21 })).message).toContain('--max-top-logprobs-num');
    const wide = { maxTopLogprobsNum: 1_000_000, vocabSize: 1000 };
    expect(() => checkRequest({ ...completeRequest({ text: 'x' }), topLogprobsNum: 1001 }, wide)).toThrow(/vocabulary/);
    expect(checkRequest({ ...completeRequest({ text: 'x' }), topLogprobsNum: 1000 }, wide).topLogprobsNum).toBe(1000);
  });

  it('treats an option set to undefined as left out', () => {
    expect(check({ temperature: undefined }).sampling.temperature).toBe(1);
  });
});

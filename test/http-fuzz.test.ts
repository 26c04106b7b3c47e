// Property-based fuzzing of /generate, /v1/completions and /v1/chat/completions against the real
// engine on the demo model: boundary and junk values for every sampling field, wrong types,
// unknown fields and batches whose lists do not match. No body may get a 5xx (nor a stream an
// error event of one), the server must stay up, and a greedy stream decoding through all of it
// must produce exactly the tokens it produces alone.
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { useDemoServer } from './demo-server.js';

const demo = useDemoServer();

const PROMPT = 'List 3 countries and their capitals.';
// Fixed, so a failure replays; few runs per route, so the file stays fast on a busy machine.
const RUNS = { seed: 20240611, numRuns: 30 };

// ---- values ---------------------------------------------------------------------------------

/** The edges the hostile tests hit, and their neighbours. */
const EDGE_NUMBERS = [
  0,
  -0,
  1,
  -1,
  0.5,
  0.9,
  1.0000001,
  2,
  2.0000001,
  -2,
  -2.0000001,
  1e-6,
  9.99e-7,
  1e-45,
  3e-39,
  5e-324,
  1e300,
  -1e300,
  Number.MAX_VALUE,
  3.4028235e38,
  2 ** 30 - 1,
  2 ** 30,
  2 ** 31,
  2 ** 32,
  2 ** 32 + 1,
  2 ** 53 - 1,
  2 ** 53,
  2 ** 53 + 2,
  1e20,
  20,
  21,
  128255,
  128256,
  128257,
  200000,
];

const junk: fc.Arbitrary<unknown> = fc.oneof(
  fc.constantFrom(null, true, false, '', '1', 'NaN', 'Infinity', '-0', [], {}, [1, 2], { nested: { deeper: [null, 'x', 1e300] } }),
  fc.string({ maxLength: 8 }),
  fc.anything({ maxDepth: 2, maxKeys: 3 }),
);

/** Any value a sampling field might be sent: mostly numbers near its edges, sometimes junk. */
const anyValue: fc.Arbitrary<unknown> = fc.oneof(
  { weight: 4, arbitrary: fc.constantFrom(...EDGE_NUMBERS) },
  { weight: 2, arbitrary: fc.double({ noNaN: false }) },
  { weight: 1, arbitrary: fc.integer() },
  { weight: 2, arbitrary: junk },
);

/**
 * Output lengths stay tiny so the engine never spends long on one body: any length the server
 * would accept (a non-negative safe integer) is folded into 0..2; refused values pass through.
 */
const clampLength = (v: unknown): unknown => (typeof v === 'number' && Number.isSafeInteger(v) && v >= 0 ? v % 3 : v);
const outputLength: fc.Arbitrary<unknown> = fc.integer({ min: 0, max: 2 });
/** OpenAI's n: accepted values are folded into 1..2. */
const foldChoices = (v: unknown): unknown => (typeof v === 'number' && Number.isSafeInteger(v) && v >= 1 ? 1 + (v % 2) : v);

/** Fields of `shape` each left out or set from its arbitrary. */
function someOf(shape: Record<string, fc.Arbitrary<unknown>>): fc.Arbitrary<Record<string, unknown>> {
  return fc.record(shape, { requiredKeys: [] }) as fc.Arbitrary<Record<string, unknown>>;
}

const inRange = (min: number, max: number, edges: number[]): fc.Arbitrary<number> =>
  fc.oneof(fc.constantFrom(...edges), fc.double({ min, max, noNaN: true }));

/** Values SGLang accepts, edges included: most bodies should reach the engine. */
const SAMPLING_FIELDS: Record<string, fc.Arbitrary<unknown>> = {
  temperature: inRange(0, 1e6, [0, -0, 1e-45, 3e-39, 5e-324, 9.99e-7, 1e-6, 0.7, 1, 2, 1e300, Number.MAX_VALUE, 3.4028235e38]),
  top_p: inRange(Number.MIN_VALUE, 1, [5e-324, 1e-45, 3e-39, 0.1, 0.9, 1]),
  top_k: fc.oneof(
    fc.constantFrom(-1, 1, 2, 40, 128255, 128256, 200000, 2 ** 30 - 1, 2 ** 30, 2 ** 31, 2 ** 32 + 1, 2 ** 53, 1e20),
    fc.integer({ min: 1 }),
  ),
  min_p: inRange(0, 1, [0, -0, 1e-45, 0.05, 1]),
  frequency_penalty: inRange(-2, 2, [-2, -0, 1e-45, 2]),
  presence_penalty: inRange(-2, 2, [-2, 0, 3e-39, 2]),
  repetition_penalty: inRange(Number.MIN_VALUE, 2, [5e-324, 1e-45, 1, 2]),
  seed: fc.oneof(fc.nat(), fc.constantFrom(0, 2 ** 32 - 1, 2 ** 32 + 1, 2 ** 53 - 1)),
  stop: fc.oneof(fc.string({ minLength: 1, maxLength: 3 }), fc.array(fc.string({ minLength: 1, maxLength: 3 }), { maxLength: 2 })),
  stop_token_ids: fc.array(fc.oneof(fc.integer({ min: 0, max: 128255 }), fc.constantFrom(128256, 2 ** 31, 2 ** 53 - 1)), { maxLength: 3 }),
  ignore_eos: fc.boolean(),
  skip_special_tokens: fc.boolean(),
};

/** Now and then one or two fields get a hostile value: a wrong type, an edge, junk, or an unknown name. */
function withHostileFields(bodies: fc.Arbitrary<Record<string, unknown>>, names: string[]): fc.Arbitrary<Record<string, unknown>> {
  const name = fc.oneof(
    { weight: 5, arbitrary: fc.constantFrom(...names) },
    fc.constantFrom('temprature', 'topP', 'foo', '__proto__', 'constructor'),
  );
  const hostile = fc.oneof({ weight: 2, arbitrary: fc.constant([]) }, fc.array(fc.tuple(name, anyValue), { minLength: 1, maxLength: 2 }));
  return fc.tuple(bodies, hostile).map(([body, fields]) => {
    const out = { ...body };
    for (const [k, v] of fields) Object.defineProperty(out, k, { value: v, enumerable: true, writable: true, configurable: true });
    return out;
  });
}

const text: fc.Arbitrary<string> = fc.oneof(
  fc.constant(PROMPT),
  fc.string({ minLength: 1, maxLength: 12 }),
  fc.string({ unit: 'binary', maxLength: 12 }),
);
const tokenIds = fc.array(fc.integer({ min: 0, max: 128255 }), { minLength: 1, maxLength: 6 });
const adapter: fc.Arbitrary<unknown> = fc.constantFrom(null, null, 'demo-a', 'demo-b', 'not-loaded');

/** One value for the whole batch, or (less often) a list, which may not match the batch. */
const perPrompt = (one: fc.Arbitrary<unknown>): fc.Arbitrary<unknown> =>
  fc.oneof({ weight: 3, arbitrary: one }, { weight: 1, arbitrary: fc.array(one, { minLength: 1, maxLength: 3 }) });

// ---- bodies ---------------------------------------------------------------------------------

const samplingParams = withHostileFields(
  someOf({ ...SAMPLING_FIELDS, max_new_tokens: outputLength, no_stop_trim: fc.boolean(), spaces_between_special_tokens: fc.boolean() }).map((s) => ({
    max_new_tokens: 2,
    ...s,
  })),
  [...Object.keys(SAMPLING_FIELDS), 'max_new_tokens', 'n', 'min_new_tokens'],
).map((s) => ({ ...s, max_new_tokens: clampLength(s.max_new_tokens) }));

const generateBody = withHostileFields(
  fc
    .record({
      prompt: fc.oneof(
        text.map((t) => ({ text: t })),
        fc.array(text, { minLength: 1, maxLength: 3 }).map((t) => ({ text: t })),
        tokenIds.map((ids) => ({ input_ids: ids })),
        fc.array(tokenIds, { minLength: 1, maxLength: 2 }).map((ids) => ({ input_ids: ids })),
      ),
      sampling: perPrompt(samplingParams),
      top: someOf({
        lora_path: perPrompt(adapter),
        return_logprob: perPrompt(fc.boolean()),
        top_logprobs_num: perPrompt(fc.integer({ min: 0, max: 20 })),
        return_text_in_logprobs: fc.boolean(),
        stream: fc.boolean(),
      }),
    })
    .map(({ prompt, sampling, top }) => ({ ...prompt, sampling_params: sampling, ...top })),
  ['text', 'input_ids', 'sampling_params', 'lora_path', 'return_logprob', 'top_logprobs_num', 'stream', 'rid'],
);

const openAiCommon = someOf({
  ...SAMPLING_FIELDS,
  n: fc.constantFrom(1, 2),
  stream: fc.boolean(),
  lora_path: adapter,
  user: fc.string({ maxLength: 4 }),
  logit_bias: fc.constant({}),
});
const model = fc.constantFrom('demo', 'demo', 'demo:', 'demo:demo-a', 'demo-b', 'demo:not-loaded');
const OPENAI_NAMES = [...Object.keys(SAMPLING_FIELDS), 'model', 'n', 'stream', 'stream_options', 'lora_path', 'max_tokens', 'logit_bias'];

/** A hostile max_tokens or n that the server would accept is folded small again. */
const keepSmall = (b: Record<string, unknown>): Record<string, unknown> => ({
  ...b,
  ...('max_tokens' in b ? { max_tokens: clampLength(b.max_tokens) } : {}),
  ...('max_completion_tokens' in b ? { max_completion_tokens: clampLength(b.max_completion_tokens) } : {}),
  ...('n' in b ? { n: foldChoices(b.n) } : {}),
});

const completionBody = withHostileFields(
  fc
    .record({
      model,
      prompt: fc.oneof(text, fc.array(text, { minLength: 1, maxLength: 2 }), tokenIds),
      max_tokens: fc.integer({ min: 0, max: 2 }),
      common: openAiCommon,
      own: someOf({ logprobs: fc.integer({ min: 0, max: 20 }), echo: fc.constant(false) }),
    })
    .map(({ common, own, ...rest }) => ({ ...rest, ...common, ...own })),
  [...OPENAI_NAMES, 'prompt', 'logprobs', 'echo', 'best_of', 'suffix'],
).map(keepSmall);

const message = fc.record({
  role: fc.constantFrom('system', 'user', 'assistant', 'developer'),
  content: fc.oneof(text, fc.array(fc.record({ type: fc.constant('text'), text }), { minLength: 1, maxLength: 2 })),
});

const chatBody = withHostileFields(
  fc
    .record({
      model,
      messages: fc.array(message, { minLength: 1, maxLength: 3 }),
      // max_tokens stays as a fallback, so a hostile null max_completion_tokens never means chat's default of 128.
      length: fc.oneof(
        outputLength.map((v) => ({ max_tokens: v })),
        outputLength.map((v) => ({ max_tokens: 2, max_completion_tokens: v })),
      ),
      common: openAiCommon,
      own: someOf({ logprobs: fc.boolean(), top_logprobs: fc.integer({ min: 0, max: 20 }), add_generation_prompt: fc.boolean() }),
    })
    .map(({ length, common, own, ...rest }) => ({ ...rest, ...length, ...common, ...own })),
  [
    ...OPENAI_NAMES,
    'messages',
    'max_completion_tokens',
    'logprobs',
    'top_logprobs',
    'add_generation_prompt',
    'response_format',
    'tools',
    'tool_choice',
  ],
).map(keepSmall);

// ---- checks ---------------------------------------------------------------------------------

/** Posts one body and reads the whole reply; returns what is wrong with it, or null. */
async function problemWith(path: string, body: Record<string, unknown>): Promise<string | null> {
  const res = await fetch(`${demo().base}${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
  const raw = await res.text();
  if (res.status >= 500) return `${res.status}: ${raw.slice(0, 500)}`;
  if ((res.headers.get('content-type') ?? '').startsWith('text/event-stream')) {
    if (!raw.endsWith('data: [DONE]\n\n')) return `the stream did not end with [DONE]: ${raw.slice(-300)}`;
    for (const part of raw.split('\n\n')) {
      const data = part.slice('data: '.length);
      if (data === '' || data === '[DONE]') continue;
      const event = JSON.parse(data) as { error?: { code: number; message: string } };
      if (event.error && event.error.code >= 500) return `stream error ${event.error.code}: ${event.error.message}`;
    }
  } else {
    JSON.parse(raw); // every answer is JSON
  }
  return null;
}

const fuzz = (path: string, bodies: fc.Arbitrary<Record<string, unknown>>): Promise<void> =>
  fc.assert(
    fc.asyncProperty(bodies, async (body) => {
      const problem = await problemWith(path, body);
      if (problem !== null) throw new Error(`${path} ${JSON.stringify(body)} -> ${problem}`);
    }),
    RUNS,
  );

/** The data payloads of the complete server-sent events in `buffer`, and what is left of it. */
function takeEvents(buffer: string): { events: Array<{ output_ids: number[]; error?: unknown }>; rest: string } {
  const parts = buffer.split('\n\n');
  const rest = parts.pop()!;
  return {
    events: parts
      .map((p) => p.slice('data: '.length))
      .filter((d) => d !== '[DONE]')
      .map((d) => JSON.parse(d)),
    rest,
  };
}

describe('fuzzing the generation routes', () => {
  it('never answers 5xx, stays up, and leaves a greedy stream running beside the fuzz untouched', async () => {
    const greedy = { temperature: 0, ignore_eos: true };
    const res = await fetch(`${demo().base}/generate`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ text: PROMPT, sampling_params: { ...greedy, max_new_tokens: 3000 }, stream: true }),
    });
    expect(res.status).toBe(200);
    const reader = res.body!.getReader();
    const decoder = new TextDecoder();
    let buffer = '';
    let ids: number[] = [];
    const readMore = async (): Promise<void> => {
      const { done, value } = await reader.read();
      expect(done).toBe(false);
      const got = takeEvents(buffer + decoder.decode(value, { stream: true }));
      buffer = got.rest;
      for (const e of got.events) {
        expect(e.error, JSON.stringify(e.error)).toBeUndefined();
        ids = e.output_ids;
      }
    };
    while (ids.length === 0) await readMore(); // the stream is running
    // It is read on its own while the fuzz runs, so its socket never backs up.
    let fuzzing = true;
    const reading = (async () => {
      while (fuzzing) await readMore();
    })();
    reading.catch(() => {}); // awaited below; a failure must not go unhandled while the fuzz runs

    try {
      await fuzz('/generate', generateBody);
      await fuzz('/v1/completions', completionBody);
      await fuzz('/v1/chat/completions', chatBody);
    } finally {
      fuzzing = false;
      await reading;
    }
    // One more token after the fuzz ended: every step of the fuzz had the stream in its batch.
    const seen = ids.length;
    while (ids.length <= seen) await readMore();
    await reader.cancel();

    const alone = await fetch(`${demo().base}/generate`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ text: PROMPT, sampling_params: { ...greedy, max_new_tokens: ids.length } }),
    });
    expect((await alone.json()).output_ids).toEqual(ids);
    expect((await fetch(`${demo().base}/health`)).status).toBe(200);
    expect((await fetch(`${demo().base}/health_generate`)).status).toBe(200);
  }, 300_000);
});

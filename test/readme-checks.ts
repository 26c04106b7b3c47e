// What the README's curl examples must answer: the success status, and the shape the README
// shows for each route, from its json sample, a comment after the command, or sample lines.
import { expect } from 'vitest';
import { defaultDemo } from '../src/cli/demo-model.js';
import { GATEWAY_METRIC_NAMES } from '../src/metrics/gateway.js';
import { sseEvents, type Block, type CurlRequest, type CurlResult } from './readme-examples.js';

// ---- the shapes the README shows --------------------------------------------------------------

/** The README's sample of a /generate item: its json block, with `...` standing for more of the same. */
export function generateSample(blocks: readonly Block[]): unknown {
  const block = blocks.find((b) => b.lang === 'json' && b.code.includes('"meta_info"'));
  if (!block) throw new Error('README.md has no json sample of a /generate answer');
  return JSON.parse(block.code.replace(/,\s*\.\.\.(?=\s*[\]}])/g, ''));
}

const FINISH_TYPES = ['length', 'stop', 'abort'];

/** `actual` has every key of `sample`, with values of the same JSON type, recursively. */
function expectShape(sample: unknown, actual: unknown, path: string): void {
  if (sample === null) return;
  if (Array.isArray(sample)) {
    expect(Array.isArray(actual), `${path} is a list`).toBe(true);
    if (sample.length > 0) (actual as unknown[]).forEach((a, i) => expectShape(sample[0], a, `${path}[${i}]`));
  } else if (typeof sample === 'object') {
    expect(typeof actual === 'object' && actual !== null && !Array.isArray(actual), `${path} is an object`).toBe(true);
    for (const [key, value] of Object.entries(sample)) {
      const got = (actual as Record<string, unknown>)[key];
      expect(key in (actual as object), `${path}.${key} is present`).toBe(true);
      // The README lists finish_reason's shapes in words; its sample shows one of them.
      if (key === 'finish_reason') {
        if (got !== null) expect(FINISH_TYPES, `${path}.finish_reason.type`).toContain((got as { type: string }).type);
      } else expectShape(value, got, `${path}.${key}`);
    }
  } else {
    expect(typeof actual, `${path}'s type`).toBe(typeof sample);
  }
}

type CommentShape = Map<string, CommentShape | null>;

/** A shape written in a comment: `{"a", "b": [{c, d, ...}]}` (quotes optional, values only as nested shapes). */
function commentShape(text: string): CommentShape {
  const tokens = text.match(/\.\.\.|"[^"]*"|[\w-]+|[{}[\]:,]/g) ?? [];
  let i = 0;
  const object = (): CommentShape => {
    expect(tokens[i++], `"{" in ${text}`).toBe('{');
    const shape: CommentShape = new Map();
    while (tokens[i] !== '}') {
      const token = tokens[i++]!;
      if (token === ',') continue;
      if (token === '...') continue;
      const key = token.replace(/^"|"$/g, '');
      let value: CommentShape | null = null;
      if (tokens[i] === ':') {
        i++;
        const list = tokens[i] === '[';
        if (list) i++;
        value = object();
        if (list) expect(tokens[i++]).toBe(']');
      }
      shape.set(key, value);
    }
    i++;
    return shape;
  };
  return object();
}

function expectCommentShape(shape: CommentShape, actual: unknown, path: string): void {
  for (const [key, sub] of shape) {
    const got = (actual as Record<string, unknown>)[key];
    expect(got, `${path}.${key}`).toBeDefined();
    if (sub === null) continue;
    for (const [i, item] of (Array.isArray(got) ? got : [got]).entries()) expectCommentShape(sub, item, `${path}.${key}[${i}]`);
  }
}

/** Prometheus sample lines: metric name and label names. */
function series(text: string): Array<{ name: string; labels: string[] }> {
  return text
    .split('\n')
    .filter((l) => l !== '' && !l.startsWith('#'))
    .map((l) => {
      const m = /^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? \S+$/.exec(l);
      if (!m) throw new Error(`not a Prometheus sample: ${l}`);
      return { name: m[1]!, labels: [...(m[2] ?? '').matchAll(/(\w+)="/g)].map((x) => x[1]!).sort() };
    });
}

/** Each sample line the README shows after the command is served, with the same label names. */
function expectSampleSeries(body: string, ctx: CheckContext): void {
  expect(ctx.sample?.lang, 'the README shows sample lines after this command').toBe('text');
  const served = series(body);
  for (const s of series(ctx.sample!.code)) {
    expect(
      served.filter((x) => x.name === s.name).map((x) => x.labels),
      s.name,
    ).toContainEqual(s.labels);
  }
}

// ---- what each route answers --------------------------------------------------------------------

export interface CheckContext {
  /** The `# ...` comment after the command: some show the answer's shape. */
  comment: string | null;
  /** The json or text block right after the command's block: the answer it shows. */
  sample: Block | null;
}

export const json = (body: string): Record<string, unknown> => JSON.parse(body) as Record<string, unknown>;

/** SSE payloads as JSON, checking that the stream ends with `data: [DONE]`. */
export function sseJson(body: string): Array<Record<string, unknown>> {
  const events = sseEvents(body);
  expect(events.at(-1)?.data, 'the stream ends with [DONE]').toBe('[DONE]');
  return events.slice(0, -1).map((e) => json(e.data));
}

export type Checks = Record<string, (req: CurlRequest, body: string, ctx: CheckContext) => void>;

/** What each route must answer, keyed by `METHOD /path`; /generate answers are held to `sample`. */
export function routeChecks(generateItem: unknown): Checks {
  return {
    'POST /generate': (req, body) => {
      const sent = json(req.body!);
      const prompts = Array.isArray(sent.text) ? sent.text.length : 1;
      const n = (sent.sampling_params as { n?: number } | undefined)?.n ?? 1;
      if (sent.stream === true) {
        // Cumulative text in each data line, per item; the last update of each carries its finish reason.
        const byIndex = new Map<number, Array<Record<string, unknown>>>();
        for (const item of sseJson(body)) {
          expectShape(generateItem, item, 'stream item');
          const index = (item.index as number | undefined) ?? 0;
          byIndex.set(index, [...(byIndex.get(index) ?? []), item]);
        }
        expect(byIndex.size).toBe(prompts * n);
        for (const updates of byIndex.values()) {
          updates.forEach((u, i) => {
            if (i > 0) expect((u.text as string).startsWith(updates[i - 1]!.text as string), 'streamed text is cumulative').toBe(true);
            const finish = (u.meta_info as { finish_reason: unknown }).finish_reason;
            expect(finish === null, 'only the last update has a finish reason').toBe(i < updates.length - 1);
          });
        }
        return;
      }
      const answer = JSON.parse(body) as unknown;
      // A list for a batch or for n > 1, a single object for one prompt.
      const listed = Array.isArray(sent.text) || n > 1;
      expect(Array.isArray(answer)).toBe(listed);
      const items = listed ? (answer as unknown[]) : [answer];
      expect(items).toHaveLength(prompts * n);
      items.forEach((item, i) => expectShape(generateItem, item, `item ${i}`));
    },
    'GET /health': (_req, body) => expect(body).toBe(''),
    'GET /health_generate': (_req, body) => expect(body).toBe(''),
    'POST /abort_request': (_req, body) => expect(body).toBe(''),
    'POST /flush_cache': (_req, body) => expect(body.startsWith('Cache flushed.')).toBe(true),
    'GET /get_model_info': (_req, body) => {
      expect(json(body)).toMatchObject({ served_model_name: 'demo', model_path: expect.any(String), max_total_tokens: expect.any(Number) });
    },
    'GET /get_server_info': (_req, body) => {
      const info = json(body);
      // The README: the arguments under SGLang's names (never the key), max_total_num_tokens, internal_states, version.
      expect(info).toMatchObject({ max_loras_per_batch: 8, max_total_num_tokens: expect.any(Number), version: expect.any(String) });
      expect(info).not.toHaveProperty('api_key');
      expect(info.internal_states).toEqual([
        expect.objectContaining({
          num_running_reqs: expect.any(Number),
          num_waiting_reqs: expect.any(Number),
          kv_cache_free_blocks: expect.any(Number),
          loaded_lora_adapters: expect.any(Number),
        }),
      ]);
    },
    'GET /v1/models': (_req, body) => {
      const r = json(body);
      expect(r.object).toBe('list');
      // SGLang's shape: an adapter's id is its name and its parent the served model.
      const data = r.data as Array<{ id: string; parent: string | null }>;
      // What `npm start` serves: the trained demo model's adapters when it is there, else demo-a and demo-b.
      const adapters = defaultDemo().adapters.map((a) => a.name);
      expect(data.map((m) => m.id)).toEqual(expect.arrayContaining(['demo', ...adapters]));
      expect(data.find((m) => m.id === adapters[0])?.parent).toBe('demo');
    },
    'POST /v1/completions': (req, body) => {
      const sent = json(req.body!);
      const prompts = Array.isArray(sent.prompt) && typeof sent.prompt[0] !== 'number' ? sent.prompt.length : 1;
      const r = json(body);
      expect(r.object).toBe('text_completion');
      const choices = r.choices as Array<{ text: string; index: number }>;
      expect(choices).toHaveLength(prompts * ((sent.n as number | undefined) ?? 1));
      choices.forEach((c, i) => expect(c).toMatchObject({ index: i, text: expect.any(String) }));
      expect(r.usage).toMatchObject({ prompt_tokens: expect.any(Number), completion_tokens: expect.any(Number) });
    },
    'POST /v1/chat/completions': (req, body) => {
      const sent = json(req.body!);
      const n = (sent.n as number | undefined) ?? 1;
      if (sent.stream === true) {
        const chunks = sseJson(body);
        for (const c of chunks) expect(c.object).toBe('chat.completion.chunk');
        if ((sent.stream_options as { include_usage?: boolean } | undefined)?.include_usage) {
          // The usage chunk comes last, with no choices.
          expect(chunks.at(-1)).toMatchObject({ choices: [], usage: { total_tokens: expect.any(Number) } });
        }
        return;
      }
      const r = json(body);
      expect(r.object).toBe('chat.completion');
      const choices = r.choices as Array<{
        message: { role: string; content: string };
        logprobs: { content: Array<{ top_logprobs: unknown[] }> } | null;
      }>;
      expect(choices).toHaveLength(n);
      for (const c of choices) {
        expect(c.message).toMatchObject({ role: 'assistant', content: expect.any(String) });
        if (sent.logprobs === true) {
          expect(c.logprobs!.content.length).toBeGreaterThan(0);
          for (const t of c.logprobs!.content) expect(t.top_logprobs).toHaveLength((sent.top_logprobs as number | undefined) ?? 0);
        }
      }
    },
    'POST /load_lora_adapter': (req, body) => {
      const sent = json(req.body!);
      const r = json(body);
      expect(r).toMatchObject({ success: true, error_message: '' });
      expect((r.loaded_adapters as Record<string, string>)[sent.lora_name as string]).toBe(sent.lora_path);
    },
    'POST /unload_lora_adapter': (req, body) => {
      const r = json(body);
      expect(r).toMatchObject({ success: true, error_message: '' });
      expect(r.loaded_adapters).not.toHaveProperty(json(req.body!).lora_name as string);
    },
    'GET /debug/adapters/state': (_req, body, ctx) => {
      expect(ctx.comment, 'the README shows this answer in a comment').toMatch(/^\{/);
      expectCommentShape(commentShape(ctx.comment!), json(body), 'state');
    },
    'GET /debug/adapters/events': (_req, body) => {
      // "a snapshot, then one per transition": the first event is the whole table.
      const first = sseEvents(body)[0]!;
      expect(first.event).toBe('snapshot');
      expect(json(first.data)).toMatchObject({ poolSlots: expect.any(Number), adapters: expect.any(Array) });
    },
    'GET /metrics': (_req, body, ctx) => expectSampleSeries(body, ctx),
    'GET /metrics/gateway': (_req, body, ctx) => {
      expectSampleSeries(body, ctx);
      // "only the series below": what endpoint pickers read, nothing per adapter.
      const gateway: readonly string[] = Object.values(GATEWAY_METRIC_NAMES).flat();
      for (const s of series(body)) expect(gateway, s.name).toContain(s.name);
    },
  };
}

/** The answer is a success and passes its route's check; a route without a check fails, so a new example gets one. */
export function checkAnswer(checks: Checks, at: string, req: CurlRequest, res: CurlResult, ctx: CheckContext): void {
  const route = `${req.method} ${req.url.pathname}`;
  at = `${at}: ${route}`;
  expect(res.status, `${at} answered ${res.body.slice(0, 300)}`).toBeGreaterThanOrEqual(200);
  expect(res.status, `${at} answered ${res.body.slice(0, 300)}`).toBeLessThan(300);
  const check = checks[route];
  if (!check) throw new Error(`${at}: this test has no check for ${route}; add one to routeChecks`);
  check(req, res.body, ctx);
}

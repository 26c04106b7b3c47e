// POST /v1/completions: OpenAI's legacy completions over one or more prompts (strings or token
// ids), n choices each, streamed or not.
import { randomUUID } from 'node:crypto';
import type { Hono } from 'hono';
import { checkTopLogprobsNum, type GenerateChunk, type TroupeEngine } from '../../api.js';
import { badRequest } from '../../errors.js';
import type { Log } from '../../log.js';
import type { GenerateLimits } from '../generate-request.js';
import { asBool, asInt, asString, expected, readJsonObject, type JsonObject } from '../validate.js';
import { Call, collectJobs, streamJobs } from '../jobs.js';
import { at, openAiError, tagPromptError } from './errors.js';
import { completionLogprobs } from './logprobs.js';
import { COMMON_KEYS, parseCommon, rejectUnknown } from './request.js';
import { finishReasonOf, makeJobs, openAiStream, usageOf, type Prompt } from './run.js';

const KEYS = [...COMMON_KEYS, 'prompt', 'logprobs', 'echo', 'best_of', 'suffix'];
// OpenAI's and SGLang's default for completions.
const DEFAULT_MAX_TOKENS = 16;

export function registerCompletions(app: Hono, engine: TroupeEngine, log: Log, servedModelName: string, limits: GenerateLimits): void {
  app.post('/v1/completions', async (c) => {
    const call = new Call(c.req.raw);
    try {
      const body = await readJsonObject(c.req.raw);
      rejectUnknown(body, KEYS);
      const common = await parseCommon(body, servedModelName, engine, ['max_tokens'], DEFAULT_MAX_TOKENS);
      const prompts = at('prompt', () => parsePrompt(body.prompt));
      const topN =
        body.logprobs === undefined || body.logprobs === null
          ? null
          : at('logprobs', () => checkTopLogprobsNum(body.logprobs, 'logprobs', limits.maxTopLogprobsNum));
      checkUnsupported(body, common.n);
      const jobs = makeJobs(prompts, common, topN !== null, topN ?? 0);
      const id = `cmpl-${randomUUID().replace(/-/g, '')}`;
      const created = Math.floor(Date.now() / 1000);
      const head = { id, object: 'text_completion', created, model: common.model };

      if (common.stream) {
        const sent = jobs.map(() => ({ text: 0, tokens: 0 }));
        const render = async (index: number, chunk: GenerateChunk): Promise<unknown[]> => {
          const s = sent[index]!;
          const text = chunk.text.slice(s.text);
          const logprobs =
            topN === null || chunk.outputIds.length === s.tokens ? null : await completionLogprobs(engine, chunk, s.tokens, topN, s.text);
          const finish = finishReasonOf(chunk.finishReason);
          s.text = Math.max(s.text, chunk.text.length);
          s.tokens = chunk.outputIds.length;
          if (text === '' && finish === null && logprobs === null) return [];
          const payload: Record<string, unknown> = { ...head, choices: [{ index, text, logprobs, finish_reason: finish }] };
          if (common.includeUsage) payload.usage = null;
          return [payload];
        };
        const usage = common.includeUsage ? (u: unknown) => ({ ...head, choices: [], usage: u }) : null;
        return await streamJobs(c, engine, jobs, call, log, openAiStream('prompt', render, usage, common.n));
      }

      const outs = await collectJobs(engine, jobs, call, (err) => tagPromptError(err, 'prompt'));
      const choices = await Promise.all(
        outs.map(async (o, index) => ({
          index,
          text: o.text,
          logprobs: topN === null ? null : await completionLogprobs(engine, o, 0, topN, 0),
          finish_reason: finishReasonOf(o.finishReason),
        })),
      );
      return c.json({ ...head, choices, usage: usageOf(outs, common.n) });
    } catch (err) {
      return openAiError(c, err);
    } finally {
      call.detach();
    }
  });
}

function parsePrompt(v: unknown): Prompt[] {
  if (v === undefined || v === null) throw badRequest('prompt is required: a string, a list of strings, or token ids');
  if (typeof v === 'string') return [{ text: v }];
  if (!Array.isArray(v)) expected('prompt', 'a string, a list of strings, a list of token ids or a list of such lists', v);
  if (v.length === 0) throw badRequest('prompt is an empty list; give at least one prompt');
  if (typeof v[0] === 'number') return [{ inputIds: v.map((id, i) => asInt(id, `prompt[${i}]`, 0)) }];
  if (Array.isArray(v[0])) {
    return v.map((row, i) => {
      if (!Array.isArray(row) || row.length === 0) expected(`prompt[${i}]`, 'a non-empty list of token ids', row);
      return { inputIds: row.map((id, j) => asInt(id, `prompt[${i}][${j}]`, 0)) };
    });
  }
  return v.map((p, i) => ({ text: asString(p, `prompt[${i}]`) }));
}

function checkUnsupported(body: JsonObject, n: number): void {
  if (body.echo !== undefined && body.echo !== null && at('echo', () => asBool(body.echo, 'echo'))) {
    at('echo', () => {
      throw badRequest('echo is not supported; leave it out or send false');
    });
  }
  if (body.best_of !== undefined && body.best_of !== null) {
    at('best_of', () => {
      const b = asInt(body.best_of, 'best_of', 1);
      if (b !== n) throw badRequest(`best_of must equal n (${n}) when given; choosing among extra samples is not supported`);
    });
  }
  if (body.suffix !== undefined && body.suffix !== null) {
    at('suffix', () => {
      throw badRequest('suffix is not supported');
    });
  }
}

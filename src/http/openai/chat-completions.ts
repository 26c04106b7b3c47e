// POST /v1/chat/completions: the messages are rendered with the model's chat template into one
// prompt, then run like a completion with n choices, streamed or not.
import { randomUUID } from 'node:crypto';
import type { Hono } from 'hono';
import { checkTopLogprobsNum, type GenerateChunk, type TroupeEngine } from '../../api.js';
import { badRequest } from '../../errors.js';
import type { Log } from '../../log.js';
import type { GenerateLimits } from '../generate-request.js';
import { asBool, asString, expected, isObject, readJsonObject, type JsonObject } from '../validate.js';
import type { ChatMessage, ChatTemplate } from './chat-template.js';
import { Call, collectJobs, streamJobs } from '../jobs.js';
import { at, openAiError, tagPromptError } from './errors.js';
import { chatLogprobs } from './logprobs.js';
import { COMMON_KEYS, parseCommon, rejectUnknown } from './request.js';
import { finishReasonOf, makeJobs, openAiStream, usageOf } from './run.js';

const KEYS = [
  ...COMMON_KEYS,
  'messages',
  'max_completion_tokens',
  'logprobs',
  'top_logprobs',
  'add_generation_prompt',
  'response_format',
  'tools',
  'tool_choice',
  'parallel_tool_calls',
];

export function registerChatCompletions(
  app: Hono,
  engine: TroupeEngine,
  log: Log,
  servedModelName: string,
  template: () => ChatTemplate,
  limits: GenerateLimits,
): void {
  app.post('/v1/chat/completions', async (c) => {
    const call = new Call(c.req.raw);
    try {
      const body = await readJsonObject(c.req.raw);
      rejectUnknown(body, KEYS);
      const common = await parseCommon(body, servedModelName, engine, ['max_completion_tokens', 'max_tokens'], 128);
      const messages = at('messages', () => parseMessages(body.messages));
      const logprobs = body.logprobs === undefined || body.logprobs === null ? false : at('logprobs', () => asBool(body.logprobs, 'logprobs'));
      let topN = 0;
      if (body.top_logprobs !== undefined && body.top_logprobs !== null) {
        topN = at('top_logprobs', () => {
          const k = checkTopLogprobsNum(body.top_logprobs, 'top_logprobs', limits.maxTopLogprobsNum);
          if (!logprobs) throw badRequest('top_logprobs needs "logprobs": true');
          return k;
        });
      }
      checkUnsupported(body);
      const addGenerationPrompt =
        body.add_generation_prompt === undefined || body.add_generation_prompt === null
          ? true
          : at('add_generation_prompt', () => asBool(body.add_generation_prompt, 'add_generation_prompt'));
      const text = at('messages', () => template().render(messages, addGenerationPrompt));
      const jobs = makeJobs([{ text }], common, logprobs, topN);
      const id = `chatcmpl-${randomUUID().replace(/-/g, '')}`;
      const created = Math.floor(Date.now() / 1000);
      const head = { id, object: 'chat.completion.chunk', created, model: common.model };

      if (common.stream) {
        const sent = jobs.map(() => ({ started: false, text: 0, tokens: 0 }));
        const render = async (index: number, chunk: GenerateChunk): Promise<unknown[]> => {
          const s = sent[index]!;
          const wrap = (delta: object, lp: unknown, finish: string | null): object => {
            const p: Record<string, unknown> = { ...head, choices: [{ index, delta, logprobs: lp, finish_reason: finish }] };
            if (common.includeUsage) p.usage = null;
            return p;
          };
          const out: object[] = [];
          if (!s.started) {
            s.started = true;
            out.push(wrap({ role: 'assistant', content: '' }, null, null));
          }
          const delta = chunk.text.slice(s.text);
          const lp = logprobs && chunk.outputIds.length > s.tokens ? { content: await chatLogprobs(engine, chunk, s.tokens, topN) } : null;
          s.text = Math.max(s.text, chunk.text.length);
          s.tokens = chunk.outputIds.length;
          if (delta !== '' || lp !== null) out.push(wrap({ content: delta }, lp, null));
          const finish = finishReasonOf(chunk.finishReason);
          if (finish !== null) out.push(wrap({}, null, finish));
          return out;
        };
        const usage = common.includeUsage ? (u: unknown) => ({ ...head, choices: [], usage: u }) : null;
        return await streamJobs(c, engine, jobs, call, log, openAiStream('messages', render, usage, common.n));
      }

      const outs = await collectJobs(engine, jobs, call, (err) => tagPromptError(err, 'messages'));
      const choices = await Promise.all(
        outs.map(async (o, index) => ({
          index,
          message: { role: 'assistant', content: o.text },
          logprobs: logprobs ? { content: await chatLogprobs(engine, o, 0, topN) } : null,
          finish_reason: finishReasonOf(o.finishReason),
        })),
      );
      return c.json({ ...head, object: 'chat.completion', choices, usage: usageOf(outs, common.n) });
    } catch (err) {
      return openAiError(c, err);
    } finally {
      call.detach();
    }
  });
}

const ROLES = new Set(['system', 'developer', 'user', 'assistant']);

export function parseMessages(v: unknown): ChatMessage[] {
  if (v === undefined || v === null) throw badRequest('messages is required: a list of {role, content}');
  if (!Array.isArray(v)) expected('messages', 'a list of {role, content}', v);
  if (v.length === 0) throw badRequest('messages is empty; give at least one message');
  return v.map((m, i): ChatMessage => {
    const where = `messages[${i}]`;
    if (!isObject(m)) expected(where, 'an object with role and content', m);
    for (const k of Object.keys(m)) {
      if (k !== 'role' && k !== 'content' && k !== 'name')
        throw badRequest(`unknown field ${JSON.stringify(k)} in ${where}; accepted: role, content, name`);
    }
    const role = asString(m.role, `${where}.role`);
    if (!ROLES.has(role)) throw badRequest(`${where}.role must be system, user or assistant, got ${JSON.stringify(role)}`);
    if (m.name !== undefined && m.name !== null) asString(m.name, `${where}.name`);
    // OpenAI's newer name for the system role.
    return { role: role === 'developer' ? 'system' : (role as ChatMessage['role']), content: parseContent(m.content, `${where}.content`) };
  });
}

/** A string, or a list of text parts joined by newlines as vLLM and SGLang do. */
function parseContent(v: unknown, where: string): string {
  if (typeof v === 'string') return v;
  if (!Array.isArray(v)) expected(where, 'a string or a list of text parts', v);
  return v
    .map((part, j) => {
      const w = `${where}[${j}]`;
      if (!isObject(part)) expected(w, 'a part {"type": "text", "text": ...}', part);
      if (part.type !== 'text') throw badRequest(`${w}.type must be "text" (only text content is supported), got ${JSON.stringify(part.type)}`);
      return asString(part.text, `${w}.text`);
    })
    .join('\n');
}

function checkUnsupported(body: JsonObject): void {
  const rf = body.response_format;
  if (rf !== undefined && rf !== null) {
    at('response_format', () => {
      if (!isObject(rf) || rf.type !== 'text') throw badRequest('response_format: only {"type": "text"} is supported');
    });
  }
  const tools = body.tools;
  if (tools !== undefined && tools !== null && !(Array.isArray(tools) && tools.length === 0)) {
    at('tools', () => {
      throw badRequest('tools are not supported');
    });
  }
  const tc = body.tool_choice;
  if (tc !== undefined && tc !== null && tc !== 'none') {
    at('tool_choice', () => {
      throw badRequest('tool_choice: only "none" is supported');
    });
  }
  if (body.parallel_tool_calls !== undefined && body.parallel_tool_calls !== null) {
    at('parallel_tool_calls', () => asBool(body.parallel_tool_calls, 'parallel_tool_calls'));
  }
}

// Shared helpers for the OpenAI route tests on the echo engine.
import { expect } from 'vitest';
import { createApp } from '../src/http/app.js';
import { ChatTemplate } from '../src/http/openai/chat-template.js';
import { EchoEngine } from './http-echo-engine.js';

/** A small template that shows roles and the generation prompt plainly. */
export const PLAIN_TEMPLATE = ChatTemplate.fromTokenizerConfig({
  bos_token: '<s>',
  chat_template:
    '{{ bos_token }}{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}{% if add_generation_prompt %}[assistant]{% endif %}',
});

export function echoApp(template: ChatTemplate = PLAIN_TEMPLATE): { engine: EchoEngine; app: ReturnType<typeof createApp> } {
  const engine = new EchoEngine();
  return { engine, app: createApp(engine, { servedModelName: 'demo', chatTemplate: template }) };
}

export const postTo =
  (app: ReturnType<typeof createApp>) =>
  (path: string, body: unknown): Promise<Response> =>
    Promise.resolve(
      app.request(path, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: typeof body === 'string' ? body : JSON.stringify(body),
      }),
    );

export interface OpenAiError {
  error: { message: string; type: string; param: string | null; code: number };
}

/** Checks OpenAI's error shape and that the message and param name the field. */
export async function expectOpenAiError(res: Response, status: number, param: string | null, ...fragments: string[]): Promise<OpenAiError> {
  expect(res.status).toBe(status);
  const body = (await res.json()) as OpenAiError;
  expect(Object.keys(body.error).sort()).toEqual(['code', 'message', 'param', 'type']);
  expect(body.error.code).toBe(status);
  expect(body.error.param).toBe(param);
  for (const f of fragments) expect(body.error.message).toContain(f);
  return body;
}

/** The JSON payloads of an SSE body, and whether it ended with [DONE]. */
export async function sseEvents(res: Response): Promise<{ events: Array<Record<string, any>>; done: boolean }> {
  const raw = await res.text();
  const lines = raw.split('\n\n').filter((l) => l.trim() !== '');
  for (const l of lines) expect(l.startsWith('data: ')).toBe(true);
  const data = lines.map((l) => l.slice('data: '.length));
  const done = data[data.length - 1] === '[DONE]';
  return { events: data.filter((d) => d !== '[DONE]').map((d) => JSON.parse(d) as Record<string, any>), done };
}

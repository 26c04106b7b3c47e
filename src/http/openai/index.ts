// OpenAI's API: /v1/completions, /v1/chat/completions and /v1/models. The served model name
// is the base model and "<served>:<adapter>" each adapter.
import type { Hono } from 'hono';
import type { TroupeEngine } from '../../api.js';
import { badRequest } from '../../errors.js';
import type { Log } from '../../log.js';
import { ChatTemplate } from './chat-template.js';
import { registerChatCompletions } from './chat-completions.js';
import { registerCompletions } from './completions.js';
import { registerModels } from './models.js';

export interface OpenAiOptions {
  servedModelName: string;
  /** Defaults to the chat template in tokenizer_config.json of the engine's tokenizer directory. */
  chatTemplate?: ChatTemplate;
  /** --max-top-logprobs-num: the most logprobs (completions) or top_logprobs (chat) a request may ask for. */
  maxTopLogprobsNum: number;
}

export function registerOpenAiRoutes(app: Hono, engine: TroupeEngine, log: Log, opts: OpenAiOptions): void {
  const served = opts.servedModelName;
  // The adapter comes after the last part of "<served>:<adapter>", so the name itself cannot hold one.
  if (served.includes(':'))
    throw badRequest(`--served-model-name ${JSON.stringify(served)} must not contain ":"; "<name>:<adapter>" picks an adapter`);
  let template = opts.chatTemplate ?? null;
  const getTemplate = (): ChatTemplate => {
    template ??= ChatTemplate.fromTokenizerDir(engine.modelInfo().tokenizerPath);
    return template;
  };
  const limits = { maxTopLogprobsNum: opts.maxTopLogprobsNum };
  registerCompletions(app, engine, log, served, limits);
  registerChatCompletions(app, engine, log, served, getTemplate, limits);
  registerModels(app, engine, served);
}

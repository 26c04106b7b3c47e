// The fields /v1/completions and /v1/chat/completions share: the model (which picks the adapter),
// sampling, n, streaming. OpenAI's names and ranges, SGLang's where OpenAI has no rule; SGLang's
// extra sampling fields (top_k, min_p, repetition_penalty, ...) are accepted as SGLang does.
import {
  checkStop, checkStopTokenIds, DEFAULT_SAMPLING, SAMPLING_RULES, type SamplingOptions, type TroupeEngine,
} from '../../api.js';
import { badRequest } from '../../errors.js';
import { SAMPLING_WIRE_NAMES } from '../generate-request.js';
import { asBool, asInt, asString, expected, isObject, type JsonObject } from '../validate.js';
import { at, modelNotFound } from './errors.js';

export const COMMON_KEYS = [
  'model', 'n', 'stream', 'stream_options', 'stop', 'seed', 'temperature', 'top_p', 'max_tokens',
  'frequency_penalty', 'presence_penalty', 'user', 'logit_bias',
  // SGLang's extensions
  'top_k', 'min_p', 'repetition_penalty', 'ignore_eos', 'skip_special_tokens', 'stop_token_ids', 'lora_path',
];

export interface CommonRequest {
  /** The model string as given, echoed back in every reply. */
  model: string;
  /** Adapter name, or null for the base model. */
  lora: string | null;
  sampling: SamplingOptions;
  /** Choices per prompt. */
  n: number;
  stream: boolean;
  includeUsage: boolean;
}

export function rejectUnknown(body: JsonObject, known: readonly string[]): void {
  for (const key of Object.keys(body)) {
    if (!known.includes(key)) {
      at(key, () => {
        throw badRequest(`unknown field ${JSON.stringify(key)}; accepted: ${known.join(', ')}`);
      });
    }
  }
}

/**
 * "<served>" and "<served>:" are the base model, "<served>:<adapter>" an adapter; a bare
 * adapter name works too. The adapter in model wins over lora_path, as in SGLang.
 */
export async function resolveModel(body: JsonObject, servedModelName: string, engine: TroupeEngine): Promise<{ model: string; lora: string | null }> {
  const model = at('model', () => {
    if (body.model === undefined || body.model === null) throw badRequest(`model is required; use "${servedModelName}" or "${servedModelName}:<adapter>"`);
    return asString(body.model, 'model');
  });
  const loraPath = body.lora_path === undefined || body.lora_path === null ? null : at('lora_path', () => asString(body.lora_path, 'lora_path'));
  // Only the named adapter is asked for; the whole list only when an error names the choices.
  const loaded = async (name: string): Promise<boolean> => (await engine.adapters([name])).some((a) => a.name === name);
  const choices = async (): Promise<string> =>
    [servedModelName, ...(await engine.adapters()).map((a) => `${servedModelName}:${a.name}`)].join(', ');

  let lora: string | null;
  let param = 'model';
  if (model === servedModelName || model === `${servedModelName}:`) {
    lora = loraPath;
    if (loraPath !== null) param = 'lora_path';
  } else if (model.startsWith(`${servedModelName}:`)) {
    lora = model.slice(servedModelName.length + 1);
  } else if (await loaded(model)) {
    return { model, lora: model };
  } else {
    throw modelNotFound(`the model ${JSON.stringify(model)} does not exist; served: ${await choices()}`);
  }
  if (lora !== null && !(await loaded(lora))) {
    throw modelNotFound(`LoRA adapter ${JSON.stringify(lora)} is not loaded; served: ${await choices()}`, param);
  }
  return { model, lora };
}

/** Sampling from OpenAI's fields; maxTokensKeys lists the names that set the output length, first wins. */
export async function parseCommon(
  body: JsonObject, servedModelName: string, engine: TroupeEngine, maxTokensKeys: string[], defaultMaxTokens: number,
): Promise<CommonRequest> {
  const { model, lora } = await resolveModel(body, servedModelName, engine);
  const get = (k: string): unknown => (body[k] === null ? undefined : body[k]);
  const s: SamplingOptions = { ...DEFAULT_SAMPLING, maxNewTokens: defaultMaxTokens, stop: [], stopTokenIds: [] };

  for (const k of maxTokensKeys) {
    const v = get(k);
    if (v !== undefined) {
      s.maxNewTokens = at(k, () => SAMPLING_RULES.maxNewTokens(v, k));
      break;
    }
  }
  for (const [wire, key] of SAMPLING_WIRE_NAMES) {
    const x = get(wire);
    if (x !== undefined) s[key] = at(wire, () => SAMPLING_RULES[key](x, wire));
  }
  let v = get('stop');
  if (v !== undefined) s.stop = at('stop', () => checkStop(v, 'stop'));
  v = get('stop_token_ids');
  if (v !== undefined) s.stopTokenIds = at('stop_token_ids', () => checkStopTokenIds(v, 'stop_token_ids'));
  v = get('seed');
  if (v !== undefined) s.seed = at('seed', () => asInt(v, 'seed', 0));
  v = get('ignore_eos');
  if (v !== undefined) s.ignoreEos = at('ignore_eos', () => asBool(v, 'ignore_eos'));
  v = get('skip_special_tokens');
  if (v !== undefined) s.skipSpecialTokens = at('skip_special_tokens', () => asBool(v, 'skip_special_tokens'));
  v = get('user');
  if (v !== undefined) at('user', () => asString(v, 'user'));
  v = get('logit_bias');
  if (v !== undefined) {
    at('logit_bias', () => {
      if (!isObject(v)) expected('logit_bias', 'an object', v);
      if (Object.keys(v).length > 0) throw badRequest('logit_bias is not supported; leave it out or send {}');
    });
  }

  v = get('n');
  const n = v === undefined ? 1 : at('n', () => {
    const k = asInt(v, 'n', 1);
    if (k > 128) throw badRequest(`n must be at most 128, got ${k}`);
    return k;
  });
  v = get('stream');
  const stream = v === undefined ? false : at('stream', () => asBool(v, 'stream'));
  let includeUsage = false;
  v = get('stream_options');
  if (v !== undefined) {
    includeUsage = at('stream_options', () => {
      if (!isObject(v)) expected('stream_options', 'an object', v);
      if (!stream) throw badRequest('stream_options is only allowed with "stream": true');
      for (const k of Object.keys(v)) {
        if (k !== 'include_usage') throw badRequest(`unknown field ${JSON.stringify(k)} in stream_options; accepted: include_usage`);
      }
      return v.include_usage === undefined || v.include_usage === null ? false : asBool(v.include_usage, 'stream_options.include_usage');
    });
  }
  return { model, lora, sampling: s, n, stream, includeUsage };
}

/** The seed of choice j: consecutive seeds, so n seeded choices differ from each other yet repeat. */
export function choiceSeed(seed: number | null, j: number): number | null {
  return seed === null ? null : (seed + j) % 2 ** 32;
}

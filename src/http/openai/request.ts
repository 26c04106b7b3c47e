// The fields /v1/completions and /v1/chat/completions share: the model (which picks the adapter),
// sampling, n, streaming. OpenAI's names and ranges, SGLang's where OpenAI has no rule; SGLang's
// extra sampling fields (top_k, min_p, repetition_penalty, ...) are accepted as SGLang does.
import type { SamplingOptions, TroupeEngine } from '../../api.js';
import { badRequest } from '../../errors.js';
import { checkChoices, checkLogitBias, readSampling, SAMPLING_FIELD_NAMES, wireFields } from '../sampling.js';
import { asBool, asString, expected, isObject, type JsonObject } from '../validate.js';
import { at } from './errors.js';
import { resolveModel, type ModelChoice } from './model-name.js';

export const COMMON_KEYS = [
  'model',
  'n',
  'stream',
  'stream_options',
  'seed',
  'max_tokens',
  'user',
  'logit_bias',
  ...SAMPLING_FIELD_NAMES,
  // SGLang's extension
  'lora_path',
];

export interface CommonRequest extends ModelChoice {
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

/** Sampling from OpenAI's fields; maxTokensKeys lists the names that set the output length, first wins. */
export async function parseCommon(
  body: JsonObject,
  servedModelName: string,
  engine: TroupeEngine,
  maxTokensKeys: string[],
  defaultMaxTokens: number,
): Promise<CommonRequest> {
  const choice = await resolveModel(body, servedModelName, engine);
  const w = wireFields(body);
  const sampling = readSampling(w, { maxTokens: maxTokensKeys, defaultMaxTokens, seed: ['seed'] });
  const field = <T>(key: string, parse: (v: unknown, f: string) => T): T | undefined => {
    const v = w.get(key);
    return v === undefined ? undefined : at(key, () => parse(v, key));
  };
  field('user', asString);
  field('logit_bias', checkLogitBias);
  const n = field('n', checkChoices) ?? 1;
  const stream = field('stream', asBool) ?? false;
  const includeUsage =
    field('stream_options', (v, f) => {
      if (!isObject(v)) expected(f, 'an object', v);
      if (!stream) throw badRequest('stream_options is only allowed with "stream": true');
      for (const k of Object.keys(v)) {
        if (k !== 'include_usage') throw badRequest(`unknown field ${JSON.stringify(k)} in stream_options; accepted: include_usage`);
      }
      return v.include_usage === undefined || v.include_usage === null ? false : asBool(v.include_usage, 'stream_options.include_usage');
    }) ?? false;
  return { ...choice, sampling, n, stream, includeUsage };
}

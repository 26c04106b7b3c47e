// The one mapping from wire sampling fields to SamplingOptions. SGLang's /generate reads them
// from sampling_params and the OpenAI routes from the top level of the body; the names, ranges
// and defaults are SGLang's on both, so /generate, both OpenAI routes and /health_generate all
// go through readSampling, and a value one route refuses every route refuses.
import { checkStop, checkStopTokenIds, DEFAULT_SAMPLING, SAMPLING_RULES, type NumericSamplingKey, type SamplingOptions } from '../api.js';
import { badRequest } from '../errors.js';
import { at } from './openai/errors.js';
import { asBool, asInt, expected, isObject, type JsonObject } from './validate.js';

/** Where sampling fields are read from, and what each is called in messages. */
export interface WireFields {
  /** The value of a field; null reads as absent, since SGLang's clients send null for "the default". */
  get(key: string): unknown;
  /** The field's name in messages and in OpenAI's error `param`. */
  name(key: string): string;
}

/** The fields of `obj`, named `<prefix>.<key>` (or just `<key>` without a prefix). */
export function wireFields(obj: JsonObject, prefix = ''): WireFields {
  return {
    get: (k) => (Object.hasOwn(obj, k) && obj[k] !== null ? obj[k] : undefined),
    name: (k) => (prefix === '' ? k : `${prefix}.${k}`),
  };
}

/** The numeric options whose wire names every route shares (the output length is named per route). */
const NUMERIC_WIRE_NAMES: ReadonlyArray<readonly [string, Exclude<NumericSamplingKey, 'maxNewTokens'>]> = [
  ['temperature', 'temperature'],
  ['top_p', 'topP'],
  ['top_k', 'topK'],
  ['min_p', 'minP'],
  ['frequency_penalty', 'frequencyPenalty'],
  ['presence_penalty', 'presencePenalty'],
  ['repetition_penalty', 'repetitionPenalty'],
];

/** Every wire name readSampling takes besides the route's own output-length and seed names. */
export const SAMPLING_FIELD_NAMES: readonly string[] = [
  ...NUMERIC_WIRE_NAMES.map(([wire]) => wire),
  'stop',
  'stop_token_ids',
  'ignore_eos',
  'skip_special_tokens',
];

/** The names a route gives the output length and the seed. */
export interface SamplingNames {
  /** The fields that set the output length; the first one present wins. */
  maxTokens: readonly string[];
  defaultMaxTokens: number;
  /** The fields that set the seed; when several are given they must agree. */
  seed: readonly string[];
}

/** SamplingOptions from wire fields; a bad value is a 400 naming its field (OpenAI's param too). */
export function readSampling(w: WireFields, names: SamplingNames): SamplingOptions {
  const s: SamplingOptions = { ...DEFAULT_SAMPLING, maxNewTokens: names.defaultMaxTokens, stop: [], stopTokenIds: [] };
  const read = <T>(key: string, parse: (v: unknown, field: string) => T): T | undefined => {
    const v = w.get(key);
    if (v === undefined) return undefined;
    const field = w.name(key);
    return at(field, () => parse(v, field));
  };

  const lengthKey = names.maxTokens.find((k) => w.get(k) !== undefined);
  if (lengthKey !== undefined) s.maxNewTokens = read(lengthKey, SAMPLING_RULES.maxNewTokens)!;
  for (const [wire, key] of NUMERIC_WIRE_NAMES) {
    const x = read(wire, SAMPLING_RULES[key]);
    if (x !== undefined) s[key] = x;
  }
  s.stop = read('stop', checkStop) ?? s.stop;
  s.stopTokenIds = read('stop_token_ids', checkStopTokenIds) ?? s.stopTokenIds;
  s.ignoreEos = read('ignore_eos', asBool) ?? s.ignoreEos;
  s.skipSpecialTokens = read('skip_special_tokens', asBool) ?? s.skipSpecialTokens;

  const seeds = names.seed.filter((k) => w.get(k) !== undefined);
  if (seeds.length > 1 && new Set(seeds.map((k) => w.get(k))).size > 1) {
    const fields = seeds.map((k) => w.name(k));
    at(fields[0]!, () => {
      throw badRequest(`${fields.join(' and ')} give different seeds; give one`);
    });
  }
  if (seeds.length > 0) s.seed = read(seeds[0]!, (v, f) => asInt(v, f, 0))!;
  return s;
}

/** SGLang's and OpenAI's logit_bias: troupe's sampler has none, so only an empty map is taken. */
export function checkLogitBias(v: unknown, field: string): void {
  if (!isObject(v)) expected(field, 'an object mapping token ids to biases', v);
  if (Object.keys(v).length > 0) throw badRequest(`${field} is not supported; leave it out or send {}`);
}

/** The most choices (n) one prompt may ask for: each is a sequence of its own in the batch. */
export const MAX_CHOICES = 128;

/** n: how many outputs to sample per prompt, on /generate and the OpenAI routes alike. */
export function checkChoices(v: unknown, field: string): number {
  const n = asInt(v, field, 1);
  if (n > MAX_CHOICES) throw badRequest(`${field} must be at most ${MAX_CHOICES}, got ${n}`);
  return n;
}

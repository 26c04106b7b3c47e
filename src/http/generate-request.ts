// Parses SGLang's POST /generate body into GenerateRequests. Wire names are SGLang's
// (snake_case); whether the call is a batch follows from the shape of text / input_ids,
// and every per-prompt field may be one value for all prompts or a list, one per prompt.
import {
  checkStop, checkStopTokenIds, checkTopLogprobsNum, DEFAULT_SAMPLING, SAMPLING_RULES,
  type GenerateRequest, type NumericSamplingKey, type SamplingOptions,
} from '../api.js';
import { badRequest } from '../errors.js';
import {
  asBool, asInt, asNumber, asString, expected, isObject, rejectUnknownKeys,
  type JsonObject,
} from './validate.js';

/** One prompt of a /generate call: what the engine gets plus what only the HTTP layer uses. */
export interface GenerateItem {
  request: Omit<GenerateRequest, 'signal'>;
  /** SGLang's no_stop_trim: keep the matched stop string at the end of the text. */
  noStopTrim: boolean;
  /** SGLang's return_text_in_logprobs: keep token texts in the logprob triples. */
  returnTextInLogprobs: boolean;
}

export interface ParsedGenerate {
  /** True when text / input_ids was a list of prompts: the reply is then a list too. */
  batch: boolean;
  stream: boolean;
  items: GenerateItem[];
}

const TOP_LEVEL_KEYS = new Set([
  'text', 'input_ids', 'sampling_params', 'lora_path', 'stream', 'return_logprob',
  'top_logprobs_num', 'return_text_in_logprobs', 'rid',
]);

const SAMPLING_KEYS = new Set([
  'max_new_tokens', 'temperature', 'top_p', 'top_k', 'min_p', 'stop', 'stop_token_ids',
  'ignore_eos', 'skip_special_tokens', 'sampling_seed', 'seed', 'no_stop_trim',
  'spaces_between_special_tokens', 'frequency_penalty', 'presence_penalty',
  'repetition_penalty', 'min_new_tokens', 'n',
]);

/**
 * The numeric sampling options whose wire names SGLang's native API and the OpenAI routes share
 * (the output length is max_new_tokens here and max_tokens there).
 */
export const SAMPLING_WIRE_NAMES: ReadonlyArray<readonly [string, Exclude<NumericSamplingKey, 'maxNewTokens'>]> = [
  ['temperature', 'temperature'], ['top_p', 'topP'], ['top_k', 'topK'], ['min_p', 'minP'],
  ['frequency_penalty', 'frequencyPenalty'], ['presence_penalty', 'presencePenalty'], ['repetition_penalty', 'repetitionPenalty'],
];

// Options the sampler does not implement yet: only their neutral value is accepted, so a
// client relying on them hears about it instead of getting silently different output.
const NEUTRAL_ONLY: Record<string, number> = {
  min_new_tokens: 0,
  n: 1,
};

export interface GenerateLimits {
  /** --max-top-logprobs-num */
  maxTopLogprobsNum: number;
}

export function parseGenerateRequest(body: JsonObject, limits: GenerateLimits): ParsedGenerate {
  rejectUnknownKeys(body, TOP_LEVEL_KEYS, 'field');
  const present = (k: string): boolean => body[k] !== undefined && body[k] !== null;

  if (present('text') && present('input_ids')) {
    throw badRequest('give either text or input_ids, not both');
  }
  if (!present('text') && !present('input_ids')) {
    throw badRequest('one of text or input_ids is required');
  }

  let batch: boolean;
  let prompts: Array<{ text: string } | { inputIds: number[] }>;
  if (present('text')) {
    const text = body.text;
    if (typeof text === 'string') {
      batch = false;
      prompts = [{ text }];
    } else if (Array.isArray(text)) {
      if (text.length === 0) throw badRequest('text is an empty list; give at least one prompt');
      batch = true;
      prompts = text.map((t, i) => ({ text: asString(t, `text[${i}]`) }));
    } else {
      expected('text', 'a string or a list of strings', text);
    }
  } else {
    const ids = body.input_ids;
    if (!Array.isArray(ids)) expected('input_ids', 'a list of token ids or a list of such lists', ids);
    if (ids.length === 0) throw badRequest('input_ids is empty; give at least one token id');
    if (Array.isArray(ids[0])) {
      batch = true;
      prompts = ids.map((row, i) => ({ inputIds: parseTokenIds(row, `input_ids[${i}]`) }));
    } else {
      batch = false;
      prompts = [{ inputIds: parseTokenIds(ids, 'input_ids') }];
    }
  }

  const n = prompts.length;
  const sampling = perPrompt(body, 'sampling_params', n, batch, parseSamplingParams, () => parseSamplingParams({}, 'sampling_params'));
  const lora = perPrompt(body, 'lora_path', n, batch, parseLoraPath, () => null);
  const returnLogprob = perPrompt(body, 'return_logprob', n, batch, asBool, () => false);
  const topLogprobsNum = perPrompt(body, 'top_logprobs_num', n, batch, (v, f) => checkTopLogprobsNum(v, f, limits.maxTopLogprobsNum), () => 0);
  const returnText = perPrompt(body, 'return_text_in_logprobs', n, batch, asBool, () => false);
  const rids = parseRid(body.rid, n, batch);
  const stream = present('stream') ? asBool(body.stream, 'stream') : false;

  const items = prompts.map((prompt, i): GenerateItem => {
    const s = sampling[i]!;
    const request: Omit<GenerateRequest, 'signal'> = {
      ...prompt,
      sampling: s.options,
      lora: lora[i]!,
      returnLogprob: returnLogprob[i]!,
      topLogprobsNum: topLogprobsNum[i]!,
    };
    const rid = rids[i];
    if (rid !== undefined) request.rid = rid;
    return { request, noStopTrim: s.noStopTrim, returnTextInLogprobs: returnText[i]! };
  });
  return { batch, stream, items };
}

function parseTokenIds(v: unknown, field: string): number[] {
  if (!Array.isArray(v)) expected(field, 'a list of token ids', v);
  if (v.length === 0) throw badRequest(`${field} is empty; give at least one token id`);
  return v.map((id, j) => asInt(id, `${field}[${j}]`, 0));
}

function parseLoraPath(v: unknown, field: string): string | null {
  if (v === null) return null;
  if (typeof v !== 'string' || v === '') expected(field, 'an adapter name or null for the base model', v);
  return v;
}

/**
 * A per-prompt field: absent or null gives the default for every prompt, one value applies to
 * every prompt, and a list gives one value per prompt and must be as long as the batch.
 */
function perPrompt<T>(
  body: JsonObject, key: string, n: number, batch: boolean,
  parseOne: (v: unknown, field: string) => T, dflt: () => T,
): T[] {
  const v = body[key];
  if (v === undefined || v === null) return Array.from({ length: n }, dflt);
  if (Array.isArray(v)) {
    if (v.length !== n) {
      throw badRequest(
        `${key} is a list of ${v.length} but the request has ${n} prompt${n === 1 ? '' : 's'}; ` +
        `give one value for all prompts or a list of exactly ${n}`,
      );
    }
    return v.map((x, i) => parseOne(x, batch ? `${key}[${i}]` : key));
  }
  const one = parseOne(v, key);
  return Array.from({ length: n }, () => one);
}

function parseRid(v: unknown, n: number, batch: boolean): Array<string | undefined> {
  if (v === undefined || v === null) return Array.from({ length: n }, () => undefined);
  if (!batch) {
    if (Array.isArray(v) && v.length === 1) return [asString(v[0], 'rid')];
    return [asString(v, 'rid')];
  }
  if (!Array.isArray(v)) expected('rid', `a list of ${n} strings for a batch`, v);
  if (v.length !== n) {
    throw badRequest(`rid is a list of ${v.length} but the request has ${n} prompts; give exactly ${n}`);
  }
  const rids = v.map((r, i) => asString(r, `rid[${i}]`));
  if (new Set(rids).size !== rids.length) throw badRequest('rid values must be distinct within a batch');
  return rids;
}

interface ParsedSampling {
  options: SamplingOptions;
  noStopTrim: boolean;
}

export function parseSamplingParams(v: unknown, where: string): ParsedSampling {
  if (!isObject(v)) expected(where, 'an object', v);
  for (const key of Object.keys(v)) {
    if (!SAMPLING_KEYS.has(key)) {
      throw badRequest(`unknown sampling parameter ${JSON.stringify(key)} in ${where}; accepted: ${[...SAMPLING_KEYS].join(', ')}`);
    }
  }
  // SGLang clients send null for "use the default", so null counts as absent.
  const get = (k: string): unknown => (v[k] === null ? undefined : v[k]);
  const f = (k: string): string => `${where}.${k}`;

  for (const [key, neutral] of Object.entries(NEUTRAL_ONLY)) {
    const x = get(key);
    if (x === undefined) continue;
    if (asNumber(x, f(key)) !== neutral) {
      throw badRequest(`${f(key)} is not supported yet (got ${x as number}; only ${neutral} is accepted)`);
    }
  }

  const options: SamplingOptions = { ...DEFAULT_SAMPLING, stop: [], stopTokenIds: [] };

  let x = get('max_new_tokens');
  if (x !== undefined) options.maxNewTokens = SAMPLING_RULES.maxNewTokens(x, f('max_new_tokens'));
  for (const [wire, key] of SAMPLING_WIRE_NAMES) {
    x = get(wire);
    if (x !== undefined) options[key] = SAMPLING_RULES[key](x, f(wire));
  }

  x = get('stop');
  if (x !== undefined) options.stop = checkStop(x, f('stop'));

  x = get('stop_token_ids');
  if (x !== undefined) options.stopTokenIds = checkStopTokenIds(x, f('stop_token_ids'));

  x = get('ignore_eos');
  if (x !== undefined) options.ignoreEos = asBool(x, f('ignore_eos'));

  x = get('skip_special_tokens');
  if (x !== undefined) options.skipSpecialTokens = asBool(x, f('skip_special_tokens'));

  const seed = get('sampling_seed');
  const alias = get('seed');
  if (seed !== undefined && alias !== undefined && seed !== alias) {
    throw badRequest(`${where} gives both sampling_seed and seed with different values; give one`);
  }
  const s = seed ?? alias;
  if (s !== undefined) options.seed = asInt(s, f(seed !== undefined ? 'sampling_seed' : 'seed'), 0);

  // Accepted for SGLang compatibility; decoding does not insert spaces between special tokens.
  x = get('spaces_between_special_tokens');
  if (x !== undefined) asBool(x, f('spaces_between_special_tokens'));

  x = get('no_stop_trim');
  const noStopTrim = x !== undefined ? asBool(x, f('no_stop_trim')) : false;

  return { options, noStopTrim };
}

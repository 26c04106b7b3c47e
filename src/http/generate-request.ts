// Parses SGLang's POST /generate body into engine requests. Wire names are SGLang's (snake_case);
// whether the call is a batch follows from the shape of text / input_ids, every per-prompt field
// may be one value for all prompts or a list, one per prompt, and sampling_params.n > 1 turns
// each prompt into n samples. generate-fields.ts says what happens to every other field.
import { checkTopLogprobsNum, DEFAULT_SAMPLING, type GenerateRequest, type SamplingOptions } from '../api.js';
import { badRequest } from '../errors.js';
import { fanOut, type Prompt } from './fan-out.js';
import { applyFieldRules } from './field-rules.js';
import { GENERATE_FIELDS, SAMPLING_PARAMS_FIELDS } from './generate-fields.js';
import { parseLoraPaths, perPrompt } from './per-prompt.js';
import { checkChoices, readSampling, wireFields } from './sampling.js';
import { asBool, asInt, asString, expected, isObject, type JsonObject } from './validate.js';

/** One engine request of a /generate call, with what only the HTTP layer uses. */
export interface GenerateItem {
  request: Omit<GenerateRequest, 'signal'>;
  /** SGLang's no_stop_trim: keep the matched stop string at the end of the text. */
  noStopTrim: boolean;
  /** SGLang's return_text_in_logprobs: keep token texts in the logprob triples. */
  returnTextInLogprobs: boolean;
  /** SGLang's stream_interval: stream an update every this many tokens (and the last one). */
  streamInterval: number;
}

export interface ParsedGenerate {
  /** True when the reply is a list: text / input_ids was a list of prompts, or n > 1. */
  batch: boolean;
  stream: boolean;
  /** Sample j of prompt i at i * n + j, as SGLang orders them. */
  items: GenerateItem[];
}

export interface GenerateLimits {
  /** --max-top-logprobs-num */
  maxTopLogprobsNum: number;
}

// SGLang refuses these as lists with n > 1 (a list there means one per prompt, and n samples
// of a prompt must ask alike).
const SCALAR_WITH_SAMPLES = ['return_logprob', 'logprob_start_len', 'top_logprobs_num'];

export function parseGenerateRequest(body: JsonObject, limits: GenerateLimits): ParsedGenerate {
  applyFieldRules(body, GENERATE_FIELDS, (k) => k, 'ignore');
  const present = (k: string): boolean => body[k] !== undefined && body[k] !== null;

  if (present('text') && present('input_ids')) {
    throw badRequest('give either text or input_ids, not both');
  }
  if (!present('text') && !present('input_ids')) {
    throw badRequest('one of text or input_ids is required');
  }

  let batch: boolean;
  let prompts: Prompt[];
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

  const count = prompts.length;
  const each = <T>(key: string, parseOne: (v: unknown, field: string) => T, dflt: () => T): T[] =>
    perPrompt(key, body[key], count, batch, parseOne, dflt);
  const sampling = each('sampling_params', parseSamplingParams, () => parseSamplingParams({}, 'sampling_params'));
  const n = sampling[0]!.n;
  const other = sampling.find((s) => s.n !== n);
  if (other) throw badRequest(`sampling_params gives n = ${n} and n = ${other.n}; every prompt of a request must ask for the same n`);
  if (n > 1) {
    for (const key of SCALAR_WITH_SAMPLES) {
      if (Array.isArray(body[key])) throw badRequest(`${key} cannot be a list when sampling_params.n is above 1; give one value`);
    }
  }
  const lora = parseLoraPaths(body.lora_path, count, batch);
  const returnLogprob = each('return_logprob', asBool, () => false);
  const logprobStartLen = each(
    'logprob_start_len',
    (v, f) => asInt(v, f, -1),
    () => -1,
  );
  const topLogprobsNum = each(
    'top_logprobs_num',
    (v, f) => checkTopLogprobsNum(v, f, limits.maxTopLogprobsNum),
    () => 0,
  );
  const returnText = each('return_text_in_logprobs', asBool, () => false);
  const rids = parseRid(body.rid, count, batch);
  const stream = present('stream') ? asBool(body.stream, 'stream') : false;
  const logMetrics = present('log_metrics') ? asBool(body.log_metrics, 'log_metrics') : true;

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
    if (logprobStartLen[i] !== -1) request.logprobStartLen = logprobStartLen[i]!;
    if (!logMetrics) request.logMetrics = false;
    return { request, noStopTrim: s.noStopTrim, returnTextInLogprobs: returnText[i]!, streamInterval: s.streamInterval };
  });
  return { batch: batch || n > 1, stream, items: fanOut(items, n) };
}

function parseTokenIds(v: unknown, field: string): number[] {
  if (!Array.isArray(v)) expected(field, 'a list of token ids', v);
  if (v.length === 0) throw badRequest(`${field} is empty; give at least one token id`);
  return v.map((id, j) => asInt(id, `${field}[${j}]`, 0));
}

/** SGLang's rid: one string for a single prompt; for a batch a list, or one string that each item's id extends with `_<i>`. */
function parseRid(v: unknown, n: number, batch: boolean): Array<string | undefined> {
  if (v === undefined || v === null) return Array.from({ length: n }, () => undefined);
  if (!batch) {
    if (Array.isArray(v) && v.length === 1) return [asString(v[0], 'rid')];
    return [asString(v, 'rid')];
  }
  if (typeof v === 'string') return Array.from({ length: n }, (_, i) => `${v}_${i}`);
  if (!Array.isArray(v)) expected('rid', `a string or a list of ${n} strings for a batch`, v);
  if (v.length !== n) {
    throw badRequest(`rid is a list of ${v.length} but the request has ${n} prompts; give exactly ${n}`);
  }
  const rids = v.map((r, i) => asString(r, `rid[${i}]`));
  if (new Set(rids).size !== rids.length) throw badRequest('rid values must be distinct within a batch');
  return rids;
}

export interface ParsedSampling {
  options: SamplingOptions;
  noStopTrim: boolean;
  /** Samples of the prompt (SGLang's parallel sampling). */
  n: number;
  streamInterval: number;
}

/** One sampling_params object; `where` names it in messages ("sampling_params" or "sampling_params[i]"). */
export function parseSamplingParams(v: unknown, where: string): ParsedSampling {
  if (!isObject(v)) expected(where, 'an object', v);
  applyFieldRules(v, SAMPLING_PARAMS_FIELDS, (k) => `${where}.${k}`, { what: 'sampling parameter', where });
  const w = wireFields(v, where);
  const options = readSampling(w, {
    maxTokens: ['max_new_tokens'],
    defaultMaxTokens: DEFAULT_SAMPLING.maxNewTokens,
    seed: ['sampling_seed', 'seed'],
  });
  const get = <T>(key: string, parse: (x: unknown, field: string) => T, dflt: T): T => {
    const x = w.get(key);
    return x === undefined ? dflt : parse(x, w.name(key));
  };
  return {
    options,
    noStopTrim: get('no_stop_trim', asBool, false),
    n: get('n', checkChoices, 1),
    streamInterval: get('stream_interval', (x, f) => asInt(x, f, 1), 1),
  };
}

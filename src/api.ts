// The embeddable API: what `createEngine` returns and what the HTTP layer calls. Field
// names inside are camelCase; the HTTP layer maps SGLang's snake_case wire format onto them.
// SGLang's sampling rules live here too, so every entry point accepts and refuses the same values.
import { badRequest, expected } from './errors.js';

/** Sampling options with every default filled in (see http/generate-request.ts for the wire names). */
export interface SamplingOptions {
  maxNewTokens: number;
  temperature: number; // 0 = greedy
  topP: number;
  topK: number; // -1 = off
  minP: number;
  frequencyPenalty: number; // 0 = off
  presencePenalty: number; // 0 = off
  repetitionPenalty: number; // 1 = off
  seed: number | null;
  stop: string[];
  stopTokenIds: number[];
  ignoreEos: boolean;
  skipSpecialTokens: boolean;
}

/** SGLang's defaults for every sampling option. */
export const DEFAULT_SAMPLING: Readonly<SamplingOptions> = Object.freeze({
  maxNewTokens: 128,
  temperature: 1.0,
  topP: 1.0,
  topK: -1,
  minP: 0,
  frequencyPenalty: 0,
  presencePenalty: 0,
  repetitionPenalty: 1,
  seed: null,
  stop: [],
  stopTokenIds: [],
  ignoreEos: false,
  skipSpecialTokens: true,
});

export interface GenerateRequest {
  /** Exactly one of text and inputIds. */
  text?: string;
  inputIds?: number[];
  sampling: SamplingOptions;
  /** Adapter name, or null for the base model. */
  lora: string | null;
  returnLogprob: boolean;
  topLogprobsNum: number;
  /** Request id; one is made when absent. */
  rid?: string;
  /**
   * SGLang's logprob_start_len: the first prompt position whose logprob is returned, -1 for
   * none. Prompt logprobs are not computed, so only the values that ask for none are served
   * (see checkLogprobStartLen); it matters only with returnLogprob.
   */
  logprobStartLen?: number;
  /** False keeps the request out of the metrics, as SGLang's log_metrics does for health checks. */
  logMetrics?: boolean;
  /** Aborting cancels the request and frees its KV blocks and adapter reference. */
  signal?: AbortSignal;
}

/** SGLang's finish_reason shapes. */
export type FinishReason =
  { type: 'length'; length: number } | { type: 'stop'; matched: number | string | null } | { type: 'abort'; message: string };

/** [logprob, token id, token text or null], as SGLang returns them. */
export type TokenLogprob = [number, number, string | null];

export interface GenerateOutput {
  id: string;
  text: string;
  outputIds: number[];
  finishReason: FinishReason;
  promptTokens: number;
  /** Of the prompt's tokens, those whose keys and values came from the prefix cache (SGLang's cached_tokens). */
  cachedTokens: number;
  completionTokens: number;
  /** Seconds from the request's arrival (before its prompt is tokenized) to this output. */
  e2eLatency: number;
  outputTokenLogprobs?: TokenLogprob[];
  outputTopLogprobs?: TokenLogprob[][];
}

/** A streamed update: cumulative text and ids so far; finishReason is set on the last one. */
export interface GenerateChunk extends Omit<GenerateOutput, 'finishReason'> {
  finishReason: FinishReason | null;
}

export interface AdapterSpec {
  name: string;
  path: string;
  pinned?: boolean;
}

export interface AdapterStatus {
  name: string;
  path: string;
  pinned: boolean;
  /**
   * Whether it is in the loaded set that clients see (SGLang's loaded_adapters and /v1/models):
   * at most --max-loaded-loras adapters; one evicted from it, or being unloaded, is not. An
   * evicted adapter is still listed here while its weights stay cached.
   */
  loaded: boolean;
  state: string; // the adapter statechart's state value
  rank: number | null;
  targetModules: string[];
  slot: number | null;
  error: string | null;
}

export interface ModelInfo {
  modelPath: string;
  servedModelName: string;
  tokenizerPath: string;
  isGeneration: true;
  maxTotalTokens: number;
  /** Most tokens one request may hold, prompt and output together (--context-length, or the model's). */
  contextLength: number;
  device: string;
  /** Tensor-parallel ranks, and how they exchange activations (none, host or nccl). */
  tpSize: number;
  collective: string;
  /** How LoRA deltas are computed: none (no adapters), cpu, or the CUDA kernel in use (fused, mma-overlap, ...). */
  loraKernel?: string;
  /** Threads that tokenize short prompts and detokenize (--tokenizer-worker-num), as the pool was made; absent where an engine has none. */
  tokenizerWorkers?: number;
}

/**
 * What callers pass to generate and stream: a GenerateRequest whose options may be left out.
 * Missing sampling options take DEFAULT_SAMPLING; a missing lora is the base model.
 */
export type GenerateInput = Omit<GenerateRequest, 'sampling' | 'lora' | 'returnLogprob' | 'topLogprobsNum'> & {
  sampling?: Partial<SamplingOptions>;
  lora?: string | null;
  returnLogprob?: boolean;
  topLogprobsNum?: number;
};

export function completeRequest(input: GenerateInput): GenerateRequest {
  // An option set to undefined is left out, as in JSON, rather than overriding its default.
  const given = Object.entries(input.sampling ?? {}).filter(([, v]) => v !== undefined);
  return {
    ...input,
    sampling: { ...DEFAULT_SAMPLING, ...(Object.fromEntries(given) as Partial<SamplingOptions>) },
    lora: input.lora ?? null,
    returnLogprob: input.returnLogprob ?? false,
    topLogprobsNum: input.topLogprobsNum ?? 0,
  };
}

export interface TroupeEngine {
  generate(req: GenerateInput): Promise<GenerateOutput>;
  stream(req: GenerateInput): AsyncIterable<GenerateChunk>;
  /**
   * Ends the live request with this id, running or still waiting, as SGLang's /abort_request
   * does: its output ends with finish reason abort and `message`. False when none is live.
   */
  abort(rid: string, message?: string): boolean;
  /** Ends every live request so; returns how many there were. */
  abortAll(message?: string): number;
  /**
   * Forgets every prefix the KV cache keeps (SGLang's /flush_cache): later requests compute
   * their prompts in full until their blocks are kept again. Running requests go on as they were.
   */
  flushCache(): Promise<void>;
  loadAdapter(spec: AdapterSpec): Promise<AdapterStatus>;
  unloadAdapter(name: string): Promise<void>;
  /**
   * Registered adapters' statuses, asked of the thread that owns them: those named in `names`
   * that are registered, or every one when `names` is left out. Registered adapters are the
   * loaded set and those evicted from it that the engine still caches; `loaded` tells them apart.
   */
  adapters(names?: readonly string[]): Promise<AdapterStatus[]>;
  /** The text of each token id on its own (special tokens included), for logprob listings. */
  tokenTexts(ids: number[]): Promise<Array<string | null>>;
  modelInfo(): ModelInfo;
  close(): Promise<void>;
}

// ---- SGLang's sampling rules -------------------------------------------------------------
// The HTTP parsers check each wire value with these, and Engine.start checks whatever an
// embedding caller passes, so the sampler only ever gets values it handles: one bad request is
// a 400 for that request alone instead of a failed step for its whole batch.

/** Below this SGLang samples greedily (it sets top_k = 1): here that is temperature 0. */
export const GREEDY_BELOW_TEMPERATURE = 1e-6;
/** top_k at or above this limits nothing: SGLang runs -1 as 1 << 30. Such values become -1 so they never wrap in the sampler's int32. */
export const TOP_K_OFF_FROM = 2 ** 30;
/**
 * The sampler gets temperatures as float32, where anything above this is Infinity. A hotter
 * temperature is accepted, as SGLang does, and sent as this: sampling is uniform for all such values.
 */
const FLOAT32_MAX = 3.4028234663852886e38;
/**
 * float32's smallest normal number. A smaller top_p would reach the sampler as 0 (or a denormal
 * that fast-math code reads as 0) while it is accepted here; it keeps the one most likely token
 * just as this does.
 */
const FLOAT32_MIN_NORMAL = 1.1754943508222875e-38;
/**
 * The sampler divides the positive logits of seen tokens by repetition_penalty in float32; below
 * this they would overflow to Infinity. Any penalty this small already puts those tokens ahead of
 * all others by more than any temperature short of float32's range evens out.
 */
const REPETITION_PENALTY_FLOOR = 1e-30;

export function asNumber(v: unknown, field: string): number {
  if (typeof v !== 'number' || !Number.isFinite(v)) expected(field, 'a number', v);
  return v === 0 ? 0 : v; // -0 is 0
}

export function asInt(v: unknown, field: string, min?: number): number {
  if (typeof v !== 'number' || !Number.isInteger(v)) expected(field, 'an integer', v);
  if (!Number.isSafeInteger(v)) expected(field, 'an integer between -(2^53 - 1) and 2^53 - 1', v);
  if (min !== undefined && v < min) throw badRequest(`${field} must be >= ${min}, got ${v}`);
  return v === 0 ? 0 : v;
}

function inRange(v: unknown, field: string, range: string, ok: (x: number) => boolean): number {
  const x = asNumber(v, field);
  if (!ok(x)) throw badRequest(`${field} must be in ${range}, got ${x}`);
  return x;
}

export type NumericSamplingKey =
  'maxNewTokens' | 'temperature' | 'topP' | 'topK' | 'minP' | 'frequencyPenalty' | 'presencePenalty' | 'repetitionPenalty';

/** Each numeric option's rule: checks a value of any type, names `field` when refusing it, and returns what the engine runs. */
export const SAMPLING_RULES: Readonly<Record<NumericSamplingKey, (v: unknown, field: string) => number>> = {
  maxNewTokens: (v, f) => asInt(v, f, 0),
  temperature: (v, f) => {
    const t = asNumber(v, f);
    if (t < 0) throw badRequest(`${f} must be >= 0, got ${t}`);
    if (t < GREEDY_BELOW_TEMPERATURE) return 0;
    return Math.min(t, FLOAT32_MAX);
  },
  topP: (v, f) =>
    Math.max(
      inRange(v, f, '(0, 1]', (x) => x > 0 && x <= 1),
      FLOAT32_MIN_NORMAL,
    ),
  topK: (v, f) => {
    if (typeof v !== 'number' || !Number.isInteger(v)) expected(f, 'an integer (-1 for no limit)', v);
    if (v >= TOP_K_OFF_FROM) return -1;
    if (v !== -1 && v < 1) throw badRequest(`${f} must be -1 (off) or >= 1, got ${v}`);
    return v;
  },
  minP: (v, f) => inRange(v, f, '[0, 1]', (x) => x >= 0 && x <= 1),
  frequencyPenalty: (v, f) => inRange(v, f, '[-2, 2]', (x) => x >= -2 && x <= 2),
  presencePenalty: (v, f) => inRange(v, f, '[-2, 2]', (x) => x >= -2 && x <= 2),
  repetitionPenalty: (v, f) =>
    Math.max(
      inRange(v, f, '(0, 2]', (x) => x > 0 && x <= 2),
      REPETITION_PENALTY_FLOOR,
    ),
};

export function checkStop(v: unknown, field: string): string[] {
  const list = typeof v === 'string' ? [v] : v;
  if (!Array.isArray(list)) expected(field, 'a string or a list of strings', v);
  return list.map((s, i) => {
    if (typeof s !== 'string') expected(`${field}[${i}]`, 'a string', s);
    if (s === '') throw badRequest(`${field}[${i}] is empty; stop strings must not be empty`);
    return s;
  });
}

export function checkStopTokenIds(v: unknown, field: string): number[] {
  if (!Array.isArray(v)) expected(field, 'a list of token ids', v);
  return v.map((id, i) => asInt(id, `${field}[${i}]`, 0));
}

function checkBool(v: unknown, field: string): boolean {
  if (typeof v !== 'boolean') expected(field, 'true or false', v);
  return v;
}

/** A whole SamplingOptions as an embedding caller may pass it, checked and returned as the engine runs it. */
export function checkSampling(v: unknown, where: string): SamplingOptions {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) expected(where, 'an object', v);
  const o = v as Record<string, unknown>;
  const num = (k: NumericSamplingKey): number => SAMPLING_RULES[k](o[k], `${where}.${k}`);
  return {
    maxNewTokens: num('maxNewTokens'),
    temperature: num('temperature'),
    topP: num('topP'),
    topK: num('topK'),
    minP: num('minP'),
    frequencyPenalty: num('frequencyPenalty'),
    presencePenalty: num('presencePenalty'),
    repetitionPenalty: num('repetitionPenalty'),
    seed: o.seed === null ? null : asInt(o.seed, `${where}.seed`, 0),
    stop: checkStop(o.stop, `${where}.stop`),
    stopTokenIds: checkStopTokenIds(o.stopTokenIds, `${where}.stopTokenIds`),
    ignoreEos: checkBool(o.ignoreEos, `${where}.ignoreEos`),
    skipSpecialTokens: checkBool(o.skipSpecialTokens, `${where}.skipSpecialTokens`),
  };
}

/**
 * How many alternatives per token a request may ask for: at most --max-top-logprobs-num, which
 * keeps replies small, and never more than the vocabulary has.
 */
export function checkTopLogprobsNum(v: unknown, field: string, max: number, vocabSize?: number): number {
  const n = asInt(v, field, 0);
  if (n > max) throw badRequest(`${field} must be at most ${max} (the server's --max-top-logprobs-num), got ${n}`);
  if (vocabSize !== undefined && n > vocabSize) throw badRequest(`${field} is ${n}, more than the ${vocabSize} tokens of the vocabulary`);
  return n;
}

export interface RequestLimits {
  maxTopLogprobsNum: number;
  vocabSize: number;
}

/**
 * SGLang's logprob_start_len against a prompt of `promptTokens` tokens. -1 asks for output
 * logprobs only, and so does the last prompt position: SGLang runs -1 as that position, whose
 * logprob is null. An earlier position needs prompt logprobs, which are not computed here; a
 * position past the prompt is an error in SGLang too.
 */
export function checkLogprobStartLen(start: number, promptTokens: number): void {
  if (start === -1 || start === promptTokens - 1) return;
  if (start >= promptTokens) {
    throw badRequest(
      `logprob_start_len is ${start}, but the prompt has only ${promptTokens} tokens; give a smaller value, or -1 for output tokens only`,
    );
  }
  throw badRequest(
    `logprob_start_len ${start} asks for the logprobs of prompt tokens, which this server does not compute; ` +
      'send -1 for the logprobs of the output tokens only',
  );
}

/** Engine.start's check of a whole request; the result holds the values the engine runs. */
export function checkRequest(req: GenerateRequest, limits: RequestLimits): GenerateRequest {
  if (req.text !== undefined && typeof req.text !== 'string') expected('text', 'a string', req.text);
  if (req.inputIds !== undefined && !Array.isArray(req.inputIds)) expected('inputIds', 'a list of token ids', req.inputIds);
  if (req.lora !== null && typeof req.lora !== 'string') expected('lora', 'an adapter name or null', req.lora);
  if (req.logprobStartLen !== undefined) asInt(req.logprobStartLen, 'logprobStartLen', -1);
  if (req.logMetrics !== undefined) checkBool(req.logMetrics, 'logMetrics');
  return {
    ...req,
    sampling: checkSampling(req.sampling, 'sampling'),
    returnLogprob: checkBool(req.returnLogprob, 'returnLogprob'),
    topLogprobsNum: checkTopLogprobsNum(req.topLogprobsNum, 'topLogprobsNum', limits.maxTopLogprobsNum, limits.vocabSize),
  };
}

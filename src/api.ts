// The embeddable API: what `createEngine` returns and what the HTTP layer calls. Field
// names inside are camelCase; the HTTP layer maps SGLang's snake_case wire format onto them.

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
  /** Aborting cancels the request and frees its KV blocks and adapter reference. */
  signal?: AbortSignal;
}

/** SGLang's finish_reason shapes. */
export type FinishReason =
  | { type: 'length'; length: number }
  | { type: 'stop'; matched: number | string | null }
  | { type: 'abort'; message: string };

/** [logprob, token id, token text or null], as SGLang returns them. */
export type TokenLogprob = [number, number, string | null];

export interface GenerateOutput {
  id: string;
  text: string;
  outputIds: number[];
  finishReason: FinishReason;
  promptTokens: number;
  completionTokens: number;
  e2eLatency: number; // seconds
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
  device: string;
  /** Tensor-parallel ranks, and how they exchange activations (none, host or nccl). */
  tpSize: number;
  collective: string;
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
  return {
    ...input,
    sampling: { ...DEFAULT_SAMPLING, ...input.sampling },
    lora: input.lora ?? null,
    returnLogprob: input.returnLogprob ?? false,
    topLogprobsNum: input.topLogprobsNum ?? 0,
  };
}

export interface TroupeEngine {
  generate(req: GenerateInput): Promise<GenerateOutput>;
  stream(req: GenerateInput): AsyncIterable<GenerateChunk>;
  loadAdapter(spec: AdapterSpec): Promise<AdapterStatus>;
  unloadAdapter(name: string): Promise<void>;
  adapters(): AdapterStatus[];
  /** The text of each token id on its own (special tokens included), for logprob listings. */
  tokenTexts(ids: number[]): Promise<Array<string | null>>;
  modelInfo(): ModelInfo;
  close(): Promise<void>;
}

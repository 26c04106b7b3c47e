// One request as the scheduler tracks it: its tokens, how many of them are in the KV cache,
// and the stop conditions checked after each sampled token.
import type { FinishReason, SamplingOptions } from '../api.js';

export interface SeqInit {
  id: string;
  promptIds: number[];
  lora: string | null;
  sampling: SamplingOptions;
  returnLogprob: boolean;
  topLogprobsNum: number;
  seed: number;
}

export interface TokenEvent {
  id: string;
  /** Tokens produced by this step (one, or none when the sequence only finished). */
  tokens: number[];
  /** Per token: log-softmax of the chosen token. Same length as tokens. */
  logprobs: number[];
  /** Per token: the topLogprobsNum best alternatives (an empty row when none were asked). */
  topIds: number[][];
  topLogprobs: number[][];
  finish: FinishReason | null;
  promptTokens: number;
}

export class Sequence {
  /** Prompt then generated tokens; after preemption all of them are recomputed as a prompt. */
  readonly tokens: number[];
  readonly output: number[] = [];
  /** Tokens whose K/V is in the cache. */
  computed = 0;
  blocks: number[] = [];
  status: 'waiting' | 'running' | 'finished' = 'waiting';
  /** How often it was preempted (its KV dropped and recomputed). */
  preemptions = 0;

  constructor(
    readonly init: SeqInit,
    /** Arrival order: waiting requests are served first come, first served. */
    readonly arrival: number,
  ) {
    this.tokens = [...init.promptIds];
  }

  get id(): string {
    return this.init.id;
  }

  get pending(): number {
    return this.tokens.length - this.computed;
  }

  /** Whether the tokens still to run are a (re)prefill rather than one decode token. */
  get prefilling(): boolean {
    return this.pending > 1 || this.computed === 0 || this.output.length === 0;
  }

  /** Appends a sampled token and says whether the sequence is done. */
  accept(token: number, eosTokenIds: readonly number[], contextLength: number): FinishReason | null {
    this.tokens.push(token);
    this.output.push(token);
    const s = this.init.sampling;
    if (this.output.length >= s.maxNewTokens) return { type: 'length', length: this.output.length };
    if (!s.ignoreEos && eosTokenIds.includes(token)) return { type: 'stop', matched: token };
    if (s.stopTokenIds.includes(token)) return { type: 'stop', matched: token };
    if (this.tokens.length >= contextLength) return { type: 'length', length: this.output.length };
    return null;
  }

  event(finish: FinishReason | null, token?: { id: number; logprob: number; topIds: number[]; topLogprobs: number[] }): TokenEvent {
    return {
      id: this.id,
      tokens: token ? [token.id] : [],
      logprobs: token ? [token.logprob] : [],
      topIds: token ? [token.topIds] : [],
      topLogprobs: token ? [token.topLogprobs] : [],
      finish,
      promptTokens: this.init.promptIds.length,
    };
  }
}

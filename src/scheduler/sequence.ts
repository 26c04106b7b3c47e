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

/**
 * What one step did for one sequence: at most one token. Scalars rather than one-element arrays:
 * every sampling row makes an event every step, and their arrays were most of a step's garbage.
 */
export interface TokenEvent {
  id: string;
  /** The token this step produced, or -1 when the sequence only finished. */
  token: number;
  /** Log-softmax of that token (0 without one). */
  logprob: number;
  /** That token's topLogprobsNum best alternatives (empty when none were asked, or without a token). */
  topIds: number[];
  topLogprobs: number[];
  finish: FinishReason | null;
  promptTokens: number;
}

export class Sequence {
  /** Prompt then generated tokens; after preemption all of them are recomputed as a prompt. */
  readonly tokens: number[];
  /** How many tokens it generated (the last of `tokens`); only their count is read. */
  generated = 0;
  /** Tokens whose K/V is in the cache. */
  computed = 0;
  blocks: number[] = [];
  status: 'waiting' | 'running' | 'finished' = 'waiting';
  /** How often it was preempted (its KV dropped and recomputed). */
  preemptions = 0;
  /** Whether it gave up its place for a request that waited too long (it does so at most once). */
  pausedForPlace = false;
  /** The step count when it first found no place left for its adapter, or -1. */
  placeWaitSince = -1;
  /**
   * Overlap scheduling: its tokens in steps sent to the engine but not completed yet. The next
   * step it joins starts after them (`start`), and when the last of those steps samples
   * (`aheadSamples`), the next step's input is a token only that step's result holds: the
   * executor copies it from row `aheadRow` of that result.
   */
  ahead = 0;
  aheadSamples = false;
  aheadRow = -1;
  /** Counts its exits from the running list: a step's row is stale once it has left since. */
  epoch = 0;
  /** Its slot in the engine's sequence table while it runs (SequenceSlots), or -1. */
  seqSlot = -1;
  /** Whether a step built since it took the slot (and not forgotten) filled it: values, tokens and blocks. */
  slotFilled = false;
  /** How many of its blocks the steps built since its slot was filled have sent. */
  blocksSent = 0;

  constructor(
    readonly init: SeqInit,
    /**
     * Arrival order: waiting requests are served first come, first served. A request paused for
     * a place is given a new one, behind every request waiting then (Scheduler.pauseForPlace).
     */
    public arrival: number,
  ) {
    // slice, not a spread: the same copy, without the iteration protocol, for every request.
    this.tokens = init.promptIds.slice();
  }

  get id(): string {
    return this.init.id;
  }

  /** Where its next step starts: after the tokens in the cache and those of steps in flight. */
  get start(): number {
    return this.computed + this.ahead;
  }

  /** Tokens still to run after the steps in flight, counting the one they sample. */
  get pending(): number {
    return this.tokens.length + (this.aheadSamples ? 1 : 0) - this.start;
  }

  /** Whether the tokens still to run are a (re)prefill rather than one decode token. */
  get prefilling(): boolean {
    return this.pending > 1 || this.start === 0 || (this.generated === 0 && !this.aheadSamples);
  }

  /**
   * Whether the step in flight ends it whatever token it samples (max_new_tokens or the context
   * length reached), so no later step should carry it.
   */
  endsAhead(contextLength: number): boolean {
    return this.aheadSamples && (this.generated + 1 >= this.init.sampling.maxNewTokens || this.tokens.length + 1 >= contextLength);
  }

  /**
   * Forgets the steps in flight: it left the running list, or they were dropped. It fills its
   * slot again: a dropped step may have carried the fill or blocks, or run and counted a token
   * this sequence never took.
   */
  leaveSteps(): void {
    this.ahead = 0;
    this.aheadSamples = false;
    this.aheadRow = -1;
    this.epoch++;
    this.slotFilled = false;
  }

  /** Appends a sampled token and says whether the sequence is done. */
  accept(token: number, eosTokenIds: readonly number[], contextLength: number): FinishReason | null {
    this.tokens.push(token);
    this.generated++;
    const s = this.init.sampling;
    if (this.generated >= s.maxNewTokens) return { type: 'length', length: this.generated };
    if (!s.ignoreEos && eosTokenIds.includes(token)) return { type: 'stop', matched: token };
    if (s.stopTokenIds.includes(token)) return { type: 'stop', matched: token };
    if (this.tokens.length >= contextLength) return { type: 'length', length: this.generated };
    return null;
  }

  /** The event of a step that produced no token (the sequence only finished). */
  event(finish: FinishReason | null): TokenEvent {
    return this.tokenEvent(finish, -1, 0, null, null);
  }

  /**
   * The event of a sampled token; `topIds` and `topLogprobs` are its alternatives, or null when
   * none were asked. Every sampling row makes one each step, so it is built in place.
   */
  tokenEvent(finish: FinishReason | null, id: number, logprob: number, topIds: number[] | null, topLogprobs: number[] | null): TokenEvent {
    return {
      id: this.id,
      token: id,
      logprob,
      topIds: topIds ?? NO_ALTERNATIVES,
      topLogprobs: topLogprobs ?? NO_ALTERNATIVES,
      finish,
      promptTokens: this.init.promptIds.length,
    };
  }
}

/**
 * No alternatives. Shared by every event without them, since each sampling row makes an event
 * every step and their garbage brought collection pauses into the steps; frozen, so that no
 * holder can change it under the others (events leave the scheduler's thread as copies anyway).
 */
const NO_ALTERNATIVES = Object.freeze([]) as unknown as number[];

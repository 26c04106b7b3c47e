// One request as the scheduler tracks it: its tokens, how many of them are in the KV cache,
// and the stop conditions checked after each sampled token.
import type { FinishReason, SamplingOptions } from '../api.js';
import { TokenPool } from './token-pool.js';

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
  /** Of those, the ones read from the prefix cache rather than computed. */
  cachedTokens: number;
  /** With a sequence's first token only: seconds from its submission to the first step built with it. */
  queueSeconds?: number;
}

/** A request as its sequence keeps it: without the prompt's array, which it copies (see Sequence.tokenOffset). */
export type SeqInfo = Omit<SeqInit, 'promptIds'>;

export class Sequence {
  readonly init: SeqInfo;
  /**
   * Prompt then generated tokens: `tokenCount` of them at `tokenOffset` in `pool.data` (see
   * token-pool.ts for why not a number[]), in a run of `tokenRoom`; after preemption all of them
   * are recomputed as a prompt. The run moves to one twice as long when generated tokens fill it,
   * and goes back to the pool when the sequence ends (releaseTokens).
   */
  tokenOffset: number;
  private tokenRoom: number;
  tokenCount: number;
  readonly promptLength: number;
  /** How many tokens it generated (the last of `tokens`); only their count is read. */
  generated = 0;
  /** Tokens whose K/V is in the cache. */
  computed = 0;
  /** Prompt tokens it found in the prefix cache when it was first admitted (SGLang's cached_tokens). */
  cachedTokens = 0;
  /** Its blocks' prefix-cache keys made so far, under prefixScope (sequence-prefix.ts). */
  prefixKeys: string[] = [];
  prefixScope = '';
  /** Its first blocks that the prefix cache keeps (all their tokens computed). */
  keptBlocks = 0;
  /** While it runs: the block of its prompt it marks as being computed by it (-1: none), and where its prompt's full blocks end. */
  claimedBlock = -1;
  claimEnd = 0;
  /** performance.now() on the scheduler's thread when it was submitted, and when a step first took it (-1: not yet). */
  readonly submittedAt = performance.now();
  firstRunAt = -1;
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
    init: SeqInit,
    /**
     * Arrival order: waiting requests are served first come, first served. A request paused for
     * a place is given a new one, behind every request waiting then (Scheduler.pauseForPlace).
     */
    public arrival: number,
    /** The scheduler's (one of its own by default, for a sequence made alone). */
    readonly pool: TokenPool = new TokenPool(0),
  ) {
    const promptIds = init.promptIds;
    // Spelled out rather than a rest spread, which took several times as long.
    this.init = {
      id: init.id,
      lora: init.lora,
      sampling: init.sampling,
      returnLogprob: init.returnLogprob,
      topLogprobsNum: init.topLogprobsNum,
      seed: init.seed,
    };
    this.promptLength = promptIds.length;
    this.tokenCount = promptIds.length;
    // Room for the prompt and some output; accept() doubles it as needed.
    const room = TokenPool.runLength(promptIds.length + Math.max(1, Math.min(init.sampling.maxNewTokens, INITIAL_OUTPUT_ROOM)));
    this.tokenOffset = pool.alloc(room);
    this.tokenRoom = room;
    pool.data.set(promptIds, this.tokenOffset);
  }

  /** Its tokens as a view (a new object each call: for tests and rare readers, not each step). */
  tokens(): Int32Array {
    return this.pool.data.subarray(this.tokenOffset, this.tokenOffset + this.tokenCount);
  }

  /** Gives its tokens' run back to the pool once it has ended (finished, failed or aborted); its tokens are gone then. */
  releaseTokens(): void {
    if (this.tokenRoom === 0) return;
    this.pool.release(this.tokenOffset, this.tokenRoom);
    this.tokenRoom = 0;
    this.tokenCount = 0;
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
    return this.tokenCount + (this.aheadSamples ? 1 : 0) - this.start;
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
    return this.aheadSamples && (this.generated + 1 >= this.init.sampling.maxNewTokens || this.tokenCount + 1 >= contextLength);
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
    if (this.tokenCount === this.tokenRoom) {
      const room = 2 * this.tokenRoom;
      const offset = this.pool.alloc(room);
      const data = this.pool.data;
      data.copyWithin(offset, this.tokenOffset, this.tokenOffset + this.tokenCount);
      this.pool.release(this.tokenOffset, this.tokenRoom);
      this.tokenOffset = offset;
      this.tokenRoom = room;
    }
    this.pool.data[this.tokenOffset + this.tokenCount++] = token;
    this.generated++;
    const s = this.init.sampling;
    if (this.generated >= s.maxNewTokens) return { type: 'length', length: this.generated };
    if (!s.ignoreEos && eosTokenIds.includes(token)) return { type: 'stop', matched: token };
    if (s.stopTokenIds.includes(token)) return { type: 'stop', matched: token };
    if (this.tokenCount >= contextLength) return { type: 'length', length: this.generated };
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
    const ev: TokenEvent = {
      id: this.id,
      token: id,
      logprob,
      topIds: topIds ?? NO_ALTERNATIVES,
      topLogprobs: topLogprobs ?? NO_ALTERNATIVES,
      finish,
      promptTokens: this.promptLength,
      cachedTokens: this.cachedTokens,
    };
    if (id >= 0 && this.generated === 1 && this.firstRunAt >= 0) ev.queueSeconds = (this.firstRunAt - this.submittedAt) / 1000;
    return ev;
  }
}

/** Output tokens a new sequence has room for before its token array first grows. */
const INITIAL_OUTPUT_ROOM = 256;

/**
 * No alternatives. Shared by every event without them, since each sampling row makes an event
 * every step and their garbage brought collection pauses into the steps; frozen, so that no
 * holder can change it under the others (events leave the scheduler's thread as copies anyway).
 */
const NO_ALTERNATIVES = Object.freeze([]) as unknown as number[];

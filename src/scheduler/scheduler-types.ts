// What the scheduler is built with and what it reports: its options, its figures for /metrics
// and load balancers, and the sequences a step failed alone.
import type { LoraModule } from '../engine/types.js';
import type { EngineTimes } from './engine-time.js';

export interface SchedulerOptions {
  blockSize: number;
  numBlocks: number;
  maxRunningRequests: number;
  chunkedPrefillSize: number;
  /** Distinct adapters per step, the base model counting as one. */
  maxLorasPerBatch: number;
  /** GPU pool slots (--max-gpu-loras, cut by the slot rank); at least maxLorasPerBatch, which it defaults to. */
  gpuSlots?: number;
  /** Ranks a pool slot (lora-slots.ts); absent: maxLoraRank, one slot an adapter. */
  loraSlotRank?: number;
  maxLoadedLoras: number | null;
  evictionPolicy: 'lru' | 'fifo';
  /** false: no step runs while a copy that a waiting request needs is in flight. */
  overlapLoading: boolean;
  eosTokenIds: number[];
  /**
   * Steps a request may wait for a place (every place taken by other adapters) before the
   * running requests of one adapter give theirs up (pauseForPlace); 0 or absent: never.
   */
  maxPlaceWaitSteps?: number;
  /**
   * For the scheduler thread's loop: send the next step before the last one's result is back
   * (scheduleAhead), as SGLang's overlap scheduler does; absent or false: one step at a time.
   */
  overlapSchedule?: boolean;
  contextLength: number;
  maxLoraRank: number;
  loraModules: LoraModule[];
  /** false: adapters stay in the slots they were copied into (see placement's compact). */
  compactSlots?: boolean;
  /**
   * Keeps computed blocks for later requests with the same prefix under the same adapter
   * (prefix-cache.ts; on unless --disable-radix-cache); absent or false: every prompt is computed.
   */
  prefixCache?: boolean;
}

export interface SchedulerStats {
  waiting: number;
  running: number;
  /** Blocks a request may take now: free, or cached with no request holding them. */
  freeBlocks: number;
  totalBlocks: number;
  /** Blocks the prefix cache keeps for later requests (held by requests or not). */
  cachedBlocks: number;
}

/** What a load balancer weighs this server by: the queues, the KV cache, and where adapters stand. */
export interface SchedulerLoad extends SchedulerStats {
  /** Adapters in a GPU pool slot, ready to run or moving to another slot (sorted by name). */
  residentAdapters: string[];
  /** Adapters that waiting requests name, in the order admission will reach them. */
  waitingAdapters: string[];
  /** Running requests sent back to wait since the start: for KV cache room, and for a place (--max-place-wait-steps). */
  preempted: { cache: number; place: number };
  /** Steps since the start, and those scheduled and sent while the step before was still running (overlap scheduling). */
  steps: { total: number; ahead: number };
  /** Where the engine's time went in the steps completed so far (as their results report it). */
  engine: EngineTimes;
  /** Prompt tokens of the requests admitted so far, and those of them read from the prefix cache. */
  prefixCache: { queriedTokens: number; hitTokens: number };
}

/** A sequence that one step failed on its own while the rest of the batch went on. */
export interface StepFailure {
  id: string;
  /** The engine's reason (StepResult.errors). */
  message: string;
}

// Every message of every actor, in one place. Each actor accepts a union tagged by `type`
// and answers with the reply type named in its *Replies map (void for one-way messages).
import type { AdapterSpec, AdapterStatus } from '../api.js';
import type { EngineInfo, EngineOptions, LoraModule, ModelConfig, StepBatch, StepResult, TensorRef } from '../engine/types.js';
import type { WireError } from '../errors.js';
import type { AdapterInfo } from '../model/adapter.js';
import type {
  AdapterCounters,
  AdapterDetail,
  AdapterTransition,
  LoaderCommand,
  LoaderEvent,
  SchedulerLoad,
  SchedulerOptions,
  SchedulerStats,
  SeqInit,
  TokenEvent,
} from '../scheduler/index.js';

export type {
  AdapterCounters,
  AdapterDetail,
  AdapterTransition,
  LoaderCommand,
  LoaderEvent,
  SchedulerLoad,
  SchedulerOptions,
  SchedulerStats,
  SeqInit,
  TokenEvent,
};

// ---- executor: owns the engine, one native step per message ----
export type ExecutorMsg =
  { type: 'init'; config: ModelConfig; tensors: TensorRef[]; options: EngineOptions } | { type: 'step'; batch: StepBatch } | { type: 'shutdown' };
export interface ExecutorReplies {
  init: { handle: number; info: EngineInfo };
  step: StepResult;
  shutdown: void;
}

// ---- loader: adapter weights from disk to CPU to pool slots ----
export type LoaderMsg =
  | { type: 'init'; handles: number[]; config: ModelConfig; tpSize: number; maxLoraRank: number; loraModules: LoraModule[] }
  | { type: 'command'; command: LoaderCommand }
  /** From the main thread: read and check an adapter's config (its target_modules may be a pattern to match). */
  | { type: 'inspect'; path: string };
export interface LoaderReplies {
  init: void;
  command: void;
  inspect: AdapterInfo;
}
/** What the loader sends back to the scheduler. */
export type LoaderOutMsg = { type: 'event'; event: LoaderEvent };
export interface LoaderOutReplies {
  event: void;
}

// ---- scheduler: the step loop; the main thread only submits and listens ----
export type SchedulerMsg =
  | { type: 'init'; options: SchedulerOptions }
  | { type: 'submit'; seq: SeqInit }
  | { type: 'abort'; id: string }
  /** Answered once the adapter's read from disk has ended (failed included). */
  | { type: 'addAdapter'; spec: Required<AdapterSpec> }
  /** Answered once no request uses it and its copies are released. */
  | { type: 'removeAdapter'; name: string }
  /** Statuses of the named adapters that are registered, or of all. */
  | { type: 'adapters'; names?: string[] }
  | { type: 'adapterDetails' }
  | { type: 'stats' }
  /** stats plus the adapters held in GPU slots and wanted by waiting requests, for /metrics. */
  | { type: 'load' }
  /** Forgets every cached prefix (/flush_cache). */
  | { type: 'flushCache' }
  /** The loader was replaced; `port` is the new one's channel (transferred). */
  | { type: 'loaderRestarted'; port: import('node:worker_threads').MessagePort };
export interface SchedulerReplies {
  init: void;
  submit: void;
  abort: void;
  addAdapter: AdapterStatus;
  removeAdapter: void;
  adapters: AdapterStatus[];
  adapterDetails: AdapterDetail[];
  stats: SchedulerStats;
  load: SchedulerLoad;
  flushCache: void;
  loaderRestarted: void;
}

/** What the scheduler tells the main thread, unasked. */
export type SchedulerOutMsg =
  | { type: 'tokens'; events: TokenEvent[] }
  | { type: 'failed'; ids: string[]; error: WireError }
  /** The transitions of one scheduler tick, with the pool and CPU-cache counters they left. */
  | { type: 'adapters'; transitions: AdapterTransition[]; counters: AdapterCounters };
export interface SchedulerOutReplies {
  tokens: void;
  failed: void;
  adapters: void;
}

/** Handed to workers at spawn time: the direct channels between actors. */
export interface SchedulerWorkerData {
  /** One per tensor-parallel rank, by rank. */
  executorPorts: Array<import('node:worker_threads').MessagePort>;
  loaderPort: import('node:worker_threads').MessagePort;
}
export interface ExecutorWorkerData {
  schedulerPort: import('node:worker_threads').MessagePort;
  rank: number;
}
export interface LoaderWorkerData {
  schedulerPort: import('node:worker_threads').MessagePort;
}

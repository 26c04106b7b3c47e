// Continuous batching with chunked prefill, a paged KV cache and multi-LoRA admission.
// Pure logic: the host thread runs the steps and the loader commands this class emits.
import type { AdapterStatus } from '../api.js';
import type { StepBatch, StepResult } from '../engine/types.js';
import { badRequest } from '../errors.js';
import { AdapterRegistry, type AdapterCounters, type AdapterDetail, type AdapterTransition } from './adapter-registry.js';
import type { SchedulerLoad, SchedulerOptions, SchedulerStats, StepFailure } from './scheduler-types.js';
import { StepFlights } from './step-flights.js';
import { StepPlanner } from './step-planner.js';
import { SequenceSlots } from './sequence-slots.js';
import { EngineTime } from './engine-time.js';
import { BlockManager } from './block-manager.js';
import type { LoaderCommand, LoaderEvent } from './loader.js';
import { Sequence, type SeqInit, type TokenEvent } from './sequence.js';
import { SequenceQueues } from './sequence-queues.js';
import { checkRequest } from './request-checks.js';
import { TokenPool } from './token-pool.js';

export type { SchedulerLoad, SchedulerOptions, SchedulerStats, StepFailure } from './scheduler-types.js';

export class Scheduler {
  private readonly kv: BlockManager;
  private readonly registry: AdapterRegistry;
  /** The waiting queue and the running list, and every request by id. */
  private readonly queues: SequenceQueues;
  /** Running requests a step ended, by adapter: each adapter hears of them in one event after the step. */
  private readonly ending = new Map<string, number>();
  /** The same for requests a later step in flight still has rows of (see StepFlights.afterFlights). */
  private readonly endingLater = new Map<string, number>();
  private pendingEvents: TokenEvent[] = [];
  private readonly flights = new StepFlights();
  /** Forms each step's batch (step-planner.ts). */
  private readonly planner: StepPlanner;
  private readonly engineTime = new EngineTime();
  private readonly seqSlots = new SequenceSlots();
  /** Every sequence's tokens (token-pool.ts). */
  private readonly tokenPool = new TokenPool();

  constructor(private readonly opts: SchedulerOptions) {
    for (const k of ['maxRunningRequests', 'chunkedPrefillSize', 'maxLorasPerBatch', 'contextLength'] as const) {
      if (!Number.isInteger(opts[k]) || opts[k] < 1) throw new RangeError(`${k} must be a positive integer, got ${opts[k]}`);
    }
    const slots = opts.gpuSlots ?? opts.maxLorasPerBatch;
    if (!Number.isInteger(slots) || slots < opts.maxLorasPerBatch) {
      throw new RangeError(`gpuSlots must be an integer of at least maxLorasPerBatch (${opts.maxLorasPerBatch}), got ${slots}`);
    }
    this.kv = new BlockManager(opts.blockSize, opts.numBlocks, opts.prefixCache ?? false);
    this.registry = new AdapterRegistry({
      slots,
      maxPinned: opts.maxLorasPerBatch - 1,
      maxLoaded: opts.maxLoadedLoras,
      evictionPolicy: opts.evictionPolicy,
      maxLoraRank: opts.maxLoraRank,
      slotRank: opts.loraSlotRank,
      loraModules: opts.loraModules,
      compactSlots: opts.compactSlots,
    });
    this.queues = new SequenceQueues(opts, this.kv, this.seqSlots, this.registry, this.flights);
    this.planner = new StepPlanner(opts, this.queues, this.registry, this.kv, this.flights, this.seqSlots);
  }

  addAdapter(spec: { name: string; path: string; pinned: boolean }): void {
    this.registry.add(spec);
    this.pump();
  }

  removeAdapter(name: string): Promise<void> {
    return this.registry.remove(name);
  }

  /** Resolves with the adapter's status once its read from disk has ended; null if it was removed. */
  adapterRead(name: string): Promise<AdapterStatus | null> {
    return this.registry.whenRead(name);
  }

  onLoaderEvent(ev: LoaderEvent): void {
    // Blocks computed with an earlier copy of its weights match no request from now on.
    if (ev.kind === 'cpu-loaded') this.kv.prefix?.weightsRead(ev.name);
    const failed = this.registry.onLoaderEvent(ev);
    if (failed !== null) {
      const message = `adapter "${failed}" failed to load: ${this.registry.error(failed) ?? 'unknown error'}`;
      // Rare, so a walk over the queue is fine.
      for (const s of this.queues.waiting.filter((w) => w.init.lora === failed)) {
        this.pendingEvents.push(this.queues.drop(s).event({ type: 'abort', message }));
      }
    }
    this.pump();
  }

  /** The loader thread was replaced (see AdapterRegistry.loaderRestarted). */
  loaderRestarted(): void {
    this.registry.loaderRestarted();
    this.pump();
  }

  takeCommands(): LoaderCommand[] {
    return this.registry.takeCommands();
  }

  /** Events produced outside a step (requests ended by an adapter's load failure, max_new_tokens 0). */
  takeEvents(): TokenEvent[] {
    const out = this.pendingEvents;
    this.pendingEvents = [];
    return out;
  }

  submit(init: SeqInit): void {
    const { id, lora, sampling } = init;
    if (this.queues.byId.has(id)) throw badRequest(`request id "${id}" is already in use`);
    checkRequest(init, this.opts.contextLength, this.kv, this.registry);
    const seq = new Sequence(init, this.queues.nextArrival(), this.tokenPool);
    if (sampling.maxNewTokens <= 0) {
      this.pendingEvents.push(seq.event({ type: 'length', length: 0 }));
      seq.releaseTokens();
      return;
    }
    this.queues.enqueue(seq);
    // Placement runs now, so the adapter starts loading while the request waits behind others.
    if (lora !== null) this.registry.queued(lora, seq.arrival);
    this.pump();
  }

  abort(id: string): TokenEvent | null {
    const seq = this.queues.byId.get(id);
    if (!seq) return null;
    const ev = this.queues.drop(seq).event({ type: 'abort', message: 'Request aborted' });
    this.pump();
    return ev;
  }

  schedule(): { batch: StepBatch; seqIds: string[] } | null {
    // Steps that were scheduled but never completed are simply forgotten: nothing advanced.
    this.flights.forget();
    return this.planner.plan();
  }

  /**
   * Overlap scheduling: the step after the one in flight, built before its result is back, so
   * the engine starts it as soon as that one ends rather than after a round trip through this
   * thread. A sequence whose step in flight samples decodes that token here: the batch's
   * `feed` names where it goes, and the executor copies it in from that step's result. A
   * sequence the step in flight surely ends (max_new_tokens, the context length) is left out;
   * one it ends otherwise (a stop token) runs one row more, which complete() discards, into
   * blocks it has freed by then: harmless, since whoever takes them next writes them in a later
   * step before reading them.
   */
  scheduleAhead(): { batch: StepBatch; seqIds: string[] } | null {
    if (this.flights.length !== 1) throw new Error(`scheduleAhead() needs exactly one step in flight, there are ${this.flights.length}`);
    return this.planner.plan();
  }

  /** Drops the oldest step in flight, which failed; the caller aborts its sequences. */
  discardStep(): void {
    this.flights.discard();
  }

  /** Completes the oldest step in flight with the engine's result. */
  complete(result: StepResult): TokenEvent[] {
    const flight = this.flights.complete();
    if (!flight) throw new Error('complete() called without a scheduled step');
    const { entries, n } = flight;
    if (result.tokens.length !== n) {
      throw new Error(`step result has ${result.tokens.length} sequences, the step had ${n}`);
    }
    // At most one event a row: the array is that long from the start, where one grown row by
    // row left its earlier copies behind, a twentieth of a decode step's garbage.
    const pending = this.takeEvents();
    const events = new Array<TokenEvent>(pending.length + n);
    for (let i = 0; i < pending.length; i++) events[i] = pending[i]!;
    let highest = -1;
    for (let i = 0; i < n; i++) highest = Math.max(highest, entries[i]!.slot);
    this.engineTime.record(result.stepMs, result.waitMs, flight.decode, flight.ahead, highest + 1);
    const width = n > 0 ? result.topIds.length / n : 0;
    const ending = this.ending;
    ending.clear();
    const endingLater = this.endingLater;
    endingLater.clear();
    try {
      events.length = this.queues.advance(entries, n, result, width, events, pending.length, ending, endingLater);
    } finally {
      this.queues.removeEnded();
      for (const [lora, count] of ending) this.registry.endedRunning(lora, count);
      for (const [lora, count] of endingLater) this.flights.afterFlights(() => this.registry.endedRunning(lora, count));
      this.flights.releaseHeld(flight.id);
    }
    this.pump();
    // A step that moved no adapter lets one hear its new requests now, not with the step that
    // ends them, which also turns the batch over: the time goes to a step that has it to spare.
    if (this.planner.placementUnchanged) this.registry.settleOne();
    return events;
  }

  /** Forgets every cached prefix (SGLang's /flush_cache): later requests compute theirs again. */
  flushCache(): void {
    this.kv.flushPrefixes();
  }

  /** Sequences the engine failed alone in the last steps (malformed sampling values); already dropped. */
  takeFailures(): StepFailure[] {
    return this.queues.takeFailures();
  }

  hasWork(): boolean {
    const { waiting, running } = this.queues;
    return waiting.length > 0 || running.length > 0 || this.pendingEvents.length > 0;
  }

  /** The named adapters' statuses (those registered), or every adapter's. */
  adapters(names?: readonly string[]): AdapterStatus[] {
    return this.registry.list(names);
  }

  adapterDetails(): AdapterDetail[] {
    return this.registry.details();
  }

  adapterCounters(): AdapterCounters {
    return this.registry.counters();
  }

  subscribe(listener: (t: AdapterTransition) => void): () => void {
    return this.registry.subscribe(listener);
  }

  stats(): SchedulerStats {
    return {
      waiting: this.queues.waiting.length,
      running: this.queues.running.length,
      freeBlocks: this.kv.freeCount,
      totalBlocks: this.kv.numBlocks,
      cachedBlocks: this.kv.prefix?.cachedBlocks ?? 0,
    };
  }

  /** Costs the resident adapters (at most the slots) plus the adapters waiting requests want, never the registered ones. */
  load(): SchedulerLoad {
    const index = this.registry.index;
    return {
      ...this.stats(),
      // An adapter moving between slots stays on the GPU: its move takes a fraction of a step.
      residentAdapters: [
        ...index.inResidency('gpuResident.pinned'),
        ...index.inResidency('gpuResident.unpinned'),
        ...index.inResidency('moving'),
      ].sort(),
      waitingAdapters: [...index.demand.names()],
      preempted: { ...this.planner.preempted },
      steps: this.flights.sent(),
      engine: this.engineTime.totals(),
      prefixCache: { queriedTokens: this.kv.prefix?.queriedTokens ?? 0, hitTokens: this.kv.prefix?.hitTokens ?? 0 },
    };
  }

  private pump(): void {
    this.registry.pump();
  }
}

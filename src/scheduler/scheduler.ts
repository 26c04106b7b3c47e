// Continuous batching with chunked prefill, a paged KV cache and multi-LoRA admission.
// Pure logic: the host thread runs the steps and the loader commands this class emits.
import type { AdapterStatus } from '../api.js';
import type { StepBatch, StepResult } from '../engine/types.js';
import { badRequest } from '../errors.js';
import { adapterToPause } from './admission.js';
import { AdmissionWalk } from './admission-walk.js';
import { AdapterRegistry, type AdapterCounters, type AdapterDetail, type AdapterTransition } from './adapter-registry.js';
import { buildBatch, type StepEntry } from './batch-builder.js';
import { insertByArrival } from './arrival-order.js';
import type { SchedulerLoad, SchedulerOptions, SchedulerStats, StepFailure } from './scheduler-types.js';
import { StepFlights } from './step-flights.js';
import { SequenceSlots } from './sequence-slots.js';
import { EngineTime } from './engine-time.js';
import { BlockManager } from './block-manager.js';
import type { LoaderCommand, LoaderEvent } from './loader.js';
import { Sequence, type SeqInit, type TokenEvent } from './sequence.js';
import { TokenPool } from './token-pool.js';

export type { SchedulerLoad, SchedulerOptions, SchedulerStats, StepFailure } from './scheduler-types.js';

export class Scheduler {
  private readonly kv: BlockManager;
  private readonly registry: AdapterRegistry;
  /** Both kept in arrival order. */
  private waiting: Sequence[] = [];
  /** Running requests a step ended, by adapter: each adapter hears of them in one event after the step. */
  private readonly ending = new Map<string, number>();
  /** The same for requests a later step in flight still has rows of (see StepFlights.afterFlights). */
  private readonly endingLater = new Map<string, number>();
  private readonly running: Sequence[] = [];
  private readonly byId = new Map<string, Sequence>();
  private pendingEvents: TokenEvent[] = [];
  private failures: StepFailure[] = [];
  private readonly flights = new StepFlights();
  /** The entries of the step being scheduled. */
  private entries: StepEntry[] = [];
  private readonly distinct: Array<string | null> = [];
  /** The queueVersion `distinct` was counted at (admission adds to it, and changes the version when it does). */
  private distinctAt = -1;
  /** Changes whenever a request enters or leaves the waiting queue or the running list. */
  private queueVersion = 0;
  private arrivals = 0;
  /** The adapter index's version when the last step was scheduled. */
  private versionAtSchedule = -1;
  /** Requests paused for a place that have not run again yet; no other adapter is paused meanwhile. */
  private readonly paused = new Set<Sequence>();
  /** Running requests preempted so far, for KV cache room and for a place. */
  private readonly preempted = { cache: 0, place: 0 };
  private readonly engineTime = new EngineTime();
  private readonly seqSlots = new SequenceSlots();
  /** Every sequence's tokens (token-pool.ts). */
  private readonly tokenPool = new TokenPool();
  /** Which waiting requests join each step (admission-walk.ts). */
  private readonly walk: AdmissionWalk;

  constructor(private readonly opts: SchedulerOptions) {
    for (const k of ['maxRunningRequests', 'chunkedPrefillSize', 'maxLorasPerBatch', 'contextLength'] as const) {
      if (!Number.isInteger(opts[k]) || opts[k] < 1) throw new RangeError(`${k} must be a positive integer, got ${opts[k]}`);
    }
    const slots = opts.gpuSlots ?? opts.maxLorasPerBatch;
    if (!Number.isInteger(slots) || slots < opts.maxLorasPerBatch) {
      throw new RangeError(`gpuSlots must be an integer of at least maxLorasPerBatch (${opts.maxLorasPerBatch}), got ${slots}`);
    }
    this.kv = new BlockManager(opts.blockSize, opts.numBlocks);
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
    this.walk = new AdmissionWalk({
      opts,
      registry: this.registry,
      kv: this.kv,
      distinct: this.distinct,
      paused: this.paused,
      running: this.running,
      waiting: () => this.waiting,
      stepCount: () => this.flights.sentCount,
      queueVersion: () => this.queueVersion,
      bumpQueueVersion: () => {
        this.queueVersion++;
      },
      setEntry: (i, s, chunk, slot) => this.setEntry(i, s, chunk, slot),
    });
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
    const failed = this.registry.onLoaderEvent(ev);
    if (failed !== null) {
      const message = `adapter "${failed}" failed to load: ${this.registry.error(failed) ?? 'unknown error'}`;
      // Rare, so a walk over the queue is fine.
      for (const s of this.waiting.filter((w) => w.init.lora === failed)) {
        this.pendingEvents.push(this.drop(s).event({ type: 'abort', message }));
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
    const { id, promptIds, lora, sampling } = init;
    if (this.byId.has(id)) throw badRequest(`request id "${id}" is already in use`);
    if (promptIds.length === 0) throw badRequest('the prompt is empty');
    if (lora !== null) {
      const refusal = this.registry.admit(lora);
      if (refusal) throw refusal;
    }
    const ctx = this.opts.contextLength;
    if (promptIds.length >= ctx) {
      throw badRequest(`the input (${promptIds.length} tokens) is longer than the model's context length (${ctx} tokens)`);
    }
    // The last sampled token never enters the cache.
    const kvTokens = Math.min(promptIds.length + sampling.maxNewTokens, ctx) - 1;
    const cacheTokens = this.kv.numBlocks * this.kv.blockSize;
    if (this.kv.blocksFor(kvTokens) > this.kv.numBlocks) {
      throw badRequest(
        `the request needs ${kvTokens + 1} tokens (prompt ${promptIds.length} + max_new_tokens ${sampling.maxNewTokens}) ` +
          `but the KV cache holds only ${cacheTokens} tokens; lower max_new_tokens or shorten the prompt`,
      );
    }
    const seq = new Sequence(init, this.arrivals++, this.tokenPool);
    if (sampling.maxNewTokens <= 0) {
      this.pendingEvents.push(seq.event({ type: 'length', length: 0 }));
      seq.releaseTokens();
      return;
    }
    this.byId.set(id, seq);
    this.waiting.push(seq);
    this.queueVersion++;
    // Placement runs now, so the adapter starts loading while the request waits behind others.
    if (lora !== null) this.registry.queued(lora, seq.arrival);
    this.pump();
  }

  abort(id: string): TokenEvent | null {
    const seq = this.byId.get(id);
    if (!seq) return null;
    const ev = this.drop(seq).event({ type: 'abort', message: 'Request aborted' });
    this.pump();
    return ev;
  }

  schedule(): { batch: StepBatch; seqIds: string[] } | null {
    // Steps that were scheduled but never completed are simply forgotten: nothing advanced.
    this.flights.forget();
    return this.plan();
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
    return this.plan();
  }

  /** Drops the oldest step in flight, which failed; the caller aborts its sequences. */
  discardStep(): void {
    this.flights.discard();
  }

  private plan(): { batch: StepBatch; seqIds: string[] } | null {
    this.entries = this.flights.entries();
    this.versionAtSchedule = this.registry.index.version;
    if (!this.opts.overlapLoading && this.registry.wantedCopyInFlight()) return null;
    this.pauseForPlace();
    let n = 0;
    let budget = this.opts.chunkedPrefillSize;

    for (let i = 0; i < this.running.length; i++) {
      const s = this.running[i]!;
      if (s.endsAhead(this.opts.contextLength)) continue;
      const prefill = s.prefilling;
      const chunk = prefill ? Math.min(s.pending, budget) : 1;
      if (chunk === 0) continue;
      // Short of blocks: preempt the newest running sequences (possibly this one itself).
      let self = false;
      while (!this.kv.grow(s.blocks, s.start + chunk)) {
        const victim = this.running[this.running.length - 1]!;
        this.preempted.cache++;
        this.preempt(victim);
        if (victim === s) {
          self = true;
          break;
        }
      }
      if (self) break;
      if (prefill) budget -= chunk;
      const lora = s.init.lora;
      this.setEntry(n++, s, chunk, lora === null ? -1 : this.registry.residentSlot(lora)!);
    }

    // The running list changes only with queueVersion: while it stays (most decode steps), so
    // do the step's adapters, which are not counted again over every running request.
    const distinct = this.distinct;
    if (this.distinctAt !== this.queueVersion) this.countStepAdapters();
    n = this.walk.run(n, budget);

    this.pump();
    if (n === 0) {
      this.flights.recycle(this.entries);
      return null;
    }
    for (let d = 0; d < distinct.length; d++) {
      const lora = distinct[d]!;
      if (lora !== null) this.registry.touch(lora);
    }
    const entries = this.entries;
    const flight = this.flights.send(entries, n);
    const seqIds = new Array<string>(n);
    const batch = buildBatch(entries, n, this.seqSlots);
    // Only now, with every entry's feed row read: the next step starts after this one.
    for (let i = 0; i < n; i++) {
      const e = entries[i]!;
      if (e.chunk !== 1 || !e.sample) flight.decode = false;
      const s = e.seq;
      seqIds[i] = s.id;
      s.ahead += e.chunk;
      s.aheadSamples = e.sample;
      s.aheadRow = i;
    }
    return { batch, seqIds };
  }

  /**
   * The step's adapters (`distinct`), in the order of their oldest running request; at most
   * maxLorasPerBatch, so a list is as quick as a set and is reused from step to step.
   */
  private countStepAdapters(): void {
    const distinct = this.distinct;
    distinct.length = 0;
    for (let r = 0; r < this.running.length; r++) addOnce(distinct, this.running[r]!.init.lora);
    this.distinctAt = this.queueVersion;
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
      events.length = this.completeEntries(entries, result, n, width, events, pending.length, ending, endingLater);
    } finally {
      this.removeEnded();
      for (const [lora, count] of ending) this.registry.endedRunning(lora, count);
      for (const [lora, count] of endingLater) this.flights.afterFlights(() => this.registry.endedRunning(lora, count));
      this.flights.releaseHeld(flight.id);
    }
    this.pump();
    // A step that moved no adapter lets one hear its new requests now, not with the step that
    // ends them, which also turns the batch over: the time goes to a step that has it to spare.
    if (this.registry.index.version === this.versionAtSchedule) this.registry.settleOne();
    return events;
  }

  /**
   * Advances each sequence of the completed step by its entry and the result's row, writing their
   * events into `events` from `at`; returns where they end. Those that end stay in `running` (as
   * 'finished') for removeEnded to take out together.
   */
  private completeEntries(
    entries: readonly StepEntry[],
    result: StepResult,
    n: number,
    width: number,
    events: TokenEvent[],
    at: number,
    ending: Map<string, number>,
    endingLater: Map<string, number>,
  ): number {
    for (let i = 0; i < n; i++) {
      const e = entries[i]!;
      const s = e.seq;
      // Ended, aborted or preempted while the step ran (perhaps running again since, from
      // scratch): its blocks are already free, and the row is stale.
      if (s.status !== 'running' || e.epoch !== s.epoch) continue;
      s.ahead -= e.chunk;
      // A sequence that ends now while a later step in flight has its row lets its adapter go
      // once that step is done.
      const ends = s.ahead > 0 ? endingLater : ending;
      if (s.ahead === 0) {
        s.aheadSamples = false;
        s.aheadRow = -1;
      }
      const error = result.errors?.[i] ?? null;
      if (error !== null) {
        this.endRunning(s, ends);
        this.failures.push({ id: s.id, message: error });
        continue;
      }
      s.computed += e.chunk;
      if (!e.sample) continue;
      const k = Math.min(s.init.topLogprobsNum, width);
      const id = result.tokens[i]!;
      const topIds = k > 0 ? Array.from(result.topIds.subarray(i * width, i * width + k)) : null;
      const topLogprobs = k > 0 ? Array.from(result.topLogprobValues.subarray(i * width, i * width + k)) : null;
      const finish = s.accept(id, this.opts.eosTokenIds, this.opts.contextLength);
      if (finish) this.endRunning(s, ends);
      events[at++] = s.tokenEvent(finish, id, result.logprobs[i] ?? 0, topIds, topLogprobs);
    }
    return at;
  }

  /** Sequences the engine failed alone in the last steps (malformed sampling values); already dropped. */
  takeFailures(): StepFailure[] {
    const out = this.failures;
    this.failures = [];
    return out;
  }

  hasWork(): boolean {
    return this.waiting.length > 0 || this.running.length > 0 || this.pendingEvents.length > 0;
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
      waiting: this.waiting.length,
      running: this.running.length,
      freeBlocks: this.kv.freeCount,
      totalBlocks: this.kv.numBlocks,
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
      preempted: { ...this.preempted },
      steps: this.flights.sent(),
      engine: this.engineTime.totals(),
    };
  }

  /** Fills the step's entry `i` (`slot`: its adapter's, which the caller has looked up), reusing the object an earlier step left there. */
  private setEntry(i: number, s: Sequence, chunk: number, slot: number): void {
    const start = s.start;
    const sample = start + chunk === s.tokenCount + (s.aheadSamples ? 1 : 0);
    // With a sampling step in flight, its token is this step's only input (pending is 1).
    const feedRow = s.aheadSamples ? s.aheadRow : -1;
    const e = this.entries[i];
    if (e === undefined) {
      this.entries.push({ seq: s, start, chunk, sample, slot, feedRow, epoch: s.epoch });
      return;
    }
    e.seq = s;
    e.start = start;
    e.chunk = chunk;
    e.sample = sample;
    e.slot = slot;
    e.feedRow = feedRow;
    e.epoch = s.epoch;
  }

  /** Frees the cache and recomputes later, keeping the generated tokens as part of the prompt. */
  private preempt(s: Sequence): void {
    this.running.splice(this.running.indexOf(s), 1);
    this.freeEngineState(s);
    s.computed = 0;
    s.leaveSteps();
    s.preemptions++;
    s.status = 'waiting';
    insertByArrival(this.waiting, s);
    this.queueVersion++;
    if (s.init.lora !== null) this.registry.preempted(s.init.lora, s.arrival);
  }

  /**
   * Bounds the wait for a place. Places free only when every running request of an adapter
   * ends, and with every place taken a request for another adapter can wait for several of
   * them in turn (about 110 steps at the median for the slowest 1% of requests with 256
   * adapters in simulation). Once the longest such wait reaches maxPlaceWaitSteps, the running
   * requests of one adapter (adapterToPause) are preempted: their cache is freed and recomputed
   * later, and they queue again behind every request waiting now, so the place and, in the pool's
   * order of waiting requests, the slot go to the request that waited. One adapter at a time is
   * paused, and a request once, so every paused request runs again after one such wait.
   */
  private pauseForPlace(): void {
    const bound = this.opts.maxPlaceWaitSteps ?? 0;
    const since = this.walk.oldestPlaceWait;
    if (bound <= 0 || since < 0 || this.paused.size > 0 || this.flights.sentCount - since < bound) return;
    const victim = adapterToPause(this.running, this.registry.index.pinned, this.opts.contextLength);
    if (victim === undefined) return;
    // In running order (by arrival), so they keep their order behind the queue.
    const paused = this.running.filter((s) => s.init.lora === victim);
    for (const s of paused) {
      s.arrival = this.arrivals++;
      s.pausedForPlace = true;
      this.paused.add(s);
      this.preempted.place++;
      this.preempt(s);
    }
    this.walk.oldestPlaceWait = -1;
  }

  /** Removes a sequence for good (aborted, or its adapter failed), reporting it to its adapter at once. */
  private drop(s: Sequence): Sequence {
    const wasRunning = s.status === 'running';
    const list = wasRunning ? this.running : this.waiting;
    const idx = list.indexOf(s);
    if (idx >= 0) list.splice(idx, 1);
    this.queueVersion++;
    this.freeEngineState(s);
    const lora = s.init.lora;
    if (lora !== null) {
      const arrival = s.arrival;
      // Running with rows in a step in flight: its adapter lets it go once the steps are done.
      if (wasRunning && s.ahead > 0) this.flights.afterFlights(() => this.registry.ended(lora, arrival, true));
      else this.registry.ended(lora, arrival, wasRunning);
    }
    this.paused.delete(s);
    s.status = 'finished';
    s.leaveSteps();
    s.releaseTokens();
    this.byId.delete(s.id);
    return s;
  }

  /**
   * Ends a running sequence of the completed step (finished, or failed alone): counted in
   * `ending` for its adapter's one event, and left in `running` for removeEnded. When a cohort
   * of requests ends in one step, a removal each would move the rest of the list each time.
   */
  private endRunning(s: Sequence, ending: Map<string, number>): void {
    this.freeEngineState(s);
    const lora = s.init.lora;
    if (lora !== null) ending.set(lora, (ending.get(lora) ?? 0) + 1);
    s.status = 'finished';
    s.releaseTokens();
    this.byId.delete(s.id);
  }

  /** Gives back what the engine holds for a sequence leaving the running list: its KV blocks and its sequence slot. */
  private freeEngineState(s: Sequence): void {
    this.kv.release(s.blocks);
    this.seqSlots.release(s);
  }

  /** Takes the sequences endRunning ended out of `running`, keeping the others' order. */
  private removeEnded(): void {
    const running = this.running;
    let kept = 0;
    for (let r = 0; r < running.length; r++) {
      const s = running[r]!;
      if (s.status === 'running') running[kept++] = s;
    }
    if (kept < running.length) this.queueVersion++;
    running.length = kept;
  }

  private pump(): void {
    this.registry.pump();
  }
}

function addOnce<T>(list: T[], x: T): void {
  if (!list.includes(x)) list.push(x);
}

// Forms each step: the running requests' next tokens (preempting the newest when the KV cache is
// short), then the waiting requests the admission walk takes, into entries reused from step to
// step, and the batch the engine runs. It also bounds how long a request waits for a place.
import type { StepBatch } from '../engine/types.js';
import { adapterToPause } from './admission.js';
import { AdmissionWalk } from './admission-walk.js';
import type { AdapterRegistry } from './adapter-registry.js';
import { buildBatch, type StepEntry } from './batch-builder.js';
import type { BlockManager } from './block-manager.js';
import type { SchedulerOptions } from './scheduler-types.js';
import type { Sequence } from './sequence.js';
import type { SequenceQueues } from './sequence-queues.js';
import type { SequenceSlots } from './sequence-slots.js';
import type { StepFlights } from './step-flights.js';

export class StepPlanner {
  /** The entries of the step being scheduled. */
  private entries: StepEntry[] = [];
  private readonly distinct: Array<string | null> = [];
  /** The queues' version `distinct` was counted at (admission adds to it, and changes the version when it does). */
  private distinctAt = -1;
  /** The adapter index's version when the last step was scheduled. */
  private versionAtSchedule = -1;
  /** Running requests preempted so far, for KV cache room and for a place. */
  readonly preempted = { cache: 0, place: 0 };
  /** Which waiting requests join each step (admission-walk.ts). */
  private readonly walk: AdmissionWalk;

  constructor(
    private readonly opts: SchedulerOptions,
    private readonly queues: SequenceQueues,
    private readonly registry: AdapterRegistry,
    private readonly kv: BlockManager,
    private readonly flights: StepFlights,
    private readonly seqSlots: SequenceSlots,
  ) {
    this.walk = new AdmissionWalk({
      opts,
      registry,
      kv,
      distinct: this.distinct,
      paused: queues.paused,
      running: queues.running,
      waiting: () => queues.waiting,
      stepCount: () => flights.sentCount,
      queueVersion: () => queues.version,
      bumpQueueVersion: () => {
        queues.version++;
      },
      setEntry: (i, s, chunk, slot) => this.setEntry(i, s, chunk, slot),
    });
  }

  /** Whether no adapter has moved since the last step was planned. */
  get placementUnchanged(): boolean {
    return this.registry.index.version === this.versionAtSchedule;
  }

  /** The next step's batch and its sequences' ids, or null when nothing can run. */
  plan(): { batch: StepBatch; seqIds: string[] } | null {
    this.entries = this.flights.entries();
    this.versionAtSchedule = this.registry.index.version;
    if (!this.opts.overlapLoading && this.registry.wantedCopyInFlight()) return null;
    this.pauseForPlace();
    let n = 0;
    let budget = this.opts.chunkedPrefillSize;

    const running = this.queues.running;
    for (let i = 0; i < running.length; i++) {
      const s = running[i]!;
      if (s.endsAhead(this.opts.contextLength)) continue;
      const prefill = s.prefilling;
      const chunk = prefill ? Math.min(s.pending, budget) : 1;
      if (chunk === 0) continue;
      // Short of blocks: preempt the newest running sequences (possibly this one itself).
      let self = false;
      while (!this.kv.grow(s.blocks, s.start + chunk)) {
        const victim = running[running.length - 1]!;
        this.preempted.cache++;
        this.queues.preempt(victim);
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

    // The running list changes only with the queues' version: while it stays (most decode steps),
    // so do the step's adapters, which are not counted again over every running request.
    const distinct = this.distinct;
    if (this.distinctAt !== this.queues.version) this.countStepAdapters();
    n = this.walk.run(n, budget);

    this.registry.pump();
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
    const running = this.queues.running;
    for (let r = 0; r < running.length; r++) addOnce(distinct, running[r]!.init.lora);
    this.distinctAt = this.queues.version;
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
    const queues = this.queues;
    if (bound <= 0 || since < 0 || queues.paused.size > 0 || this.flights.sentCount - since < bound) return;
    const victim = adapterToPause(queues.running, this.registry.index.pinned, this.opts.contextLength);
    if (victim === undefined) return;
    // In running order (by arrival), so they keep their order behind the queue.
    const paused = queues.running.filter((s) => s.init.lora === victim);
    for (const s of paused) {
      s.arrival = queues.nextArrival();
      s.pausedForPlace = true;
      queues.paused.add(s);
      this.preempted.place++;
      queues.preempt(s);
    }
    this.walk.oldestPlaceWait = -1;
  }
}

function addOnce<T>(list: T[], x: T): void {
  if (!list.includes(x)) list.push(x);
}

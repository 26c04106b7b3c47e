// The scheduler's requests: the waiting queue and the running list (both in arrival order), and
// the ways a request leaves them. Each way gives back what the engine holds for it (its KV blocks
// and sequence slot) and tells its adapter, so no caller can forget one of the two.
import type { StepResult } from '../engine/types.js';
import type { AdapterRegistry } from './adapter-registry.js';
import { insertByArrival } from './arrival-order.js';
import type { StepEntry } from './batch-builder.js';
import type { BlockManager } from './block-manager.js';
import type { SchedulerOptions, StepFailure } from './scheduler-types.js';
import type { SequenceSlots } from './sequence-slots.js';
import type { Sequence, TokenEvent } from './sequence.js';
import { keepComputedBlocks, releasePrefixClaims } from './sequence-prefix.js';
import type { StepFlights } from './step-flights.js';

export class SequenceQueues {
  readonly waiting: Sequence[] = [];
  readonly running: Sequence[] = [];
  readonly byId = new Map<string, Sequence>();
  /** Requests paused for a place that have not run again yet; no other adapter is paused meanwhile. */
  readonly paused = new Set<Sequence>();
  /** Changes whenever a request enters or leaves the waiting queue or the running list. */
  version = 0;
  /** Arrival numbers handed out so far: a request's place in the queues' order. */
  private arrivals = 0;
  /** Sequences the engine failed alone in the last steps (malformed sampling values); already ended. */
  private failures: StepFailure[] = [];

  constructor(
    private readonly opts: Pick<SchedulerOptions, 'eosTokenIds' | 'contextLength'>,
    private readonly kv: BlockManager,
    private readonly seqSlots: SequenceSlots,
    private readonly registry: AdapterRegistry,
    private readonly flights: StepFlights,
  ) {}

  /** The next arrival number (a new request's, or a paused one's that queues again behind the others). */
  nextArrival(): number {
    return this.arrivals++;
  }

  /** Queues a new request behind every waiting one. */
  enqueue(s: Sequence): void {
    this.byId.set(s.id, s);
    this.waiting.push(s);
    this.version++;
  }

  /** Frees the cache and recomputes later, keeping the generated tokens as part of the prompt. */
  preempt(s: Sequence): void {
    this.running.splice(this.running.indexOf(s), 1);
    this.freeEngineState(s);
    s.computed = 0;
    s.keptBlocks = 0;
    s.leaveSteps();
    s.preemptions++;
    s.status = 'waiting';
    insertByArrival(this.waiting, s);
    this.version++;
    if (s.init.lora !== null) this.registry.preempted(s.init.lora, s.arrival);
  }

  /** Removes a sequence for good (aborted, or its adapter failed), reporting it to its adapter at once. */
  drop(s: Sequence): Sequence {
    const wasRunning = s.status === 'running';
    const list = wasRunning ? this.running : this.waiting;
    const idx = list.indexOf(s);
    if (idx >= 0) list.splice(idx, 1);
    this.version++;
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
   * Advances each sequence of the completed step by its entry and the result's row, writing their
   * events into `events` from `at`; returns where they end. Those that end stay in `running` (as
   * 'finished') for removeEnded to take out together, counted by adapter in `ending`, or in
   * `endingLater` where a later step in flight still has their rows.
   */
  advance(
    entries: readonly StepEntry[],
    n: number,
    result: StepResult,
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
      keepComputedBlocks(s, this.kv);
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

  /** The failures `advance` met since the last call. */
  takeFailures(): StepFailure[] {
    const out = this.failures;
    this.failures = [];
    return out;
  }

  /** Takes the sequences `advance` ended out of `running`, keeping the others' order. */
  removeEnded(): void {
    const running = this.running;
    let kept = 0;
    for (let r = 0; r < running.length; r++) {
      const s = running[r]!;
      if (s.status === 'running') running[kept++] = s;
    }
    if (kept < running.length) this.version++;
    running.length = kept;
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
    releasePrefixClaims(s, this.kv);
    this.kv.release(s.blocks);
    this.seqSlots.release(s);
  }
}

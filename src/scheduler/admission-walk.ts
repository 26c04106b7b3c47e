// The admission walk: which waiting requests join a step, within --max-loras-per-batch distinct
// adapters, and which adapters stop taking new requests so that a request waiting for a place
// gets one. Its scratch lists are reused from step to step; what it changes of the scheduler's
// state it reaches through WalkState.
import type { AdapterRegistry } from './adapter-registry.js';
import { mostDraining, soonestToFree, tokensLeft, tokensLeftByAdapter } from './admission.js';
import { mergeByArrival } from './arrival-order.js';
import type { BlockManager } from './block-manager.js';
import type { SchedulerOptions } from './scheduler-types.js';
import type { Sequence } from './sequence.js';
import { claimPrefix, returnCachedPrefix, takeCachedPrefix, waitsForPrefix } from './sequence-prefix.js';

/** The scheduler's state the walk reads and changes. */
export interface WalkState {
  readonly opts: SchedulerOptions;
  readonly registry: AdapterRegistry;
  readonly kv: BlockManager;
  /** The step's adapters, in the order of their oldest running request; the walk adds those it admits. */
  readonly distinct: Array<string | null>;
  /** Requests paused for a place; one admitted is no longer paused. */
  readonly paused: Set<Sequence>;
  /** The running list, in arrival order; the walk merges the requests it admits into it. */
  readonly running: Sequence[];
  /** The waiting queue, in arrival order; the walk takes out those it admits. */
  waiting(): Sequence[];
  /** Steps sent so far (the clock of a wait for a place). */
  stepCount(): number;
  /** Changes whenever a request enters or leaves the waiting queue or the running list. */
  queueVersion(): number;
  bumpQueueVersion(): void;
  /** Fills the step's entry `i` for `s` with `chunk` tokens and its adapter's `slot`. */
  setEntry(i: number, s: Sequence, chunk: number, slot: number): void;
}

export class AdmissionWalk {
  /** New adapters that requests held back claim places for (see run). */
  private readonly claims: Array<string | null> = [];
  /** Adapters in the step that take no new request this step. */
  private readonly draining: Array<string | null> = [];
  /** The tokens left to each adapter in the step, in `distinct`'s order. */
  private readonly left: number[] = [];
  /**
   * The requests one walk admits, in arrival order: they join `running` together, in one merge,
   * once the walk ends. Inserted one by one, each that is older than the newest running request
   * (it waited for a place while newer ones ran) walked back over and moved the running requests
   * newer than it.
   */
  private readonly admitted: Sequence[] = [];
  /** Arrivals of the requests a walk admitted, by adapter, reported to each adapter in one event. */
  private readonly started = new Map<string, number[]>();
  /** The versions when the walk last admitted nothing with no prefill running (queue -1: none). */
  private readonly idle = { queue: -1, placement: -1, prefix: -1 };
  /** When the longest wait for a place seen by the last walk began (a step count), or -1. */
  oldestPlaceWait = -1;

  constructor(private readonly st: WalkState) {}

  /**
   * Admits waiting requests into the step after its `n` running entries, within `budget`
   * prefill tokens; returns the step's entry count.
   *
   * Waiting requests are admitted first come, first served, within --max-loras-per-batch distinct
   * adapters. A request for an adapter already in the step needs no new place, so it is
   * admitted even while an older request waits for one: the step fills with the requests
   * its adapters can take instead of running a few rows while places are short (SGLang
   * skips past such requests the same way). A request for a new adapter that gets no place
   * claims one, so newer requests for other new adapters cannot take it.
   *
   * Skipping alone can starve a claim: a place frees only when every request of an adapter
   * in the step has ended, and an adapter that keeps receiving requests never ends. So each
   * claim short of a place, oldest first, stops admission to the adapter in the step that
   * will free a place soonest (soonestToFree), up to half the places (mostDraining). That
   * adapter drains and the oldest claim gets its place as soon as it would under strict first
   * come first served, which held back every later request instead: within the running
   * requests' max_new_tokens, however many requests the other adapters receive.
   */
  run(n: number, budget: number): number {
    const st = this.st;
    // Nothing has changed since a walk that admitted nothing: this one would admit nothing
    // either, and mark no new request as waiting for a place. What a walk reads is the queue
    // and the running list (queueVersion), the adapters' slots (placementVersion), and the
    // prefill budget and the tokens left to the running requests: with no prefill running,
    // every running request computes one token a step, so the adapters' order by tokens left,
    // and with it which one drains (soonestToFree), stays. Free KV blocks only fall meanwhile.
    const full = budget === st.opts.chunkedPrefillSize;
    const placement = st.registry.index.placementVersion;
    // And blocks that waiting requests wait for as others compute them (prefix.version).
    const prefixVersion = st.kv.prefix?.version ?? 0;
    if (full && this.idle.queue === st.queueVersion() && this.idle.placement === placement && this.idle.prefix === prefixVersion) return n;
    const before = n;
    const max = st.opts.maxLorasPerBatch;
    const distinct = st.distinct;
    // New adapters that requests held back claim places for: while places are left, and then
    // one for each adapter draining.
    const claims = this.claims;
    claims.length = 0;
    // Adapters in the step that take no new request this step.
    const draining = this.draining;
    draining.length = 0;
    const drainLimit = mostDraining(max);
    // The tokens left to each adapter in the step (`distinct`'s order): counted over the running
    // requests once, at the first claim that drains one, and kept as requests are admitted.
    const left = this.left;
    let leftKnown = false;
    // Arrivals of the requests admitted now, by adapter: each adapter hears of them in one event.
    const started = this.started;
    started.clear();
    const waiting = st.waiting();
    const admitted = this.admitted;
    admitted.length = 0;
    const runningBefore = st.running.length;
    let placeWait = -1;
    let i = 0;
    // Requests held back are moved down over the admitted ones, keeping their order.
    let kept = 0;
    for (; i < waiting.length; i++) {
      if (runningBefore + admitted.length >= st.opts.maxRunningRequests || budget <= 0) break;
      const s = waiting[i]!;
      const lora = s.init.lora;
      const slot = lora === null ? -1 : st.registry.residentSlot(lora);
      let admit: boolean;
      // Its place among the step's adapters, found once for every question below.
      let d = distinct.indexOf(lora);
      if (d >= 0) {
        admit = slot !== null && !draining.includes(lora);
      } else {
        const known = claims.includes(lora);
        const free = max - distinct.length - claims.length;
        admit = !known && free > 0 && slot !== null;
        if (!admit && !known) {
          if (free <= 0) {
            // It waits for a place: pauseForPlace bounds how long.
            if (s.placeWaitSince < 0) s.placeWaitSince = st.stepCount();
            if (placeWait < 0 || s.placeWaitSince < placeWait) placeWait = s.placeWaitSince;
          }
          if (free > 0) {
            claims.push(lora);
          } else if (draining.length < drainLimit) {
            if (!leftKnown) {
              tokensLeftByAdapter(distinct, st.running, st.opts.contextLength, left);
              // And those this walk admitted so far, which join the running list after it.
              for (let a = 0; a < admitted.length; a++) {
                const r = admitted[a]!;
                const at = distinct.indexOf(r.init.lora);
                left[at] = Math.max(left[at]!, tokensLeft(r, st.opts.contextLength));
              }
            }
            leftKnown = true;
            const next = soonestToFree(distinct, left, draining);
            if (next !== undefined) {
              claims.push(lora);
              draining.push(next);
            }
          }
        }
        // No place left and every adapter in the step draining: no later request can be admitted.
        if (!admit && free <= 0 && draining.length === distinct.length) break;
      }
      if (!admit) {
        waiting[kept++] = s;
        continue;
      }
      // Its tokens that a cached prefix already holds need no computing (sequence-prefix.ts), and
      // those that an admitted request is computing now it waits for.
      takeCachedPrefix(s, st.kv);
      if (waitsForPrefix(s, st.kv)) {
        returnCachedPrefix(s, st.kv);
        waiting[kept++] = s;
        continue;
      }
      const chunk = Math.min(s.pending, budget);
      if (!st.kv.grow(s.blocks, s.start + chunk)) {
        returnCachedPrefix(s, st.kv);
        break;
      }
      claimPrefix(s, st.kv);
      s.status = 'running';
      if (s.firstRunAt < 0) {
        s.firstRunAt = performance.now();
        s.cachedTokens = s.computed;
        const prefix = st.kv.prefix;
        if (prefix !== null) {
          prefix.queriedTokens += s.promptLength;
          prefix.hitTokens += s.cachedTokens;
        }
      }
      if (st.paused.size > 0) st.paused.delete(s);
      admitted.push(s);
      if (d < 0) d = distinct.push(lora) - 1;
      if (leftKnown) left[d] = Math.max(left[d] ?? 0, tokensLeft(s, st.opts.contextLength));
      if (lora !== null) tally(started, lora, s.arrival);
      budget -= chunk;
      st.setEntry(n++, s, chunk, slot!);
    }
    mergeByArrival(st.running, admitted);
    admitted.length = 0;
    if (kept < i) {
      for (let j = i; j < waiting.length; j++) waiting[kept++] = waiting[j]!;
      waiting.length = kept;
    }
    for (const [lora, arrivals] of started) st.registry.started(lora, arrivals);
    this.oldestPlaceWait = placeWait;
    if (n > before) st.bumpQueueVersion();
    this.idle.queue = full && n === before ? st.queueVersion() : -1;
    this.idle.placement = placement;
    this.idle.prefix = prefixVersion;
    return n;
  }
}

/** Appends `value` to the list kept under `key`. */
function tally(map: Map<string, number[]>, key: string, value: number): void {
  const list = map.get(key);
  if (list) list.push(value);
  else map.set(key, [value]);
}

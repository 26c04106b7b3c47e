// Continuous batching with chunked prefill, a paged KV cache and multi-LoRA admission.
// Pure logic: the host thread runs the steps and the loader commands this class emits.
import type { AdapterStatus } from '../api.js';
import type { LoraModule, StepBatch, StepResult } from '../engine/types.js';
import { badRequest } from '../errors.js';
import { AdapterRegistry, type AdapterCounters, type AdapterDetail, type AdapterTransition } from './adapter-registry.js';
import { buildBatch, type StepEntry } from './batch-builder.js';
import { BlockManager } from './block-manager.js';
import type { LoaderCommand, LoaderEvent } from './loader.js';
import { Sequence, type SeqInit, type TokenEvent } from './sequence.js';

export interface SchedulerOptions {
  blockSize: number;
  numBlocks: number;
  maxRunningRequests: number;
  chunkedPrefillSize: number;
  /** Distinct adapters per step, the base model counting as one. */
  maxLorasPerBatch: number;
  /** GPU pool slots (--max-gpu-loras); at least maxLorasPerBatch, which it defaults to. */
  gpuSlots?: number;
  maxLoadedLoras: number | null;
  evictionPolicy: 'lru' | 'fifo';
  /** false: no step runs while a copy that a waiting request needs is in flight. */
  overlapLoading: boolean;
  eosTokenIds: number[];
  contextLength: number;
  maxLoraRank: number;
  loraModules: LoraModule[];
}

/** A sequence that one step failed on its own while the rest of the batch went on. */
export interface StepFailure {
  id: string;
  /** The engine's reason (StepResult.errors). */
  message: string;
}

export class Scheduler {
  private readonly kv: BlockManager;
  private readonly registry: AdapterRegistry;
  /** Both kept in arrival order. */
  private waiting: Sequence[] = [];
  private readonly running: Sequence[] = [];
  private readonly byId = new Map<string, Sequence>();
  private pendingEvents: TokenEvent[] = [];
  private failures: StepFailure[] = [];
  private step: StepEntry[] | null = null;
  private arrivals = 0;

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
      loraModules: opts.loraModules,
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
    const seq = new Sequence(init, this.arrivals++);
    if (sampling.maxNewTokens <= 0) {
      this.pendingEvents.push(seq.event({ type: 'length', length: 0 }));
      return;
    }
    this.byId.set(id, seq);
    this.waiting.push(seq);
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
    // A step that was scheduled but never completed is simply forgotten: nothing advanced.
    this.step = null;
    if (!this.opts.overlapLoading && this.registry.wantedCopyInFlight()) return null;
    const entries: StepEntry[] = [];
    let budget = this.opts.chunkedPrefillSize;

    for (let i = 0; i < this.running.length; i++) {
      const s = this.running[i]!;
      const prefill = s.prefilling;
      const chunk = prefill ? Math.min(s.pending, budget) : 1;
      if (chunk === 0) continue;
      // Short of blocks: preempt the newest running sequences (possibly this one itself).
      let self = false;
      while (!this.kv.grow(s.blocks, s.computed + chunk)) {
        const victim = this.running[this.running.length - 1]!;
        this.preempt(victim);
        if (victim === s) {
          self = true;
          break;
        }
      }
      if (self) break;
      if (prefill) budget -= chunk;
      entries.push(this.entry(s, chunk));
    }

    // Admit waiting requests first come, first served. A request held back by its adapter
    // claims that adapter's place among the step's distinct adapters, so newer requests for
    // other adapters cannot keep its adapter out forever.
    const distinct = new Set(this.running.map((s) => s.init.lora));
    // The step's adapters plus the ones claimed by requests held back.
    const seen = new Set<string | null>(distinct);
    let i = 0;
    const kept: Sequence[] = [];
    for (; i < this.waiting.length; i++) {
      if (this.running.length >= this.opts.maxRunningRequests || budget <= 0) break;
      const s = this.waiting[i]!;
      const lora = s.init.lora;
      const slot = lora === null ? -1 : this.registry.residentSlot(lora);
      if (slot === null || seen.size + (seen.has(lora) ? 0 : 1) > this.opts.maxLorasPerBatch) {
        seen.add(lora);
        kept.push(s);
        continue;
      }
      const chunk = Math.min(s.pending, budget);
      if (!this.kv.grow(s.blocks, s.computed + chunk)) break;
      seen.add(lora);
      s.status = 'running';
      insertByArrival(this.running, s);
      distinct.add(lora);
      if (lora !== null) this.registry.started(lora, s.arrival);
      budget -= chunk;
      entries.push(this.entry(s, chunk));
    }
    // One pass: the requests left behind keep their order.
    if (kept.length < i) this.waiting = kept.concat(this.waiting.slice(i));

    this.pump();
    if (entries.length === 0) return null;
    for (const lora of distinct) if (lora !== null) this.registry.touch(lora);
    this.step = entries;
    return { batch: buildBatch(entries), seqIds: entries.map((e) => e.seq.id) };
  }

  complete(result: StepResult): TokenEvent[] {
    const step = this.step;
    if (!step) throw new Error('complete() called without a scheduled step');
    this.step = null;
    if (result.tokens.length !== step.length) {
      throw new Error(`step result has ${result.tokens.length} sequences, the step had ${step.length}`);
    }
    const events = this.takeEvents();
    const width = step.length > 0 ? result.topIds.length / step.length : 0;
    step.forEach((e, i) => {
      const s = e.seq;
      // Aborted while the step ran: its blocks are already free.
      if (s.status !== 'running' || this.byId.get(s.id) !== s) return;
      const error = result.errors?.[i] ?? null;
      if (error !== null) {
        this.drop(s);
        this.failures.push({ id: s.id, message: error });
        return;
      }
      s.computed += e.chunk;
      if (!e.sample) return;
      const k = Math.min(s.init.topLogprobsNum, width);
      const token = {
        id: result.tokens[i]!,
        logprob: result.logprobs[i] ?? 0,
        topIds: Array.from(result.topIds.subarray(i * width, i * width + k)),
        topLogprobs: Array.from(result.topLogprobValues.subarray(i * width, i * width + k)),
      };
      const finish = s.accept(token.id, this.opts.eosTokenIds, this.opts.contextLength);
      if (finish) this.drop(s);
      events.push(s.event(finish, token));
    });
    this.pump();
    return events;
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

  stats(): { waiting: number; running: number; freeBlocks: number; totalBlocks: number } {
    return {
      waiting: this.waiting.length,
      running: this.running.length,
      freeBlocks: this.kv.freeCount,
      totalBlocks: this.kv.numBlocks,
    };
  }

  private entry(s: Sequence, chunk: number): StepEntry {
    const lora = s.init.lora;
    return { seq: s, chunk, sample: s.computed + chunk === s.tokens.length, slot: lora === null ? -1 : this.registry.residentSlot(lora)! };
  }

  /** Frees the cache and recomputes later, keeping the generated tokens as part of the prompt. */
  private preempt(s: Sequence): void {
    this.running.splice(this.running.indexOf(s), 1);
    this.kv.release(s.blocks);
    s.computed = 0;
    s.preemptions++;
    s.status = 'waiting';
    insertByArrival(this.waiting, s);
    if (s.init.lora !== null) this.registry.preempted(s.init.lora, s.arrival);
  }

  /** Removes a sequence for good (finished, aborted, or its adapter failed). */
  private drop(s: Sequence): Sequence {
    const wasRunning = s.status === 'running';
    const list = wasRunning ? this.running : this.waiting;
    const idx = list.indexOf(s);
    if (idx >= 0) list.splice(idx, 1);
    this.kv.release(s.blocks);
    if (s.init.lora !== null) this.registry.ended(s.init.lora, s.arrival, wasRunning);
    s.status = 'finished';
    this.byId.delete(s.id);
    return s;
  }

  private pump(): void {
    this.registry.pump();
  }
}

function insertByArrival(list: Sequence[], s: Sequence): void {
  let i = list.length;
  while (i > 0 && list[i - 1]!.arrival > s.arrival) i--;
  list.splice(i, 0, s);
}

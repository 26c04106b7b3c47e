// The running engine on the main thread: validates and tokenizes requests, submits them to
// the scheduler actor, and turns its token events back into outputs and stream chunks.
import { randomInt, randomUUID } from 'node:crypto';
import {
  checkLogprobStartLen,
  checkRequest,
  completeRequest,
  type AdapterSpec,
  type AdapterStatus,
  type GenerateChunk,
  type GenerateInput,
  type GenerateOutput,
  type GenerateRequest,
  type ModelInfo,
  type TroupeEngine,
} from '../api.js';
import type { LogLevel, ServeOptions } from '../config/options.js';
import type { EngineInfo, ModelConfig } from '../engine/types.js';
import { badRequest, fromWire, TroupeError } from '../errors.js';
import { EngineMetrics } from '../metrics/collector.js';
import type { TokenizerPool } from '../tokenizer/pool.js';
import { LiveRequests } from './live-requests.js';
import { assertAllowedAdapterPath } from './lora-allowed-dirs.js';
import { gpuLoraSlots, poolMismatch, type EnginePlan } from './plan.js';
import type { AdapterCounters, AdapterDetail, AdapterTransition, SchedulerOutMsg, SchedulerStats, TokenEvent } from './protocol.js';
import { LiveRequest, type RequestSink } from './request.js';
import type { Supervisor } from './supervisor.js';

export type EngineLog = (level: LogLevel, msg: string) => void;

/** What createEngine returns: the public API plus what operators and tests look at. */
export interface LocalTroupeEngine extends TroupeEngine {
  readonly engineInfo: EngineInfo;
  /** Null while healthy; the error every new request gets once an actor has died or a drain began. */
  unhealthy(): TroupeError | null;
  /**
   * Stops taking new work (new requests and adapter loads get 503, unhealthy() reports it),
   * gives the running requests up to `timeoutMs` (--graceful-shutdown-timeout by default) to
   * finish, then ends the rest with an error. Resolves with how many were ended that way.
   */
  drain(timeoutMs?: number): Promise<number>;
  /** Hears the death of an actor the engine cannot do without; returns the unsubscribe. */
  onFatal(listener: (err: TroupeError) => void): () => void;
  stats(): Promise<SchedulerStats>;
  /** Prometheus metrics of this engine (GET /metrics). */
  readonly metrics: EngineMetrics;
  /** GPU LoRA pool slots (--max-gpu-loras adapters of the max rank, cut by the slot rank). */
  readonly poolSlots: number;
  /** Every adapter's status with its refcount, bytes and last transition, fresh from the scheduler. */
  adapterDetails(): Promise<AdapterDetail[]>;
  /** Hears every adapter transition, a scheduler tick's worth at a time; returns the unsubscribe. */
  onAdapterTransition(listener: AdapterTransitionListener): () => void;
}

export type AdapterTransitionListener = (transitions: AdapterTransition[]) => void;

export class Engine implements LocalTroupeEngine {
  private readonly live = new LiveRequests();
  /** The scheduler owns the adapters; only the counters the metrics read are kept here. */
  private adapterCounters: AdapterCounters;
  private readonly transitionListeners = new Set<AdapterTransitionListener>();
  readonly metrics: EngineMetrics;
  // Token events are applied strictly in arrival order, one step at a time.
  private chain: Promise<void> = Promise.resolve();
  private closed = false;
  /** Set once a drain began: the error new work gets. */
  private draining: TroupeError | null = null;

  constructor(
    private readonly options: ServeOptions,
    private readonly config: ModelConfig,
    private readonly plan: EnginePlan,
    readonly engineInfo: EngineInfo,
    private readonly supervisor: Supervisor,
    private readonly tokenizer: TokenizerPool,
    private readonly log: EngineLog,
  ) {
    this.adapterCounters = { slots: this.poolSlots, slotsUsed: 0, cpuAdapters: 0, byState: {} };
    this.metrics = new EngineMetrics(this.poolSlots, () => this.adapterCounters, {
      modelName: options.servedModelName ?? options.modelPath,
      blockSize: engineInfo.blockSize,
      numBlocks: engineInfo.kvBlocks,
      maxLoras: plan.loraEnabled ? gpuLoraSlots(options) : null,
      load: () => supervisor.actors.scheduler.call({ type: 'load' }),
    });
    supervisor.actors.scheduler.serve((msg) => this.onScheduler(msg));
    supervisor.onCrash((err) => {
      log('error', err.message);
      for (const l of this.live.values()) l.fail(err);
      this.live.clear();
    });
  }

  unhealthy(): TroupeError | null {
    return this.supervisor.unhealthy ?? this.draining;
  }

  onFatal(listener: (err: TroupeError) => void): () => void {
    return this.supervisor.onCrash(listener);
  }

  async drain(timeoutMs = this.options.gracefulShutdownTimeout * 1000): Promise<number> {
    this.draining ??= new TroupeError('unavailable', 'the server is shutting down and takes no new requests');
    let timer: NodeJS.Timeout | undefined;
    const timedOut = new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(true), timeoutMs)));
    const late = await Promise.race([this.live.whenEmpty().then(() => false), timedOut]);
    clearTimeout(timer);
    if (!late) return 0;
    const err = new TroupeError(
      'unavailable',
      `the server shut down before this request finished (running requests get ${timeoutMs / 1000} s, --graceful-shutdown-timeout)`,
    );
    const cut = [...this.live.values()];
    for (const live of cut) {
      this.live.delete(live.id);
      live.fail(err);
      this.supervisor.actors.scheduler.call({ type: 'abort', id: live.id }).catch(() => {});
    }
    return cut.length;
  }

  stats(): Promise<SchedulerStats> {
    return this.supervisor.actors.scheduler.call({ type: 'stats' });
  }

  flushCache(): Promise<void> {
    return this.supervisor.actors.scheduler.call({ type: 'flushCache' });
  }

  get poolSlots(): number {
    return this.plan.loraEnabled ? this.engineInfo.loraSlots : gpuLoraSlots(this.options);
  }

  adapterDetails(): Promise<AdapterDetail[]> {
    return this.supervisor.actors.scheduler.call({ type: 'adapterDetails' });
  }

  onAdapterTransition(listener: AdapterTransitionListener): () => void {
    this.transitionListeners.add(listener);
    return () => this.transitionListeners.delete(listener);
  }

  generate(input: GenerateInput): Promise<GenerateOutput> {
    return new Promise<GenerateOutput>((resolve, reject) => {
      this.start(completeRequest(input), { done: resolve, error: reject }).catch(reject);
    });
  }

  async *stream(input: GenerateInput): AsyncIterable<GenerateChunk> {
    const req = completeRequest(input);
    const queue: GenerateChunk[] = [];
    let failure: Error | null = null;
    let ended = false;
    let wake: (() => void) | null = null;
    const notify = (): void => {
      wake?.();
      wake = null;
    };
    const sink: RequestSink = {
      chunk: (c) => (queue.push(c), notify()),
      done: () => ((ended = true), notify()),
      error: (e) => ((failure = e), (ended = true), notify()),
    };
    const live = await this.start(req, sink);
    try {
      for (;;) {
        const c = queue.shift();
        if (c) {
          yield c;
          continue;
        }
        if (failure) throw failure;
        if (ended) return;
        await new Promise<void>((r) => (wake = r));
      }
    } finally {
      // A consumer that stops reading early must not leave the sequence running.
      this.abortRequest(live, 'the stream was closed');
    }
  }

  abort(rid: string, message = 'the request was aborted'): boolean {
    const live = this.live.get(rid);
    if (!live) return false;
    this.abortRequest(live, message);
    return true;
  }

  abortAll(message = 'the request was aborted'): number {
    const all = [...this.live.values()];
    for (const live of all) this.abortRequest(live, message);
    return all.length;
  }

  /** Validates, tokenizes and submits; the sink hears the rest. Throws for a request that cannot start. */
  private async start(req: GenerateRequest, sink: RequestSink): Promise<LiveRequest> {
    const arrived = performance.now();
    this.assertUsable();
    // Embedding callers reach here without the HTTP parsers: the same rules, so a bad value fails this request alone.
    req = checkRequest(req, { maxTopLogprobsNum: this.options.maxTopLogprobsNum, vocabSize: this.config.vocabSize });
    if ((req.text === undefined) === (req.inputIds === undefined)) throw badRequest('give exactly one of text and input_ids');
    // The adapter is checked by the scheduler on submit: it owns the adapters.
    if (req.lora !== null && !this.plan.loraEnabled) {
      throw badRequest(
        `LoRA adapter '${req.lora}' was requested, but LoRA is not enabled. Please launch the server with --enable-lora flag ` +
          'and preload adapters using --lora-paths or /load_lora_adapter endpoint.',
      );
    }
    const id = req.rid ?? randomUUID();
    if (this.live.has(id)) throw new TroupeError('conflict', `request id '${id}' is already in flight`);
    if (req.text !== undefined) this.assertTextCanFit(req.text);
    const promptIds = req.text !== undefined ? await this.tokenizer.encode(req.text) : req.inputIds!;
    if (promptIds.length === 0) throw badRequest('the prompt is empty');
    const vocab = this.config.vocabSize;
    promptIds.forEach((t, i) => {
      if (!Number.isInteger(t) || t < 0 || t >= vocab) throw badRequest(`input_ids[${i}] = ${t} is not a token id of this model (0..${vocab - 1})`);
    });
    // Only with logprobs, as in SGLang: without them the start position means nothing.
    if (req.returnLogprob && req.logprobStartLen !== undefined) checkLogprobStartLen(req.logprobStartLen, promptIds.length);
    this.assertUsable();

    const detach = (): void => req.signal?.removeEventListener('abort', onAbort);
    const metered = req.logMetrics !== false;
    const count = (outcome: 'ok' | 'aborted' | 'error', o?: GenerateOutput): void => {
      if (!metered) return;
      const { promptTokens = 0, completionTokens = 0, e2eLatency } = o ?? {};
      this.metrics.request({ lora: req.lora, outcome, promptTokens, completionTokens, e2eSeconds: e2eLatency, ttftSeconds: live.ttft });
    };
    const live: LiveRequest = new LiveRequest(
      id,
      req,
      promptIds.length,
      {
        chunk: sink.chunk?.bind(sink),
        firstToken: metered ? (s, queue) => this.metrics.firstToken(s, queue) : undefined,
        nextToken: metered ? (s) => this.metrics.nextToken(s) : undefined,
        done: (o) => (detach(), count(o.finishReason.type === 'abort' ? 'aborted' : 'ok', o), sink.done(o)),
        error: (e) => (detach(), count('error'), sink.error(e)),
      },
      arrived,
    );
    const onAbort = (): void => this.abortRequest(live, 'the request was aborted');
    if (req.signal?.aborted) {
      live.finish({ type: 'abort', message: 'the request was aborted' });
      return live;
    }
    this.live.set(id, live);
    req.signal?.addEventListener('abort', onAbort, { once: true });
    const seed = req.sampling.seed ?? randomInt(0, 2 ** 32);
    try {
      await this.supervisor.actors.scheduler.call({
        type: 'submit',
        seq: { id, promptIds, lora: req.lora, sampling: req.sampling, returnLogprob: req.returnLogprob, topLogprobsNum: req.topLogprobsNum, seed },
      });
    } catch (err) {
      this.live.delete(id);
      detach();
      if (live.finished) return live; // aborted meanwhile
      live.finished = { type: 'abort', message: 'refused' };
      throw err;
    }
    return live;
  }

  /**
   * Refuses, before any tokenizer thread spends time on it, a text that needs more tokens than
   * the context holds even if every token spelled the tokenizer's longest. A text that fits
   * this bound but tokenizes past the context is refused by the scheduler on submit.
   */
  private assertTextCanFit(text: string): void {
    const perToken = this.tokenizer.maxTokenBytes;
    if (perToken === null) return;
    const ctx = this.plan.contextLength;
    const bytes = Buffer.byteLength(text, 'utf8');
    if (bytes > ctx * perToken) {
      throw badRequest(
        `the prompt is ${bytes} bytes, more than the context length of ${ctx} tokens can hold ` +
          `(at most ${perToken} bytes per token of this tokenizer, ${ctx * perToken} bytes in all)`,
      );
    }
  }

  private abortRequest(live: LiveRequest, message: string): void {
    if (live.finished) return;
    this.live.delete(live.id);
    live.finish({ type: 'abort', message });
    this.supervisor.actors.scheduler.call({ type: 'abort', id: live.id }).catch(() => {});
  }

  /** SGLang's words, then how to enable it here. */
  private assertLoraEnabled(): void {
    if (!this.plan.loraEnabled) {
      throw badRequest('LoRA is not enabled. Please set `--enable-lora` to enable LoRA (or start the server with --lora-paths)');
    }
  }

  private assertUsable(): void {
    if (this.closed) throw new TroupeError('unavailable', 'the engine is closed');
    const bad = this.unhealthy();
    if (bad) throw bad;
  }

  private onScheduler(msg: SchedulerOutMsg): void {
    switch (msg.type) {
      case 'tokens':
        this.chain = this.chain
          .then(() => this.applyTokens(msg.events))
          .catch((err: unknown) => {
            this.log('error', `applying token events failed: ${(err as Error).message}`);
          });
        return;
      case 'failed': {
        const err = fromWire(msg.error);
        this.chain = this.chain.then(() => {
          for (const id of msg.ids) {
            this.live.get(id)?.fail(err);
            this.live.delete(id);
          }
        });
        return;
      }
      case 'adapters':
        this.adapterCounters = msg.counters;
        this.metrics.transitions(msg.transitions);
        for (const l of [...this.transitionListeners]) l(msg.transitions);
        return;
    }
  }

  private async applyTokens(events: TokenEvent[]): Promise<void> {
    const batch: Array<{ live: LiveRequest; ev: TokenEvent }> = [];
    for (const ev of events) {
      const live = this.live.get(ev.id);
      if (!live || live.finished) continue;
      live.addTokens(ev);
      batch.push({ live, ev });
    }
    if (batch.length === 0) return;
    let texts;
    try {
      texts = await this.tokenizer.detokenize(
        batch.map(({ live, ev }) => ({ ids: live.ids, state: live.detok, skipSpecialTokens: live.skipSpecialTokens, final: ev.finish !== null })),
      );
    } catch (err) {
      // Only the requests of this step fail; the others and the engine go on.
      const failure = new TroupeError('internal', `detokenization failed: ${(err as Error).message}`);
      for (const { live, ev } of batch) {
        this.live.delete(live.id);
        live.fail(failure);
        if (ev.finish === null) this.supervisor.actors.scheduler.call({ type: 'abort', id: live.id }).catch(() => {});
      }
      return;
    }
    batch.forEach(({ live, ev }, i) => {
      if (live.finished) return; // aborted while detokenizing
      const r = texts[i]!;
      live.detok = r.state;
      const stop = live.addText(r.text);
      if (stop !== null) {
        this.live.delete(live.id);
        if (ev.finish === null) this.supervisor.actors.scheduler.call({ type: 'abort', id: live.id }).catch(() => {});
        live.finish({ type: 'stop', matched: stop });
      } else if (ev.finish !== null) {
        this.live.delete(live.id);
        live.finish(ev.finish);
      } else {
        live.emitChunk();
      }
    });
  }

  async loadAdapter(spec: AdapterSpec): Promise<AdapterStatus> {
    this.assertUsable();
    this.assertLoraEnabled();
    // The operator's own --lora-paths are trusted; anything else must come from --lora-allowed-dirs.
    const configured = this.options.loraPaths.some((a) => a.name === spec.name && a.path === spec.path);
    if (!configured) assertAllowedAdapterPath(spec.path, this.options.loraAllowedDirs);
    // Checked here too so a bad path or an adapter the pool cannot hold fails at once with its
    // reason; read by the loader thread, so that a hostile config cannot stall this one.
    const info = await this.unlessCrashed(this.supervisor.actors.loader.call({ type: 'inspect', path: spec.path }));
    const misfit = poolMismatch(spec.name, info.rank, info.targetModules, this.plan.engine);
    if (misfit) {
      throw badRequest(
        `LoRA adapter '${spec.name}' with rank ${info.rank} is incompatible with the current LoRA memory pool configuration: ${misfit}`,
      );
    }
    const scheduler = this.supervisor.actors.scheduler;
    // The scheduler answers once the read from disk has ended (an adapter kept on disk by the
    // --max-loaded-loras budget at once); a dead loader that is not restarted ends the wait.
    const status = await this.unlessCrashed(
      scheduler.call({ type: 'addAdapter', spec: { name: spec.name, path: spec.path, pinned: spec.pinned ?? false } }),
    );
    if (status.error !== null) {
      await scheduler.call({ type: 'removeAdapter', name: spec.name }).catch(() => {});
      throw badRequest(`failed to load LoRA adapter '${spec.name}' from ${spec.path}: ${status.error}`);
    }
    // The engine logs each load once, for HTTP and embedded callers alike; an adapter kept on
    // disk by the --max-loaded-loras budget has no rank yet.
    const what = status.rank === null ? 'kept on disk until a request names it' : `rank ${status.rank}`;
    this.log('info', `loaded LoRA adapter '${spec.name}'${spec.pinned ? ' (pinned)' : ''} (${what}) from ${spec.path}`);
    return status;
  }

  /** `p`, or the error of an actor the engine cannot do without dying meanwhile. */
  private unlessCrashed<T>(p: Promise<T>): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const bad = this.supervisor.unhealthy;
      if (bad) return reject(bad);
      const off = this.supervisor.onCrash(reject);
      p.then(resolve, reject).finally(off);
    });
  }

  async unloadAdapter(name: string): Promise<void> {
    this.assertUsable();
    this.assertLoraEnabled();
    await this.supervisor.actors.scheduler.call({ type: 'removeAdapter', name });
    this.log('info', `unloaded LoRA adapter '${name}'`);
  }

  adapters(names?: readonly string[]): Promise<AdapterStatus[]> {
    return this.supervisor.actors.scheduler.call({ type: 'adapters', ...(names ? { names: [...names] } : {}) });
  }

  tokenTexts(ids: number[]): Promise<Array<string | null>> {
    return ids.length === 0 ? Promise.resolve([]) : this.tokenizer.tokenTexts(ids);
  }

  modelInfo(): ModelInfo {
    return {
      modelPath: this.options.modelPath,
      servedModelName: this.options.servedModelName ?? this.options.modelPath,
      tokenizerPath: this.options.tokenizerPath ?? this.options.modelPath,
      isGeneration: true,
      maxTotalTokens: this.engineInfo.kvBlocks * this.engineInfo.blockSize,
      contextLength: this.plan.contextLength,
      device: this.engineInfo.device,
      tpSize: this.options.tpSize,
      collective: this.engineInfo.collective,
      loraKernel: this.engineInfo.loraKernel,
      tokenizerWorkers: this.tokenizer.threads,
    };
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    const err = new TroupeError('unavailable', 'the engine is closed');
    for (const l of this.live.values()) l.fail(err);
    this.live.clear();
    await Promise.allSettled([this.supervisor.close(), this.tokenizer.close()]);
  }
}

// Drives a Scheduler without an engine: a fake "GPU" picks tokens deterministically and a
// fake loader answers load, copy and swap commands.
import { DEFAULT_SAMPLING, type SamplingOptions } from '../src/api.js';
import type { LoraModule, StepBatch, StepResult } from '../src/engine/types.js';
import { Scheduler, type LoaderCommand, type SchedulerOptions, type SeqInit, type TokenEvent } from '../src/scheduler/index.js';

export function options(o: Partial<SchedulerOptions> = {}): SchedulerOptions {
  return {
    blockSize: 4,
    numBlocks: 64,
    maxRunningRequests: 16,
    chunkedPrefillSize: 64,
    maxLorasPerBatch: 4,
    maxLoadedLoras: null,
    evictionPolicy: 'lru',
    overlapLoading: true,
    eosTokenIds: [2],
    contextLength: 1024,
    maxLoraRank: 16,
    loraModules: ['q_proj', 'k_proj', 'v_proj', 'o_proj'],
    ...o,
  };
}

export function sampling(o: Partial<SamplingOptions> = {}): SamplingOptions {
  return { ...DEFAULT_SAMPLING, maxNewTokens: 4, temperature: 0, ...o };
}

export function seq(id: string, o: Partial<SeqInit> & { prompt?: number; maxNewTokens?: number } = {}): SeqInit {
  const { prompt = 3, maxNewTokens = 4, ...rest } = o;
  return {
    id,
    promptIds: Array.from({ length: prompt }, (_, i) => 10 + i),
    lora: null,
    sampling: sampling({ maxNewTokens }),
    returnLogprob: false,
    topLogprobsNum: 0,
    seed: 0,
    ...rest,
  };
}

/** Default fake model: the next token depends only on how many tokens the sequence sampled before. */
export const countingTokens = (_id: string, draws: number): number => 100 + draws;

export function fakeResult(batch: StepBatch, seqIds: string[], pick: (id: string, draws: number) => number = countingTokens): StepResult {
  const n = seqIds.length;
  const k = batch.topLogprobs;
  const tokens = new Int32Array(n).fill(-1);
  const logprobs = new Float32Array(n);
  const topIds = new Int32Array(n * k);
  const topVals = new Float32Array(n * k);
  seqIds.forEach((id, i) => {
    if (!batch.sample[i]) return;
    tokens[i] = pick(id, batch.draws[i]!);
    logprobs[i] = -0.5 - i;
    for (let j = 0; j < k; j++) {
      topIds[i * k + j] = tokens[i]! + j;
      topVals[i * k + j] = -j;
    }
  });
  return { tokens, logprobs, topIds, topLogprobValues: topVals, logits: null, errors: null };
}

export interface LoaderSpec {
  rank?: number;
  targetModules?: LoraModule[];
  failWith?: string;
  /** The CPU copy's size (none when absent). */
  bytes?: number;
}

/** Answers every pending loader command at once; returns the commands it saw. */
export function serveLoader(s: Scheduler, specs: Record<string, LoaderSpec> = {}): LoaderCommand[] {
  const seen: LoaderCommand[] = [];
  for (;;) {
    const cmds = s.takeCommands();
    if (cmds.length === 0) return seen;
    seen.push(...cmds);
    for (const c of cmds) {
      const spec = specs['name' in c ? c.name : ''] ?? {};
      if (c.kind === 'load-cpu') {
        if (spec.failWith) s.onLoaderEvent({ kind: 'load-failed', name: c.name, error: spec.failWith });
        else {
          const { rank = 8, targetModules = ['q_proj', 'v_proj'], bytes } = spec;
          s.onLoaderEvent({ kind: 'cpu-loaded', name: c.name, rank, targetModules, ...(bytes === undefined ? {} : { bytes }) });
        }
      } else if (c.kind === 'copy-to-slot') {
        s.onLoaderEvent({ kind: 'slot-ready', name: c.name, slot: c.slot });
      } else if (c.kind === 'swap-slots') {
        s.onLoaderEvent({ kind: 'slot-ready', name: c.names[0], slot: c.slots[1] });
        if (c.names[1] !== null) s.onLoaderEvent({ kind: 'slot-ready', name: c.names[1], slot: c.slots[0] });
      }
    }
  }
}

export interface StepRecord {
  ids: string[];
  batch: StepBatch;
  events: TokenEvent[];
}

/** One step: schedule, fake-run, complete. Null if nothing could run. */
export function step(s: Scheduler, pick = countingTokens): StepRecord | null {
  const sched = s.schedule();
  if (!sched) return null;
  const events = s.complete(fakeResult(sched.batch, sched.seqIds, pick));
  return { ids: sched.seqIds, batch: sched.batch, events };
}

/** Steps (serving the loader in between) until no work is left; collects each request's tokens and finish. */
export function runAll(s: Scheduler, opts: { pick?: typeof countingTokens; loader?: Record<string, LoaderSpec>; maxSteps?: number } = {}) {
  const out = new Map<string, { tokens: number[]; finish: TokenEvent['finish'] }>();
  const steps: StepRecord[] = [];
  const record = (evs: TokenEvent[]) => {
    for (const e of evs) {
      const r = out.get(e.id) ?? { tokens: [], finish: null };
      if (e.token >= 0) r.tokens.push(e.token);
      if (e.finish) r.finish = e.finish;
      out.set(e.id, r);
    }
  };
  for (let i = 0; i < (opts.maxSteps ?? 1000) && s.hasWork(); i++) {
    serveLoader(s, opts.loader);
    record(s.takeEvents());
    const r = step(s, opts.pick);
    if (!r) {
      if (s.hasWork()) serveLoader(s, opts.loader);
      continue;
    }
    steps.push(r);
    record(r.events);
  }
  return { out, steps };
}

export function newScheduler(o: Partial<SchedulerOptions> = {}): Scheduler {
  return new Scheduler(options(o));
}

/**
 * Each row's block table, as the engine's sequence table (native/sequence_table.h) rebuilds it
 * from the resident form: a filled slot starts empty, and each row adds the blocks it sends.
 * Feed it every batch, in order.
 */
export class BlockTables {
  private readonly slots = new Map<number, number[]>();

  rows(batch: StepBatch): number[][] {
    for (const slot of batch.seqUpdate?.slots ?? []) this.slots.set(slot, []);
    const starts = batch.blockAppendStarts!;
    return Array.from(batch.seqSlots!, (slot, i) => {
      const blocks = this.slots.get(slot);
      if (blocks === undefined) throw new Error(`row ${i} names slot ${slot}, which was never filled`);
      blocks.push(...batch.blockAppends!.subarray(starts[i]!, starts[i + 1]!));
      return [...blocks];
    });
  }
}

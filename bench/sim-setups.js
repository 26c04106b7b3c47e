// The H200 serving configurations of bench/serve-matrix.js as simulations (bench/sim-server.js):
// the server's settings, the adapter sets' load times, the step-time model fitted to the
// H200 runs (bench/sim-fit.js), and the measured results each setup is compared with.
import { existsSync, readFileSync } from 'node:fs';
import { adapterName } from './make-adapters.js';
import { makeWorkload } from './serve-workload.js';
import { simulate } from './sim-server.js';
import { summarize } from './serve-client.js';

const root = new URL('..', import.meta.url);
const { Scheduler } = await import(new URL('dist/src/scheduler/index.js', root).href);
const { DEFAULT_SAMPLING } = await import(new URL('dist/src/api.js', root).href);
const { findFlag } = await import(new URL('dist/src/config/flags.js', root).href);

/** --max-place-wait-steps as troupe serve defaults it; a setup's `placeWait` overrides it. */
export const PLACE_WAIT_DEFAULT = findFlag('max-place-wait-steps').default;

const ALL = ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'];

/**
 * Adapter sets: load times from the runs' loadSeconds over their loads (disk -> CPU about 50 ms
 * and CPU -> GPU about 5 ms for set a's 84 MB adapters; 16 ms and 3 ms for set b's 13 MB).
 */
export const SETS = {
  a: { rank: 16, targetModules: ALL, bytes: 84_000_000, readMs: 50, copyMs: 5 },
  b: { rank: 8, targetModules: ['q_proj', 'k_proj', 'v_proj', 'o_proj'], bytes: 13_665_560, readMs: 16, copyMs: 3 },
  // Rank 128 on all modules (672 MB), where copies are longest: reads of 160 ms and copies of
  // 20 ms alone (45 ms beside disk reads), from the H200 runs of 2026-11-30. Each distinct
  // adapter in a step costs stepD ms instead of the fit's d: 0.6 ms puts the 256-adapter run at
  // 8 req/s where the H200 ran it (inter-token p50 14.9 against 14.4 ms, 6.74 against 6.62
  // requests/s served, without overlap loading).
  h: { rank: 128, targetModules: ALL, bytes: 672_000_000, readMs: 160, copyMs: 20, stepD: 0.6 },
};

/**
 * Step time in ms: a + b * rows + c * prefill tokens + d * distinct adapters, plus offsetB for
 * set b's smaller adapters. Fitted by `node bench/serve-sim.js --calibrate` to the ITL p50 of
 * the 14 H200 runs and probes of 2026-11-29 that ran under the admission that lets requests for
 * running adapters join, or that had no more adapters than places (sim-fit.js): within 3% on
 * average. About 8.6 ms for a step, 0.09 ms per row, 0.04 ms per prompt token and 0.09 ms per
 * adapter.
 */
export const MODEL = { a: 8.6089, b: 0.0915, c: 0.0435, d: 0.093, offsetB: -1.405 };

/** The server's settings on the H200 (troupe serve's defaults there; the KV cache never runs short). */
const schedulerOptions = (set, lpb, maxLoaded, overlap, placeWait) => ({
  blockSize: 16,
  numBlocks: 49152,
  maxRunningRequests: 256,
  chunkedPrefillSize: 2048,
  maxLorasPerBatch: lpb,
  maxLoadedLoras: maxLoaded,
  evictionPolicy: 'lru',
  overlapLoading: overlap,
  maxPlaceWaitSteps: placeWait,
  eosTokenIds: [],
  contextLength: 131072,
  maxLoraRank: SETS[set].rank,
  loraModules: SETS[set].targetModules,
});

/**
 * The runs of the H200 matrix that are simulated, with the files of their measurements. Set b's
 * runs with more adapters than places ran under the earlier admission (strict first come first
 * served), so only their settings, not their figures, match the simulation.
 */
export const SETUPS = [
  { label: 'a-cpu64', set: 'a', adapters: 256, maxLoaded: 64, lpb: 8, capacityStart: 4, capacityMax: 256 },
  { label: 'a-cpu16', set: 'a', adapters: 256, maxLoaded: 16, lpb: 8, capacityStart: 4, capacityMax: 256 },
  { label: 'a-cpu16-overlap', set: 'a', adapters: 256, maxLoaded: 16, overlap: true, lpb: 8, capacityStart: 4, capacityMax: 256 },
  { label: 'a-unlimited', set: 'a', adapters: 256, maxLoaded: null, lpb: 8, capacityStart: 4, capacityMax: 256 },
  { label: 'a-cpu64-lpb32', set: 'a', adapters: 256, maxLoaded: 64, lpb: 32, capacityStart: 8, capacityMax: 64 },
  { label: 'a-resident8', set: 'a', adapters: 8, maxLoaded: null, lpb: 8, capacityStart: 8, capacityMax: 256 },
  { label: 'b-cpu64', set: 'b', adapters: 1000, maxLoaded: 64, lpb: 8, capacityStart: 4, capacityMax: 256 },
  { label: 'b-cpu16', set: 'b', adapters: 1000, maxLoaded: 16, lpb: 8, capacityStart: 4, capacityMax: 256 },
  { label: 'b-cpu16-overlap', set: 'b', adapters: 1000, maxLoaded: 16, overlap: true, lpb: 8, capacityStart: 4, capacityMax: 256 },
  { label: 'b-unlimited', set: 'b', adapters: 1000, maxLoaded: null, lpb: 8, capacityStart: 4, capacityMax: 256 },
  { label: 'b-resident8', set: 'b', adapters: 8, maxLoaded: null, lpb: 8, capacityStart: 8, capacityMax: 256 },
  // Not run on the H200: twice as many adapters as a batch has places, so places are short
  // without being the bound they are with hundreds of adapters; admission decides the rest.
  { label: 'a-16', set: 'a', adapters: 16, maxLoaded: null, lpb: 8, capacityStart: 8, capacityMax: 256 },
  // Overlap loading where it has copies to hide: 256 heavy adapters through 16 CPU places.
  { label: 'h-cpu16', set: 'h', adapters: 256, maxLoaded: 16, lpb: 8, capacityStart: 4, capacityMax: 256 },
  { label: 'h-cpu16-overlap', set: 'h', adapters: 256, maxLoaded: 16, overlap: true, lpb: 8, capacityStart: 4, capacityMax: 256 },
];

/** The H200 workload (bench/serve-lora.js defaults; the matrix's runs used them). */
export const WORKLOAD = { seed: 0, cv: 1, alpha: 1, inputLen: [8, 512], outputLen: [8, 256], tokenRange: [100, 128000] };
export const SLO = 6;

const RESULTS = new URL('bench/results/', root);
/** A measured H200 result of this setup (kind '' or '-capacity'), or null. */
export function measured(setup, kind) {
  const file = new URL(`2026-11-29-h200-serve-lora-${setup.label}${kind}.json`, RESULTS);
  return existsSync(file) ? JSON.parse(readFileSync(file, 'utf8')) : null;
}

/** The note that the H200 runs under the admission of bench/sim-fit.js's fit carry. */
export const FIT_ADMISSION = 'admission lets requests for running adapters join';

/**
 * Whether a measurement can calibrate the step-time model: it ran under the fit's admission,
 * or no request there ever waited for a place (no more adapters than places), so the
 * admission rule could not change how many rows ran together.
 */
export function fitsModel(setup, result) {
  return (result.note ?? '').includes(FIT_ADMISSION) || setup.adapters <= setup.lpb;
}

/** Step statistics pooled over runs: per-step means, the share of time the GPU was busy, loads. */
function pooledStats(all, elapsed) {
  const sum = (k) => all.reduce((s, x) => s + x[k], 0);
  const steps = Math.max(1, sum('steps'));
  return {
    steps: sum('steps'),
    rowsPerStep: +(sum('rows') / steps).toFixed(2),
    adaptersPerStep: +(sum('adapters') / steps).toFixed(2),
    prefillTokensPerStep: +(sum('prefillTokens') / steps).toFixed(1),
    meanStepMs: +(sum('busyMs') / steps).toFixed(2),
    busy: +(sum('busyMs') / Math.max(1, elapsed * 1000)).toFixed(3),
    maxWaiting: Math.max(...all.map((x) => x.maxWaiting)),
    loads: { disk_to_cpu: sum('reads'), cpu_to_gpu: sum('copies') },
  };
}

/**
 * Simulates `setup` at `rate` for `duration` seconds of arrivals, once per seed: the summary
 * of all their requests together (serve-client's summarize; throughput over the runs' summed
 * elapsed time) and their pooled step statistics. overlapSchedule: troupe serve's default
 * (true), or one step at a time (--disable-overlap-schedule). copySlowdown: how many times
 * longer a step takes when it is planned while a slot is being filled (1: no slower).
 */
export function simulateSetup(
  setup,
  { rate, duration, drainTimeout, seeds = [WORKLOAD.seed], model = MODEL, overlapSchedule = true, copySlowdown = 1 },
) {
  const set = SETS[setup.set];
  const names = Array.from({ length: setup.adapters }, (_, i) => adapterName(i));
  const records = [];
  const stats = [];
  let elapsed = 0;
  for (const seed of seeds) {
    const workload = makeWorkload({ ...WORKLOAD, seed, rate, duration, adapters: setup.adapters });
    const r = simulate({
      Scheduler,
      DEFAULT_SAMPLING,
      names,
      workload,
      drainTimeout,
      overlapSchedule,
      options: schedulerOptions(setup.set, setup.lpb, setup.maxLoaded, setup.overlap === true, setup.placeWait ?? PLACE_WAIT_DEFAULT),
      loader: { ...set, maxReads: 3 },
      model: { a: model.a + (setup.set === 'b' ? model.offsetB : 0), b: model.b, c: model.c, d: set.stepD ?? model.d, copySlowdown },
    });
    records.push(...r.records);
    elapsed += r.elapsed;
    stats.push(r.stats);
  }
  return { summary: summarize(records, elapsed, SLO), stats: pooledStats(stats, elapsed) };
}

// Scheduler CPU time per step as the number of registered adapters grows: 256 requests wait
// over 64 distinct adapters while 10, 1,000 or 10,000 are registered. Each step is what the
// scheduler thread does between two engine steps: answer the loader (a fake one that lands
// every read and copy at once), schedule, complete with fake tokens, and take the new
// requests that keep 256 waiting. No engine runs. `npm run build` first; writes
// bench/results/<date>-cpu-scheduler.json (or `--out FILE`). With `--baseline FILE` the rows of
// an earlier run (another commit's) are kept in the result as `before`. Each row pools the steps
// of `--runs N` runs (3 by default), each with a new scheduler, and gives each run's p99 too: on
// a shared machine one run's tail can be another process's doing. `--help` prints the options.
//
// Collection pauses count: every step is timed whole, and the garbage collections that fall
// inside timed steps are reported with each row (gcPauses, gcMs). Only what the setup leaves
// behind (registering thousands of adapters, the previous row's scheduler) is collected before
// the timed steps, so that one row's setup is not billed to another row's steps. The loop
// allocates little beyond the requests and loader answers it hands the scheduler (its fake
// results are reused), so what is collected is the scheduler's garbage.
//
// The steps run on a worker thread started as the server's supervisor starts the scheduler's
// (src/actors/scheduler-limits.ts: its heap limits, and its young generation at full size from
// the start), since the size of the young generation sets how often a collection falls in a
// step; the result names the limits.
//
// With `--tail`, each row also says what its slowest 1% of steps did (`slowest`), beside the
// same figures over all its steps (`typical`): batch rows and tokens, requests admitted and
// finished, adapter state changes, slot copies, and how many of them a collection fell in.
// Off by default: recording them is more work in each step.
//
// `--workload fixed` (the default) gives every request a 16-token prompt and 32 output tokens:
// requests admitted in one step also finish in one, so every 33rd step or so takes in and
// finishes about a hundred requests at once, the worst case for the tail. `--workload served`
// draws the lengths the serving benchmark uses (prompts 8-512 tokens, outputs 8-256, uniform,
// from a fixed seed), so admissions and finishes spread over the steps as they do when serving.
import { execFileSync } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { cpus } from 'node:os';
import { dirname, resolve } from 'node:path';
import { PerformanceObserver } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { Worker, isMainThread, resourceLimits } from 'node:worker_threads';
import { fakeResult } from './fake-step.js';

const USAGE = `usage: node bench/scheduler.js [--runs N] [--workload fixed|served] [--baseline FILE] [--out FILE] [--tail] [--no-prefix-cache]
  Times the scheduler's steps with 10, 1,000 and 10,000 registered adapters (run \`npm run build\` first).
  --runs N         runs pooled per row, each with a new scheduler (default 3)
  --workload W     fixed: 16-token prompts, 32 output tokens (default); served: prompts 8-512, outputs 8-256
  --baseline FILE  an earlier result whose rows are kept as \`before\`
  --out FILE       where to write the result (default bench/results/<date>-cpu-scheduler.json)
  --tail           also report what the slowest 1% of steps did
  --no-prefix-cache  the scheduler without its prefix cache (--disable-radix-cache); by default with it, as served`;
const root = new URL('..', import.meta.url);
// The scheduler runs on its own thread in the server, with the heap limits the supervisor gives
// it: the steps are timed on such a thread, so what is measured is what ships.
if (isMainThread) {
  const { spawnSchedulerThread } = await import(new URL('dist/src/actors/scheduler-limits.js', root).href);
  const worker = spawnSchedulerThread((resourceLimits) => new Worker(new URL(import.meta.url), { argv: process.argv.slice(2), resourceLimits }));
  worker.on('error', (err) => {
    console.error(err);
    process.exitCode = 1;
  });
  await new Promise((resolve) => worker.on('exit', resolve));
  process.exit();
}
const args = process.argv.slice(2);
if (args.includes('--help') || args.includes('-h')) {
  console.log(USAGE);
  process.exit(0);
}
/** The value after `flag`, or null when the flag is absent. */
function option(flag) {
  const at = args.indexOf(flag);
  if (at < 0) return null;
  const value = args[at + 1];
  if (value === undefined || value.startsWith('--')) throw new RangeError(`${flag} needs a value\n${USAGE}`);
  return value;
}
const TAIL = args.includes('--tail');
const PREFIX_CACHE = !args.includes('--no-prefix-cache');
const flags = args.filter((a) => a !== '--tail' && a !== '--no-prefix-cache');
const known = new Set(['--runs', '--workload', '--baseline', '--out']);
for (let i = 0; i < flags.length; i += 2) {
  if (!known.has(flags[i])) throw new RangeError(`unknown option ${flags[i]}\n${USAGE}`);
}

const { Scheduler } = await import(new URL('dist/src/scheduler/index.js', root).href);
const { DEFAULT_SAMPLING } = await import(new URL('dist/src/api.js', root).href);

const COUNTS = [10, 1000, 10000];
const WAITING = 256;
const DISTINCT = 64;
/**
 * Untimed steps of each run before the timed ones. Each run starts after a full collection, which
 * leaves the thread's young generation small again; it grows back over the first several hundred
 * steps (page faults and more frequent scavenges), a cost a server's scheduler thread pays once
 * when it starts, not in the steady state that the rows report.
 */
const WARMUP_STEPS = 1000;
const MAX_STEPS = 2000;
const MIN_STEPS = 20;
/** Per count; slow code still gets MIN_STEPS. */
const TIME_BUDGET_MS = 10_000;
/** What --tail records of each step. */
const WHAT = ['rows', 'tokens', 'admitted', 'finished', 'stateChanges', 'copies'];

const OPTIONS = {
  blockSize: 16,
  numBlocks: 8192,
  maxRunningRequests: 256,
  chunkedPrefillSize: 2048,
  maxLorasPerBatch: 8,
  maxLoadedLoras: null,
  evictionPolicy: 'lru',
  overlapLoading: true,
  eosTokenIds: [],
  contextLength: 4096,
  maxLoraRank: 16,
  loraModules: ['q_proj', 'k_proj', 'v_proj', 'o_proj'],
  prefixCache: PREFIX_CACHE,
};
const WORKLOAD = option('--workload') ?? 'fixed';
if (WORKLOAD !== 'fixed' && WORKLOAD !== 'served') throw new RangeError(`--workload must be fixed or served, got ${WORKLOAD}\n${USAGE}`);
/**
 * The prompts and output lengths requests cycle through, made before the timed steps and copied
 * for each request: building a prompt with Array.from over an array-like took about 0.7 us a
 * request here, which the steps that take in 128 requests billed to the scheduler.
 */
const SHAPES = (() => {
  if (WORKLOAD === 'fixed')
    return [
      { prompt: Array.from({ length: 16 }, (_, k) => 10 + k), sampling: { ...DEFAULT_SAMPLING, maxNewTokens: 32, temperature: 0, ignoreEos: true } },
    ];
  // mulberry32 from seed 1: the same lengths on every run and machine.
  let seed = 1;
  const random = () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const uniform = (lo, hi) => lo + Math.floor(random() * (hi - lo + 1));
  return Array.from({ length: 4096 }, () => ({
    prompt: Array.from({ length: uniform(8, 512) }, (_, k) => 10 + (k % 1000)),
    sampling: { ...DEFAULT_SAMPLING, maxNewTokens: uniform(8, 256), temperature: 0, ignoreEos: true },
  }));
})();

/** Answers every command at once (copies, reads and exchanges); returns how many slot copies it made. */
function serveLoader(s) {
  let copies = 0;
  for (;;) {
    const cmds = s.takeCommands();
    if (cmds.length === 0) return copies;
    for (const c of cmds) {
      if (c.kind === 'copy-to-slot') copies++;
      if (c.kind === 'load-cpu') s.onLoaderEvent({ kind: 'cpu-loaded', name: c.name, rank: 8, targetModules: ['q_proj', 'v_proj'], bytes: 0 });
      else if (c.kind === 'copy-to-slot') s.onLoaderEvent({ kind: 'slot-ready', name: c.name, slot: c.slot });
      else if (c.kind === 'swap-slots') {
        // An exchange of two slots, which moving adapters to low slots asks for.
        s.onLoaderEvent({ kind: 'slot-ready', name: c.names[0], slot: c.slots[1] });
        if (c.names[1] !== null) s.onLoaderEvent({ kind: 'slot-ready', name: c.names[1], slot: c.slots[0] });
      }
    }
  }
}

setFlagsFromString('--expose-gc');
/** A full collection, between rows only. */
const collectGarbage = runInNewContext('gc');

/** Collections seen while a row's steps run (the observer hears of them after the row). */
const pauses = [];
new PerformanceObserver((list) => {
  for (const e of list.getEntries()) pauses.push({ start: e.startTime, end: e.startTime + e.duration });
}).observe({ entryTypes: ['gc'] });

function quantile(sorted, q) {
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
}

/** One run: a new scheduler with `count` adapters, its steps timed. */
async function run(count) {
  const s = new Scheduler(OPTIONS);
  for (let i = 0; i < count; i++) s.addAdapter({ name: `a${i}`, path: `/adapters/a${i}`, pinned: false });
  serveLoader(s);
  const distinct = Math.min(DISTINCT, count);
  // Spread over the registry, so no structure can profit from the wanted ones being first.
  const wanted = Array.from({ length: distinct }, (_, i) => `a${Math.floor((i * count) / distinct)}`);
  let next = 0;
  const refill = () => {
    while (s.stats().waiting < WAITING) {
      const id = next++;
      const shape = SHAPES[id % SHAPES.length];
      s.submit({
        id: `r${id}`,
        promptIds: shape.prompt.slice(),
        lora: wanted[id % distinct],
        sampling: shape.sampling,
        returnLogprob: false,
        topLogprobsNum: 0,
        seed: 0,
      });
    }
  };
  refill();
  collectGarbage();
  const starts = new Float64Array(MAX_STEPS);
  const ends = new Float64Array(MAX_STEPS);
  // --tail: what each step did (WHAT's fields, one row of them per step).
  const what = TAIL ? new Float64Array(MAX_STEPS * WHAT.length) : null;
  let stateChanges = 0;
  if (what) s.subscribe(() => stateChanges++);
  let steps = 0;
  let copies = 0;
  let sequences = 0;
  const t0 = performance.now();
  for (let i = 0; i < WARMUP_STEPS + MAX_STEPS; i++) {
    const changesBefore = stateChanges;
    const start = performance.now();
    let copied = serveLoader(s);
    const waiting = what ? s.stats().waiting : 0;
    const step = s.schedule();
    const admitted = what ? waiting - s.stats().waiting : 0;
    const events = step ? s.complete(fakeResult(step.batch)) : [];
    copied += serveLoader(s);
    refill();
    const end = performance.now();
    if (i < WARMUP_STEPS) continue;
    if (what) {
      const finished = events.reduce((a, e) => a + (e.finish ? 1 : 0), 0);
      const row = [step ? step.seqIds.length : 0, step ? step.batch.tokens.length : 0, admitted, finished, stateChanges - changesBefore, copied];
      what.set(row, steps * WHAT.length);
    }
    starts[steps] = start;
    ends[steps++] = end;
    copies += copied;
    sequences += step ? step.seqIds.length : 0;
    if (steps >= MIN_STEPS && end - t0 > TIME_BUDGET_MS) break;
  }
  // Let the observer report this row's collections.
  await new Promise((resolve) => setTimeout(resolve, 10));
  const inSteps = pauses.filter((p) => {
    for (let i = 0; i < steps; i++) if (starts[i] < p.end && ends[i] > p.start) return true;
    return false;
  });
  pauses.length = 0;
  return {
    distinct,
    times: Array.from({ length: steps }, (_, i) => ends[i] - starts[i]),
    // Per step: its WHAT fields, then whether a collection fell in it.
    what: what
      ? Array.from({ length: steps }, (_, i) => [
          ...what.subarray(i * WHAT.length, (i + 1) * WHAT.length),
          inSteps.some((p) => starts[i] < p.end && ends[i] > p.start) ? 1 : 0,
        ])
      : null,
    copies,
    sequences,
    gcPauses: inSteps.length,
    gcMs: inSteps.reduce((a, p) => a + (p.end - p.start), 0),
  };
}

async function measure(count, runs) {
  const all = [];
  for (let r = 0; r < runs; r++) all.push(await run(count));
  const byRun = all.map((r) =>
    quantile(
      [...r.times].sort((a, b) => a - b),
      0.99,
    ),
  );
  const times = all.flatMap((r) => r.times).sort((a, b) => a - b);
  const steps = times.length;
  const sum = (key) => all.reduce((a, r) => a + r[key], 0);
  return {
    registered: count,
    waiting: WAITING,
    distinctWanted: all[0].distinct,
    runs,
    steps,
    meanMs: times.reduce((a, t) => a + t, 0) / steps,
    medianMs: quantile(times, 0.5),
    p99Ms: quantile(times, 0.99),
    p99MsByRun: byRun,
    maxMs: times[steps - 1],
    // What the steps did: sequences per step, and adapter copies into slots per 100 steps.
    sequencesPerStep: sum('sequences') / steps,
    copiesPer100Steps: (100 * sum('copies')) / steps,
    // Collections during the timed steps, all of them counted in the times above.
    gcPauses: sum('gcPauses'),
    gcMs: sum('gcMs'),
    ...(TAIL ? tail(all) : {}),
  };
}

/** --tail: over the slowest 1% of steps, and over all: the mean of each WHAT field, and how many steps a collection fell in. */
function tail(all) {
  const steps = all.flatMap((r) => r.times.map((ms, i) => ({ ms, what: r.what[i] })));
  const summary = (xs) => ({
    steps: xs.length,
    ...Object.fromEntries(WHAT.map((k, j) => [k, xs.reduce((a, x) => a + x.what[j], 0) / xs.length])),
    collections: xs.filter((x) => x.what[WHAT.length] === 1).length,
  });
  const slowest = steps.sort((a, b) => b.ms - a.ms).slice(0, Math.ceil(steps.length / 100));
  return { slowest: summary(slowest), typical: summary(steps) };
}

const baselineFile = option('--baseline');
const baseline = baselineFile !== null ? JSON.parse(readFileSync(baselineFile, 'utf8')) : null;
const runsArg = option('--runs');
const RUNS = runsArg !== null ? Number(runsArg) : 3;
if (!Number.isInteger(RUNS) || RUNS < 1) throw new RangeError(`--runs must be a positive integer, got ${runsArg}`);
const outFile = option('--out');
let commit = null;
try {
  commit = execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: root, encoding: 'utf8' }).trim();
} catch {
  // Not a git checkout: the result simply names no commit.
}

// One unmeasured pass first, so the JIT has compiled the scheduler before the first count.
await run(COUNTS[0]);
const rows = [];
for (const count of COUNTS) rows.push(await measure(count, RUNS));
const result = {
  date: new Date().toISOString(),
  device: `cpu: ${cpus()[0]?.model ?? 'unknown'} x ${cpus().length}`,
  node: process.version,
  commit,
  setup: `max-loras-per-batch ${OPTIONS.maxLorasPerBatch}, ${WAITING} waiting requests over ${DISTINCT} adapters (fewer when fewer are registered), fake loader answering at once, prefix cache ${OPTIONS.prefixCache ? 'on' : 'off'}`,
  workload:
    WORKLOAD === 'fixed' ? 'fixed: 16-token prompts, 32 output tokens' : 'served: prompts 8-512 tokens, outputs 8-256, uniform from a fixed seed',
  // As V8 applied them to the thread the steps ran on (the scheduler thread's, see above).
  thread: { youngGenerationMb: resourceLimits.maxYoungGenerationSizeMb, oldGenerationMb: resourceLimits.maxOldGenerationSizeMb },
  rows,
  ...(baseline ? { before: { commit: baseline.commit, date: baseline.date, rows: baseline.rows } } : {}),
};
const file = outFile !== null ? resolve(outFile) : fileURLToPath(new URL(`bench/results/${result.date.slice(0, 10)}-cpu-scheduler.json`, root));
mkdirSync(dirname(file), { recursive: true });
writeFileSync(file, JSON.stringify(result, null, 2) + '\n');
console.log(`device: ${result.device}, commit ${commit ?? 'unknown'}`);
console.log(
  '| registered adapters | mean ms/step | median ms/step | p99 ms/step | slowest ms | collections in steps (ms) |' +
    (baseline ? ' before: median | before: p99 |' : ''),
);
console.log('| --- | --- | --- | --- | --- | --- |' + (baseline ? ' --- | --- |' : ''));
for (const r of rows) {
  const b = baseline?.rows.find((x) => x.registered === r.registered);
  const gc = `${r.gcPauses} (${r.gcMs.toFixed(1)})`;
  console.log(
    `| ${r.registered} | ${r.meanMs.toFixed(3)} | ${r.medianMs.toFixed(3)} | ${r.p99Ms.toFixed(3)} | ${r.maxMs.toFixed(2)} | ${gc} |` +
      (b ? ` ${b.medianMs.toFixed(3)} | ${b.p99Ms.toFixed(3)} |` : ''),
  );
}
for (const r of TAIL ? rows : []) {
  const f = (k) => `${k} ${r.slowest[k].toFixed(1)} (${r.typical[k].toFixed(1)})`;
  console.log(
    `${r.registered}: slowest ${r.slowest.steps} steps (all steps in parentheses), ${r.slowest.collections} with a collection; ${WHAT.map(f).join(', ')}`,
  );
}

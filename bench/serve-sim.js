// The serving benchmark of bench/serve-lora.js in simulated time: the real scheduler (dist/)
// with a fake loader and a fake H200 whose step times come from a model fitted to the H200
// runs (bench/sim-setups.js, bench/sim-fit.js, bench/sim-server.js). Deterministic, and a few
// minutes on a laptop core for what took the GPU hours, so scheduling policies can be compared
// on the same requests. `npm run build` first.
//   node bench/serve-sim.js [--only a-cpu64,b-cpu64] [--baseline FILE] [--out FILE] [--seeds 3]
//   node bench/serve-sim.js --calibrate     (refits the step-time model; run it on the
//                                            scheduler the H200 runs used)
// For each setup of the H200 matrix it reports, next to what the H200 measured:
// - `h200`: the measured runs redone: 4 req/s for as long as they ran (45 s without a run), and the capacity search with their probes
//   (12 s of arrivals, one bisection), one seed: checks the simulation against the GPU;
// - `steady`: 4 req/s for 300 s (and --also-rate's), and a capacity search with probes of 60 s and four bisections,
//   each over --seeds workloads: the figures to compare policies by.
// Writes bench/results/<date>-cpu-serve-sim.json; --baseline keeps an earlier run's (another
// commit's) setups in the result as `before`, and its fit of the step-time model when the model
// is the same (the fit is only meaningful under the scheduler the H200 runs used).
import { execFileSync } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { searchCapacity } from './serve-capacity.js';
import { optionLines, parseTable } from './serve-options.js';
import { fitError, fitReport, calibrate } from './sim-fit.js';
import { MODEL, PLACE_WAIT_DEFAULT, SETS, SETUPS, SLO, WORKLOAD, fitsModel, measured, simulateSetup } from './sim-setups.js';

const root = new URL('..', import.meta.url);

const OPTIONS = {
  only: ['string', undefined, 'comma-separated setups to run (default: all)'],
  seeds: ['string', '3', 'workloads per steady-state probe'],
  baseline: ['string', undefined, "an earlier result, kept as `before` (its commit's scheduler)"],
  out: ['string', undefined, 'result file (default bench/results/<date>-cpu-serve-sim.json)'],
  calibrate: ['boolean', false, 'refit the step-time model to the H200 runs and print it'],
  'place-wait-steps': ['string', undefined, "the scheduler's --max-place-wait-steps (default: troupe serve's)"],
  'also-rate': ['string', undefined, "one more steady rate (req/s, 300 s over --seeds workloads), e.g. between two setups' capacities"],
  help: ['boolean', false, 'this text'],
};

const { values: v } = parseTable(OPTIONS, process.argv.slice(2));
if (v.help) {
  console.log(`usage: node bench/serve-sim.js [options]\n${optionLines(OPTIONS)}`);
  process.exit(0);
}
if (v.calibrate) {
  const fit = calibrate(MODEL, { log: console.log });
  console.table(fit.points);
  console.log(`fitted: ${JSON.stringify(fit.model)}; ITL p50 within ${fitError(fit.points)}% on average`);
  process.exit(0);
}

const alsoRate = v['also-rate'] === undefined ? null : Number(v['also-rate']);
if (alsoRate !== null && !(alsoRate > 0)) throw new Error(`--also-rate must be a positive number of requests/s, got ${v['also-rate']}`);
const seeds = Array.from({ length: Number(v.seeds) }, (_, i) => WORKLOAD.seed + i);
const chosen = v.only ? v.only.split(',').map((l) => SETUPS.find((s) => s.label === l) ?? fail(`no setup ${l}`)) : SETUPS;
const setups = v['place-wait-steps'] === undefined ? chosen : chosen.map((s) => ({ ...s, placeWait: Number(v['place-wait-steps']) }));
function fail(message) {
  throw new Error(message);
}

/** A capacity search whose probes are simulations; each probe keeps its summary and step statistics. */
const capacity = (setup, cfg, probe) => searchCapacity(cfg, async (rate) => simulateSetup(setup, { rate, ...probe }));

const brief = (c) => ({
  rate: c.rate,
  bound: c.bound,
  lowestFailing: c.lowestFailing ?? null,
  probes: c.probes.map((p) => ({ rate: p.rate, pass: p.pass, summary: p.summary, stats: p.stats })),
});

async function runSetup(setup) {
  const fixed = measured(setup, '');
  const cap = measured(setup, '-capacity');
  const capCfg = cap?.config.capacity ?? {
    target: 0.99,
    start: setup.capacityStart,
    max: setup.capacityMax,
    min: 0.05,
    bisections: 1,
    probeDuration: 12,
    probeDrainTimeout: 15,
  };
  const h200 = {
    at4: simulateSetup(setup, { rate: 4, duration: fixed?.config.workload.duration ?? 45, drainTimeout: fixed?.config.drainTimeout ?? 25 }),
    capacity: brief(await capacity(setup, capCfg, { duration: capCfg.probeDuration, drainTimeout: capCfg.probeDrainTimeout })),
  };
  const steady = {
    at4: simulateSetup(setup, { rate: 4, duration: 300, drainTimeout: 120, seeds }),
    ...(alsoRate === null ? {} : { also: { rate: alsoRate, ...simulateSetup(setup, { rate: alsoRate, duration: 300, drainTimeout: 120, seeds }) } }),
    capacity: brief(
      await capacity(
        setup,
        { target: 0.99, start: setup.capacityStart, max: setup.capacityMax, min: 0.05, bisections: 4 },
        { duration: 60, drainTimeout: 60, seeds },
      ),
    ),
  };
  return {
    ...setup,
    placeWait: setup.placeWait ?? PLACE_WAIT_DEFAULT,
    // The H200's figures in short; the files named are the source.
    measured: {
      files: [fixed, cap].filter(Boolean).map((r) => r.config.out.replace(/^.*\//, '')),
      // false: some ran under an earlier admission, so they differ from the simulation by more than the model.
      underFitAdmission: [fixed, cap].filter(Boolean).every((r) => fitsModel(setup, r)),
      at4: fixed ? { ttft: fixed.summary.ttft, itl: fixed.summary.itl, sloAttainment: fixed.summary.sloAttainment } : null,
      capacity: cap
        ? {
            rate: cap.capacity.rate,
            bound: cap.capacity.bound,
            lowestFailing: cap.capacity.lowestFailing ?? null,
            probes: cap.capacity.probes.map((p) => ({
              rate: p.rate,
              pass: p.pass,
              sloAttainment: p.summary.sloAttainment,
              requestThroughput: p.summary.requestThroughput,
            })),
          }
        : null,
    },
    h200,
    steady,
  };
}

let commit = null;
try {
  commit = execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: root, encoding: 'utf8' }).trim();
} catch {
  // Not a git checkout: the result simply names no commit.
}
const baseline = v.baseline ? JSON.parse(readFileSync(v.baseline, 'utf8')) : null;
// The fit holds for the scheduler that ran on the H200: a baseline's, when it is that one.
const sameModel = baseline !== null && Object.keys(MODEL).every((k) => baseline.stepModel?.[k] === MODEL[k]);
const fit = sameModel ? baseline.stepModel.fit : { scheduler: commit, meanAbsErrorPct: null, points: fitReport(MODEL) };
fit.meanAbsErrorPct ??= fitError(fit.points);
const runs = [];
for (const setup of setups) {
  console.log(`${setup.label}...`);
  runs.push(await runSetup(setup));
}
const result = {
  benchmark: 'serve-sim',
  date: new Date().toISOString(),
  commit,
  node: process.version,
  setup:
    'troupe serve on one H200 as bench/serve-matrix.js ran it (Llama-3.1-8B shape), simulated: the real scheduler, a fake loader and a step-time model',
  stepModel: {
    formula: 'step ms = a + b * rows + c * prefill tokens + d * distinct adapters (+ offsetB for set b)',
    ...MODEL,
    fit,
  },
  sets: SETS,
  workload: { ...WORKLOAD, sloSeconds: SLO, steadySeeds: seeds },
  setups: runs,
  ...(baseline ? { before: { commit: baseline.commit, date: baseline.date, setups: baseline.setups } } : {}),
};
const out = v.out ?? `bench/results/${result.date.slice(0, 10)}-cpu-serve-sim.json`;
mkdirSync(new URL('bench/results/', root), { recursive: true });
writeFileSync(new URL(out, root), JSON.stringify(result, null, 2) + '\n');

const f = (x, d = 2) => (x === null || x === undefined ? '–' : Number(x).toFixed(d));
const ttft = (s) => (s ? `${f(s.ttft.p50)} / ${f(s.ttft.p90)} / ${f(s.ttft.p99)}` : '–');
const capCell = (c) => (c ? (c.bound === 'at-least' ? `≥ ${c.rate}` : `${c.rate}`) : '–');
const rowsAt = (c) => f(c?.probes.find((p) => p.pass && p.rate === c.rate)?.stats.rowsPerStep, 1);
// With a baseline, each simulated figure reads "before → after".
const pair = (get, r, b) => (baseline ? `${b ? get(b) : '–'} → ${get(r)}` : get(r));
console.log(`step model: ${result.stepModel.formula}: ${JSON.stringify(MODEL)}; ITL p50 of the H200 runs within ${fit.meanAbsErrorPct}% on average`);
console.log(
  '| setup | capacity, 12 s probes: H200; simulated (req/s) | capacity, 60 s probes (req/s) | rows per step there | TTFT p50 / p90 / p99 at 4 req/s as the H200 ran it: H200; simulated (s) | TTFT p50 / p90 / p99 at 4 req/s, 300 s (s) |',
);
console.log('| --- | --- | --- | --- | --- | --- |');
for (const r of runs) {
  const b = baseline?.setups.find((x) => x.label === r.label);
  console.log(
    `| ${r.label} | ${capCell(r.measured.capacity)}; ${pair((x) => capCell(x.h200.capacity), r, b)} | ${pair((x) => capCell(x.steady.capacity), r, b)} | ${pair((x) => rowsAt(x.steady.capacity), r, b)} | ${ttft(r.measured.at4)}; ${pair((x) => ttft(x.h200.at4.summary), r, b)} | ${pair((x) => ttft(x.steady.at4.summary), r, b)} |`,
  );
}
if (alsoRate !== null) {
  console.log(`\n| setup | TTFT p50 / p90 / p99 at ${alsoRate} req/s, 300 s (s) | requests/s served | TTFT within the SLO |`);
  console.log('| --- | --- | --- | --- |');
  for (const r of runs) {
    const a = r.steady.also.summary;
    console.log(`| ${r.label} | ${ttft(a)} | ${f(a.requestThroughput)} | ${f(a.sloAttainment * 100, 1)}% |`);
  }
}
console.log(`written to ${out}`);

// The serving benchmark of bench/serve-lora.js in simulated time: the real scheduler (dist/)
// with a fake loader and a fake H200 whose step times come from a model fitted to the H200
// runs (bench/sim-setups.js, bench/sim-fit.js, bench/sim-server.js). Deterministic, and a few
// minutes on a laptop core for what took the GPU hours, so scheduling policies can be compared
// on the same requests. `npm run build` first.
//   node bench/serve-sim.js [--only a-cpu64,b-cpu64] [--baseline FILE] [--out FILE] [--seeds 3]
//   node bench/serve-sim.js --calibrate     (refits the step-time model; run it on the
//                                            scheduler the H200 runs used)
// For each setup of the H200 matrix it reports, next to what the H200 measured:
// - `h200`: the measured runs redone: 4 req/s for 45 s, and the capacity search with their probes
//   (12 s of arrivals, one bisection), one seed: checks the simulation against the GPU;
// - `steady`: 4 req/s for 300 s, and a capacity search with probes of 60 s and four bisections,
//   each over --seeds workloads: the figures to compare policies by.
// Writes bench/results/<date>-cpu-serve-sim.json; --baseline keeps an earlier run's (another
// commit's) setups in the result as `before`.
import { execFileSync } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { searchCapacity } from './serve-capacity.js';
import { optionLines, parseTable } from './serve-options.js';
import { fitError, fitReport, calibrate } from './sim-fit.js';
import { MODEL, SETS, SETUPS, SLO, WORKLOAD, measured, simulateSetup } from './sim-setups.js';

const root = new URL('..', import.meta.url);

const OPTIONS = {
  only: ['string', undefined, 'comma-separated setups to run (default: all)'],
  seeds: ['string', '3', 'workloads per steady-state probe'],
  baseline: ['string', undefined, "an earlier result, kept as `before` (its commit's scheduler)"],
  out: ['string', undefined, 'result file (default bench/results/<date>-cpu-serve-sim.json)'],
  calibrate: ['boolean', false, 'refit the step-time model to the H200 runs and print it'],
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

const seeds = Array.from({ length: Number(v.seeds) }, (_, i) => WORKLOAD.seed + i);
const setups = v.only ? v.only.split(',').map((l) => SETUPS.find((s) => s.label === l) ?? fail(`no setup ${l}`)) : SETUPS;
function fail(message) {
  throw new Error(message);
}

/** A capacity search whose probes are simulations; each probe keeps its summary and step statistics. */
const capacity = (setup, cfg, probe) => searchCapacity(cfg, async (rate) => simulateSetup(setup, { rate, ...probe }));

const brief = (c) => ({ rate: c.rate, bound: c.bound, lowestFailing: c.lowestFailing ?? null, probes: c.probes.map((p) => ({ rate: p.rate, pass: p.pass, summary: p.summary, stats: p.stats })) });

async function runSetup(setup) {
  const fixed = measured(setup, '');
  const cap = measured(setup, '-capacity');
  const capCfg = cap?.config.capacity ?? { target: 0.99, start: setup.capacityStart, max: setup.capacityMax, min: 0.05, bisections: 1, probeDuration: 12, probeDrainTimeout: 15 };
  const h200 = {
    at4: simulateSetup(setup, { rate: 4, duration: 45, drainTimeout: fixed?.config.drainTimeout ?? 25 }),
    capacity: brief(await capacity(setup, capCfg, { duration: capCfg.probeDuration, drainTimeout: capCfg.probeDrainTimeout })),
  };
  const steady = {
    at4: simulateSetup(setup, { rate: 4, duration: 300, drainTimeout: 120, seeds }),
    capacity: brief(await capacity(setup, { target: 0.99, start: setup.capacityStart, max: setup.capacityMax, min: 0.05, bisections: 4 }, { duration: 60, drainTimeout: 60, seeds })),
  };
  return {
    ...setup,
    measured: {
      at4: fixed ? { summary: fixed.summary } : null,
      capacity: cap ? { rate: cap.capacity.rate, bound: cap.capacity.bound, lowestFailing: cap.capacity.lowestFailing ?? null, probes: cap.capacity.probes.map((p) => ({ rate: p.rate, pass: p.pass, summary: p.summary })) } : null,
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
const fit = fitReport(MODEL);
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
  setup: 'troupe serve on one H200 as bench/serve-matrix.js ran it (Llama-3.1-8B shape), simulated: the real scheduler, a fake loader and a step-time model',
  stepModel: {
    formula: 'step ms = a + b * rows + c * prefill tokens + d * distinct adapters (+ offsetB for set b)',
    ...MODEL,
    fit: { meanAbsErrorPct: fitError(fit), points: fit },
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
const servedAt = (c) => c?.probes.find((p) => p.pass && p.rate === c.rate);
console.log(`step model: ${result.stepModel.formula}: ${JSON.stringify(MODEL)}; ITL p50 of the H200 runs within ${result.stepModel.fit.meanAbsErrorPct}% on average`);
console.log('| setup | capacity H200 / sim (12 s probes) | capacity, 60 s probes | rows per step there | TTFT p50 / p90 / p99 at 4 req/s (s), H200 / sim 45 s / sim 300 s |' + (baseline ? ' before: capacity, 60 s probes | before: TTFT at 4 req/s, 300 s |' : ''));
console.log('| --- | --- | --- | --- | --- |' + (baseline ? ' --- | --- |' : ''));
for (const r of runs) {
  const b = baseline?.setups.find((x) => x.label === r.label);
  const rows = servedAt(r.steady.capacity)?.stats.rowsPerStep;
  const line = `| ${r.label} | ${capCell(r.measured.capacity)} / ${capCell(r.h200.capacity)} | ${capCell(r.steady.capacity)} | ${f(rows, 1)} | ${ttft(r.measured.at4?.summary)} / ${ttft(r.h200.at4.summary)} / ${ttft(r.steady.at4.summary)} |`;
  console.log(line + (baseline ? ` ${capCell(b?.steady.capacity)} | ${ttft(b?.steady.at4.summary)} |` : ''));
}
console.log(`written to ${out}`);

// The simulator (bench/sim-server.js) against the H200 runs where overlap loading had copies to
// hide: 256 adapters of rank 128 on all modules (672 MB each) through 16 CPU places, 4.5 and
// 5 requests/s for 240 s, with and without --enable-lora-overlap-loading
// (bench/results/2026-11-30-h200-serve-lora-r128x256-cpu16*-rate*.json). Each run is simulated
// with the disk read and copy times that run logged (loadSeconds over loads): with overlap
// scheduling, as troupe serve plans; one step at a time; and with overlap scheduling and the
// steps planned while a slot is being filled --copy-slowdown times longer. The median TTFT and its
// ratio (overlap loading over none) are printed next to the H200's. With --seeds N the two
// overlap-scheduling simulations are also run over workload seeds 0..N-1 (arrivals, adapters and
// lengths drawn anew, as one more H200 run would), to show how far one run's ratio can fall from
// another's. `npm run build` first.
//   node bench/sim-vs-h200.js [--copy-slowdown 1.06] [--seeds 8] [--out FILE]
import { readFileSync, writeFileSync } from 'node:fs';
import { SETS, SETUPS, simulateSetup } from './sim-setups.js';
import { optionLines, parseTable } from './serve-options.js';

const OPTIONS = {
  // 1.06: decode steps beside rank-128 fills on the H200 took 7.50 ms against 7.06 ms alone
  // (means; bench/gpu-adapter-load.js, results/2026-11-30-h200-adapter-load-r128-stream-priority.json).
  'copy-slowdown': ['string', '1.06', 'how many times longer a step takes beside a slot fill, for the third simulation'],
  seeds: ['string', '1', 'workload seeds for the spread of the ratio (1: seed 0 only)'],
  out: ['string', undefined, 'also write the comparison to this JSON file'],
  help: ['boolean', false, 'this text'],
};
const { values: v } = parseTable(OPTIONS, process.argv.slice(2));
if (v.help) {
  console.log(`usage: node bench/sim-vs-h200.js [options]\n${optionLines(OPTIONS)}`);
  process.exit(0);
}

const copySlowdown = Number(v['copy-slowdown']);
if (!(copySlowdown >= 1)) throw new Error(`--copy-slowdown must be a number >= 1, got ${v['copy-slowdown']}`);
const seeds = Number(v.seeds);
if (!(Number.isInteger(seeds) && seeds >= 1)) throw new Error(`--seeds must be a positive integer, got ${v.seeds}`);
const RESULTS = new URL('results/', import.meta.url);
// Each simulation: its key in the results, overlap scheduling, and the slowdown beside a fill.
const SIMULATIONS = [
  ['simulated', true, 1],
  ['simulatedOneStepAtATime', false, 1],
  ['simulatedSlowedBesideFills', true, copySlowdown],
];
const RUNS = [
  { rate: 4.5, tag: 'rate45' },
  { rate: 5, tag: 'rate5' },
];
const perLoad = (a, kind) => (a.loadSeconds[kind] / Math.max(1, a.loads[kind])) * 1000;

const rows = [];
for (const { rate, tag } of RUNS) {
  const row = { rate, h200: {}, ...Object.fromEntries(SIMULATIONS.map(([key]) => [key, {}])) };
  for (const overlap of [false, true]) {
    const mode = overlap ? 'overlapLoading' : 'noOverlapLoading';
    const file = new URL(`2026-11-30-h200-serve-lora-r128x256-cpu16${overlap ? '-overlap' : ''}-${tag}.json`, RESULTS);
    const run = JSON.parse(readFileSync(file, 'utf8'));
    const a = run.adapterActivity;
    const readMs = perLoad(a, 'disk_to_cpu'),
      copyMs = perLoad(a, 'cpu_to_gpu');
    row.h200[mode] = {
      ttftP50: run.summary.ttft.p50,
      sloAttainment: run.summary.sloAttainment,
      readMs: +readMs.toFixed(1),
      copyMs: +copyMs.toFixed(1),
    };
    for (const [key, overlapSchedule, slowdown] of SIMULATIONS) {
      const r = simulateWith(overlap, readMs, copyMs, { rate, overlapSchedule, copySlowdown: slowdown });
      row[key][mode] = { ttftP50: +r.summary.ttft.p50.toFixed(3), sloAttainment: +r.summary.sloAttainment.toFixed(4), busy: r.stats.busy };
    }
  }
  for (const key of ['h200', ...SIMULATIONS.map(([k]) => k)]) {
    const m = row[key];
    m.ratio = +(m.overlapLoading.ttftP50 / m.noOverlapLoading.ttftP50).toFixed(3);
  }
  if (seeds > 1) {
    row.bySeed = {};
    for (const [key, overlapSchedule, slowdown] of SIMULATIONS.filter(([, planAhead]) => planAhead)) {
      const ratios = [];
      for (let seed = 0; seed < seeds; seed++) {
        const p50 = (overlap) => {
          const h = row.h200[overlap ? 'overlapLoading' : 'noOverlapLoading'];
          return simulateWith(overlap, h.readMs, h.copyMs, { rate, overlapSchedule, copySlowdown: slowdown, seeds: [seed] }).summary.ttft.p50;
        };
        ratios.push(+(p50(true) / p50(false)).toFixed(3));
      }
      const sorted = [...ratios].sort((a, b) => a - b);
      row.bySeed[key] = { ratios, min: sorted[0], median: sorted[Math.floor(sorted.length / 2)], max: sorted[sorted.length - 1] };
    }
  }
  rows.push(row);
  const line = (key) =>
    `${row[key].noOverlapLoading.ttftP50.toFixed(2)} s / ${row[key].overlapLoading.ttftP50.toFixed(2)} s = ${row[key].ratio.toFixed(2)}x`;
  console.log(`${rate} req/s, median TTFT without / with overlap loading:`);
  console.log(`  H200                                 ${line('h200')}`);
  console.log(`  simulated, overlap scheduling        ${line('simulated')}`);
  console.log(`  simulated, one step at a time        ${line('simulatedOneStepAtATime')}`);
  console.log(`  simulated, steps ${copySlowdown}x beside fills  ${line('simulatedSlowedBesideFills')}`);
  for (const [key, spread] of Object.entries(row.bySeed ?? {})) {
    console.log(`  ${key} over ${seeds} seeds: ratio ${spread.min.toFixed(2)}-${spread.max.toFixed(2)}, median ${spread.median.toFixed(2)}`);
  }
}
if (v.out)
  writeFileSync(
    v.out,
    JSON.stringify({ benchmark: 'sim-vs-h200', date: new Date().toISOString().slice(0, 10), copySlowdown, seeds, rows }, null, 2) + '\n',
  );

/** One simulation of the run's setup (with or without overlap loading) with the given read and copy times. */
function simulateWith(overlap, readMs, copyMs, { rate, overlapSchedule, copySlowdown, seeds }) {
  const setup = SETUPS.find((s) => s.label === (overlap ? 'h-cpu16-overlap' : 'h-cpu16'));
  // The run's own load times for this simulation only.
  const saved = { readMs: SETS.h.readMs, copyMs: SETS.h.copyMs };
  Object.assign(SETS.h, { readMs, copyMs });
  try {
    return simulateSetup(setup, { rate, duration: 240, drainTimeout: 60, overlapSchedule, copySlowdown, ...(seeds ? { seeds } : {}) });
  } finally {
    Object.assign(SETS.h, saved);
  }
}

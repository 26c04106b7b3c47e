// The configurations troupe's multi-LoRA serving is measured on, each a bench/serve-lora.js run:
//   a-*: 256 distinct adapters of rank 16 on all seven modules
//   b-*: 1,000 distinct adapters of rank 8 on q/k/v/o
// each with an unlimited CPU cache (-unlimited), --max-loaded-loras 64 (-cpu64), 16 (-cpu16) and
// 16 with --enable-lora-overlap-loading (-cpu16-overlap), and the same workload over 8 adapters of
// the set that all stay resident (-resident8), the ceiling. All with --max-loras-per-batch 8.
//   node bench/serve-matrix.js --model DIR --adapters-root DIR [--only a-unlimited,b-cpu64]
//     [--duration 300] [--rate 4] [-- extra troupe serve flags]
// Missing adapters are written first (bench/make-adapters.js). Each run writes
// RESULTS/<date>-<tag>-serve-lora-<run>.json; a run whose file exists (any date) is skipped, so an
// interrupted matrix resumes, and --only cuts it into chunks. Ends with the table of every run.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { makeAdapters, parseModules } from './make-adapters.js';
import { optionLines, parseTable } from './serve-options.js';
import { nvidiaSmi } from './serve-server.js';
import { markdown, readResults } from './serve-table.js';

const repo = fileURLToPath(new URL('..', import.meta.url));

const OPTIONS = {
  model: ['string', undefined, 'model directory'],
  'adapters-root': ['string', undefined, 'where the adapter sets live (written when missing)'],
  only: ['string', undefined, 'comma-separated runs, sets (a, b) or prefixes ending in - (b-cpu16-) to do; --list shows the runs'],
  list: ['boolean', false, 'print the runs and exit'],
  'a-adapters': ['string', '256', 'adapters in set a'],
  'a-rank': ['string', '16', 'their rank'],
  'a-modules': ['string', 'all', 'their modules'],
  'a-distinct': ['string', undefined, 'adapters of set a with weights of their own; the rest link to them (default: all)'],
  'b-adapters': ['string', '1000', 'adapters in set b'],
  'b-rank': ['string', '8', 'their rank'],
  'b-modules': ['string', 'q,k,v,o', 'their modules'],
  'b-distinct': ['string', undefined, 'the same for set b'],
  'big-cache': ['string', '64', '--max-loaded-loras of the -cpu64 runs'],
  'small-cache': ['string', '16', '--max-loaded-loras of the -cpu16 runs'],
  resident: ['string', '8', 'adapters of the -resident runs'],
  'max-loras-per-batch': ['string', '8', 'troupe serve --max-loras-per-batch'],
  rate: ['string', '4', 'requests/s'],
  cv: ['string', '1', 'inter-arrival coefficient of variation'],
  alpha: ['string', '1', 'power-law exponent of adapter popularity'],
  slo: ['string', '6', 'TTFT SLO, seconds'],
  seed: ['string', '0', 'workload seed'],
  duration: ['string', '300', 'seconds of arrivals per run'],
  'input-len': ['string', '8:512', 'prompt lengths MIN:MAX'],
  'output-len': ['string', '8:256', 'output lengths MIN:MAX'],
  'drain-timeout': ['string', '120', 'seconds after the last arrival before unfinished requests are cut'],
  device: ['string', 'auto', 'troupe serve --device'],
  capacity: ['boolean', false, 'capacity searches instead of fixed-rate runs (results named <run>-capacity)'],
  'probe-duration': ['string', '60', 'seconds of arrivals per capacity probe'],
  'probe-drain-timeout': ['string', '60', 'drain timeout of a capacity probe'],
  'capacity-start': ['string', undefined, 'first probe rate (default: half of --rate)'],
  'capacity-bisections': ['string', '4', 'bisection probes after the bracketing ones'],
  'results-dir': ['string', 'bench/results', 'where result files go'],
  note: ['string', undefined, 'free text kept in every result (what the model is)'],
  'per-request': ['boolean', false, 'keep every request (adapter, lengths, TTFT, e2e) in each result'],
  tag: ['string', undefined, 'device tag in file names (default: from nvidia-smi, e.g. h200, or cpu)'],
  force: ['boolean', false, 'run again even when a result file exists'],
  help: ['boolean', false, 'this text'],
};

/** The runs of the matrix, in order: name, adapter set, and what differs from the defaults. */
export function matrixRuns(v) {
  const big = Number(v['big-cache']);
  const small = Number(v['small-cache']);
  const variants = [
    ['unlimited', {}],
    [`cpu${big}`, { maxLoaded: big }],
    [`cpu${small}`, { maxLoaded: small }],
    [`cpu${small}-overlap`, { maxLoaded: small, overlap: true }],
    [`resident${v.resident}`, { numAdapters: Number(v.resident) }],
  ];
  const sets = ['a', 'b'].map((s) => ({
    set: s,
    count: Number(v[`${s}-adapters`]),
    rank: Number(v[`${s}-rank`]),
    modules: parseModules(v[`${s}-modules`]),
    distinct: v[`${s}-distinct`] === undefined ? Infinity : Number(v[`${s}-distinct`]),
  }));
  return sets.flatMap((set) =>
    variants.map(([name, o]) => ({ name: `${set.set}-${name}${v.capacity ? '-capacity' : ''}`, set, numAdapters: o.numAdapters ?? set.count, ...o })),
  );
}

const setDir = (root, set) => join(root, `r${set.rank}-${set.modules.length === 7 ? 'all' : set.modules.map((m) => m[0]).join('')}-${set.count}`);

function deviceTag() {
  const smi = nvidiaSmi();
  if (!smi) return 'cpu';
  return smi
    .split(',')[0]
    .toLowerCase()
    .replace(/^nvidia\s+/, '')
    .replace(/[^a-z0-9]+/g, '-')
    .replace(/^-|-$/g, '');
}

function main() {
  const { values: v, positionals } = parseTable(OPTIONS, process.argv.slice(2));
  const runs = matrixRuns(v);
  const wanted = v.only ? v.only.split(',').filter(Boolean) : null;
  // An entry names a run, a set (a, b), or a prefix ending in "-" (a-cpu16-).
  const matches = (r, w) => r.name === w || r.name === `${w}-capacity` || r.set.set === w || (w.endsWith('-') && r.name.startsWith(w));
  const chosen = wanted ? runs.filter((r) => wanted.some((w) => matches(r, w))) : runs;
  if (wanted && chosen.length === 0) throw new Error(`--only ${v.only} names none of: ${runs.map((r) => r.name).join(', ')}`);
  if (!v.help && !v.list && (!v.model || !v['adapters-root'])) throw new Error('--model and --adapters-root are required (--help)');
  if (v.help || v.list) {
    if (v.help)
      console.log(
        `usage: node bench/serve-matrix.js --model DIR --adapters-root DIR [options] [-- extra troupe serve flags]\n${optionLines(OPTIONS)}`,
      );
    for (const r of chosen)
      console.log(
        `${r.name}: ${r.numAdapters} adapters of rank ${r.set.rank} on ${r.set.modules.join(',')}, CPU cache ${r.maxLoaded ?? 'unlimited'}${r.overlap ? ', overlap loading' : ''}`,
      );
    return;
  }
  const resultsDir = resolve(v['results-dir']);
  mkdirSync(resultsDir, { recursive: true });
  const tag = v.tag ?? deviceTag();
  const hfConfig = JSON.parse(readFileSync(join(v.model, 'config.json'), 'utf8'));
  const existing = (name) => readdirSync(resultsDir).find((f) => f.endsWith(`-${tag}-serve-lora-${name}.json`));
  const failures = [];
  for (const run of chosen) {
    const prior = existing(run.name);
    if (prior && !v.force) {
      console.log(`\n== ${run.name}: skipped, ${prior} exists (--force runs it again)`);
      continue;
    }
    const dir = setDir(resolve(v['adapters-root']), run.set);
    console.log(`\n== ${run.name}: adapters in ${dir}`);
    const t0 = performance.now();
    const made = makeAdapters({
      hfConfig,
      outDir: dir,
      count: run.numAdapters,
      rank: run.set.rank,
      modules: run.set.modules,
      seed: run.set.rank * 100 + run.set.modules.length,
      distinct: run.set.distinct,
    });
    if (made.written)
      console.log(
        `wrote ${made.written} adapters (${((made.written * made.bytesPerAdapter) / 1e9).toFixed(1)} GB) in ${((performance.now() - t0) / 1000).toFixed(0)} s`,
      );
    const out = join(resultsDir, `${new Date().toISOString().slice(0, 10)}-${tag}-serve-lora-${run.name}.json`);
    const args = [
      join(repo, 'bench', 'serve-lora.js'),
      '--label',
      run.name,
      '--model',
      v.model,
      '--adapters',
      dir,
      '--num-adapters',
      String(run.numAdapters),
      '--max-loras-per-batch',
      v['max-loras-per-batch'],
      '--device',
      v.device,
      '--rate',
      v.rate,
      '--cv',
      v.cv,
      '--alpha',
      v.alpha,
      '--slo',
      v.slo,
      '--seed',
      v.seed,
      '--duration',
      v.duration,
      '--input-len',
      v['input-len'],
      '--output-len',
      v['output-len'],
      '--drain-timeout',
      v['drain-timeout'],
      '--out',
      out,
    ];
    if (run.maxLoaded !== undefined) args.push('--max-loaded-loras', String(run.maxLoaded));
    if (run.overlap) args.push('--enable-lora-overlap-loading');
    const shared = run.numAdapters > run.set.distinct ? `${run.numAdapters} adapter names over ${run.set.distinct} distinct files (links)` : null;
    const note = [v.note, shared].filter(Boolean).join('; ');
    if (note) args.push('--note', note);
    if (v['per-request']) args.push('--per-request');
    if (v.capacity) {
      args.push(
        '--capacity',
        '--probe-duration',
        v['probe-duration'],
        '--probe-drain-timeout',
        v['probe-drain-timeout'],
        '--capacity-start',
        v['capacity-start'] ?? String(Number(v.rate) / 2),
        '--capacity-bisections',
        v['capacity-bisections'],
      );
    }
    if (positionals.length) args.push('--', ...positionals);
    const res = spawnSync(process.execPath, args, { stdio: 'inherit' });
    if (res.status !== 0 || !existsSync(out)) failures.push(`${run.name} (exit ${res.status ?? res.signal})`);
  }
  // The summary covers every run of the matrix done so far, in this call or an earlier one.
  const results = readResults(
    runs
      .map((r) => existing(r.name))
      .filter(Boolean)
      .map((f) => join(resultsDir, f)),
  );
  if (results.length) {
    const table = markdown(results);
    const summary = join(resultsDir, `${tag}-serve-lora-summary.md`);
    writeFileSync(summary, `# serve-lora on ${tag}\n\n${table}\n`);
    console.log(`\n${table}\n\nsummary: ${summary}`);
  }
  if (failures.length) {
    console.error(`failed: ${failures.join(', ')}`);
    process.exitCode = 1;
  }
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  try {
    main();
  } catch (err) {
    console.error(`serve-matrix: ${err.message}`);
    process.exit(1);
  }
}

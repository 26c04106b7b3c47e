// Memory under adapter churn: one adapter name is loaded and unloaded over and over on the
// in-process engine (the demo model on the CPU) while clients keep generating with it, with
// demo-a, demo-b and the base model. Every request's output is checked against the one it gets
// on a quiet engine. RSS and the main thread's heap (after a full collection) are sampled every
// few cycles; the growth figure compares the lowest RSS of the first fifth of the samples after
// the warm-up with the lowest of the last fifth, so the collectors' sawtooth is not read as
// growth while anything kept per cycle is. At the warm-up and every tenth of the run, the live
// heap of every engine thread is read too (the actor threads' from heap snapshots), which is
// what a thread keeps, whatever its collector has not yet given back.
//
//   node bench/churn-memory.js [--cycles 10000] [--warmup N] [--clients 4] [--sample-every N] [--out FILE|-]
//
// Writes bench/results/<date>-cpu-churn-memory.json (or the JSON to stdout with --out -);
// progress goes to stderr. test/adapter-churn.test.ts runs it small.
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { cpus } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';

const root = new URL('..', import.meta.url);
const { createEngine } = await import(new URL('dist/src/index.js', root).href);
const { resolveServeArgs } = await import(new URL('dist/src/cli/serve.js', root).href);
const { makeDemo } = await import(new URL('dist/src/model/demo.js', root).href);

const { values: args } = parseArgs({
  options: {
    cycles: { type: 'string', default: '10000' },
    warmup: { type: 'string' },
    clients: { type: 'string', default: '4' },
    'sample-every': { type: 'string' },
    out: { type: 'string' },
  },
});
const int = (name, value, min) => {
  const n = Number(value);
  if (!Number.isInteger(n) || n < min) throw new Error(`--${name} must be an integer >= ${min}, got ${value}`);
  return n;
};
const CYCLES = int('cycles', args.cycles, 2);
const WARMUP = int('warmup', args.warmup ?? Math.ceil(CYCLES / 10), 0);
const CLIENTS = int('clients', args.clients, 0);
const EVERY = int('sample-every', args['sample-every'] ?? Math.max(1, Math.floor(CYCLES / 200)), 1);
if (WARMUP >= CYCLES) throw new Error(`--warmup (${WARMUP}) must be below --cycles (${CYCLES})`);

// Only the main thread's heap can be collected on demand; without --expose-gc, expose it here.
const gc = globalThis.gc ?? (setFlagsFromString('--expose-gc'), runInNewContext('gc'));
const progress = (msg) => process.stderr.write(`churn-memory: ${msg}\n`);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const MiB = 2 ** 20;

const { options } = resolveServeArgs(['--device', 'cpu', '--log-level', 'error', '--max-loras-per-batch', '3', '--max-loaded-loras', '3']);
if (!existsSync(join(options.modelPath, 'config.json'))) makeDemo(options.modelPath);
const churnPath = options.loraPaths.find((a) => a.name === 'demo-b').path;
const engine = await createEngine(options);

const LORAS = [null, 'demo-a', 'demo-b', 'churn'];
// A request for the churned name between an unload and the next load loads it again (as in
// SGLang), so refusals are not expected; one that says it is not loaded still counts as refused.
const REFUSED = /LoRA adapter 'churn' is not loaded|adapter "churn" is (not loaded|being unloaded)/;
const greedy = (text, lora) =>
  engine.generate({ text, lora, sampling: { maxNewTokens: 4, temperature: 0, ignoreEos: true } }).then((o) => o.outputIds.join());

const prompts = Array.from({ length: CLIENTS }, (_, c) => `client ${c} keeps asking`);
const expected = new Map();
await engine.loadAdapter({ name: 'churn', path: churnPath });
for (const text of prompts) for (const lora of LORAS) expected.set(`${lora}|${text}`, await greedy(text, lora));
await engine.unloadAdapter('churn');

const requests = { ok: 0, okOnChurned: 0, refused: 0, failed: 0 };
const failures = [];
const fail = (msg) => {
  requests.failed++;
  if (failures.length < 20) failures.push(msg);
};
let stop = false;
const clients = prompts.map(async (text, c) => {
  for (let i = c; !stop; i++) {
    const lora = LORAS[i % LORAS.length];
    try {
      const ids = await greedy(text, lora);
      const want = expected.get(`${lora}|${text}`);
      if (ids !== want) fail(`${lora} "${text}": got ${ids}, alone ${want}`);
      else {
        requests.ok++;
        if (lora === 'churn') requests.okOnChurned++;
      }
    } catch (err) {
      if (lora === 'churn' && REFUSED.test(err.message)) requests.refused++;
      else fail(`${lora} "${text}": ${err.message}`);
    }
  }
});

/** Bytes of the live objects (and their array buffers) in a worker's heap; the snapshot collects garbage first. */
async function workerHeapBytes(worker) {
  let text = '';
  for await (const chunk of await worker.getHeapSnapshot()) text += chunk;
  const snap = JSON.parse(text);
  const fields = snap.snapshot.meta.node_fields;
  let bytes = 0;
  for (let i = fields.indexOf('self_size'); i < snap.nodes.length; i += fields.length) bytes += snap.nodes[i];
  return bytes;
}
const liveHeaps = [];
async function liveHeap(cycle) {
  // The buffers a collection frees are counted out by a sweeper that finishes at the next one.
  gc();
  gc();
  const m = process.memoryUsage();
  const threads = { main: m.heapUsed + m.arrayBuffers };
  // The engine keeps its actor threads to itself; a benchmark may look.
  for (const [name, worker] of engine.supervisor.workers) threads[name] = await workerHeapBytes(worker);
  const mib = (v) => Math.round((v / MiB) * 1000) / 1000;
  const total = Object.values(threads).reduce((a, b) => a + b, 0);
  liveHeaps.push({ cycle, totalMiB: mib(total), ...Object.fromEntries(Object.entries(threads).map(([k, v]) => [`${k}MiB`, mib(v)])) });
}

const samples = [];
const t0 = performance.now();
const sample = (cycle) => {
  gc();
  const m = process.memoryUsage();
  const mib = (v) => Math.round((v / MiB) * 100) / 100;
  samples.push({
    cycle,
    seconds: Math.round(performance.now() - t0) / 1000,
    rssMiB: mib(m.rss),
    heapUsedMiB: mib(m.heapUsed),
    heapTotalMiB: mib(m.heapTotal),
    externalMiB: mib(m.external),
    requestsOk: requests.ok,
  });
};

sample(0);
for (let cycle = 1; cycle <= CYCLES; cycle++) {
  // A request may have loaded it again since the last unload.
  await engine.loadAdapter({ name: 'churn', path: churnPath }).catch((err) => {
    if (!/because it is already loaded/.test(err.message)) throw err;
  });
  // Held for a varying while, so requests for it are queued, copied into a slot and run.
  await sleep(5 + (cycle % 4) * 10);
  await engine.unloadAdapter('churn');
  await sleep(cycle % 3);
  if (cycle % EVERY === 0 || cycle === CYCLES) sample(cycle);
  const tenth = Math.max(1, Math.floor(CYCLES / 10));
  if (cycle === WARMUP || (cycle > WARMUP && cycle % tenth === 0) || cycle === CYCLES) await liveHeap(cycle);
  if (cycle % Math.max(EVERY, Math.floor(CYCLES / 20)) === 0) {
    const s = samples.at(-1);
    progress(`${cycle}/${CYCLES} cycles, ${s.seconds.toFixed(0)} s, RSS ${s.rssMiB} MiB, heap ${s.heapUsedMiB} MiB, ${requests.ok} requests ok`);
  }
}
stop = true;
await Promise.all(clients);
// The clients' last requests may have loaded it again.
await engine.unloadAdapter('churn').catch(() => {});
const leftOver = engine.adapters().map((a) => a.name);
const stats = await engine.stats();
await engine.close();

/** Growth after the warm-up: lowest value of the last fifth of the samples minus that of the first fifth. */
function growth(key) {
  const after = samples.filter((s) => s.cycle >= WARMUP);
  const k = Math.max(1, Math.floor(after.length / 5));
  const first = after.slice(0, k);
  const last = after.slice(-k);
  const low = (w) => Math.min(...w.map((s) => s[key]));
  const mid = (w) => w.reduce((a, s) => a + s.cycle, 0) / w.length;
  const mib = low(last) - low(first);
  const values = after.map((s) => s[key]);
  return {
    fromMiB: low(first),
    toMiB: low(last),
    growthMiB: Math.round(mib * 100) / 100,
    kibPerCycle: Math.round(((mib * 1024) / Math.max(1, mid(last) - mid(first))) * 1000) / 1000,
    rangeMiB: Math.round((Math.max(...values) - Math.min(...values)) * 100) / 100,
  };
}

const result = {
  date: new Date().toISOString(),
  cpu: `${cpus()[0]?.model ?? 'unknown'} x ${cpus().length}`,
  node: process.version,
  nodeFlags: process.execArgv,
  model: 'demo (4 layers, hidden 256); churned name "churn" with demo-b weights (rank 16, 7 modules, 1.2 MiB float32)',
  cycles: CYCLES,
  warmupCycles: WARMUP,
  clients: CLIENTS,
  seconds: samples.at(-1).seconds,
  requests,
  failures,
  adaptersAfter: leftOver,
  schedulerAfter: stats,
  growth: {
    rss: growth('rssMiB'),
    heapUsed: growth('heapUsedMiB'),
    liveHeapAllThreads: {
      fromMiB: liveHeaps[0].totalMiB,
      toMiB: liveHeaps.at(-1).totalMiB,
      kibPerCycle: Math.round((((liveHeaps.at(-1).totalMiB - liveHeaps[0].totalMiB) * 1024) / Math.max(1, CYCLES - WARMUP)) * 1000) / 1000,
    },
  },
  liveHeaps,
  samples,
};
const json = JSON.stringify(result, null, 2) + '\n';
if (args.out === '-') process.stdout.write(json);
else {
  const file = args.out ?? new URL(`bench/results/${result.date.slice(0, 10)}-cpu-churn-memory.json`, root).pathname;
  mkdirSync(new URL('bench/results/', root), { recursive: true });
  writeFileSync(file, json);
  progress(`written to ${file}`);
}
const g = result.growth.rss;
progress(
  `${CYCLES} cycles in ${result.seconds.toFixed(0)} s; requests ${requests.ok} ok (${requests.okOnChurned} on the churned name), ` +
    `${requests.refused} refused, ${requests.failed} failed; RSS after cycle ${WARMUP}: ${g.fromMiB} -> ${g.toMiB} MiB ` +
    `(${g.kibPerCycle} KiB/cycle, range ${g.rangeMiB} MiB); live heap of all threads ` +
    `${result.growth.liveHeapAllThreads.fromMiB} -> ${result.growth.liveHeapAllThreads.toMiB} MiB (${result.growth.liveHeapAllThreads.kibPerCycle} KiB/cycle)`,
);
if (requests.failed > 0) process.exitCode = 1;

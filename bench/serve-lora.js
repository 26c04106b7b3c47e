// Serving benchmark for many LoRA adapters, through HTTP as users meet the server, after S-LoRA's
// evaluation: starts `troupe serve` over N adapters named a0000... (bench/make-adapters.js
// writes them), sends an open-loop stream of /generate requests (Gamma arrivals, power-law
// adapter popularity, uniform lengths; bench/serve-workload.js) and reports throughput, TTFT,
// inter-token latency, SLO attainment and the adapter loads and evictions /metrics counted.
//   node bench/serve-lora.js --model DIR --adapters DIR --num-adapters 256 --rate 4 --duration 300 \
//     --out bench/results/run.json [--max-loaded-loras 64] [--capacity] [-- extra troupe serve flags]
// --capacity instead finds the highest rate at which >= 99% of requests meet the TTFT SLO.
// `--help` lists every option.
import { existsSync, mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { setMaxListeners } from 'node:events';
import { adapterName } from './make-adapters.js';
import { adapterActivity, engineShare, request, scrape, streamGenerate, summarize } from './serve-client.js';
import { describeDevice, freePort, startServer } from './serve-server.js';
import { makeWorkload } from './serve-workload.js';
import { searchCapacity } from './serve-capacity.js';
import { inRepo, parseCli, usage } from './serve-options.js';

/**
 * The adapters named at start: all of them, or with --max-loaded-loras the first that many (troupe,
 * like SGLang, refuses more in --lora-paths than the CPU cache holds); registerRest adds the others.
 */
const atStart = (opts, names) => names.slice(0, opts.server.maxLoadedLoras ?? names.length);

export function serverArgs(opts, names) {
  const s = opts.server;
  const args = [
    '--model-path',
    opts.model,
    '--lora-paths',
    ...atStart(opts, names).map((n) => `${n}=${join(opts.adapters, n)}`),
    '--max-loras-per-batch',
    String(s.maxLorasPerBatch),
    '--device',
    s.device,
  ];
  if (s.maxLoadedLoras !== null) args.push('--max-loaded-loras', String(s.maxLoadedLoras));
  if (s.enableLoraOverlapLoading) args.push('--enable-lora-overlap-loading');
  if (s.maxLoraRank !== null) args.push('--max-lora-rank', String(s.maxLoraRank));
  if (s.loraTargetModules) args.push('--lora-target-modules', ...s.loraTargetModules);
  return [...args, ...s.extraArgs];
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/**
 * Registers the adapters left out of --lora-paths through POST /load_lora_adapter, a few at a
 * time; with the CPU cache full the server only checks each config, and reads the weights when a
 * request names the adapter. Returns the seconds it took.
 */
async function registerRest(base, opts, names) {
  const rest = names.slice(atStart(opts, names).length);
  if (rest.length === 0) return 0;
  const t0 = performance.now();
  let next = 0;
  let lastPrint = t0;
  const worker = async () => {
    while (next < rest.length) {
      const name = rest[next++];
      const res = await request(base, '/load_lora_adapter', {
        method: 'POST',
        body: { lora_name: name, lora_path: join(opts.adapters, name) },
        timeoutMs: 300_000,
      });
      if (res.status !== 200) throw new Error(`POST /load_lora_adapter ${name}: HTTP ${res.status}: ${res.body.slice(0, 300)}`);
      if (performance.now() - lastPrint > 5000) {
        lastPrint = performance.now();
        console.log(`registering adapters at run time: ${next}/${rest.length}`);
      }
    }
  };
  await Promise.all(Array.from({ length: 4 }, worker));
  const seconds = (performance.now() - t0) / 1000;
  console.log(`registered ${rest.length} more adapters through /load_lora_adapter in ${seconds.toFixed(1)} s`);
  return seconds;
}

/**
 * Sends the workload open-loop (each request at its arrival time, whatever is still running) and
 * waits for every answer, cutting those unfinished drainTimeout seconds after the last arrival.
 */
export async function runLoad(base, workload, names, { slo, drainTimeout, progressInterval, tag = '' }) {
  const records = new Array(workload.length);
  const pending = [];
  const cut = new AbortController();
  // Every request in flight listens to it.
  setMaxListeners(Infinity, cut.signal);
  let finished = 0;
  let failed = 0;
  let lagSum = 0;
  let lagMax = 0;
  const t0 = performance.now();
  const progress = setInterval(() => {
    const done = records.filter(Boolean);
    const s = summarize(done, (performance.now() - t0) / 1000, slo);
    console.log(
      `${tag}t=${((performance.now() - t0) / 1000).toFixed(0)} s: sent ${pending.length}/${workload.length}, finished ${finished}, running ${pending.length - finished}, failed ${failed}; TTFT p50 ${s.ttft.p50 ?? '-'} s p99 ${s.ttft.p99 ?? '-'} s, SLO ${s.sloAttainment ?? '-'}`,
    );
  }, progressInterval * 1000);
  for (const w of workload) {
    const wait = t0 + w.at * 1000 - performance.now();
    if (wait > 0) await sleep(wait);
    const lag = Math.max(0, performance.now() - (t0 + w.at * 1000));
    lagSum += lag;
    lagMax = Math.max(lagMax, lag);
    const body = {
      input_ids: w.inputIds,
      sampling_params: { max_new_tokens: w.maxNewTokens, ignore_eos: true, temperature: 0 },
      lora_path: names[w.adapter],
      stream: true,
    };
    const sentAt = (performance.now() - t0) / 1000;
    pending.push(
      streamGenerate(base, body, cut.signal).then((r) => {
        records[w.index] = { ...r, sentAt, index: w.index, adapter: names[w.adapter], promptLen: w.inputIds.length, maxNewTokens: w.maxNewTokens };
        finished++;
        if (!r.ok) failed++;
      }),
    );
  }
  const drain = setTimeout(() => cut.abort(), drainTimeout * 1000);
  await Promise.all(pending);
  clearTimeout(drain);
  clearInterval(progress);
  const lastEnd = records.reduce((m, r) => Math.max(m, r.sentAt + r.e2e), 0);
  return { records, elapsed: lastEnd, lagMs: { mean: +(lagSum / Math.max(1, workload.length)).toFixed(3), max: +lagMax.toFixed(3) } };
}

function errorCounts(records) {
  const counts = new Map();
  for (const r of records) if (!r.ok) counts.set(r.error, (counts.get(r.error) ?? 0) + 1);
  return [...counts]
    .sort((a, b) => b[1] - a[1])
    .slice(0, 10)
    .map(([message, count]) => ({ message, count }));
}

function workloadStats(workload, adapters) {
  const mean = (xs) => (xs.length ? +(xs.reduce((a, b) => a + b, 0) / xs.length).toFixed(2) : null);
  const byRank = new Map();
  for (const w of workload) byRank.set(w.rank, (byRank.get(w.rank) ?? 0) + 1);
  const top = (k) => +([...byRank].filter(([r]) => r < k).reduce((s, [, c]) => s + c, 0) / Math.max(1, workload.length)).toFixed(4);
  return {
    requests: workload.length,
    meanPromptTokens: mean(workload.map((w) => w.inputIds.length)),
    meanOutputTokens: mean(workload.map((w) => w.maxNewTokens)),
    distinctAdapters: byRank.size,
    adaptersServed: adapters,
    shareOfTop8: top(8),
    shareOfTop64: top(64),
  };
}

/** One measured run over `workload`: the summary, the adapter activity, the errors. */
export async function measure(base, workload, names, o) {
  const before = await scrape(base);
  const load = await runLoad(base, workload, names, o);
  const after = await scrape(base);
  return {
    summary: summarize(load.records, load.elapsed, o.slo),
    adapterActivity: adapterActivity(before, after),
    // The engine's steps over the run: its decode step time, its histogram and the LoRA pool slots
    // the steps reached (what a pool larger than the batches costs them).
    engineUse: engineShare(before, after, load.elapsed * 1000),
    workload: workloadStats(workload, names.length),
    driverLagMs: load.lagMs,
    errors: errorCounts(load.records),
    records: load.records,
  };
}

/** Rank, modules and size of the set's adapters, as the first one's files say. */
function describeAdapters(dir, first) {
  const c = JSON.parse(readFileSync(join(dir, first, 'adapter_config.json'), 'utf8'));
  return { rank: c.r, alpha: c.lora_alpha, targetModules: c.target_modules, bytesEach: statSync(join(dir, first, 'adapter_model.safetensors')).size };
}

const compactRecords = (records) =>
  records.map((r) => ({
    i: r.index,
    adapter: r.adapter,
    prompt: r.promptLen,
    out: r.outputTokens,
    sentAt: +r.sentAt.toFixed(3),
    ttft: r.ttft === null ? null : +r.ttft.toFixed(4),
    e2e: +r.e2e.toFixed(4),
    ok: r.ok,
  }));

/** Everything between a healthy server and its stop: registration, the load, the result object. */
async function benchmark(base, server, opts, names, args) {
  const registerSeconds = server ? await registerRest(base, opts, names) : 0;
  const command =
    args === null
      ? null
      : `node bin/troupe.js serve ${args.length > 40 ? `[${args.length} arguments; --lora-paths lists ${atStart(opts, names).length} adapters]` : args.join(' ')}`;
  const adapterSet = opts.adapters ? describeAdapters(inRepo(opts.adapters), names[0]) : null;
  const result = {
    benchmark: 'serve-lora',
    date: new Date().toISOString(),
    label: opts.label,
    note: opts.note,
    device: await describeDevice(base, server?.info.engineLine ?? null),
    config: { ...opts, adapterSet, serverCommand: command },
    startupSeconds: server?.startupSeconds ?? null,
    registerSeconds,
  };
  const o = { slo: opts.slo, drainTimeout: opts.drainTimeout, progressInterval: opts.progressInterval };
  if (opts.capacity) {
    result.capacity = await searchCapacity(opts.capacity, async (rate, i) => {
      const workload = makeWorkload({ ...opts.workload, rate, duration: opts.capacity.probeDuration, requests: null, adapters: names.length });
      console.log(`probe ${i + 1}: ${rate} req/s, ${workload.length} requests over ${opts.capacity.probeDuration} s`);
      const m = await measure(base, workload, names, { ...o, drainTimeout: opts.capacity.probeDrainTimeout, tag: `  probe ${i + 1} ` });
      delete m.records;
      return m;
    });
  } else {
    const workload = makeWorkload({ ...opts.workload, adapters: names.length });
    console.log(`sending ${workload.length} requests over ${workload.at(-1)?.at.toFixed(0) ?? 0} s`);
    const m = await measure(base, workload, names, { ...o, tag: '  ' });
    if (opts.perRequest) m.requests = compactRecords(m.records);
    delete m.records;
    Object.assign(result, m);
  }
  return result;
}

async function main() {
  const opts = parseCli(process.argv.slice(2));
  if (!opts) return console.log(usage());
  const names = Array.from({ length: opts.numAdapters }, (_, i) => adapterName(i));
  if (opts.adapters) {
    const missing = names.filter((n) => !existsSync(join(inRepo(opts.adapters), n, 'adapter_model.safetensors')));
    if (missing.length)
      throw new Error(`${missing.length} adapter(s) missing under ${opts.adapters}, first ${missing[0]}; write them with bench/make-adapters.js`);
  }
  mkdirSync(dirname(inRepo(opts.out)), { recursive: true });
  const args = opts.base ? null : serverArgs(opts, names);
  console.log(
    `serve-lora${opts.label ? ` ${opts.label}` : ''}: ${names.length} adapters, rate ${opts.workload.rate} req/s, cv ${opts.workload.cv}, alpha ${opts.workload.alpha}, ${opts.capacity ? 'capacity search' : `${opts.workload.duration ?? '-'} s / ${opts.workload.requests ?? '-'} requests`}`,
  );
  let server = null;
  let base = opts.base;
  if (!base) {
    server = await startServer({
      args,
      host: opts.host,
      port: opts.port ?? (await freePort()),
      logFile: inRepo(opts.serverLog),
      startupTimeout: opts.startupTimeout,
      adapterCount: names.length,
    });
    base = server.base;
  }
  let result;
  try {
    result = await benchmark(base, server, opts, names, args);
  } finally {
    const exit = await server?.stop();
    if (exit && result) result.serverExit = exit;
  }
  writeFileSync(inRepo(opts.out), JSON.stringify(result, null, 2) + '\n');
  report(result);
  console.log(`written to ${opts.out}`);
}

function report(r) {
  const fixed = (x) => (x === null || x === undefined ? 'n/a' : x.toFixed(2));
  const line = (s, a, e) =>
    `${s.requests} requests, ${s.failed} failed; ${s.requestThroughput} req/s, ${s.outputTokenThroughput} output tokens/s; TTFT p50 ${s.ttft.p50} p90 ${s.ttft.p90} p99 ${s.ttft.p99} s; ITL p50 ${s.itl.p50} p99 ${s.itl.p99} s; SLO (${s.sloSeconds} s) ${(s.sloAttainment * 100).toFixed(1)}%; loads ${JSON.stringify(a.loads)}, evictions ${JSON.stringify(a.evictions)}` +
    (e ? `; decode steps ${fixed(e.decodeStepMs)} ms, reaching ${fixed(e.decodeStepLoraSlots)} pool slots on average` : '');
  if (r.summary) console.log(line(r.summary, r.adapterActivity, r.engineUse));
  if (r.capacity) {
    for (const p of r.capacity.probes) console.log(`  ${p.rate} req/s: ${line(p.summary, p.adapterActivity, p.engineUse)}`);
    console.log(`capacity: ${r.capacity.rate} req/s (${r.capacity.bound}) at >= ${r.capacity.target * 100}% within ${r.config.slo} s`);
  }
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  main().catch((err) => {
    console.error(`serve-lora: ${err.message}`);
    process.exit(1);
  });
}

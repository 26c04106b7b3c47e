// Tensor-parallel serving through HTTP: starts `troupe serve --tp-size 2` with 8 LoRA adapters
// and sends streamed /generate requests (PROMPT random token ids, OUTPUT tokens each, greedy,
// ignore_eos) at each concurrency in turn, a closed loop: every stream sends its next request
// when its last one ends. Per concurrency it reports what the client sees (inter-token latency
// and TTFT medians and p99, output tokens/s) and, from /metrics, the engine's own mean step
// time, set against the step's HBM roofline over the ranks' GPUs together (each rank reads its
// share of the weights, plus the KV cache it attends over, from its own GPU).
//   node bench/serve-tp.js --model DIR --adapters DIR --out FILE [options] [-- extra troupe serve flags]
// e.g. `-- --disable-custom-all-reduce` for the NCCL-only collective. ADAPTERS holds r16-0..r16-7
// (bench/gpu_peft.py) or a0000... (bench/make-adapters.js). `npm run build` first.
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { engineShare, request, scrape, streamGenerate, summarize } from './serve-client.js';
import { describeDevice, freePort, startServer } from './serve-server.js';
import { optionLines, parseTable, pathArg } from './serve-options.js';
import { randomTokenSource } from './gpu-steps.js';
import { adapterNames, hbmBandwidth, kvBytesPerToken, modelShape, readMs, weightBytesPerRank } from './tp-bench.js';

const root = new URL('..', import.meta.url);
const dist = (p) => import(new URL(`dist/src/${p}`, root).href);
const { openCheckpoint } = await dist('model/checkpoint.js');
const { planTensorParallel } = await dist('model/tensor-parallel.js');

const OPTIONS = {
  model: ['string', undefined, 'model directory'],
  adapters: ['string', undefined, 'directory of the adapters (r16-0..r16-7, or a0000...)'],
  'adapter-names': ['string', undefined, 'the 8 adapter directories to serve, comma-separated (default: found in --adapters)'],
  'adapter-mix': ['string', 'all', 'requests with an adapter (round-robin over the 8): all, half or none'],
  'tp-size': ['string', '2', 'troupe serve --tp-size'],
  concurrency: ['string', '1,32', 'concurrent streams, one level after the other'],
  requests: ['string', undefined, 'requests per level (default: 4 x the concurrency, at least 8)'],
  prompt: ['string', '512', 'prompt length in tokens'],
  output: ['string', '128', 'tokens generated per request'],
  'startup-timeout': ['string', '400', 'seconds to wait for /health (loading a 140 GB checkpoint takes minutes)'],
  'hbm-tbps': ['string', undefined, 'HBM bandwidth per GPU for the roofline, TB/s (default: from the device name)'],
  out: ['string', undefined, 'JSON result file'],
  'server-log': ['string', undefined, "the server's log (default: next to --out, .server.log)"],
  help: ['boolean', false, 'this text'],
};
const { values: v, positionals: extra } = parseTable(OPTIONS, process.argv.slice(2));
if (v.help || !v.model || !v.out || (!v.adapters && v['adapter-mix'] !== 'none')) {
  console.log(`usage: node bench/serve-tp.js --model DIR --adapters DIR --out FILE [options] [-- extra troupe serve flags]\n${optionLines(OPTIONS)}`);
  process.exit(v.help ? 0 : 2);
}
const posInt = (name) => {
  const xs = v[name].split(',').map(Number);
  if (!xs.every((x) => Number.isInteger(x) && x > 0)) throw new Error(`--${name} takes positive integers, got ${v[name]}`);
  return xs;
};
const levels = posInt('concurrency');
const [TP] = posInt('tp-size');
const [PROMPT] = posInt('prompt');
const [OUTPUT] = posInt('output');
const [STARTUP] = posInt('startup-timeout');
const perLevel = (c) => (v.requests ? posInt('requests')[0] : Math.max(8, 4 * c));
const MIX = { all: (k) => k % 8, half: (k) => (k % 2 ? (k >> 1) % 8 : null), none: () => null }[v['adapter-mix']];
if (!MIX) throw new Error(`--adapter-mix takes all, half or none, got ${v['adapter-mix']}`);

const ckpt = openCheckpoint(v.model);
const names = v.adapters ? adapterNames(v.adapters, 8, v['adapter-names']) : [];
const serveArgs = [
  '--model-path',
  v.model,
  '--tp-size',
  String(TP),
  // Without adapters (--adapter-mix none and no --adapters) the server runs the base model alone.
  ...(names.length
    ? ['--enable-lora', '--lora-paths', ...names.map((n) => `${n}=${join(v.adapters, n)}`), '--max-loras-per-batch', '8', '--max-lora-rank', '16']
    : []),
  ...extra,
];
const tokens = randomTokenSource(13);
const prompt = (len) => tokens(len).map((t) => t % ckpt.config.vocabSize);
const body = (k, promptLen, output) => {
  const a = MIX(k);
  return {
    input_ids: prompt(promptLen),
    sampling_params: { max_new_tokens: output, temperature: 0, ignore_eos: true },
    stream: true,
    ...(a === null || names.length === 0 ? {} : { lora_path: names[a] }),
  };
};

/** `n` requests over `c` streams; each stream sends its next request when its last one ends. */
async function closedLoop(base, c, n, make) {
  const records = new Array(n);
  let next = 0;
  let done = 0;
  const t0 = performance.now();
  const progress = setInterval(() => console.log(`  ${done}/${n} requests done, ${((performance.now() - t0) / 1000).toFixed(0)} s`), 10_000);
  try {
    const stream = async () => {
      while (next < n) {
        const k = next++;
        records[k] = await streamGenerate(base, make(k));
        done++;
      }
    };
    await Promise.all(Array.from({ length: Math.min(c, n) }, stream));
  } finally {
    clearInterval(progress);
  }
  return { records, elapsed: (performance.now() - t0) / 1000 };
}

const out = v.out;
const server = await startServer({
  args: serveArgs,
  host: '127.0.0.1',
  port: await freePort(),
  logFile: v['server-log'] ?? out.replace(/\.json$/, '') + '.server.log',
  startupTimeout: STARTUP,
  adapterCount: names.length,
});
let result;
let failed = 0;
try {
  const device = await describeDevice(server.base, server.info.engineLine);
  const infoRes = await request(server.base, '/get_server_info');
  const info = infoRes.status === 200 ? JSON.parse(infoRes.body) : {};
  const tp = info.tp_size ?? TP;
  const collective = info.internal_states?.[0]?.tp_collective ?? null;
  console.log(`serving on ${device.name}, tp ${tp}, collective ${collective}`);

  // Warm-up: every adapter into its slot, and CUDA graphs captured for the batch sizes the
  // levels meet (requests of different lengths end one by one, so the batch passes every size).
  const most = Math.max(...levels);
  const warmN = Math.max(most, 16);
  console.log(`warm-up: ${warmN} short requests, ${most} at a time`);
  const warm = await closedLoop(server.base, most, warmN, (k) => body(k, 32, 8 + 4 * (k % 32)));
  if (warm.records.some((r) => !r.ok)) throw new Error(`warm-up failed: ${warm.records.find((r) => !r.ok).error}`);

  const c = ckpt.config;
  const bw = hbmBandwidth(device.name ?? '', v['hbm-tbps']);
  const shards = planTensorParallel(c, tp);
  const weights = weightBytesPerRank(ckpt.tensors, c, shards);
  const kvPerToken = kvBytesPerToken(c, shards[0]);
  const runs = [];
  for (const conc of levels) {
    const n = perLevel(conc);
    console.log(`concurrency ${conc}: ${n} requests of ${PROMPT} + ${OUTPUT} tokens`);
    const before = await scrape(server.base);
    const { records, elapsed } = await closedLoop(server.base, conc, n, (k) => body(k, PROMPT, OUTPUT));
    const engine = engineShare(before, await scrape(server.base), elapsed * 1000);
    const s = summarize(records, elapsed, Infinity);
    failed += s.failed;
    if (s.succeeded === 0) {
      console.log(`  every request failed: ${records[0].error}`);
      runs.push({ concurrency: conc, requests: n, failed: n, firstError: records[0].error });
      continue;
    }
    // A decode step reads every rank's weights and, on average, the KV of half the output on top of the prompt.
    const kvBytes = conc * (PROMPT + OUTPUT / 2) * kvPerToken;
    const run = {
      concurrency: conc,
      requests: n,
      failed: s.failed,
      ...(s.failed ? { firstError: records.find((r) => !r.ok).error } : {}),
      elapsedSeconds: s.elapsedSeconds,
      outputTokensPerS: s.outputTokenThroughput,
      itlMs: { p50: s.itl.p50 * 1000, p99: s.itl.p99 * 1000 },
      ttftMs: { p50: s.ttft.p50 * 1000, p99: s.ttft.p99 * 1000 },
      engine,
      roofline: { weightsMs: readMs(weights, bw.tbps), withKvMs: readMs(weights + kvBytes, bw.tbps) },
    };
    runs.push(run);
    console.log(
      `  ITL p50 ${run.itlMs.p50.toFixed(2)} ms, p99 ${run.itlMs.p99.toFixed(2)} ms; TTFT p50 ${run.ttftMs.p50.toFixed(0)} ms, p99 ${run.ttftMs.p99.toFixed(0)} ms; ` +
        `${run.outputTokensPerS.toFixed(0)} output tokens/s; engine step ${engine.stepMs.toFixed(2)} ms (${engine.steps} steps, busy ${(100 * engine.busy).toFixed(0)}%)` +
        (bw.tbps ? `; roofline ${run.roofline.weightsMs.toFixed(2)} ms (${run.roofline.withKvMs.toFixed(2)} with KV)` : '') +
        (s.failed ? `; ${s.failed} FAILED: ${run.firstError}` : ''),
    );
  }
  result = {
    benchmark: 'serve-tp',
    date: new Date().toISOString(),
    device: { gpu: device.name, nvidiaSmi: device.nvidiaSmi, engine: device.engine, cpu: device.cpu },
    model: { dir: pathArg(v.model), ...modelShape(c, ckpt.tensors) },
    server: {
      args: serveArgs,
      tpSize: tp,
      collective,
      startupSeconds: +server.startupSeconds.toFixed(1),
      maxTotalTokens: info.max_total_num_tokens ?? null,
      version: info.version ?? null,
    },
    adapters: names,
    adapterMix: v['adapter-mix'],
    prompt: PROMPT,
    output: OUTPUT,
    roofline: { hbmTBps: bw.tbps, hbmSource: bw.source, gpus: tp, weightBytesPerRank: weights, kvBytesPerTokenPerRank: kvPerToken },
    runs,
  };
} finally {
  await server.stop(60);
}
writeFileSync(out, JSON.stringify(result, null, 2) + '\n');
console.log(`written to ${out}`);
if (failed > 0) process.exitCode = 1;

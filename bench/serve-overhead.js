// What serving through HTTP adds to a decode step: STREAMS concurrent streamed /generate requests
// on the base model (prompts of CONTEXT token ids, OUTPUT tokens each, greedy, ignore_eos), their
// inter-token latency at the client, against the same decode step run alone through the native
// addon: STREAMS rows in an engine built with the options `troupe serve` would build, the median
// of 20 steps. The step alone is timed over the context of the middle timed token,
// CONTEXT + OUTPUT / 2 (the served steps' contexts grow from CONTEXT to CONTEXT + OUTPUT, and
// attention reads them all), and over CONTEXT as well. The gap is the host's share: the scheduler
// and executor threads, their messages, detokenizing and the SSE stream. /metrics, read before
// and after the streams, also says how busy the server's engine was, how long its decode steps
// took, and how long it stood idle before each step sent ahead (engineUse).
//   node bench/serve-overhead.js [--model DIR] [--streams 32] [--context 512] [--output 128]
//     [--device auto] [--sampling JSON] [--out FILE] [-- extra troupe serve flags]
// --sampling adds sampling_params to every request (e.g. '{"frequency_penalty":0.5}': penalized
// rows sample past the greedy path; the step alone stays greedy).
// Without --model, the generated demo model (demo-model/, written when missing). `npm run build`
// first. Writes bench/results/<date>-<tag>-serve-overhead.json (tag: the GPU, e.g. h200, or cpu).
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { cpus } from 'node:os';
import { join } from 'node:path';
import { engineShare, percentile, scrape, streamGenerate } from './serve-client.js';
import { freePort, nvidiaSmi, startServer } from './serve-server.js';
import { optionLines, parseTable, pathArg } from './serve-options.js';
import { loraWorkload, randomTokenSource } from './gpu-steps.js';

const root = new URL('..', import.meta.url);
const dist = (p) => import(new URL(`dist/src/${p}`, root).href);
const { loadNative } = await dist('engine/native.js');
const { openCheckpoint } = await dist('model/checkpoint.js');
const { resolveServeArgs } = await dist('cli/serve.js');
const { chooseDevice, planEngine } = await dist('actors/plan.js');
const { makeDemo } = await dist('model/demo.js');

const OPTIONS = {
  model: ['string', undefined, 'model directory (default: the generated demo model)'],
  streams: ['string', '32', 'concurrent streamed requests, and rows of the step timed alone'],
  context: ['string', '512', 'prompt length in tokens'],
  output: ['string', '128', 'tokens generated per request'],
  device: ['string', 'auto', 'troupe serve --device'],
  sampling: ['string', '{}', 'sampling_params (JSON) added to every request'],
  out: ['string', undefined, 'JSON result file'],
  help: ['boolean', false, 'this text'],
};
const { values: v, positionals: extra } = parseTable(OPTIONS, process.argv.slice(2));
if (v.help) {
  console.log(`usage: node bench/serve-overhead.js [options] [-- extra troupe serve flags]\n${optionLines(OPTIONS)}`);
  process.exit(0);
}
const STREAMS = Number(v.streams);
const CONTEXT = Number(v.context);
const OUTPUT = Number(v.output);
for (const [name, n] of [
  ['streams', STREAMS],
  ['context', CONTEXT],
  ['output', OUTPUT],
]) {
  if (!Number.isInteger(n) || n < 1) throw new Error(`--${name} must be a positive integer, got ${v[name]}`);
}

let sampling;
try {
  sampling = JSON.parse(v.sampling);
} catch (e) {
  throw new Error(`--sampling must be a JSON object of sampling_params: ${e.message}`, { cause: e });
}
if (sampling === null || typeof sampling !== 'object' || Array.isArray(sampling))
  throw new Error(`--sampling must be a JSON object, got ${v.sampling}`);

const serveArgs = [...(v.model ? ['--model-path', v.model] : []), '--device', v.device, '--log-level', 'warning', ...extra];
const { options } = resolveServeArgs(serveArgs);
if (!v.model && !existsSync(join(options.modelPath, 'config.json'))) makeDemo(options.modelPath);
const ckpt = openCheckpoint(options.modelPath);
const native = loadNative();
const device = chooseDevice(options.device, native, () => {});
const log = (level, msg) => level !== 'debug' && level !== 'info' && console.log(msg);
const tokens = randomTokenSource(11);
const prompts = Array.from({ length: STREAMS }, () => tokens(CONTEXT).map((t) => t % ckpt.config.vocabSize));

// ---- the step alone ------------------------------------------------------------------------
/** The median decode step of STREAMS rows over each of `contexts`, in one engine (its weights load once). */
async function stepAlone(contexts) {
  const plan = planEngine(options, ckpt.config, device, [], log);
  const workloads = contexts.map((context) => loraWorkload({ rows: STREAMS, context, block: plan.engine.blockSize, vocab: ckpt.config.vocabSize }));
  const kvBlocks = Math.max(plan.engine.kvBlocks, ...workloads.map((w) => w.kvBlocks));
  const h = native.createEngine(ckpt.config, ckpt.tensors, { ...plan.engine, kvBlocks });
  try {
    const step = (b) => native.step(h, b);
    const ms = [];
    // Each workload fills its own context before its decode steps, over the blocks the one before used.
    for (const w of workloads) {
      await w.fillContext(step);
      ms.push(await w.decode(step, 0));
    }
    return { ms, info: native.engineInfo(h) };
  } finally {
    native.destroyEngine(h);
  }
}

const MID_CONTEXT = CONTEXT + Math.floor(OUTPUT / 2);
const timed = await stepAlone([MID_CONTEXT, CONTEXT]);
const alone = { ms: timed.ms[0], info: timed.info };
console.log(`step alone, ${STREAMS} rows over ${MID_CONTEXT} tokens: ${alone.ms.toFixed(2)} ms (${alone.info.deviceName})`);
const aloneAtPrompt = { ms: timed.ms[1] };
console.log(`step alone, ${STREAMS} rows over ${CONTEXT} tokens: ${aloneAtPrompt.ms.toFixed(2)} ms`);

// ---- through HTTP --------------------------------------------------------------------------
const port = await freePort();
mkdirSync(new URL('bench/results/', root), { recursive: true });
const gpu = nvidiaSmi();
const tag = gpu ? (/H200/.test(gpu) ? 'h200' : /H100/.test(gpu) ? 'h100' : 'gpu') : 'cpu';
const date = new Date().toISOString();
const out = v.out ?? new URL(`bench/results/${date.slice(0, 10)}-${tag}-serve-overhead.json`, root).pathname;
const server = await startServer({
  // The model the step ran on, named: without --model-path the CLI would serve the trained demo.
  args: ['--model-path', options.modelPath, '--device', v.device, ...extra],
  host: '127.0.0.1',
  port,
  logFile: out.replace(/\.json$/, '.server.log'),
  startupTimeout: 900,
  adapterCount: 0,
});
let results;
let engineUse;
try {
  const body = (ids) => ({
    input_ids: ids,
    sampling_params: { max_new_tokens: OUTPUT, temperature: 0, ignore_eos: true, ...sampling },
    stream: true,
  });
  await streamGenerate(server.base, body(prompts[0].slice(0, 16))); // warm-up
  const before = await scrape(server.base);
  const t0 = performance.now();
  results = await Promise.all(prompts.map((p) => streamGenerate(server.base, body(p))));
  const wallMs = performance.now() - t0;
  engineUse = engineShare(before, await scrape(server.base), wallMs);
} finally {
  await server.stop(30);
}
const failed = results.filter((r) => !r.ok);
if (failed.length > 0) throw new Error(`${failed.length} requests failed: ${failed[0].error}`);
// Each stream's tokens after the last stream's first: the steps where every row decodes.
const allDecoding = Math.max(...results.map((r) => r.ttft));
const itls = results.flatMap((r) => {
  let t = r.ttft;
  return r.itls.filter((x) => ((t += x), t > allDecoding));
});
const itlMs = percentile(itls, 50) * 1000;
console.log(`through HTTP: inter-token p50 ${itlMs.toFixed(2)} ms, ${((itlMs / alone.ms - 1) * 100).toFixed(1)}% over the step alone`);
console.log(
  `engine busy ${(engineUse.busy * 100).toFixed(1)}% of the streams' time: ${engineUse.steps} steps (${engineUse.aheadSteps} scheduled ahead), ` +
    `${engineUse.stepMs.toFixed(2)} ms in the engine and ${engineUse.gapMs.toFixed(2)} ms between steps on average`,
);
const fixed = (x) => (x === null ? '-' : x.toFixed(2));
console.log(
  `decode steps in the server: ${fixed(engineUse.decodeStepMs)} ms (${engineUse.decodeSteps}); idle before each step sent ahead: ${fixed(engineUse.waitMs)} ms`,
);
const hist = engineUse.decodeStepBuckets;
if (hist)
  console.log(
    `decode steps by time: half within ${fixed(hist.p50UpToMs)} ms, 90% within ${fixed(hist.p90UpToMs)}, 99% within ${fixed(hist.p99UpToMs)}; ${hist.over20Ms} of ${hist.steps} over 20 ms`,
  );

const result = {
  benchmark: 'serve-overhead',
  date,
  device: gpu ?? `cpu: ${cpus()[0]?.model ?? 'unknown'} x ${cpus().length}`,
  engine: alone.info,
  model: pathArg(options.modelPath),
  streams: STREAMS,
  context: CONTEXT,
  output: OUTPUT,
  sampling,
  serveArgs,
  stepAloneMs: alone.ms,
  stepAloneContext: MID_CONTEXT,
  stepAloneAtPromptMs: aloneAtPrompt.ms,
  http: { itlP50Ms: itlMs, itlP90Ms: percentile(itls, 90) * 1000, ttftMaxS: allDecoding },
  overHttp: itlMs / alone.ms - 1,
  engineUse,
};
writeFileSync(out, JSON.stringify(result, null, 2) + '\n');
console.log(`written to ${out}`);

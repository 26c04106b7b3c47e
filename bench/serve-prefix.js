// What the prefix cache saves through HTTP: REQUESTS streamed /generate requests that share a
// SYSTEM-token beginning (a chat's system prompt) and end in QUESTION tokens of their own, sent
// CONCURRENCY at a time, to a server with the prefix cache and to the same server started with
// --disable-radix-cache (the peer, in the same run): time to first token, the requests' wall
// time, and the share of prompt tokens the cache served (from /metrics).
//   node bench/serve-prefix.js [--model DIR] [--system 1024] [--question 64] [--output 32]
//     [--requests 64] [--concurrency 16] [--device auto] [--out FILE] [-- extra troupe serve flags]
// Without --model, the generated demo model (demo-model/, written when missing). `npm run build`
// first. Writes bench/results/<date>-<tag>-serve-prefix.json (tag: the GPU, e.g. h200, or cpu).
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { cpus } from 'node:os';
import { join } from 'node:path';
import { percentile, scrape, streamGenerate, sumBy } from './serve-client.js';
import { freePort, nvidiaSmi, startServer } from './serve-server.js';
import { optionLines, parseTable, pathArg } from './serve-options.js';
import { randomTokenSource } from './gpu-steps.js';

const root = new URL('..', import.meta.url);
const dist = (p) => import(new URL(`dist/src/${p}`, root).href);
const { openCheckpoint } = await dist('model/checkpoint.js');
const { resolveServeArgs } = await dist('cli/serve.js');
const { makeDemo } = await dist('model/demo.js');

const OPTIONS = {
  model: ['string', undefined, 'model directory (default: the generated demo model)'],
  system: ['string', '1024', 'tokens every prompt begins with'],
  question: ['string', '64', "tokens of each prompt's own ending"],
  output: ['string', '32', 'tokens generated per request'],
  requests: ['string', '64', 'requests in all'],
  concurrency: ['string', '16', 'requests in flight at once'],
  device: ['string', 'auto', 'troupe serve --device'],
  out: ['string', undefined, 'JSON result file'],
  help: ['boolean', false, 'this text'],
};
const { values: v, positionals: extra } = parseTable(OPTIONS, process.argv.slice(2));
if (v.help) {
  console.log(`usage: node bench/serve-prefix.js [options] [-- extra troupe serve flags]\n${optionLines(OPTIONS)}`);
  process.exit(0);
}
const n = {};
for (const name of ['system', 'question', 'output', 'requests', 'concurrency']) {
  n[name] = Number(v[name]);
  if (!Number.isInteger(n[name]) || n[name] < 1) throw new Error(`--${name} must be a positive integer, got ${v[name]}`);
}

const serveArgs = [...(v.model ? ['--model-path', v.model] : []), '--device', v.device, '--log-level', 'warning', ...extra];
const { options } = resolveServeArgs(serveArgs);
if (!v.model && !existsSync(join(options.modelPath, 'config.json'))) makeDemo(options.modelPath);
const vocab = openCheckpoint(options.modelPath).config.vocabSize;
const tokens = randomTokenSource(17);
const ids = (count) => tokens(count).map((t) => t % vocab);
const system = ids(n.system);
const prompts = Array.from({ length: n.requests }, () => [...system, ...ids(n.question)]);

const gpu = nvidiaSmi();
const tag = gpu ? (/H200/.test(gpu) ? 'h200' : /H100/.test(gpu) ? 'h100' : 'gpu') : 'cpu';
const date = new Date().toISOString();
mkdirSync(new URL('bench/results/', root), { recursive: true });
const out = v.out ?? new URL(`bench/results/${date.slice(0, 10)}-${tag}-serve-prefix.json`, root).pathname;

/** Serves every prompt through one server started with `flags`; TTFT and wall time, and what /metrics counted. */
async function run(label, flags) {
  const server = await startServer({
    args: ['--model-path', options.modelPath, '--device', v.device, ...extra, ...flags],
    host: '127.0.0.1',
    port: await freePort(),
    logFile: out.replace(/\.json$/, `.${label}.server.log`),
    startupTimeout: 900,
    adapterCount: 0,
  });
  try {
    const body = (p) => ({ input_ids: p, sampling_params: { max_new_tokens: n.output, temperature: 0, ignore_eos: true }, stream: true });
    await streamGenerate(server.base, body(ids(16))); // warm-up, sharing nothing with the prompts
    const before = await scrape(server.base);
    const results = [];
    let next = 0;
    const t0 = performance.now();
    const worker = async () => {
      while (next < prompts.length) results.push(await streamGenerate(server.base, body(prompts[next++])));
    };
    await Promise.all(Array.from({ length: n.concurrency }, worker));
    const wallS = (performance.now() - t0) / 1000;
    const after = await scrape(server.base);
    const failed = results.filter((r) => !r.ok);
    if (failed.length > 0) throw new Error(`${label}: ${failed.length} requests failed: ${failed[0].error}`);
    const counted = (name) => (sumBy(after, name, null).total ?? 0) - (sumBy(before, name, null).total ?? 0);
    const queried = counted('troupe_prefix_cache_queries_tokens_total');
    const ttft = results.map((r) => r.ttft);
    const r = {
      ttftP50S: percentile(ttft, 50),
      ttftP90S: percentile(ttft, 90),
      wallS,
      outputTokensPerS: results.reduce((a, x) => a + x.outputTokens, 0) / wallS,
      cachedShare: queried > 0 ? counted('troupe_prefix_cache_hits_tokens_total') / queried : 0,
    };
    console.log(
      `${label}: TTFT p50 ${(r.ttftP50S * 1000).toFixed(1)} ms, p90 ${(r.ttftP90S * 1000).toFixed(1)} ms; ${wallS.toFixed(2)} s in all, ` +
        `${r.outputTokensPerS.toFixed(0)} output tokens/s; ${(r.cachedShare * 100).toFixed(1)}% of prompt tokens from the cache`,
    );
    return r;
  } finally {
    await server.stop(30);
  }
}

const cached = await run('cached', []);
const full = await run('full', ['--disable-radix-cache']);
const result = {
  benchmark: 'serve-prefix',
  date,
  device: gpu ?? `cpu: ${cpus()[0]?.model ?? 'unknown'} x ${cpus().length}`,
  model: pathArg(options.modelPath),
  peer: 'the same server started with --disable-radix-cache, in the same run',
  ...n,
  serveArgs,
  cached,
  full,
  ttftSpeedup: full.ttftP50S / cached.ttftP50S,
  wallSpeedup: full.wallS / cached.wallS,
};
writeFileSync(out, JSON.stringify(result, null, 2) + '\n');
console.log(`TTFT p50 ${result.ttftSpeedup.toFixed(2)}x faster, all requests ${result.wallSpeedup.toFixed(2)}x; written to ${out}`);

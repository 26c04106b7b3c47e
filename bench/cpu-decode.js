// Decode throughput of the demo model on this machine's CPU: one stream, then batches of
// 8 and 32 requests mixing the base model, demo-a and demo-b. Run with `npm run bench`
// after `npm install`; writes bench/results/<date>-cpu.json and prints a table.
import { mkdirSync, writeFileSync } from 'node:fs';
import { cpus } from 'node:os';

const root = new URL('..', import.meta.url);
const { createEngine } = await import(new URL('dist/src/index.js', root).href);
const { resolveServeArgs } = await import(new URL('dist/src/cli/serve.js', root).href);
const { makeDemo } = await import(new URL('dist/src/model/demo.js', root).href);
const { existsSync } = await import('node:fs');

const { options } = resolveServeArgs(['--device', 'cpu', '--log-level', 'warning']);
if (!existsSync(new URL('demo-model/config.json', root))) makeDemo(options.modelPath);
const engine = await createEngine(options);
const prompt = 'List 3 countries and their capitals.';
const NEW_TOKENS = 64;
const sampling = {
  maxNewTokens: NEW_TOKENS,
  temperature: 0,
  topP: 1,
  topK: -1,
  minP: 0,
  seed: null,
  stop: [],
  stopTokenIds: [],
  ignoreEos: true,
  skipSpecialTokens: true,
};
const request = (lora) => ({ text: prompt, lora, sampling, returnLogprob: false, topLogprobsNum: 0 });
const adapters = [null, 'demo-a', 'demo-b'];

async function timed(batch) {
  // Time from the first token of the last-started request to the end: decode only, prefill excluded.
  const firsts = [];
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: batch }, async (_, i) => {
      let first = true;
      for await (const chunk of engine.stream(request(adapters[i % adapters.length]))) {
        if (first) {
          firsts.push(performance.now());
          first = false;
        }
        void chunk;
      }
    }),
  );
  const end = performance.now();
  const decodeStart = Math.max(...firsts);
  return {
    batch,
    newTokensPerRequest: NEW_TOKENS,
    wallSeconds: (end - t0) / 1000,
    decodeTokensPerSecond: (batch * (NEW_TOKENS - 1)) / ((end - decodeStart) / 1000),
  };
}

await timed(1); // warm-up
const rows = [];
for (const batch of [1, 8, 32]) rows.push(await timed(batch));
await engine.close();

const result = {
  date: new Date().toISOString(),
  device: `cpu: ${cpus()[0]?.model ?? 'unknown'} x ${cpus().length}`,
  model: 'demo (4 layers, hidden 256, vocab 128256, bf16 weights computed in f32)',
  rows,
};
mkdirSync(new URL('bench/results/', root), { recursive: true });
const file = new URL(`bench/results/${result.date.slice(0, 10)}-cpu.json`, root);
writeFileSync(file, JSON.stringify(result, null, 2) + '\n');
console.log(`device: ${result.device}`);
console.log('| batch | decode tokens/s |');
console.log('| --- | --- |');
for (const r of rows) console.log(`| ${r.batch} | ${r.decodeTokensPerSecond.toFixed(1)} |`);
console.log(`written to ${file.pathname}`);

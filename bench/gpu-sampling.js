// What sampling filters cost a CUDA decode step: batch 32 and 128 over a 512-token context,
// greedy against temperature alone and against top-k / top-p / min-p rows, with the filtered
// rows drawn on the host from downloaded logits (TROUPE_CUDA_SAMPLE_FILTERS=0) and on the GPU
// (=1). The peer is the same engine's greedy step in the same run. On a CUDA machine, after
// `npm run build` and `node scripts/build-native.js`:
//   node bench/gpu-sampling.js MODEL OUT.json
import { execSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';

import { greedyBatch, median, randomTokenSource, tuneAtFirstCapture } from './gpu-steps.js';

tuneAtFirstCapture();
const root = new URL('..', import.meta.url);
const { loadNative } = await import(new URL('dist/src/engine/native.js', root).href);
const { openCheckpoint } = await import(new URL('dist/src/model/checkpoint.js', root).href);

const [modelDir, outFile] = process.argv.slice(2);
if (!modelDir || !outFile) throw new Error('usage: node bench/gpu-sampling.js MODEL_DIR OUT_JSON');
const addon = loadNative();
const ckpt = openCheckpoint(modelDir);
const c = ckpt.config;
const BLOCK = 16;
const CONTEXT = 512;
const STEPS = 20;
const ROWS = 128;
const maxBlocks = Math.ceil((CONTEXT + STEPS + 8) / BLOCK);
const source = randomTokenSource(3);
const randomTokens = (len) => source(len).map((t) => t % c.vocabSize);
const blocks = (i) => Array.from({ length: maxBlocks }, (_, k) => i * maxBlocks + k);

// Each mode sets these fields on every row of the batch greedyBatch built.
const MODES = {
  greedy: {},
  temperature: { temperature: 0.8 },
  'top-p 0.9': { temperature: 0.8, topP: 0.9 },
  'top-k 50 + top-p 0.95': { temperature: 0.8, topK: 50, topP: 0.95 },
  'min-p 0.05': { temperature: 0.8, minP: 0.05 },
};

function withMode(b, mode) {
  for (const [k, v] of Object.entries(MODES[mode])) b[k].fill(v);
  b.seeds = Uint32Array.from(b.seeds, (_, i) => i + 1);
  return b;
}

function decode(h, rows, mode) {
  let last = Array.from({ length: rows }, () => 5000);
  const times = [];
  for (let s = 0; s < STEPS + 3; s++) {
    const b = withMode(
      greedyBatch(
        last.map((t, i) => ({ tokens: [t], cached: CONTEXT - 1 + s, blocks: blocks(i) })),
        maxBlocks,
      ),
      mode,
    );
    b.draws.fill(s);
    const t0 = performance.now();
    const r = addon.step(h, b);
    if (s >= 3) times.push(performance.now() - t0);
    last = Array.from(r.tokens);
  }
  return median(times);
}

function engine() {
  const h = addon.createEngine(c, ckpt.tensors, {
    device: 'cuda',
    blockSize: BLOCK,
    kvBlocks: ROWS * maxBlocks + 8,
    memFractionStatic: 0.85,
    loraSlots: 0,
    maxLoraRank: 0,
    loraModules: [],
    threads: 0,
    cudaGraphMaxBs: 256,
  });
  const seqs = Array.from({ length: ROWS }, (_, i) => ({ tokens: randomTokens(CONTEXT - 1), cached: 0, blocks: blocks(i) }));
  for (let i = 0; i < ROWS; i += 8) addon.step(h, greedyBatch(seqs.slice(i, i + 8), maxBlocks));
  return h;
}

const gpu = execSync('nvidia-smi --query-gpu=name --format=csv,noheader').toString().trim().split('\n')[0];
const result = {
  benchmark: 'gpu-sampling',
  date: new Date().toISOString().slice(0, 10),
  gpu,
  model: `random weights, ${c.architecture} (${c.numLayers} layers, hidden ${c.hiddenSize}, vocabulary ${c.vocabSize}), bf16`,
  workload: `decode over a ${CONTEXT}-token context, median of ${STEPS} steps, every row in the same sampling mode`,
  peer: 'the same engine greedy, same run',
  filtersOn: {},
};
for (const where of ['host', 'gpu']) {
  process.env.TROUPE_CUDA_SAMPLE_FILTERS = where === 'gpu' ? '1' : '0';
  const h = engine();
  const rows = {};
  for (const bs of [32, 128]) {
    for (const mode of Object.keys(MODES)) {
      const ms = decode(h, bs, mode);
      rows[`${mode}, batch ${bs}`] = ms;
      console.log(`filters on the ${where}: ${mode}, batch ${bs}: ${ms.toFixed(2)} ms`);
    }
  }
  result.filtersOn[where] = rows;
  addon.destroyEngine(h);
}
writeFileSync(outFile, JSON.stringify(result, null, 2) + '\n');

// The GPU benchmark: troupe's CUDA engine driven step by step through the native addon, next to
// transformers (bench/gpu_hf.py, run first) and the roofline. On a CUDA machine, after
// `npm run build` and `node scripts/build-native.js`:
//   python3 bench/gpu_hf.py MODEL hf.json && node bench/gpu-decode.js MODEL hf.json OUT.json
// Decode: batch 1, 8, 32, 64, 128 over a 512-token context (filled by a real prefill), the
// median of 20 steps after warm-up, timed on the host around the whole step (inputs up,
// forward, sampling, tokens down); prefill of 1 x 2048 and 8 x 512 tokens, the median of 9.
// Roofline: (bf16 weights a step reads, i.e. all but the embedding table, plus the batch's KV
// cache) / the measured device-to-device bandwidth. DECODE_ONLY=1 times the decode batches alone
// (for comparing two builds back to back).
import { readFileSync, writeFileSync } from 'node:fs';

import { greedyBatch, median, randomTokenSource, tuneAtFirstCapture } from './gpu-steps.js';

tuneAtFirstCapture();
const root = new URL('..', import.meta.url);
const { loadNative } = await import(new URL('dist/src/engine/native.js', root).href);
const { openCheckpoint } = await import(new URL('dist/src/model/checkpoint.js', root).href);

const [modelDir, hfFile, outFile] = process.argv.slice(2);
if (!modelDir || !hfFile || !outFile) throw new Error('usage: node bench/gpu-decode.js MODEL_DIR HF_JSON OUT_JSON');
const hf = JSON.parse(readFileSync(hfFile, 'utf8'));
const addon = loadNative();
const ckpt = openCheckpoint(modelDir);
const c = ckpt.config;
const BLOCK = 16;
const CONTEXT = 512;
// DECODE_BATCHES=1,2,4: those batches instead.
const BATCHES = process.env.DECODE_BATCHES ? process.env.DECODE_BATCHES.split(',').map(Number) : [1, 8, 32, 64, 128];
// The cache below is sized for 128 sequences.
if (!BATCHES.every((b) => Number.isInteger(b) && b >= 1 && b <= 128)) {
  throw new Error(`DECODE_BATCHES: expected batch sizes from 1 to 128, comma-separated; got "${process.env.DECODE_BATCHES}"`);
}
const STEPS = 20;
const maxBlocks = Math.ceil((CONTEXT + STEPS + 8) / BLOCK);
const kvBlocks = Math.max(128 * maxBlocks, 8 * Math.ceil(2048 / BLOCK) + 8);

function engine(graphMaxBs) {
  return addon.createEngine(c, ckpt.tensors, {
    device: 'cuda',
    blockSize: BLOCK,
    kvBlocks,
    memFractionStatic: 0.85,
    loraSlots: 0,
    maxLoraRank: 0,
    loraModules: [],
    threads: 0,
    cudaGraphMaxBs: graphMaxBs,
  });
}

const batch = (seqs) => greedyBatch(seqs, maxBlocks);
// Ids kept inside the vocabulary (Mistral's has 32,768).
const source = randomTokenSource(1);
const randomTokens = (len) => source(len).map((t) => t % c.vocabSize);

function decode(h, bs) {
  const seqs = Array.from({ length: bs }, (_, i) => ({
    tokens: randomTokens(CONTEXT - 1),
    cached: 0,
    blocks: Array.from({ length: maxBlocks }, (_, k) => i * maxBlocks + k),
  }));
  for (let i = 0; i < bs; i += 8) addon.step(h, batch(seqs.slice(i, i + 8))); // fill the context
  let last = seqs.map(() => 5000);
  const times = [];
  for (let s = 0; s < STEPS + 3; s++) {
    const b = batch(seqs.map((q, i) => ({ tokens: [last[i]], cached: CONTEXT - 1 + s, blocks: q.blocks })));
    const t0 = performance.now();
    const r = addon.step(h, b);
    const t = performance.now() - t0;
    if (s >= 3) times.push(t);
    last = Array.from(r.tokens);
  }
  return median(times);
}

// A prefill's time moves by a millisecond or two from one step to the next (50 ms at 1 x 2048), so
// the median of nine steps after one to warm up, with their spread.
const PREFILL_STEPS = 9;

function prefill(h, bs, len) {
  const times = [];
  for (let rep = 0; rep <= PREFILL_STEPS; rep++) {
    const seqs = Array.from({ length: bs }, (_, i) => ({
      tokens: randomTokens(len),
      cached: 0,
      blocks: Array.from({ length: Math.ceil(len / BLOCK) }, (_, k) => i * maxBlocks * 4 + k),
    }));
    // 2048 tokens need a wider block table than the decodes.
    const b = greedyBatch(seqs, Math.max(maxBlocks, Math.ceil(len / BLOCK)));
    const t0 = performance.now();
    addon.step(h, b);
    const t = performance.now() - t0;
    if (rep > 0) times.push(t);
  }
  const ms = median(times);
  return { ms, minMs: Math.min(...times), maxMs: Math.max(...times), tokensPerS: (bs * len) / (ms / 1000) };
}

const kvBytesPerToken = 2 * c.numLayers * c.numKvHeads * c.headDim * 2;
const stepWeightBytes = hf.weightBytes - hf.embedBytes;
const result = {
  date: new Date().toISOString().slice(0, 10),
  gpu: hf.gpu,
  // The generators' checkpoints say only their family and size: random weights in bf16.
  model: `random weights, ${c.architecture} (${c.numLayers} layers, hidden ${c.hiddenSize}), bf16`,
  context: CONTEXT,
  copyBandwidthTBs: hf.copyBandwidthBytesPerS / 1e12,
  stepWeightBytes,
  decode: [],
  prefill: {},
  decodeNoGraph: {},
};
const h = engine(256);
console.log(`engine: ${JSON.stringify(addon.engineInfo(h))}`);
for (const bs of BATCHES) {
  const ms = decode(h, bs);
  const rooflineMs = ((stepWeightBytes + bs * CONTEXT * kvBytesPerToken) / hf.copyBandwidthBytesPerS) * 1000;
  // bench/gpu_hf.py times its own batches; others have no transformers figure.
  const hfMs = hf.decodeMs[bs] ?? null;
  result.decode.push({
    batch: bs,
    ms,
    rooflineMs,
    overRoofline: ms / rooflineMs,
    transformersMs: hfMs,
    speedupOverTransformers: hfMs === null ? null : hfMs / ms,
  });
  const peer = hfMs === null ? '' : `; transformers ${hfMs.toFixed(2)} ms`;
  console.log(`decode batch ${bs}: ${ms.toFixed(2)} ms (roofline ${rooflineMs.toFixed(2)} ms, x${(ms / rooflineMs).toFixed(2)}${peer})`);
}
const decodeOnly = process.env.DECODE_ONLY === '1';
for (const [bs, len] of decodeOnly
  ? []
  : [
      [1, 2048],
      [8, 512],
    ]) {
  const p = prefill(h, bs, len);
  const t = hf.prefill[`${bs}x${len}`];
  result.prefill[`${bs}x${len}`] = { ...p, transformersTokensPerS: t.tokensPerS, overTransformers: p.tokensPerS / t.tokensPerS };
  console.log(
    `prefill ${bs}x${len}: ${p.ms.toFixed(1)} ms, ${p.tokensPerS.toFixed(0)} tokens/s (transformers ${t.tokensPerS.toFixed(0)}, x${(p.tokensPerS / t.tokensPerS).toFixed(2)})`,
  );
}
addon.destroyEngine(h);
const h2 = engine(0);
for (const bs of decodeOnly ? [] : [1, 32]) {
  result.decodeNoGraph[bs] = decode(h2, bs);
  console.log(`decode batch ${bs} without CUDA graphs: ${result.decodeNoGraph[bs].toFixed(2)} ms`);
}
addon.destroyEngine(h2);
writeFileSync(outFile, JSON.stringify(result, null, 2) + '\n');

// The GPU benchmark: troupe's CUDA engine driven step by step through the native addon, next to
// transformers (bench/gpu_hf.py, run first) and the roofline. On a CUDA machine, after
// `npm run build` and `node scripts/build-native.js`:
//   python3 bench/gpu_hf.py MODEL hf.json && node bench/gpu-decode.js MODEL hf.json OUT.json
// Decode: batch 1, 8, 32, 64, 128 over a 512-token context (filled by a real prefill), the
// median of 20 steps after warm-up, timed on the host around the whole step (inputs up,
// forward, sampling, tokens down). Roofline: (bf16 weights a step reads, i.e. all but the
// embedding table, plus the batch's KV cache) / the measured device-to-device bandwidth.
import { readFileSync, writeFileSync } from 'node:fs';

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
const BATCHES = [1, 8, 32, 64, 128];
const STEPS = 20;
const maxBlocks = Math.ceil((CONTEXT + STEPS + 8) / BLOCK);
const kvBlocks = Math.max(128 * maxBlocks, 8 * Math.ceil(2048 / BLOCK) + 8);

function engine(graphMaxBs) {
  return addon.createEngine(c, ckpt.tensors, {
    device: 'cuda', blockSize: BLOCK, kvBlocks, memFractionStatic: 0.85, loraSlots: 0, maxLoraRank: 0,
    loraModules: [], threads: 0, cudaGraphMaxBs: graphMaxBs,
  });
}

function batch(seqs) {
  const n = seqs.length;
  const tokens = [], positions = [], seqStarts = [0];
  const blockTables = new Int32Array(n * maxBlocks).fill(-1);
  seqs.forEach((s, i) => {
    s.tokens.forEach((t, j) => { tokens.push(t); positions.push(s.cached + j); });
    seqStarts.push(tokens.length);
    blockTables.set(s.blocks, i * maxBlocks);
  });
  const f = (v) => Float32Array.from(seqs.map(() => v));
  return {
    tokens: Int32Array.from(tokens), positions: Int32Array.from(positions), seqStarts: Int32Array.from(seqStarts),
    contextLens: Int32Array.from(seqs.map((s) => s.cached + s.tokens.length)), blockTables, maxBlocksPerSeq: maxBlocks,
    loraSlots: Int32Array.from(seqs.map(() => -1)), sample: Uint8Array.from(seqs.map(() => 1)),
    temperature: f(0), topK: Int32Array.from(seqs.map(() => -1)), topP: f(1), minP: f(0),
    frequencyPenalty: f(0), presencePenalty: f(0), repetitionPenalty: f(1),
    penaltyTokens: new Int32Array(0), penaltyStarts: new Int32Array(n + 1), penaltyPromptLens: new Int32Array(n),
    seeds: new Uint32Array(n), draws: new Uint32Array(n), topLogprobs: 0, returnLogits: false,
  };
}

let seed = 1;
const randomTokens = (len) => Array.from({ length: len }, () => 1000 + ((seed = (seed * 1103515245 + 12345) % 2147483648) % 99000));
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

function decode(h, bs) {
  const seqs = Array.from({ length: bs }, (_, i) => ({
    tokens: randomTokens(CONTEXT - 1), cached: 0, blocks: Array.from({ length: maxBlocks }, (_, k) => i * maxBlocks + k),
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

function prefill(h, bs, len) {
  const times = [];
  for (let rep = 0; rep < 4; rep++) {
    const seqs = Array.from({ length: bs }, (_, i) => ({
      tokens: randomTokens(len), cached: 0, blocks: Array.from({ length: Math.ceil(len / BLOCK) }, (_, k) => i * maxBlocks * 4 + k),
    }));
    const b = batch(seqs.map((s) => ({ ...s, blocks: s.blocks.slice(0, maxBlocks) })));
    if (Math.ceil(len / BLOCK) > maxBlocks) {
      // 2048 tokens need more than maxBlocks blocks: widen the table for this batch.
      b.maxBlocksPerSeq = Math.ceil(len / BLOCK);
      b.blockTables = new Int32Array(bs * b.maxBlocksPerSeq).fill(-1);
      seqs.forEach((s, i) => b.blockTables.set(s.blocks, i * b.maxBlocksPerSeq));
    }
    const t0 = performance.now();
    addon.step(h, b);
    const t = performance.now() - t0;
    if (rep > 0) times.push(t);
  }
  const ms = median(times);
  return { ms, tokensPerS: (bs * len) / (ms / 1000) };
}

const kvBytesPerToken = 2 * c.numLayers * c.numKvHeads * c.headDim * 2;
const stepWeightBytes = hf.weightBytes - hf.embedBytes;
const result = {
  date: '2026-11-24', gpu: hf.gpu, model: 'random weights, Llama-3.1-8B shape, bf16', context: CONTEXT,
  copyBandwidthTBs: hf.copyBandwidthBytesPerS / 1e12, stepWeightBytes, decode: [], prefill: {}, decodeNoGraph: {},
};
const h = engine(256);
console.log(`engine: ${JSON.stringify(addon.engineInfo(h))}`);
for (const bs of BATCHES) {
  const ms = decode(h, bs);
  const rooflineMs = ((stepWeightBytes + bs * CONTEXT * kvBytesPerToken) / hf.copyBandwidthBytesPerS) * 1000;
  const hfMs = hf.decodeMs[bs];
  result.decode.push({ batch: bs, ms, rooflineMs, overRoofline: ms / rooflineMs, transformersMs: hfMs, speedupOverTransformers: hfMs / ms });
  console.log(`decode batch ${bs}: ${ms.toFixed(2)} ms (roofline ${rooflineMs.toFixed(2)} ms, x${(ms / rooflineMs).toFixed(2)}; transformers ${hfMs.toFixed(2)} ms)`);
}
for (const [bs, len] of [[1, 2048], [8, 512]]) {
  const p = prefill(h, bs, len);
  const t = hf.prefill[`${bs}x${len}`];
  result.prefill[`${bs}x${len}`] = { ...p, transformersTokensPerS: t.tokensPerS, overTransformers: p.tokensPerS / t.tokensPerS };
  console.log(`prefill ${bs}x${len}: ${p.ms.toFixed(1)} ms, ${p.tokensPerS.toFixed(0)} tokens/s (transformers ${t.tokensPerS.toFixed(0)}, x${(p.tokensPerS / t.tokensPerS).toFixed(2)})`);
}
addon.destroyEngine(h);
const h2 = engine(0);
for (const bs of [1, 32]) {
  result.decodeNoGraph[bs] = decode(h2, bs);
  console.log(`decode batch ${bs} without CUDA graphs: ${result.decodeNoGraph[bs].toFixed(2)} ms`);
}
addon.destroyEngine(h2);
writeFileSync(outFile, JSON.stringify(result, null, 2) + '\n');

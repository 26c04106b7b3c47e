// The tensor-parallel GPU benchmark: decode step time and prefill tokens/s on the Llama-3.1-8B
// shape at --tp-size 1 and 2 (and 4), without adapters and with 8 rank-16 adapters (written by
// bench/gpu_peft.py), each rank an executor actor as in the server. Ranks go on GPUs 0..tp-1
// when that many are visible (NCCL); otherwise tp 2 runs with both ranks on GPU 0
// (--gpu-id-step 0, activations through host memory), which measures that path's cost, not
// multi-GPU speed. On a CUDA machine:
//   node bench/gpu-tp.js MODEL ADAPTERS OUT.json
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';

import { greedyBatch, median, randomTokenSource } from './gpu-steps.js';
const root = new URL('..', import.meta.url);
const dist = (p) => import(new URL(`dist/src/${p}`, root).href);
const { loadNative } = await dist('engine/native.js');
const { openCheckpoint } = await dist('model/checkpoint.js');
const { loadAdapterWeights } = await dist('model/adapter.js');
const { planRanks } = await dist('actors/plan.js');
const { initRanks, stepRanks } = await dist('actors/ranks.js');
const { Supervisor } = await dist('actors/supervisor.js');
const { planTensorParallel, shardAdapter } = await dist('model/tensor-parallel.js');

const [modelDir, adapterDir, outFile] = process.argv.slice(2);
if (!outFile) throw new Error('usage: node bench/gpu-tp.js MODEL_DIR ADAPTER_DIR OUT_JSON');
const addon = loadNative();
const gpus = addon.cudaDeviceCount();
const ckpt = openCheckpoint(modelDir);
const BLOCK = 16, CONTEXT = 512, ROWS = 32, STEPS = 20, ADAPTERS = 8;
const maxBlocks = Math.ceil((CONTEXT + STEPS + 8) / BLOCK);
const randomTokens = randomTokenSource(7);

async function measure(tp, gpuIdStep) {
  const sup = new Supervisor(tp);
  try {
    const engine = {
      device: 'cuda', blockSize: BLOCK, kvBlocks: (ROWS + 8) * maxBlocks, memFractionStatic: 0.9, loraSlots: ADAPTERS, maxLoraRank: 16,
      loraModules: ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'], threads: 0, cudaGraphMaxBs: ROWS,
    };
    const ranks = planRanks({ engine, loraEnabled: true, contextLength: 8192 }, ckpt.config, ckpt.tensors, { tpSize: tp, baseGpuId: 0, gpuIdStep }, sup.tpGroup, gpus);
    const inits = await initRanks(sup.actors.executors, ranks);
    const shards = planTensorParallel(ckpt.config, tp);
    for (let slot = 0; slot < ADAPTERS; slot++) {
      const w = loadAdapterWeights(join(adapterDir, `r16-${slot}`), ckpt.config).weights;
      inits.forEach(({ handle }, r) => addon.loadLoraSlot(handle, slot, shardAdapter(w, ckpt.config, shards[r])));
    }
    const step = (seqs) => stepRanks(sup.actors.executors, greedyBatch(seqs, maxBlocks));
    const blocks = (i) => Array.from({ length: maxBlocks }, (_, k) => i * maxBlocks + k);
    const out = { tp, collective: inits[0].info.collective, device: inits[0].info.deviceName };
    for (const distinct of [0, ADAPTERS]) {
      const slot = (i) => (distinct === 0 ? -1 : i % distinct);
      await step(Array.from({ length: ROWS }, (_, i) => ({ tokens: randomTokens(CONTEXT - 1), cached: 0, blocks: blocks(i), slot: slot(i) })));
      let last = Array.from({ length: ROWS }, () => 5000);
      const times = [];
      for (let s = 0; s < STEPS + 3; s++) {
        const t0 = performance.now();
        const r = await step(last.map((t, i) => ({ tokens: [t], cached: CONTEXT - 1, blocks: blocks(i), slot: slot(i) })));
        if (s >= 3) times.push(performance.now() - t0);
        last = Array.from(r.tokens);
      }
      const pre = [];
      for (let rep = 0; rep < 4; rep++) {
        const seqs = Array.from({ length: 8 }, (_, i) => ({ tokens: randomTokens(512), cached: 0, blocks: blocks(ROWS + i).slice(0, 32), slot: slot(i) }));
        const t0 = performance.now();
        await step(seqs);
        if (rep > 0) pre.push(performance.now() - t0);
      }
      out[distinct === 0 ? 'base' : `adapters${ADAPTERS}`] = { decodeB32Ms: median(times), prefill8x512TokensPerS: (8 * 512) / (median(pre) / 1000) };
    }
    console.log(JSON.stringify(out));
    return out;
  } finally {
    await sup.close();
  }
}

const runs = [await measure(1, 1)];
for (const tp of [2, 4]) {
  if (gpus >= tp) runs.push(await measure(tp, 1));
  else if (tp === 2) runs.push(await measure(2, 0));
}
writeFileSync(outFile, JSON.stringify({ date: '2026-11-24', model: 'random weights, Llama-3.1-8B shape, bf16', gpus, rows: ROWS, context: CONTEXT, runs }, null, 1));

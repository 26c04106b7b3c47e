// The tensor-parallel GPU benchmark: decode step time and prefill tokens/s on the Llama-3.1-8B
// shape at --tp-size 1 and 2 (and 4), without adapters and with 8 rank-16 adapters (written by
// bench/gpu_peft.py), each rank an executor actor as in the server. Ranks go on GPUs 0..tp-1
// when that many are visible (NCCL); otherwise tp 2 runs with both ranks on GPU 0
// (--gpu-id-step 0, activations through host memory), which measures that path's cost, not
// multi-GPU speed. On a CUDA machine:
//   node bench/gpu-tp.js MODEL ADAPTERS OUT.json
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';

import { loraWorkload } from './gpu-steps.js';
const root = new URL('..', import.meta.url);
const dist = (p) => import(new URL(`dist/src/${p}`, root).href);
const { loadNative } = await dist('engine/native.js');
const { openCheckpoint } = await dist('model/checkpoint.js');
const { loadAdapterWeights } = await dist('model/adapter.js');
const { planRanks } = await dist('actors/plan.js');
const { fillSlot, initRanks, stepRanks } = await dist('actors/ranks.js');
const { Supervisor } = await dist('actors/supervisor.js');
const { planTensorParallel } = await dist('model/tensor-parallel.js');

const [modelDir, adapterDir, outFile] = process.argv.slice(2);
if (!outFile) throw new Error('usage: node bench/gpu-tp.js MODEL_DIR ADAPTER_DIR OUT_JSON');
const addon = loadNative();
const gpus = addon.cudaDeviceCount();
const ckpt = openCheckpoint(modelDir);
const ADAPTERS = 8;
const w = loraWorkload();

async function measure(tp, gpuIdStep) {
  const sup = new Supervisor(tp);
  try {
    const engine = {
      device: 'cuda',
      blockSize: w.BLOCK,
      kvBlocks: w.kvBlocks,
      memFractionStatic: 0.9,
      loraSlots: ADAPTERS,
      maxLoraRank: 16,
      loraModules: ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'],
      threads: 0,
      cudaGraphMaxBs: w.ROWS,
    };
    const ranks = planRanks(
      { engine, loraEnabled: true, contextLength: 8192 },
      ckpt.config,
      ckpt.tensors,
      { tpSize: tp, baseGpuId: 0, gpuIdStep },
      sup.tpGroup,
      gpus,
    );
    const inits = await initRanks(sup.actors.executors, ranks);
    const shards = planTensorParallel(ckpt.config, tp);
    const handles = inits.map((i) => i.handle);
    for (let slot = 0; slot < ADAPTERS; slot++) {
      fillSlot(addon, handles, shards, ckpt.config, slot, loadAdapterWeights(join(adapterDir, `r16-${slot}`), ckpt.config).weights);
    }
    const step = (batch) => stepRanks(sup.actors.executors, batch);
    const out = { tp, collective: inits[0].info.collective, device: inits[0].info.deviceName };
    await w.fillContext(step);
    for (const distinct of [0, ADAPTERS]) {
      const decode = await w.decode(step, distinct);
      const prefill = await w.prefill(step, distinct);
      out[distinct === 0 ? 'base' : `adapters${ADAPTERS}`] = { decodeB32Ms: decode, prefill8x512TokensPerS: prefill.tokensPerS };
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
writeFileSync(
  outFile,
  JSON.stringify(
    { date: new Date().toISOString().slice(0, 10), model: 'random weights, Llama-3.1-8B shape, bf16', gpus, rows: w.ROWS, context: w.CONTEXT, runs },
    null,
    1,
  ),
);

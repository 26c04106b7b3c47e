// The multi-LoRA GPU benchmark: troupe's CUDA engine on the Llama-3.1-8B shape with 8 adapters of
// rank 16 or 64 on all seven modules (written by bench/gpu_peft.py, which also times
// transformers + PEFT on the same workload). On a CUDA machine:
//   python3 bench/gpu_peft.py MODEL ADAPTERS peft.json && node bench/gpu-lora.js MODEL ADAPTERS peft.json OUT.json
// Decode: 32 sequences over a 512-token context, the rows spread round-robin over 0 (base), 1, 4
// or 8 distinct adapters; the median of 20 steps after warm-up, timed around the whole step as in
// bench/gpu-decode.js. Prefill: 8 x 512 tokens with the same spread. Both kernel layouts.
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

import { loraWorkload } from './gpu-steps.js';
const root = new URL('..', import.meta.url);
const { loadNative } = await import(new URL('dist/src/engine/native.js', root).href);
const { openCheckpoint } = await import(new URL('dist/src/model/checkpoint.js', root).href);
const { loadAdapterWeights } = await import(new URL('dist/src/model/adapter.js', root).href);

const [modelDir, adapterDir, peftFile, outFile] = process.argv.slice(2);
if (!outFile) throw new Error('usage: node bench/gpu-lora.js MODEL_DIR ADAPTER_DIR PEFT_JSON OUT_JSON');
const peft = JSON.parse(readFileSync(peftFile, 'utf8'));
const addon = loadNative();
const ckpt = openCheckpoint(modelDir);
const w = loraWorkload();

const result = { date: new Date().toISOString().slice(0, 10), model: 'random weights, Llama-3.1-8B shape, bf16', rows: w.ROWS, context: w.CONTEXT, runs: [], peft };
for (const rank of [16, 64]) {
  for (const loraBackend of ['csgmv', 'sgmv']) {
    const h = addon.createEngine(ckpt.config, ckpt.tensors, {
      device: 'cuda', blockSize: w.BLOCK, kvBlocks: w.kvBlocks, memFractionStatic: 0.85, loraSlots: 8, maxLoraRank: rank,
      loraModules: ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'], threads: 0, cudaGraphMaxBs: 64,
      loraBackend, loraChunkSize: 16,
    });
    for (let i = 0; i < 8; i++) addon.loadLoraSlot(h, i, loadAdapterWeights(join(adapterDir, `r${rank}-${i}`), ckpt.config).weights);
    const step = (b) => addon.step(h, b);
    await w.fillContext(step);
    for (const distinct of [0, 1, 4, 8]) {
      const ms = await w.decode(step, distinct);
      const p = await w.prefill(step, distinct);
      result.runs.push({ rank, loraBackend, adapters: distinct, decodeMs: ms, prefillTokensPerS: p.tokensPerS });
      console.log(`rank ${rank} ${loraBackend} ${distinct} adapter(s): decode b${w.ROWS} ${ms.toFixed(2)} ms, prefill 8x512 ${p.tokensPerS.toFixed(0)} tokens/s`);
    }
    addon.destroyEngine(h);
  }
}
const base = (rank, backend) => result.runs.find((r) => r.rank === rank && r.loraBackend === backend && r.adapters === 0);
for (const r of result.runs) {
  const b = base(r.rank, r.loraBackend);
  r.decodeOverhead = r.decodeMs / b.decodeMs - 1;
  r.prefillOverhead = b.prefillTokensPerS / r.prefillTokensPerS - 1;
}
const mixed = result.runs.find((r) => r.rank === 16 && r.loraBackend === 'csgmv' && r.adapters === 8);
result.speedupOverPeft = { eightAdapters: peft.decodeMs['8'] / mixed.decodeMs, oneAdapter: peft.decodeMs['1'] / result.runs.find((r) => r.rank === 16 && r.loraBackend === 'csgmv' && r.adapters === 1).decodeMs };
console.log(`decode over transformers + PEFT: x${result.speedupOverPeft.eightAdapters.toFixed(1)} with 8 adapters, x${result.speedupOverPeft.oneAdapter.toFixed(1)} with 1`);
writeFileSync(outFile, JSON.stringify(result, null, 2) + '\n');

// The multi-LoRA GPU benchmark: troupe's CUDA engine on the Llama-3.1-8B shape with 8 adapters of
// rank 16 or 64 on all seven modules (written by bench/gpu_peft.py, which also times
// transformers + PEFT on the same workload). On a CUDA machine:
//   python3 bench/gpu_peft.py MODEL ADAPTERS peft.json && node bench/gpu-lora.js MODEL ADAPTERS peft.json OUT.json [KERNELS]
// PEFT_JSON "-" leaves out the comparison with PEFT (gpu_peft.py MODEL ADAPTERS - only writes the
// adapters). KERNELS: the ways of running the LoRA kernels to time, comma-separated (values of the
// engine option loraKernel; default all five: fma,mma,mma-pdl,mma-overlap,fused).
// Decode: 32 sequences over a 512-token context, the rows spread round-robin over 0 (base), 1, 4
// or 8 distinct adapters; the median of 20 steps after warm-up, timed around the whole step as in
// bench/gpu-decode.js. Prefill: 8 x 512 tokens with the same spread. Both kernel layouts, each with
// every kernel family.
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

import { loraEngineOptions, loraWorkload } from './gpu-steps.js';
import { nvidiaSmi } from './serve-server.js';

const root = new URL('..', import.meta.url);
const { loadNative } = await import(new URL('dist/src/engine/native.js', root).href);
const { openCheckpoint } = await import(new URL('dist/src/model/checkpoint.js', root).href);
const { loadAdapterWeights } = await import(new URL('dist/src/model/adapter.js', root).href);

const [modelDir, adapterDir, peftFile, outFile, kernelList = 'fma,mma,mma-pdl,mma-overlap,fused'] = process.argv.slice(2);
if (!outFile) throw new Error('usage: node bench/gpu-lora.js MODEL_DIR ADAPTER_DIR PEFT_JSON|- OUT_JSON [KERNELS]');
const peft = peftFile === '-' ? null : JSON.parse(readFileSync(peftFile, 'utf8'));
const kernels = kernelList.split(',');
const addon = loadNative();
const ckpt = openCheckpoint(modelDir);
const w = loraWorkload();

const result = {
  date: new Date().toISOString().slice(0, 10),
  device: nvidiaSmi(),
  model: 'random weights, Llama-3.1-8B shape, bf16',
  rows: w.ROWS,
  context: w.CONTEXT,
  runs: [],
  peft,
};
for (const rank of [16, 64]) {
  // Read once per rank: every engine below fills its slots from the same values.
  const adapters = Array.from({ length: 8 }, (_, i) => loadAdapterWeights(join(adapterDir, `r${rank}-${i}`), ckpt.config).weights);
  for (const loraBackend of ['csgmv', 'sgmv']) {
    for (const loraKernel of kernels) {
      const h = addon.createEngine(ckpt.config, ckpt.tensors, loraEngineOptions(w, { rank, loraBackend, loraKernel }));
      adapters.forEach((a, i) => addon.loadLoraSlot(h, i, a));
      const step = (b) => addon.step(h, b);
      await w.fillContext(step);
      for (const distinct of [0, 1, 4, 8]) {
        const ms = await w.decode(step, distinct);
        const p = await w.prefill(step, distinct);
        result.runs.push({ rank, loraBackend, loraKernel, adapters: distinct, decodeMs: ms, prefillTokensPerS: p.tokensPerS });
        console.log(
          `rank ${rank} ${loraBackend} ${loraKernel} ${distinct} adapter(s): decode b${w.ROWS} ${ms.toFixed(2)} ms, prefill 8x512 ${p.tokensPerS.toFixed(0)} tokens/s`,
        );
      }
      addon.destroyEngine(h);
    }
  }
}
const base = (r) =>
  result.runs.find((b) => b.rank === r.rank && b.loraBackend === r.loraBackend && b.loraKernel === r.loraKernel && b.adapters === 0);
for (const r of result.runs) {
  const b = base(r);
  r.decodeOverhead = r.decodeMs / b.decodeMs - 1;
  r.prefillOverhead = b.prefillTokensPerS / r.prefillTokensPerS - 1;
}
for (const r of result.runs.filter((x) => x.adapters === 8)) {
  console.log(
    `rank ${r.rank} ${r.loraBackend} ${r.loraKernel}, 8 adapters: decode +${(100 * r.decodeOverhead).toFixed(1)}%, prefill +${(100 * r.prefillOverhead).toFixed(1)}%`,
  );
}
if (peft) {
  const csgmv16 = (n) => result.runs.find((r) => r.rank === 16 && r.loraBackend === 'csgmv' && r.loraKernel === kernels[0] && r.adapters === n);
  result.speedupOverPeft = {
    kernel: kernels[0],
    eightAdapters: peft.decodeMs['8'] / csgmv16(8).decodeMs,
    oneAdapter: peft.decodeMs['1'] / csgmv16(1).decodeMs,
  };
  console.log(
    `decode over transformers + PEFT (${kernels[0]}): x${result.speedupOverPeft.eightAdapters.toFixed(1)} with 8 adapters, x${result.speedupOverPeft.oneAdapter.toFixed(1)} with 1`,
  );
}
writeFileSync(outFile, JSON.stringify(result, null, 2) + '\n');

// Where a prefill step's LoRA time goes: 8 x 512 prompt tokens on troupe's CUDA engine (fused
// layout, csgmv), with no adapter and with the sequences over 8 adapters of each rank (the
// adapters of bench/gpu_peft.py: ADAPTERS/r16-0..7, r64-0..7), one engine per case, three timed
// prefills each (after one of warm-up). Run with TROUPE_CUDA_TIMING=1 and each engine prints, as
// it is destroyed, the GPU time of every operation of its prefill steps (CUDA events between
// operations, no graphs) to stderr; under bench/kernel_timeline.cc (its header) the kernels.
//   TROUPE_CUDA_TIMING=1 node bench/gpu-lora-prefill.js MODEL ADAPTERS 2> ops.txt
// RANKS (16,64 unless the environment says) picks the ranks; VARIANTS (bench/engine-variants.js:
// `TROUPE_LORA_SHRINK_CHUNKS=0;TROUPE_LORA_SPLIT_ROWS=0`) adds an 8-adapter engine made with each
// variant's switches.
import { join } from 'node:path';

import { parseVariants, withEnv } from './engine-variants.js';
import { loraEngineOptions, loraWorkload } from './gpu-steps.js';

const root = new URL('..', import.meta.url);
const { loadNative } = await import(new URL('dist/src/engine/native.js', root).href);
const { openCheckpoint } = await import(new URL('dist/src/model/checkpoint.js', root).href);
const { loadAdapterWeights } = await import(new URL('dist/src/model/adapter.js', root).href);

const [modelDir, adapterDir] = process.argv.slice(2);
if (!adapterDir) throw new Error('usage: node bench/gpu-lora-prefill.js MODEL_DIR ADAPTER_DIR');
const ranks = (process.env.RANKS ?? '16,64').split(',').map(Number);
for (const r of ranks) if (!(Number.isInteger(r) && r > 0)) throw new Error(`RANKS: ${r} is not a positive integer`);
const extra = process.env.VARIANTS ? parseVariants(process.env.VARIANTS) : [];
const addon = loadNative();
const ckpt = openCheckpoint(modelDir);
const w = loraWorkload();
for (const rank of ranks) {
  const adapters = Array.from({ length: 8 }, (_, i) => loadAdapterWeights(join(adapterDir, `r${rank}-${i}`), ckpt.config).weights);
  const cases = [
    { distinct: 0, variant: { label: 'default', env: {} } },
    { distinct: 8, variant: { label: 'default', env: {} } },
    ...extra.map((variant) => ({ distinct: 8, variant })),
  ];
  for (const { distinct, variant } of cases) {
    const h = withEnv(variant.env, () => addon.createEngine(ckpt.config, ckpt.tensors, loraEngineOptions(w, { rank })));
    adapters.forEach((a, i) => addon.loadLoraSlot(h, i, a));
    const step = (b) => addon.step(h, b);
    const ms = [];
    for (let i = 0; i < 3; i++) ms.push((await w.prefill(step, distinct)).ms);
    // stderr, so that each line comes just before the engine's own per-operation line.
    console.error(`== rank ${rank}, ${distinct} adapters [${variant.label}]: prefill ${ms.map((x) => x.toFixed(1)).join(' ')} ms`);
    addon.destroyEngine(h);
  }
}

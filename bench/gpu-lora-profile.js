// Where the LoRA decode time goes, kernel by kernel: 32 decode rows over a 512-token context on
// troupe's CUDA engine (fused layout, csgmv), with no adapter, 1 and 8 adapters of one rank on all
// seven modules (bench/make-adapters.js --count 8 --modules all writes ADAPTERS/a0000..a0007).
// ROWS=N decodes N rows instead of 32.
//   node bench/gpu-lora-profile.js MODEL ADAPTERS RANK             median step times (20 steps)
//   PROFILE=1 ncu --clock-control none --cache-control none --metrics gpu__time_duration.sum \
//     -o prof node bench/gpu-lora-profile.js MODEL ADAPTERS RANK
//   ncu --import prof.ncu-rep --csv --page raw --print-units base > prof.csv
//   python3 bench/ncu_steps.py prof.csv [OUT.json]             GPU time per kernel and case
// Under PROFILE=1 each case runs PROFILE_STEPS steps (3 unless said; the first of them warm-up),
// so the profile stays a few thousand kernels; bench/ncu_steps.py splits the steps at their
// embedding kernel and reads PROFILE_STEPS as well.
// Nsight Compute runs kernels one at a time; to see the steps as the GPU ran them (overlap and
// programmatic launches included), run under bench/kernel_timeline.cc instead (its header) and
// read it with bench/timeline_steps.py.
import { join } from 'node:path';

import { loraEngineOptions, loraWorkload, tuneAtFirstCapture } from './gpu-steps.js';
import { adapterName } from './make-adapters.js';

tuneAtFirstCapture();

const root = new URL('..', import.meta.url);
const { loadNative } = await import(new URL('dist/src/engine/native.js', root).href);
const { openCheckpoint } = await import(new URL('dist/src/model/checkpoint.js', root).href);
const { loadAdapterWeights } = await import(new URL('dist/src/model/adapter.js', root).href);

const [modelDir, adapterDir, rankArg] = process.argv.slice(2);
const rank = Number(rankArg);
if (!modelDir || !adapterDir || !(rank > 0)) throw new Error('usage: node bench/gpu-lora-profile.js MODEL ADAPTERS RANK');
const profiling = process.env.PROFILE === '1';
const addon = loadNative();
const ckpt = openCheckpoint(modelDir);
const rows = Number(process.env.ROWS ?? 32);
const profileSteps = Number(process.env.PROFILE_STEPS ?? 3);
if (!(Number.isInteger(profileSteps) && profileSteps >= 2))
  throw new Error(`PROFILE_STEPS must be an integer of at least 2, not ${process.env.PROFILE_STEPS}`);
const w = profiling ? loraWorkload({ rows, steps: profileSteps - 1, warmup: 1 }) : loraWorkload({ rows });
const adapters = Array.from({ length: 8 }, (_, i) => loadAdapterWeights(join(adapterDir, adapterName(i)), ckpt.config).weights);
const h = addon.createEngine(ckpt.config, ckpt.tensors, loraEngineOptions(w, { rank }));
adapters.forEach((a, i) => addon.loadLoraSlot(h, i, a));
const step = (b) => addon.step(h, b);
await w.fillContext(step);
// The order bench/ncu_steps.py expects: base, then 1, then 8 adapters.
for (const distinct of [0, 1, 8]) {
  const ms = await w.decode(step, distinct);
  console.log(`rank ${rank}, ${distinct} adapter(s): decode b${w.ROWS} ${ms.toFixed(3)} ms${profiling ? ' (under the profiler)' : ''}`);
}
addon.destroyEngine(h);

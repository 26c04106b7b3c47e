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
//
// An adapter count's overhead is a few percent of a step, about what a step's time drifts over a
// minute (the base step measured 5.75-5.92 ms in runs of one day). So each engine is timed in
// ROUNDS rounds (5 unless the environment says), each round timing every adapter count once, one
// after another; an overhead is the median over the rounds of that round's ratio to its own base,
// and a time the median over the rounds. LORA_RANKS (16,64 unless the environment says) picks the
// adapters' ranks. LORA_VARIANTS (bench/engine-variants.js: `default;TROUPE_LORA_IN_GEMM=0`) times
// engines made with other environment switches beside each other, each round taking every variant
// in turn, and labels each run with its variant. LORA_POOL and LORA_POOL_RANK give the engines more
// slots or a larger max rank than the 8 adapters need (see below). LORA_MODULES=o_proj
// (bench/gpu-steps.js) gives the engines' pools those modules alone, for adapters written on them
// alone. Each run with adapters
// also carries what their bytes alone would add (bench/lora-roofline.js): at the base step's own
// bandwidth, and at the copy bandwidth that gpu_peft.py measured in the same run.
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

import { parseVariants, withEnv } from './engine-variants.js';
import { benchLoraModules, loraEngineOptions, loraWorkload, median, tuneAtFirstCapture } from './gpu-steps.js';
import { adapterBytes, baseStepBytes, loraRoofline } from './lora-roofline.js';
import { nvidiaSmi } from './serve-server.js';

tuneAtFirstCapture();

const root = new URL('..', import.meta.url);
// The server's own rules for cutting the pool into slots.
const { cudaSlotRuns, loraPoolSlots, loraSlotRank, loraSlotSpan } = await import(new URL('dist/src/engine/lora-slots.js', root).href);
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
const rounds = Number(process.env.ROUNDS ?? 5);
if (!(Number.isInteger(rounds) && rounds >= 1)) throw new Error(`ROUNDS must be a positive integer, not ${process.env.ROUNDS}`);
// LORA_BACKENDS=csgmv times the chunked backend alone (half the run), for comparing builds.
const backends = (process.env.LORA_BACKENDS ?? 'csgmv,sgmv').split(',');
for (const b of backends) if (!['csgmv', 'sgmv'].includes(b)) throw new Error(`LORA_BACKENDS: unknown backend ${b}`);
// LORA_COUNTS=0,8 times the base step and 8 adapters alone; 0 must stay, every overhead is over it.
const ranks = (process.env.LORA_RANKS ?? '16,64').split(',').map(Number);
if (!ranks.every((r) => r === 16 || r === 64)) throw new Error(`LORA_RANKS must name ranks among 16 and 64, not ${process.env.LORA_RANKS}`);
const counts = (process.env.LORA_COUNTS ?? '0,1,4,8').split(',').map(Number);
if (counts[0] !== 0 || !counts.every((n) => [0, 1, 4, 8].includes(n)))
  throw new Error(`LORA_COUNTS must start with 0 and name counts among 0, 1, 4, 8, not ${process.env.LORA_COUNTS}`);
if (peft && !(counts.includes(1) && counts.includes(8))) throw new Error('the comparison with PEFT needs LORA_COUNTS to hold 1 and 8');
const variants = parseVariants(process.env.LORA_VARIANTS);
// LORA_POOL=32 gives the engines 32 pool slots (8 unless said; the adapters take the first 8), as a
// server with more GPU slots than adapters a batch has.
const pool = Number(process.env.LORA_POOL ?? 8);
if (!(Number.isInteger(pool) && pool >= 8)) throw new Error(`LORA_POOL must be an integer of at least 8, not ${process.env.LORA_POOL}`);
// LORA_POOL_RANK=64 gives the engines a pool of that max rank (each run's adapters' rank unless
// said), as a server whose --max-lora-rank is set for larger adapters than the batch's.
const poolRank = process.env.LORA_POOL_RANK === undefined ? undefined : Number(process.env.LORA_POOL_RANK);
if (poolRank !== undefined && !(Number.isInteger(poolRank) && ranks.every((r) => r <= poolRank)))
  throw new Error(`LORA_POOL_RANK must be an integer no smaller than every rank of LORA_RANKS, not ${process.env.LORA_POOL_RANK}`);
// The pool is cut into slots as a server's is (src/engine/lora-slots.ts: slots of rank 16 in CUDA
// pools of max rank 32 and 64 with csgmv and the fused kernels); LORA_SLOT_RANK=64 names the slot
// rank instead. LORA_POOL places of the pool's rank become more slots, and each adapter takes the
// run of slots its rank needs, the adapters' runs one after another from slot 0.
const slotRankEnv = process.env.LORA_SLOT_RANK === undefined ? undefined : Number(process.env.LORA_SLOT_RANK);
if (slotRankEnv !== undefined && !(Number.isInteger(slotRankEnv) && slotRankEnv >= 8 && ranks.every((r) => slotRankEnv <= (poolRank ?? r))))
  throw new Error(`LORA_SLOT_RANK must be an integer from 8 to the pool's rank, not ${process.env.LORA_SLOT_RANK}`);
/** The slot rank of a pool of max rank `places` run by `loraBackend` and `loraKernel`. */
const slotRankOf = (places, loraBackend, loraKernel) => slotRankEnv ?? loraSlotRank('cuda', places, '', cudaSlotRuns(loraBackend, loraKernel));

// What the steps read: the adapters' bytes beside each overhead (bench/lora-roofline.js), the floor
// from the copy bandwidth that bench/gpu_peft.py measured in the same run.
const baseBytes = baseStepBytes(ckpt.config, ckpt.tensors, w.ROWS, w.CONTEXT);
const copyBytesPerS = peft?.copyBandwidthBytesPerS;

const result = {
  date: new Date().toISOString().slice(0, 10),
  device: nvidiaSmi(),
  model: 'random weights, Llama-3.1-8B shape, bf16',
  rows: w.ROWS,
  context: w.CONTEXT,
  prefill: w.PREFILL,
  // Left out where the pool holds all seven modules.
  modules: process.env.LORA_MODULES ? benchLoraModules().join(', ') : undefined,
  rounds,
  baseStepBytes: baseBytes,
  copyBandwidthTBs: copyBytesPerS ? copyBytesPerS / 1e12 : undefined,
  pool: pool > 8 ? pool : undefined,
  poolRank,
  slotRank: slotRankEnv,
  variants: variants.length > 1 ? variants.map((v) => v.label) : undefined,
  runs: [],
  peft,
};
for (const rank of ranks) {
  // Read once per rank: every engine below fills its slots from the same values.
  const adapters = Array.from({ length: 8 }, (_, i) => loadAdapterWeights(join(adapterDir, `r${rank}-${i}`), ckpt.config).weights);
  // A step over `distinct` adapters uses the first `distinct` (loraWorkload's slots).
  const loraBytes = (distinct) => adapters.slice(0, distinct).reduce((n, a) => n + adapterBytes(a), 0);
  for (const loraBackend of backends) {
    for (const loraKernel of kernels) {
      const places = poolRank ?? rank;
      const slotRank = slotRankOf(places, loraBackend, loraKernel);
      const engines = variants.map((variant) => {
        const options = loraEngineOptions(w, { rank: places, loraBackend, loraKernel, slots: loraPoolSlots(pool, places, slotRank), slotRank });
        const h = withEnv(variant.env, () => addon.createEngine(ckpt.config, ckpt.tensors, options));
        w.slotStride = loraSlotSpan(rank, slotRank);
        adapters.forEach((a, i) => addon.loadLoraSlot(h, i * w.slotStride, a));
        const byRound = counts.map(() => ({ decodeMs: [], prefillMs: [], prefillTokensPerS: [] }));
        return { variant, h, step: (b) => addon.step(h, b), byRound };
      });
      for (const e of engines) await w.fillContext(e.step);
      for (let round = 0; round < rounds; round++) {
        for (const { step, byRound } of engines) {
          for (const [k, distinct] of counts.entries()) {
            byRound[k].decodeMs.push(await w.decode(step, distinct));
            const p = await w.prefill(step, distinct);
            byRound[k].prefillMs.push(p.ms);
            byRound[k].prefillTokensPerS.push(p.tokensPerS);
          }
        }
      }
      for (const { variant, h, byRound } of engines) {
        for (const [k, distinct] of counts.entries()) {
          const times = byRound[k];
          // Each round's time over the same round's base, then the median over the rounds.
          const overhead = (key) => median(times[key].map((ms, i) => ms / byRound[0][key][i] - 1));
          const run = {
            rank,
            slotRank,
            loraBackend,
            loraKernel,
            variant: variants.length > 1 ? variant.label : undefined,
            adapters: distinct,
            decodeMs: median(times.decodeMs),
            prefillTokensPerS: median(times.prefillTokensPerS),
            decodeOverhead: overhead('decodeMs'),
            prefillOverhead: overhead('prefillMs'),
            decodeMsByRound: times.decodeMs,
            prefillMsByRound: times.prefillMs,
            roofline:
              distinct > 0
                ? loraRoofline({ baseBytes, loraBytes: loraBytes(distinct), copyBytesPerS, baseMs: median(byRound[0].decodeMs) })
                : undefined,
          };
          result.runs.push(run);
          console.log(
            `rank ${rank} ${loraBackend} ${loraKernel}${run.variant ? ` [${run.variant}]` : ''} ${distinct} adapter(s): decode b${w.ROWS} ${run.decodeMs.toFixed(2)} ms, prefill 8x512 ${run.prefillTokensPerS.toFixed(0)} tokens/s`,
          );
        }
        addon.destroyEngine(h);
      }
    }
  }
}
const percent = (x) => `+${(100 * x).toFixed(1)}%`;
for (const r of result.runs.filter((x) => x.adapters === 8)) {
  const { overheadAtBaseBandwidth, floorOverhead } = r.roofline;
  const floor = floorOverhead === undefined ? '' : `, ${percent(floorOverhead)} at copy bandwidth`;
  console.log(
    `rank ${r.rank} ${r.loraBackend} ${r.loraKernel}${r.variant ? ` [${r.variant}]` : ''}, 8 adapters: decode ${percent(r.decodeOverhead)}, prefill ${percent(r.prefillOverhead)}; the adapters' bytes alone ${percent(overheadAtBaseBandwidth)} at the base step's bandwidth${floor}`,
  );
}
// The first variant's engine (the only one unless LORA_VARIANTS names more); PEFT's adapters are
// rank 16, so a run without rank 16 or without 1 and 8 adapters has nothing to set beside it.
const csgmv16 = (n) => result.runs.find((r) => r.rank === 16 && r.loraBackend === 'csgmv' && r.loraKernel === kernels[0] && r.adapters === n);
if (peft && csgmv16(8) && csgmv16(1)) {
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

// The tensor-parallel GPU benchmark: decode step time (batches of 1, 32 and 128 rows over a
// 512-token context) and prefill tokens/s (8 x 512 tokens) at --tp-size 1 and 2, without
// adapters and with the rows spread over 8 adapters, each rank an executor actor as in the
// server; at tp > 1 once with the custom all-reduce (small all-reduces through one peer-to-peer
// kernel, EngineInfo.collective "p2p+nccl") and once without ("nccl"). Ranks go on GPUs 0..tp-1
// when that many are visible; otherwise tp 2 runs with both ranks on GPU 0 (--gpu-id-step 0,
// activations through host memory), which measures that path's cost, not multi-GPU speed.
// Decode steps of every batch size run in CUDA graphs.
//   node bench/gpu-tp.js MODEL ADAPTERS OUT.json [options]
// ADAPTERS holds r16-0..r16-7 (bench/gpu_peft.py) or a0000... (bench/make-adapters.js); '-' with
// --skip adapters. Besides the timings the JSON has what the targets need: tp2/tp1 decode ratios,
// the LoRA overhead at each tp, and each step's HBM roofline (the bytes a rank must read: its
// share of the weights plus the KV cache, over the GPU's bandwidth). --device cpu runs the same
// script on the CPU backend, for trying it on a small model (demo-model/).
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';

import { loraWorkload, tuneAtFirstCapture } from './gpu-steps.js';
import { optionLines, parseTable } from './serve-options.js';
import { adapterNames, hbmBandwidth, kvBytesPerToken, modelShape, readMs, weightBytesPerRank } from './tp-bench.js';

tuneAtFirstCapture();

const root = new URL('..', import.meta.url);
const dist = (p) => import(new URL(`dist/src/${p}`, root).href);
const { loadNative } = await dist('engine/native.js');
const { openCheckpoint } = await dist('model/checkpoint.js');
const { readAdapterHost } = await dist('model/adapter.js');
const { planRanks } = await dist('actors/plan.js');
const { fillSlot, initRanks, stepRanks } = await dist('actors/ranks.js');
const { Supervisor } = await dist('actors/supervisor.js');
const { planTensorParallel } = await dist('model/tensor-parallel.js');
const { LORA_MODULES } = await dist('engine/types.js');

const OPTIONS = {
  tp: ['string', '1,2', 'tensor-parallel sizes to run'],
  batch: ['string', '1,32,128', 'decode batch sizes (rows)'],
  context: ['string', '512', 'tokens of context each decode row attends over'],
  'custom-all-reduce': ['string', 'on,off', 'customAllReduce settings to run at tp > 1'],
  skip: ['string', '', 'cases left out, comma-separated: base, adapters, prefill'],
  'adapter-names': ['string', undefined, '8 adapter directories under ADAPTERS (default: r16-0..r16-7, else the first 8 a0000...)'],
  'hbm-tbps': ['string', undefined, 'HBM bandwidth per GPU for the roofline, TB/s (default: from the device name)'],
  device: ['string', 'cuda', 'cuda, or cpu to try the script on a small model'],
  help: ['boolean', false, 'this text'],
};
const USAGE = `usage: node bench/gpu-tp.js MODEL_DIR ADAPTER_DIR|- OUT_JSON [options]\n${optionLines(OPTIONS)}`;
const { values: v, positionals } = parseTable(OPTIONS, process.argv.slice(2));
if (v.help) {
  console.log(USAGE);
  process.exit(0);
}
const [modelDir, adapterDir, outFile] = positionals;
if (!outFile) throw new Error(USAGE);
const ints = (name) => {
  const xs = v[name].split(',').map(Number);
  if (!xs.every((x) => Number.isInteger(x) && x > 0)) throw new Error(`--${name} takes positive integers, comma-separated; got ${v[name]}`);
  return xs;
};
const tps = ints('tp');
const batches = ints('batch');
const context = ints('context')[0];
const skip = new Set(v.skip.split(',').filter(Boolean));
for (const s of skip) if (!['base', 'adapters', 'prefill'].includes(s)) throw new Error(`--skip: unknown case ${s} (base, adapters, prefill)`);
const customAllReduce = v['custom-all-reduce'].split(',').map((s) => {
  if (s !== 'on' && s !== 'off') throw new Error(`--custom-all-reduce takes on and/or off, got ${s}`);
  return s === 'on';
});
if (v.device !== 'cuda' && v.device !== 'cpu') throw new Error(`--device cuda or cpu, got ${v.device}`);
const ADAPTERS = 8;
// Rows spread round-robin over the slots: a batch of b rows uses min(b, 8) adapters.
const cases = [...(skip.has('base') ? [] : [['base', 0]]), ...(skip.has('adapters') ? [] : [[`adapters${ADAPTERS}`, ADAPTERS]])];

const addon = loadNative();
const gpus = v.device === 'cuda' ? addon.cudaDeviceCount() : 0;
const ckpt = openCheckpoint(modelDir);
const w = loraWorkload({ rows: Math.max(...batches), context, vocab: ckpt.config.vocabSize });

// Read once into native host memory; every run's slots are filled from these copies.
const hosts = [];
if (!skip.has('adapters')) {
  const names = adapterNames(adapterDir, ADAPTERS, v['adapter-names']);
  for (const n of names) hosts.push(await readAdapterHost(addon, join(adapterDir, n), ckpt.config, { pageLocked: v.device === 'cuda' }));
  console.log(`adapters ${names.join(', ')}: rank ${Math.max(...hosts.map((h) => h.info.rank))}`);
}
const loraModules = LORA_MODULES.filter((m) => hosts.some((h) => h.info.targetModules.includes(m)));

async function measure({ tp, gpuIdStep, customAllReduce }) {
  const where = v.device === 'cpu' ? 'CPU' : `GPU${tp > 1 ? 's' : ''} ${Array.from({ length: tp }, (_, r) => r * gpuIdStep).join(',')}`;
  console.log(`tp ${tp} on ${where}${customAllReduce === null ? '' : `, customAllReduce ${customAllReduce}`}: building engines...`);
  const t0 = performance.now();
  const sup = new Supervisor(tp);
  try {
    const engine = {
      device: v.device,
      blockSize: w.BLOCK,
      kvBlocks: w.kvBlocks,
      memFractionStatic: 0.9,
      loraSlots: hosts.length,
      maxLoraRank: hosts.length ? Math.max(...hosts.map((h) => h.info.rank)) : 0,
      loraModules,
      threads: 0,
      cudaGraphMaxBs: Math.max(...batches),
      ...(customAllReduce === null ? {} : { customAllReduce }),
    };
    const plan = { engine, loraEnabled: hosts.length > 0, contextLength: ckpt.config.maxPositionEmbeddings };
    const ranks = planRanks(plan, ckpt.config, ckpt.tensors, { tpSize: tp, baseGpuId: 0, gpuIdStep }, sup.tpGroup, gpus);
    const inits = await initRanks(sup.actors.executors, ranks);
    const shards = planTensorParallel(ckpt.config, tp);
    const handles = inits.map((i) => i.handle);
    for (const [slot, h] of hosts.entries()) await fillSlot(addon, handles, shards, ckpt.config, slot, h.host.handle);
    const step = (batch) => stepRanks(sup.actors.executors, batch);
    const info = inits[0].info;
    const out = {
      tp,
      gpuIdStep,
      customAllReduce,
      collective: info.collective,
      devices: inits.map((i) => i.info.deviceName),
      setupSeconds: +((performance.now() - t0) / 1000).toFixed(1),
      decode: [],
    };
    console.log(`  up in ${out.setupSeconds} s: ${out.devices.join(' + ')}, collective ${out.collective}`);
    if (customAllReduce && tp > 1 && gpuIdStep > 0 && v.device === 'cuda' && info.collective !== 'p2p+nccl') {
      console.log(`  note: customAllReduce asked for, but the collective is ${info.collective} (no peer access, or an addon without it)`);
    }
    await w.fillContext(step);
    for (const b of batches) {
      const row = { batch: b };
      for (const [name, distinct] of cases) row[`${name}Ms`] = await w.decode(step, distinct, b);
      out.decode.push(row);
      console.log(`  decode b${b}: ${cases.map(([n]) => `${n} ${row[`${n}Ms`].toFixed(2)} ms`).join(', ')}`);
    }
    if (!skip.has('prefill')) {
      out.prefill8x512 = {};
      for (const [name, distinct] of cases) out.prefill8x512[`${name}TokensPerS`] = (await w.prefill(step, distinct)).tokensPerS;
      console.log(`  prefill 8x512: ${cases.map(([n]) => `${n} ${out.prefill8x512[`${n}TokensPerS`].toFixed(0)} tokens/s`).join(', ')}`);
    }
    return out;
  } finally {
    await sup.close();
  }
}

// At tp > 1 on distinct GPUs each customAllReduce setting is a run. On the CPU the setting
// changes nothing, but the runs keep the GPU's shape (a dry run of this script).
const plans = [];
for (const tp of tps) {
  if (tp === 1) plans.push({ tp, gpuIdStep: 1, customAllReduce: null });
  else if (v.device === 'cpu' || gpus >= tp) for (const c of customAllReduce) plans.push({ tp, gpuIdStep: 1, customAllReduce: c });
  else if (tp === 2) plans.push({ tp, gpuIdStep: 0, customAllReduce: null });
  else console.log(`tp ${tp}: left out, ${gpus} GPU(s) visible`);
}
const t0 = performance.now();
const failed = [];
const runs = [];
for (const p of plans) {
  // A run that fails (out of memory at tp 1 on a big model, say) is reported; the others still run.
  try {
    runs.push(await measure(p));
  } catch (err) {
    console.log(`  failed: ${err.message}`);
    failed.push({ ...p, error: err.message });
  }
}
for (const h of hosts) addon.destroyHostAdapter(h.host.handle);

// ---- what the targets need -----------------------------------------------------------------
const pct = (x) => `${x >= 0 ? '+' : ''}${(100 * x).toFixed(1)}%`;
const decodeMs = (run, b, name) => run.decode.find((d) => d.batch === b)?.[`${name}Ms`];
const tp1 = runs.find((r) => r.tp === 1);
const RATIO_TARGET = 0.6;
const tpRatios = tp1
  ? runs
      .filter((r) => r.tp > 1)
      .map((r) => {
        const ratio = Object.fromEntries(
          batches.map((b) => [b, Object.fromEntries(cases.map(([n]) => [n, decodeMs(r, b, n) / decodeMs(tp1, b, n)]))]),
        );
        // The target is on the base model's decode at batches 1 and 32.
        const judged = [1, 32].filter((b) => ratio[b]?.base !== undefined);
        return {
          tp: r.tp,
          customAllReduce: r.customAllReduce,
          collective: r.collective,
          ratio,
          target: RATIO_TARGET,
          met: judged.length ? judged.every((b) => ratio[b].base <= RATIO_TARGET) : null,
        };
      })
  : [];
const loraOverhead =
  cases.length === 2
    ? runs.map((r) => ({
        tp: r.tp,
        customAllReduce: r.customAllReduce,
        decode: Object.fromEntries(r.decode.map((d) => [d.batch, d.adapters8Ms / d.baseMs - 1])),
        prefill: r.prefill8x512 ? r.prefill8x512.baseTokensPerS / r.prefill8x512.adapters8TokensPerS - 1 : null,
      }))
    : null;

const bw = hbmBandwidth(runs[0]?.devices[0] ?? '', v['hbm-tbps']);
const c = ckpt.config;
const roofline = {
  hbmTBps: bw.tbps,
  hbmSource: bw.source,
  runs: runs.map((r) => {
    const shards = planTensorParallel(c, r.tp);
    const weights = weightBytesPerRank(ckpt.tensors, c, shards);
    const kvPerToken = kvBytesPerToken(c, shards[0]);
    // Ranks sharing one GPU share its bandwidth.
    const perGpu = r.gpuIdStep === 0 ? r.tp : 1;
    return {
      tp: r.tp,
      customAllReduce: r.customAllReduce,
      weightBytesPerRank: weights,
      kvBytesPerTokenPerRank: kvPerToken,
      batches: r.decode.map((d) => {
        const bytes = weights + d.batch * context * kvPerToken;
        const ms = readMs(perGpu * bytes, bw.tbps);
        return { batch: d.batch, bytesPerRank: bytes, ms, baseMs: d.baseMs ?? null, fraction: ms && d.baseMs ? ms / d.baseMs : null };
      }),
    };
  }),
};
for (const t of tpRatios) {
  const s = batches.map((b) => `b${b} ${t.ratio[b].base?.toFixed(3) ?? '-'}`).join(', ');
  console.log(
    `tp${t.tp}/tp1 decode (base), customAllReduce ${t.customAllReduce} (${t.collective}): ${s}; target <= ${RATIO_TARGET}: ${t.met ? 'met' : 'not met'}`,
  );
}
for (const o of loraOverhead ?? []) {
  const s = Object.entries(o.decode)
    .map(([b, x]) => `b${b} ${pct(x)}`)
    .join(', ');
  console.log(
    `LoRA overhead at tp ${o.tp}${o.customAllReduce === null ? '' : ` (customAllReduce ${o.customAllReduce})`}: decode ${s}${o.prefill === null ? '' : `, prefill ${pct(o.prefill)}`}`,
  );
}
for (const r of roofline.runs) {
  const s = r.batches
    .map((b) => `b${b.batch} ${b.ms?.toFixed(2) ?? '?'} ms${b.fraction ? ` (the base step takes ${(1 / b.fraction).toFixed(2)}x)` : ''}`)
    .join(', ');
  const car = r.customAllReduce === null ? '' : ` (customAllReduce ${r.customAllReduce})`;
  console.log(`roofline tp ${r.tp}${car}: ${(r.weightBytesPerRank / 1e9).toFixed(2)} GB of weights per rank; ${s} at ${bw.source}`);
}

writeFileSync(
  outFile,
  JSON.stringify(
    {
      date: new Date().toISOString().slice(0, 10),
      model: { dir: ckpt.dir, ...modelShape(c, ckpt.tensors) },
      device: v.device,
      gpus,
      gpuNames: [...new Set(runs.flatMap((r) => r.devices))],
      context,
      batches,
      adapters: hosts.length ? { count: hosts.length, rank: hosts[0].info.rank, dir: adapterDir } : null,
      seconds: +((performance.now() - t0) / 1000).toFixed(0),
      runs,
      failed,
      tpRatios,
      loraOverhead,
      roofline,
    },
    null,
    1,
  ) + '\n',
);
console.log(`written to ${outFile} (${((performance.now() - t0) / 1000).toFixed(0)} s)`);
if (failed.length > 0) process.exitCode = 1;

// How fast adapters load: disk to CPU (the native reader, page cache warm, into reused and into
// fresh memory, against the JS reader kept for merging) and CPU to GPU (fillLoraSlot into a CUDA
// engine's pool, from the page-locked host copy), for an adapter of RANK (default 16) on all
// seven modules of the Llama-3.1-8B shape (84 MB in bf16 at rank 16, 672 MB at 128); and decode
// steps on other slots while fills run, against the same steps alone, with the streams at their
// default priority and with TROUPE_CUDA_STREAM_PRIORITY=1 (steps first, fills last).
//   node bench/gpu-adapter-load.js OUT.json [MODEL_DIR] [RANK]
// MODEL_DIR is a checkpoint of that shape (test/gpu/make_checkpoint.py --shape 8b); without it,
// or without a GPU, only disk to CPU is measured. Writes the figures as JSON with the date and
// the devices, and prints them.
import { cpus } from 'node:os';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { greedyBatch, mean, median } from './gpu-steps.js';
import { LLAMA_8B_CONFIG as LLAMA_8B } from './llama-8b-config.js';
const root = new URL('..', import.meta.url);
const dist = (p) => import(new URL(`dist/src/${p}`, root).href);
const { loadNative } = await dist('engine/native.js');
const { openCheckpoint } = await dist('model/checkpoint.js');
const { parseModelConfig } = await dist('model/config.js');
const { makeRandomAdapter } = await dist('model/demo.js');
const { loadAdapterWeights, readAdapterHost } = await dist('model/adapter.js');
const { LORA_MODULES } = await dist('engine/types.js');

const [outFile, modelDir, rankArg = '16'] = process.argv.slice(2);
if (!outFile) throw new Error('usage: node bench/gpu-adapter-load.js OUT.json [MODEL_DIR] [RANK]');
const RANK = Number(rankArg);
if (!(Number.isInteger(RANK) && RANK >= 1 && RANK <= 256)) throw new Error(`RANK must be an integer in 1..256, got ${rankArg}`);
const addon = loadNative();
const ckpt = modelDir ? openCheckpoint(modelDir) : null;
const config = ckpt ? ckpt.config : parseModelConfig(LLAMA_8B, 'config.json');
const hfShape = ckpt ? JSON.parse((await import('node:fs')).readFileSync(join(modelDir, 'config.json'), 'utf8')) : LLAMA_8B;
const gbps = (bytes, s) => bytes / s / 1e9;
const seconds = (t0) => Number(process.hrtime.bigint() - t0) / 1e9;

const tmp = mkdtempSync(join(tmpdir(), 'troupe-adapter-load-'));
const result = {
  date: new Date().toISOString(),
  cpu: `${cpus()[0]?.model ?? 'unknown CPU'} x ${cpus().length}`,
  gpu: null,
  model: modelDir ?? null,
  adapter: `rank ${RANK}, all seven modules, bf16`,
  layers: config.numLayers,
};
try {
  const dirs = [0, 1, 2, 3].map((i) => {
    const d = join(tmp, `a${i}`);
    makeRandomAdapter(d, { rank: RANK, alpha: 2 * RANK, targetModules: [...LORA_MODULES], seed: 70 + i, dtype: 'BF16' }, hfShape);
    return d;
  });
  const pageLocked = ckpt !== null && addon.cudaDeviceCount() > 0;
  // Disk to CPU. The first read of each file warms the page cache. Fresh: reads while every
  // earlier copy is kept, so each fills new memory (as when adapters are first loaded); recycled:
  // each copy freed before the next read, whose buffer is then one the addon kept (as when
  // adapters churn through CPU memory). Medians.
  const read = async (k) => {
    const t0 = process.hrtime.bigint();
    const { host } = await readAdapterHost(addon, dirs[k % 4], config, { pageLocked });
    return { host, s: seconds(t0) };
  };
  const kept = [];
  for (let k = 0; k < 4; k++) kept.push((await read(k)).host);
  const fresh = [];
  for (let k = 0; k < 7; k++) {
    const r = await read(k);
    kept.push(r.host);
    fresh.push(r.s);
  }
  const bytes = kept[0].bytes;
  for (const h of kept) addon.destroyHostAdapter(h.handle);
  const native = [];
  for (let k = 0; k < 9; k++) {
    const r = await read(k);
    native.push(r.s);
    addon.destroyHostAdapter(r.host.handle);
  }
  const js = [];
  for (let k = 0; k < 3; k++) {
    const t0 = process.hrtime.bigint();
    loadAdapterWeights(dirs[k], config);
    js.push(seconds(t0));
  }
  // Four reads at once (the loader runs up to three), the median of five rounds; the first may
  // wait for the kernel to assemble huge pages. All but the first round reuse kept buffers, as
  // far as the addon keeps them.
  let four = [];
  const rounds = [];
  for (let k = 0; k < 5; k++) {
    for (const r of four) addon.destroyHostAdapter(r.host.handle);
    const t0 = process.hrtime.bigint();
    four = await Promise.all(dirs.map((d) => readAdapterHost(addon, d, config, { pageLocked })));
    rounds.push(seconds(t0));
  }
  const fourS = median(rounds);
  result.adapterBytes = bytes;
  result.diskToCpu = {
    nativeGBps: gbps(bytes, median(native)),
    nativeMs: median(native) * 1e3,
    nativeFreshGBps: gbps(bytes, median(fresh)),
    nativeFreshMs: median(fresh) * 1e3,
    pageLocked: four[0].host.pageLocked,
    fourAtOnceGBps: gbps(4 * bytes, fourS),
    jsReaderGBps: gbps(bytes, median(js)),
    jsReaderMs: median(js) * 1e3,
  };
  console.log(`adapter: ${(bytes / 1e6).toFixed(1)} MB (${result.adapter}, ${config.numLayers} layers)`);
  console.log(
    `disk to CPU (page cache warm): native ${result.diskToCpu.nativeGBps.toFixed(2)} GB/s (${result.diskToCpu.nativeMs.toFixed(1)} ms, ` +
      `${result.diskToCpu.pageLocked ? 'page-locked' : 'ordinary memory'}; into fresh memory ${result.diskToCpu.nativeFreshGBps.toFixed(2)} GB/s, ` +
      `${result.diskToCpu.nativeFreshMs.toFixed(1)} ms), four at once ${result.diskToCpu.fourAtOnceGBps.toFixed(2)} GB/s; ` +
      `JS reader ${result.diskToCpu.jsReaderGBps.toFixed(3)} GB/s (${result.diskToCpu.jsReaderMs.toFixed(0)} ms)`,
  );

  if (ckpt && addon.cudaDeviceCount() > 0) {
    // Read when the engine makes its streams.
    for (const priority of [false, true]) {
      if (priority) process.env.TROUPE_CUDA_STREAM_PRIORITY = '1';
      else delete process.env.TROUPE_CUDA_STREAM_PRIORITY;
      const figures = await fillsAndSteps(four, bytes);
      if (priority) result.withStreamPriority = figures;
      else Object.assign(result, figures);
    }
    delete process.env.TROUPE_CUDA_STREAM_PRIORITY;
  } else {
    console.log('CPU to GPU: not measured (give MODEL_DIR, a Llama-3.1-8B-shaped checkpoint, on a CUDA machine)');
  }
  for (const r of four) addon.destroyHostAdapter(r.host.handle);
  writeFileSync(outFile, JSON.stringify(result, null, 2) + '\n');
} finally {
  rmSync(tmp, { recursive: true, force: true });
}

/** CPU-to-GPU fills and decode steps beside them on a new engine (its streams made now). */
async function fillsAndSteps(four, bytes) {
  const h = addon.createEngine(ckpt.config, ckpt.tensors, {
    device: 'cuda',
    blockSize: 16,
    kvBlocks: 4096,
    memFractionStatic: 0.85,
    loraSlots: 4,
    maxLoraRank: RANK,
    loraModules: [...LORA_MODULES],
    threads: 0,
    cudaGraphMaxBs: 64,
  });
  result.gpu = addon.engineInfo(h).deviceName;
  const figures = {};
  const tag = process.env.TROUPE_CUDA_STREAM_PRIORITY ? 'stream priority: ' : '';
  // CPU to GPU: each fill from its page-locked host copy, slots 1-3 in turn.
  const fills = [];
  for (let k = 0; k < 12; k++) {
    const t = process.hrtime.bigint();
    await addon.fillLoraSlot(h, 1 + (k % 3), four[1 + (k % 3)].host.handle);
    if (k >= 3) fills.push(seconds(t));
  }
  figures.cpuToGpu = { GBps: gbps(bytes, median(fills)), ms: median(fills) * 1e3 };
  console.log(`${tag}CPU to GPU: ${figures.cpuToGpu.GBps.toFixed(1)} GB/s (${figures.cpuToGpu.ms.toFixed(2)} ms per adapter) on ${result.gpu}`);
  // Two held slots exchanging their adapters inside GPU memory (what the scheduler does to bring
  // a wanted adapter into a low slot): both adapters' bytes read and written once, by one launch.
  const swaps = [];
  for (let k = 0; k < 8; k++) {
    const t = process.hrtime.bigint();
    await addon.swapLoraSlots(h, 1 + (k % 2), 3);
    if (k >= 2) swaps.push(seconds(t));
  }
  figures.slotSwap = { ms: median(swaps) * 1e3, adapterGBps: gbps(bytes, median(swaps)) };
  console.log(`${tag}slot swap: ${figures.slotSwap.ms.toFixed(2)} ms (${figures.slotSwap.adapterGBps.toFixed(1)} GB/s of one adapter's bytes)`);

  // Decode steps of 32 rows (base and slot 0) over 256-token contexts, alone and while slots
  // 1-3 are filled over and over; the steps yield to the event loop so fills complete.
  await addon.fillLoraSlot(h, 0, four[0].host.handle);
  const rows = Array.from({ length: 32 }, (_, i) => ({
    tokens: [1000 + i],
    cached: 255,
    blocks: Array.from({ length: 16 }, (_, k) => i * 16 + k),
    slot: i % 2 === 0 ? 0 : -1,
  }));
  const decode = greedyBatch(rows, 16);
  for (let k = 0; k < 5; k++) addon.step(h, decode);
  const timeStep = () => {
    const t = process.hrtime.bigint();
    addon.step(h, decode);
    return seconds(t);
  };
  const alone = Array.from({ length: 30 }, timeStep);
  let filling = true;
  let done = 0;
  const during = [];
  const filler = (async () => {
    for (let k = 0; k < 9; k++, done++) await addon.fillLoraSlot(h, 1 + (k % 3), four[1 + (k % 3)].host.handle);
    filling = false;
  })();
  while (filling) {
    during.push(timeStep());
    await new Promise((r) => setImmediate(r));
  }
  await filler;
  figures.stepsDuringFills = {
    decodeMsAlone: median(alone) * 1e3,
    decodeMsDuringFills: median(during) * 1e3,
    // A fill's kernels may slow only the few steps they meet, which the median hides.
    decodeMsMeanAlone: mean(alone) * 1e3,
    decodeMsMeanDuringFills: mean(during) * 1e3,
    stepsDuringFills: during.length,
    fills: done,
  };
  console.log(
    `${tag}decode b32 (other slots): ${figures.stepsDuringFills.decodeMsAlone.toFixed(2)} ms alone, ` +
      `${figures.stepsDuringFills.decodeMsDuringFills.toFixed(2)} ms while ${done} fills ran (${during.length} steps meanwhile); ` +
      `means ${figures.stepsDuringFills.decodeMsMeanAlone.toFixed(2)} / ${figures.stepsDuringFills.decodeMsMeanDuringFills.toFixed(2)} ms`,
  );
  addon.destroyEngine(h);
  return figures;
}

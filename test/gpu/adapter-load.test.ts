// Loading adapters into the CUDA pool (TROUPE_GPU_TESTS=1, on the checkpoint of
// make_checkpoint.py, TROUPE_GPU_CHECKPOINT or /tmp/troupe-llama-1b):
// - host adapters read by native code are page-locked, and fills from f32, f16 and bf16 files
//   (converted to bf16 on the GPU) give the CPU backend's logprobs within the LoRA kernels' bar;
// - fills overlap steps: while the slot table holds a fill of slot 2 after it has claimed the
//   slot, decode steps of the base model and slots 0-1 (replaying the CUDA graph captured before
//   the fill) finish with the results of an engine that had every adapter from the start; a
//   prefill that uses slot 2 waits for the fill, then gets the new adapter's results, and so do
//   decodes of it from a graph;
// - it prints disk-to-CPU and CPU-to-GPU GB/s for a rank-16 adapter on all seven modules of this
//   checkpoint, and of the Llama-3.1-8B shape when TROUPE_GPU_CHECKPOINT_8B names such a
//   checkpoint (make_checkpoint.py --shape 8b), through bench/gpu-adapter-load.js.
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it, onTestFinished } from 'vitest';
import { LORA_MODULES, type DType, type StepResult } from '../../src/engine/types.js';
import { readAdapterHost } from '../../src/model/adapter.js';
import { makeRandomAdapter } from '../../src/model/demo.js';
import { packageRoot } from '../../src/paths.js';
import {
  addon,
  createEngine,
  loadSlot,
  logSoftmax,
  makeBatch,
  openCheckpoint,
  prompt,
  stepOnWorker,
  tempDir,
  type SeqStep,
} from '../engine-fixtures.js';

const dir = process.env.TROUPE_GPU_CHECKPOINT ?? '/tmp/troupe-llama-1b';
const hfConfig = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8')) as object;
const ckpt = openCheckpoint(dir);
const vocab = ckpt.config.vocabSize;
const tmp = tempDir('gpu-adapter-load');
const DTYPES: DType[] = ['F32', 'F16', 'BF16'];
// Deltas of about 0.1 per output feature, as in lora-kernels.test.ts, so a lost or garbled one shows.
const adapterDir = (name: string): string => join(tmp.dir, name);
DTYPES.forEach((dtype, i) =>
  makeRandomAdapter(adapterDir(dtype), { rank: 16, alpha: 32, targetModules: [...LORA_MODULES], seed: 80 + i, dtype, bStd: 0.1 / 4 }, hfConfig),
);
makeRandomAdapter(
  adapterDir('late'),
  { rank: 8, alpha: 16, targetModules: ['q_proj', 'v_proj', 'down_proj'], seed: 90, dtype: 'BF16', bStd: 0.1 / Math.sqrt(8) },
  hfConfig,
);
const pool = { blockSize: 16, kvBlocks: 256, loraSlots: 4, maxLoraRank: 16, cudaGraphMaxBs: 16 };
// The CPU keeps activations in f32, the GPU rounds GEMM inputs to bf16 (see lora-kernels.test.ts).
const TOL = 0.08;
const handles: number[] = [];
const hosts: number[] = [];
afterAll(() => {
  for (const h of handles) addon.destroyEngine(h);
  for (const h of hosts) addon.destroyHostAdapter(h);
  tmp.cleanup();
});

function engine(device: 'cpu' | 'cuda'): number {
  const h = createEngine(ckpt, { ...pool, device });
  handles.push(h);
  return h;
}

async function host(name: string): Promise<number> {
  const { host: hostAdapter } = await readAdapterHost(addon, adapterDir(name), ckpt.config, { pageLocked: true });
  expect(hostAdapter.pageLocked).toBe(true);
  hosts.push(hostAdapter.handle);
  return hostAdapter.handle;
}

const logprobs = (r: StepResult, n: number): Float64Array[] =>
  Array.from({ length: n }, (_, i) => logSoftmax(r.logits!.subarray(i * vocab, (i + 1) * vocab)));

/** Largest |logprob difference| over each reference row's 8 likeliest tokens. */
function maxDiff(got: Float64Array[], want: Float64Array[]): number {
  let d = 0;
  want.forEach((ref, i) => {
    const top = Array.from(ref.keys())
      .sort((x, y) => ref[y]! - ref[x]!)
      .slice(0, 8);
    for (const t of top) d = Math.max(d, Math.abs(got[i]![t]! - ref[t]!));
  });
  return d;
}

// Rows of base and slots 0-2, each with its own 4 blocks: a prefill, then decodes fed fixed tokens.
const LENS = [5, 7, 3, 9, 6, 4];
const SLOTS = [-1, 0, 1, 2, 0, 1];
const rowBlocks = (i: number): number[] => [0, 1, 2, 3].map((k) => 4 * i + k);
const prefill = (rows: number[], slots = SLOTS): SeqStep[] =>
  rows.map((i) => ({ tokens: prompt(LENS[i]!, 100 + i, vocab), cached: 0, blocks: rowBlocks(i), slot: slots[i] }));
const decode = (rows: number[], d: number, slots = SLOTS): SeqStep[] =>
  rows.map((i) => ({ tokens: [prompt(1, 200 + 10 * d + i, vocab)[0]!], cached: LENS[i]! + d, blocks: rowBlocks(i), slot: slots[i] }));
const run = (h: number, seqs: SeqStep[]): StepResult => addon.step(h, makeBatch(seqs, { maxBlocksPerSeq: 4, returnLogits: true }));

describe('adapter loading on the GPU', () => {
  it("fills from page-locked f32, f16 and bf16 host copies give the CPU backend's logprobs", async () => {
    const cpu = engine('cpu');
    const gpu = engine('cuda');
    for (const [slot, dtype] of DTYPES.entries()) {
      loadSlot(cpu, slot, adapterDir(dtype), ckpt);
      await addon.fillLoraSlot(gpu, slot, await host(dtype));
    }
    const rows = [0, 1, 2, 3, 4, 5];
    const slots = [-1, 0, 1, 2, 0, 1];
    const want = [prefill(rows, slots), ...[0, 1, 2].map((d) => decode(rows, d, slots))].map((seqs) => logprobs(run(cpu, seqs), 6));
    const got = [prefill(rows, slots), ...[0, 1, 2].map((d) => decode(rows, d, slots))].map((seqs) => logprobs(run(gpu, seqs), 6));
    const worst = Math.max(...got.map((g, k) => maxDiff(g, want[k]!)));
    console.log(`fills from f32/f16/bf16 host copies: max |logprob diff| vs CPU ${worst.toFixed(4)}`);
    expect(worst).toBeLessThan(TOL);
    // The adapters matter: without them the rows of slots 0-2 are further off than the bar.
    const base = logprobs(
      run(
        engine('cuda'),
        prefill(
          rows,
          slots.map(() => -1),
        ),
      ),
      6,
    );
    expect(maxDiff(base.slice(1, 4), want[0]!.slice(1, 4))).toBeGreaterThan(4 * TOL);
  });

  it('runs steps of other slots (CUDA graphs included) during a fill, and holds a step of the filled slot until it ends', async () => {
    // The reference had every adapter before its first step.
    const ref = engine('cuda');
    for (const [slot, name] of ['F32', 'BF16', 'late'].entries()) await addon.fillLoraSlot(ref, slot, await host(name));
    const others = [0, 1, 2, 4, 5];
    const wantOthers = [run(ref, prefill(others)), run(ref, decode(others, 0)), run(ref, decode(others, 1))];
    const wantLate = [run(ref, prefill([3])), run(ref, decode([3], 0)), run(ref, decode([3], 1))];

    const gpu = engine('cuda');
    await addon.fillLoraSlot(gpu, 0, await host('F32'));
    await addon.fillLoraSlot(gpu, 1, await host('BF16'));
    const got = [run(gpu, prefill(others)), run(gpu, decode(others, 0))]; // the second captures a graph
    addon.holdLoraSlotWrites(gpu, 2);
    onTestFinished(() => addon.releaseLoraSlotWrites(gpu, 2));
    let filled = false;
    const fill = addon.fillLoraSlot(gpu, 2, await host('late')).then(() => {
      filled = true;
    });
    await addon.waitForLoraSlot(gpu, 2, 'write-held');
    got.push(await stepOnWorker(gpu, makeBatch(decode(others, 1), { maxBlocksPerSeq: 4, returnLogits: true })).result);
    expect(filled).toBe(false);
    got.forEach((r, k) => {
      expect(Array.from(r.tokens)).toEqual(Array.from(wantOthers[k]!.tokens));
      expect(maxDiff(logprobs(r, others.length), logprobs(wantOthers[k]!, others.length))).toBeLessThan(1e-3);
    });

    const late = stepOnWorker(gpu, makeBatch(prefill([3]), { maxBlocksPerSeq: 4, returnLogits: true }));
    await addon.waitForLoraSlot(gpu, 2, 'step-waiting');
    expect(late.done()).toBe(false);
    addon.releaseLoraSlotWrites(gpu, 2);
    await fill;
    const gotLate = [await late.result, run(gpu, decode([3], 0)), run(gpu, decode([3], 1))];
    gotLate.forEach((r, k) => {
      expect(Array.from(r.tokens)).toEqual(Array.from(wantLate[k]!.tokens));
      expect(maxDiff(logprobs(r, 1), logprobs(wantLate[k]!, 1))).toBeLessThan(1e-3);
    });
  });

  it('swaps slots (one of them empty) with the results the adapters gave where they were, graphs included', async () => {
    const ref = engine('cuda');
    const gpu = engine('cuda');
    for (const h of [ref, gpu]) for (const [slot, name] of ['F32', 'BF16', 'late'].entries()) await addon.fillLoraSlot(h, slot, await host(name));
    const rows = [0, 1, 2, 3, 4, 5];
    const steps = (slots: number[]): SeqStep[][] => [prefill(rows, slots), ...[0, 1, 2].map((d) => decode(rows, d, slots))];
    const want = steps(SLOTS).map((seqs) => run(ref, seqs));
    // Graphs captured with the adapters where they were are replayed after the swaps.
    steps(SLOTS).forEach((seqs) => run(gpu, seqs));
    await addon.swapLoraSlots(gpu, 0, 3); // F32 into the empty slot 3
    await addon.swapLoraSlots(gpu, 2, 1); // late and BF16 change places
    const moved = SLOTS.map((s) => [-1, 3, 2, 1][s + 1]!);
    const got = steps(moved).map((seqs) => run(gpu, seqs));
    got.forEach((r, k) => {
      expect(Array.from(r.tokens)).toEqual(Array.from(want[k]!.tokens));
      expect(maxDiff(logprobs(r, rows.length), logprobs(want[k]!, rows.length))).toBeLessThan(1e-3);
    });
    expect(() => run(gpu, prefill([1], [-1, 0]))).toThrow(/LoRA slot 0 holds no adapter/);
  });

  it('prints disk-to-CPU and CPU-to-GPU speed for a rank-16 adapter on all seven modules', async () => {
    const bytes = (await readAdapterHost(addon, adapterDir('BF16'), ckpt.config, { pageLocked: true })).host;
    addon.destroyHostAdapter(bytes.handle);
    const reads: number[] = [];
    for (let k = 0; k < 5; k++) {
      const t = performance.now();
      const { host: h } = await readAdapterHost(addon, adapterDir('BF16'), ckpt.config, { pageLocked: true });
      reads.push(performance.now() - t);
      addon.destroyHostAdapter(h.handle);
    }
    const gpu = engine('cuda');
    const h = await host('BF16');
    const fills: number[] = [];
    for (let k = 0; k < 8; k++) {
      const t = performance.now();
      await addon.fillLoraSlot(gpu, k % 4, h);
      fills.push(performance.now() - t);
    }
    const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
    const gb = (ms: number): string => (bytes.bytes / ms / 1e6).toFixed(2);
    console.log(
      `${(bytes.bytes / 1e6).toFixed(1)} MB bf16 adapter (rank 16, all modules, ${ckpt.config.numLayers} layers) on ${addon.engineInfo(gpu).deviceName}: ` +
        `disk to CPU ${gb(median(reads))} GB/s (${median(reads).toFixed(1)} ms, page cache warm, page-locked), CPU to GPU ${gb(median(fills.slice(2)))} GB/s (${median(fills.slice(2)).toFixed(2)} ms)`,
    );
    const big = process.env.TROUPE_GPU_CHECKPOINT_8B;
    if (big) {
      const out = join(tmp.dir, 'adapter-load-8b.json');
      const r = spawnSync(process.execPath, [join(packageRoot(), 'bench', 'gpu-adapter-load.js'), out, big], { encoding: 'utf8' });
      console.log(`bench/gpu-adapter-load.js on ${big}:\n${r.stdout}${r.stderr}`);
      expect(r.status).toBe(0);
      console.log(readFileSync(out, 'utf8'));
    } else {
      console.log(
        'TROUPE_GPU_CHECKPOINT_8B is not set: no Llama-3.1-8B-shape figures (node bench/gpu-adapter-load.js OUT.json MODEL_DIR gives them)',
      );
    }
  }, 600_000);
});

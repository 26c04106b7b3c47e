// Qwen2, Qwen3 and Mistral on the CUDA backend against transformers and transformers + PEFT
// (runs only with TROUPE_GPU_TESTS=1, on a CUDA machine). Each family's random checkpoint of a
// real shape (Qwen2.5-0.5B: q/k/v biases, 7 query heads per KV head; Qwen3-1.7B: per-head q/k
// norms; Mistral-7B with a 100-token sliding window, which the 200- and 333-token prompts
// outgrow) and its references are written by:
//
//   python3 test/gpu/make_checkpoint.py --shape qwen2-0.5b --out /tmp/troupe-qwen2-0.5b --refs
//   python3 test/gpu/make_adapters.py --model /tmp/troupe-qwen2-0.5b
//   python3 test/gpu/make_checkpoint.py --shape qwen3-1.7b --out /tmp/troupe-qwen3-1.7b --refs
//   python3 test/gpu/make_adapters.py --model /tmp/troupe-qwen3-1.7b
//   python3 test/gpu/make_checkpoint.py --shape mistral-7b --out /tmp/troupe-mistral-7b --refs
//   python3 test/gpu/make_adapters.py --model /tmp/troupe-mistral-7b
//   TROUPE_GPU_TESTS=1 npx vitest run test/gpu/families.test.ts
//
// TROUPE_GPU_FAMILIES=qwen2,mistral runs some of the families; TROUPE_GPU_QWEN2_CHECKPOINT (and
// _QWEN3_, _MISTRAL_) name other directories. The rule is the Llama parity tests': teacher-forced
// on transformers' greedy continuation, every token's logprob is within 0.05 of transformers'
// (or, on a checkpoint where transformers' own bf16 forward drifts further from its float32 one,
// within a quarter above that drift, as cpu-vs-cuda.test.ts allows), and the greedy choice is
// transformers' wherever its top-2 gap exceeds that bar. The same holds for a batch mixing the
// base model and four adapters against PEFT (csgmv and sgmv, and over runs of slots of rank 16), and
// --tp-size 2 against one rank.
// Turning the family's difference off must break parity, so passing shows the engine runs it.
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import type { ModelConfig, ModelFamily } from '../../src/engine/types.js';
import type { Checkpoint } from '../../src/model/checkpoint.js';
import { addon, engineOptions, loadSlot, openCheckpoint } from '../engine-fixtures.js';
import { startRanks, type RankGroup } from '../tp-fixtures.js';
import {
  againstReference,
  againstRun,
  blocksPerRow,
  describeParity,
  readLoraReference,
  readReference,
  runStart,
  servedGreedyMatches,
  teacherForced,
  type Parity,
  type Position,
  type Row,
} from './parity-fixtures.js';

type Family = Exclude<ModelFamily, 'llama'>;
const DEFAULT_DIRS: Record<Family, string> = {
  qwen2: '/tmp/troupe-qwen2-0.5b',
  qwen3: '/tmp/troupe-qwen3-1.7b',
  mistral: '/tmp/troupe-mistral-7b',
};
/** The engine without the family's difference. */
const WITHOUT: Record<Family, Partial<ModelConfig>> = {
  qwen2: { qkvBias: false },
  qwen3: { qkNorm: false },
  mistral: { slidingWindow: 0 },
};
const families = (process.env.TROUPE_GPU_FAMILIES ?? 'qwen2,qwen3,mistral').split(',').map((f) => f.trim()) as Family[];
const BLOCK = 16;
const gpus = addon.cudaDeviceCount();

function expectParity(p: Parity, bar: number, minChecked: number, label: string): void {
  console.log(`${label}: ${describeParity(p, bar)}`);
  expect(p.notArgmax).toBe(0);
  expect(p.maxDiff).toBeLessThanOrEqual(bar);
  expect(p.mismatches).toBe(0);
  expect(p.checked).toBeGreaterThan(minChecked);
}

describe.each(families)('%s on the CUDA backend', (family) => {
  const dir = process.env[`TROUPE_GPU_${family.toUpperCase()}_CHECKPOINT`] ?? DEFAULT_DIRS[family];
  if (!DEFAULT_DIRS[family]) throw new Error(`TROUPE_GPU_FAMILIES: unknown family ${family}; expected qwen2, qwen3 or mistral`);
  if (!existsSync(join(dir, 'lora-reference.json'))) {
    throw new Error(`${dir} has no lora-reference.json: write the checkpoint and its references first (see the commands atop this file)`);
  }
  const ckpt: Checkpoint = openCheckpoint(dir);
  const vocab = ckpt.config.vocabSize;
  const ref = readReference(dir);
  const lora = readLoraReference(dir);
  const BAR = Math.max(0.05, 1.25 * ref.bf16MaxAbsDiff);
  const baseRows: Row[] = ref.cases.map((c) => ({ slot: -1, c }));
  const loraRows: Row[] = ['base', ...lora.adapters].flatMap((model, mi) => lora.cases[model]!.map((c) => ({ slot: mi - 1, c })));
  // The same rows with each adapter at the start of its run in a pool cut into slots of rank 16.
  const runRows: Row[] = loraRows.map((r) => (r.slot < 0 ? r : { ...r, slot: runStart(lora.adapters[r.slot]!) }));
  const slotsOf16 = { loraSlots: 16, maxLoraRank: 64, loraSlotRank: 16 };

  /** A fresh engine for one test, destroyed after it (a 7B model's copies add up). */
  async function withEngine<T>(
    config: ModelConfig,
    rows: Row[],
    over: Parameters<typeof engineOptions>[0],
    body: (h: number) => Promise<T>,
  ): Promise<T> {
    const h = addon.createEngine(
      config,
      ckpt.tensors,
      engineOptions({ device: 'cuda', blockSize: BLOCK, kvBlocks: rows.length * blocksPerRow(rows, BLOCK), ...over }),
    );
    try {
      expect(addon.engineInfo(h).device).toBe('cuda');
      return await body(h);
    } finally {
      addon.destroyEngine(h);
    }
  }

  it('reads the family from config.json', () => {
    expect(ckpt.config.family).toBe(family);
    console.log(`${family}: ${dir}, transformers bf16 drift ${ref.bf16MaxAbsDiff.toFixed(4)}, bar ${BAR.toFixed(3)}`);
  });

  it.each([
    { name: 'one prefill, decodes in CUDA graphs', chunks: 1, graphs: 8 },
    { name: 'prefill in 3 chunks, no graphs', chunks: 3, graphs: 0 },
  ])('teacher-forced logprobs match transformers: $name', async ({ chunks, graphs }) => {
    const noLora = { loraSlots: 0, loraModules: [], cudaGraphMaxBs: graphs };
    const p = await withEngine(ckpt.config, baseRows, noLora, async (h) =>
      againstReference(await teacherForced((b) => addon.step(h, b), baseRows, vocab, { blockSize: BLOCK, chunks }), baseRows, BAR),
    );
    expectParity(p, BAR, baseRows.length * 8, `${family} (${chunks} chunk(s), graphs ${graphs})`);
  });

  it("without the family's difference the engine strays from transformers (so the comparison sees it)", async () => {
    const p = await withEngine({ ...ckpt.config, ...WITHOUT[family] }, baseRows, { loraSlots: 0, loraModules: [], cudaGraphMaxBs: 8 }, async (h) =>
      againstReference(await teacherForced((b) => addon.step(h, b), baseRows, vocab, { blockSize: BLOCK, chunks: 1 }), baseRows, BAR),
    );
    console.log(`${family} without ${Object.keys(WITHOUT[family]).join(', ')}: ${describeParity(p, BAR)}`);
    expect(p.maxDiff).toBeGreaterThan(4 * BAR);
  });

  it.each([
    { loraBackend: 'csgmv' as const, loraChunkSize: 16, graphs: 32 },
    { loraBackend: 'csgmv' as const, loraChunkSize: 1, graphs: 0 },
    { loraBackend: 'sgmv' as const, loraChunkSize: 16, graphs: 32 },
  ])(
    'a batch of the base model and four adapters matches PEFT: $loraBackend, chunk $loraChunkSize, graphs up to $graphs',
    async ({ loraBackend, loraChunkSize, graphs }) => {
      const opts = { loraSlots: 4, maxLoraRank: 64, cudaGraphMaxBs: graphs, loraBackend, loraChunkSize };
      const p = await withEngine(ckpt.config, loraRows, opts, async (h) => {
        lora.adapters.forEach((name, slot) => loadSlot(h, slot, join(dir, 'adapters', name), ckpt));
        return againstReference(await teacherForced((b) => addon.step(h, b), loraRows, vocab, { blockSize: BLOCK, chunks: 1 }), loraRows, BAR);
      });
      expectParity(p, BAR, loraRows.length * 8, `${family} LoRA (${loraBackend}, chunk ${loraChunkSize}, graphs ${graphs})`);
    },
  );

  // What a server runs by default: each adapter over the run of slots its rank needs, a
  // step's kernels sized by its batch's rank.
  it('the same batch over runs of slots of rank 16 matches PEFT (csgmv, fused kernels, graphs up to 32)', async () => {
    const opts = { ...slotsOf16, cudaGraphMaxBs: 32, loraBackend: 'csgmv' as const, loraChunkSize: 16, loraKernel: 'fused' as const };
    const p = await withEngine(ckpt.config, runRows, opts, async (h) => {
      for (const name of lora.adapters) loadSlot(h, runStart(name), join(dir, 'adapters', name), ckpt);
      return againstReference(await teacherForced((b) => addon.step(h, b), runRows, vocab, { blockSize: BLOCK, chunks: 1 }), runRows, BAR);
    });
    expectParity(p, BAR, runRows.length * 8, `${family} LoRA over runs of slots of rank 16`);
  });

  describe('tensor parallelism', () => {
    const options = engineOptions({
      device: 'cuda',
      blockSize: BLOCK,
      kvBlocks: loraRows.length * blocksPerRow(loraRows, BLOCK),
      loraSlots: 4,
      maxLoraRank: 64,
      cudaGraphMaxBs: 32,
    });
    let one: Position[][];

    /**
     * The mixed batch on a group of tp ranks (prefill in two chunks), closed after; with `runs`, over
     * a pool cut into slots of rank 16.
     */
    async function run(tp: number, gpuIdStep: number, check: (g: RankGroup) => void, runs = false): Promise<Position[][]> {
      const g = await startRanks(ckpt, tp, runs ? { ...options, ...slotsOf16 } : options, { count: gpus, gpuIdStep });
      try {
        check(g);
        for (const [slot, name] of lora.adapters.entries()) await g.loadSlot(runs ? runStart(name) : slot, join(dir, 'adapters', name));
        return await teacherForced((b) => g.step(b), runs ? runRows : loraRows, vocab, { blockSize: BLOCK, chunks: 2 });
      } finally {
        await g.close();
      }
    }

    it('tp 1 on the mixed batch matches PEFT', async () => {
      one = await run(1, 1, (g) => expect(g.info.collective).toBe('none'));
      expectParity(againstReference(one, loraRows, BAR), BAR, loraRows.length * 8, `${family} tp 1`);
    });

    it("tp 2 on one GPU (host collectives) matches tp 1, each rank holding its heads' biases", async () => {
      const many = await run(2, 0, (g) => expect(g.info.collective).toBe('host'));
      expectParity(againstRun(many, one, BAR), BAR, loraRows.length * 8, `${family} tp 2, one GPU`);
    });

    it('tp 2 on one GPU over runs of slots of rank 16 matches tp 1', async () => {
      const many = await run(2, 0, (g) => expect(g.info.collective).toBe('host'), true);
      expectParity(againstRun(many, one, BAR), BAR, loraRows.length * 8, `${family} tp 2, one GPU, slots of rank 16`);
    });

    it.skipIf(gpus < 2)('tp 2 on GPUs 0 and 1 matches tp 1', async () => {
      const many = await run(2, 1, (g) => expect(g.info.collective).toBe(addon.buildInfo().nccl ? 'p2p+nccl' : 'host'));
      expectParity(againstRun(many, one, BAR), BAR, loraRows.length * 8, `${family} tp 2, two GPUs`);
    });
  });

  it("createEngine with --device cuda generates transformers' greedy tokens with matching logprobs", async () => {
    const compared = await servedGreedyMatches(dir, ref, BAR);
    console.log(`${family} served greedy generation: ${compared} tokens equal to transformers' before the first near-tie`);
    expect(compared).toBeGreaterThan(ref.cases.length * 4);
  });
});

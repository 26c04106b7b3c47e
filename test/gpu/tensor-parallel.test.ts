// --tp-size 2 on the CUDA backend against --tp-size 1 (TROUPE_GPU_TESTS=1, after
// make_checkpoint.py --refs and make_adapters.py): one batch mixes the base model and four
// adapters (ranks 8, 16, 64 and 32), teacher-forced on PEFT's greedy continuation. Every token's
// logprob at tp 2 is within 0.05 of tp 1's, and the greedy choice is tp 1's wherever tp 1's
// top-2 gap exceeds 0.05. Two ranks on one GPU (--gpu-id-step 0) exchange activations through
// host memory; with two GPUs visible, ranks on GPUs 0 and 1 run over the peer-to-peer kernels
// and NCCL, and over NCCL alone.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { addon, engineOptions, logSoftmax, makeBatch, openCheckpoint, type SeqStep } from '../engine-fixtures.js';
import { startRanks, type RankGroup } from '../tp-fixtures.js';
import { runStart } from './parity-fixtures.js';

const dir = process.env.TROUPE_GPU_CHECKPOINT ?? '/tmp/troupe-llama-1b';
const BAR = 0.05;
const ref = JSON.parse(readFileSync(join(dir, 'lora-reference.json'), 'utf8')) as {
  adapters: string[];
  cases: Record<string, Array<{ prompt: number[]; continuation: number[] }>>;
};
const ckpt = openCheckpoint(dir);
const vocab = ckpt.config.vocabSize;
const rows = ['base', ...ref.adapters].flatMap((model, mi) => ref.cases[model]!.map((c) => ({ slot: mi - 1, c })));
const gpus = addon.cudaDeviceCount();

/**
 * Per row and position: the logprobs of the reference token, the argmax and the top-2 gap; adapter i
 * in slot `place[i]` (by default slot i).
 */
async function run(
  group: RankGroup,
  place: number[] = ref.adapters.map((_, i) => i),
): Promise<Array<Array<{ lp: number; top: number; gap: number }>>> {
  for (const [i, name] of ref.adapters.entries()) await group.loadSlot(place[i]!, join(dir, 'adapters', name));
  const slotOf = (slot: number): number => (slot < 0 ? slot : place[slot]!);
  const maxBlocks = 16;
  const blocks = rows.map((_, i) => Array.from({ length: maxBlocks }, (_, k) => i * maxBlocks + k));
  const out = rows.map(() => [] as Array<{ lp: number; top: number; gap: number }>);
  const record = (logits: Float32Array, pos: number): void =>
    rows.forEach(({ c }, i) => {
      const lp = logSoftmax(logits.subarray(i * vocab, (i + 1) * vocab));
      const sorted = Float64Array.from(lp).sort().reverse();
      out[i]!.push({ lp: lp[c.continuation[pos]!]!, top: lp.indexOf(sorted[0]!), gap: sorted[0]! - sorted[1]! });
    });
  const opts = { maxBlocksPerSeq: maxBlocks, returnLogits: true };
  let r = await group.step(
    makeBatch(
      rows.map(({ slot, c }, i) => ({ tokens: c.prompt, cached: 0, blocks: blocks[i]!, slot: slotOf(slot) })),
      opts,
    ),
  );
  record(r.logits!, 0);
  for (let pos = 1; pos < rows[0]!.c.continuation.length; pos++) {
    const seqs: SeqStep[] = rows.map(({ slot, c }, i) => ({
      tokens: [c.continuation[pos - 1]!],
      cached: c.prompt.length + pos - 1,
      blocks: blocks[i]!,
      slot: slotOf(slot),
    }));
    r = await group.step(makeBatch(seqs, opts));
    record(r.logits!, pos);
  }
  return out;
}

const options = engineOptions({ device: 'cuda', blockSize: 16, kvBlocks: rows.length * 16, loraSlots: 4, maxLoraRank: 64, cudaGraphMaxBs: 32 });

describe('tensor parallelism on the GPU matches one rank', () => {
  const groups: RankGroup[] = [];
  afterAll(async () => {
    for (const g of groups) await g.close();
  });
  let one: Awaited<ReturnType<typeof run>>;

  const compare = (many: typeof one, label: string): void => {
    let maxDiff = 0,
      checked = 0,
      mismatches = 0;
    many.forEach((row, i) =>
      row.forEach((p, pos) => {
        const base = one[i]![pos]!;
        maxDiff = Math.max(maxDiff, Math.abs(p.lp - base.lp));
        if (base.gap > BAR) {
          checked++;
          if (p.top !== base.top) mismatches++;
        }
      }),
    );
    console.log(
      `${label}: max |logprob diff| vs tp 1 ${maxDiff.toFixed(4)}; greedy agrees at ${checked - mismatches}/${checked} positions with top-2 gap > ${BAR}`,
    );
    expect(maxDiff).toBeLessThanOrEqual(BAR);
    expect(mismatches).toBe(0);
    expect(checked).toBeGreaterThan(rows.length * 8);
  };

  it('tp 1', async () => {
    const g = await startRanks(ckpt, 1, options, { count: gpus });
    groups.push(g);
    expect(g.info.collective).toBe('none');
    one = await run(g);
  });

  it('tp 2 on one GPU (host collectives)', async () => {
    const g = await startRanks(ckpt, 2, options, { count: gpus, gpuIdStep: 0 });
    groups.push(g);
    expect(g.info.collective).toBe('host');
    compare(await run(g), 'tp 2, one GPU, host');
  });

  // A pool of max rank 64 cut into 16 slots of rank 16: each adapter takes the run of slots its rank
  // needs (runStart), and a step's kernels take its batch's rank.
  it('tp 2 on one GPU (host collectives), slots of rank 16', async () => {
    const runs = { ...options, loraSlots: 16, loraSlotRank: 16 };
    const g = await startRanks(ckpt, 2, runs, { count: gpus, gpuIdStep: 0 });
    groups.push(g);
    compare(await run(g, ref.adapters.map(runStart)), 'tp 2, one GPU, host, slots of rank 16');
  });

  // By default the decode steps' all-reduces (16 rows) take the peer-to-peer kernels and the
  // prefill's (thousands of tokens) NCCL; with customAllReduce off every one takes NCCL.
  it.skipIf(gpus < 2)('tp 2 on GPUs 0 and 1 (peer-to-peer and NCCL)', async () => {
    const g = await startRanks(ckpt, 2, options, { count: gpus });
    groups.push(g);
    expect(g.info.collective).toBe(addon.buildInfo().nccl ? 'p2p+nccl' : 'host');
    compare(await run(g), `tp 2, two GPUs, ${g.info.collective}`);
  });

  it.skipIf(gpus < 2)('tp 2 on GPUs 0 and 1 (NCCL only)', async () => {
    const g = await startRanks(ckpt, 2, { ...options, customAllReduce: false }, { count: gpus });
    groups.push(g);
    expect(g.info.collective).toBe(addon.buildInfo().nccl ? 'nccl' : 'host');
    compare(await run(g), `tp 2, two GPUs, ${g.info.collective}`);
  });
});

// Multi-LoRA on the CUDA backend against transformers + PEFT (TROUPE_GPU_TESTS=1, after
// make_checkpoint.py --refs and make_adapters.py). One batch mixes the base model and four
// adapters (rank 8 on q/v, ranks 16, 64 and 32 on all seven modules); teacher-forced on PEFT's greedy
// continuation, every token's logprob is within 0.05 of PEFT's (or a quarter above transformers'
// own bf16 drift from float32 on the checkpoint, where reference.json records a larger one) and
// the greedy choice is PEFT's wherever its top-2 gap exceeds 0.05. Both kernel layouts and several chunk sizes run, each with
// every way of running the LoRA kernels (engine option loraKernel). A pool of rank 16 (the base
// model and the two adapters that fit it) also runs the decode GEMM taking o's and down's LoRA
// deltas itself, and the item shrink in its place (TROUPE_LORA_IN_GEMM). At rank 64 the fused
// layout's decode GEMM spreads q/k/v's and down's shrink over its weight blocks and adds their
// deltas from the padding columns; with TROUPE_LORA_IN_GEMM=0 they take the item shrink instead, as
// o does.
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { withEnv } from '../../bench/engine-variants.js';
import { addon, engineOptions, loadSlot, logSoftmax, makeBatch, openCheckpoint, type SeqStep } from '../engine-fixtures.js';
import type { EngineOptions } from '../../src/engine/types.js';

const dir = process.env.TROUPE_GPU_CHECKPOINT ?? '/tmp/troupe-llama-1b';
const BAR = 0.05;
// The references are float32 forwards on the bf16 weights; the engine rounds to bf16 as
// transformers' bf16 forward does, whose own distance from them is the floor of any bar (the
// tensor-core kernels at chunk 1 were 0.0510 from PEFT on an H100, transformers' drift 0.0529).
const refFile = join(dir, 'reference.json');
const bf16Drift = existsSync(refFile) ? (JSON.parse(readFileSync(refFile, 'utf8')) as { bf16MaxAbsDiff: number }).bf16MaxAbsDiff : 0;
const TOL = Math.max(BAR, 1.25 * bf16Drift);
const BLOCK = 16;

interface Case {
  prompt: number[];
  continuation: number[];
  logprobs: number[];
  top2Gap: number[];
}
const ref = JSON.parse(readFileSync(join(dir, 'lora-reference.json'), 'utf8')) as { adapters: string[]; cases: Record<string, Case[]> };
const ckpt = openCheckpoint(dir);
const vocab = ckpt.config.vocabSize;

/** Every (model, case) pair as one sequence of a mixed batch: slot -1 for the base model. */
type Row = { model: string; slot: number; c: Case };
const rows: Row[] = ['base', ...ref.adapters].flatMap((model, mi) => ref.cases[model]!.map((c) => ({ model, slot: mi - 1, c })));

function run(handle: number, rows: Row[]): { maxDiff: number; checked: number; mismatches: number } {
  const maxBlocks = 16;
  const out = { maxDiff: 0, checked: 0, mismatches: 0 };
  const blocks = rows.map((_, i) => Array.from({ length: maxBlocks }, (_, k) => i * maxBlocks + k));
  const check = (i: number, pos: number, logits: Float32Array, token: number): void => {
    const { c } = rows[i]!;
    const lp = logSoftmax(logits.subarray(i * vocab, (i + 1) * vocab));
    out.maxDiff = Math.max(out.maxDiff, Math.abs(lp[c.continuation[pos]!]! - c.logprobs[pos]!));
    if (c.top2Gap[pos]! > BAR) {
      out.checked++;
      if (token !== c.continuation[pos]) out.mismatches++;
    }
  };
  const prefill: SeqStep[] = rows.map(({ slot, c }, i) => ({ tokens: c.prompt, cached: 0, blocks: blocks[i]!, slot }));
  let r = addon.step(handle, makeBatch(prefill, { maxBlocksPerSeq: maxBlocks, returnLogits: true }));
  rows.forEach((_, i) => check(i, 0, r.logits!, r.tokens[i]!));
  const steps = rows[0]!.c.continuation.length;
  for (let pos = 1; pos < steps; pos++) {
    const seqs: SeqStep[] = rows.map(({ slot, c }, i) => ({
      tokens: [c.continuation[pos - 1]!],
      cached: c.prompt.length + pos - 1,
      blocks: blocks[i]!,
      slot,
    }));
    r = addon.step(handle, makeBatch(seqs, { maxBlocksPerSeq: maxBlocks, returnLogits: true }));
    rows.forEach((_, i) => check(i, pos, r.logits!, r.tokens[i]!));
  }
  return out;
}

describe('multi-LoRA on the GPU matches PEFT', () => {
  // Each case's engines go when it ends: the file's cases together do not fit an 80 GB GPU.
  const handles: number[] = [];
  afterEach(() => {
    while (handles.length > 0) addon.destroyEngine(handles.pop()!);
  });

  const layouts = [
    { loraBackend: 'csgmv' as const, loraChunkSize: 16, graphs: 32 },
    { loraBackend: 'csgmv' as const, loraChunkSize: 1, graphs: 0 },
    { loraBackend: 'csgmv' as const, loraChunkSize: 128, graphs: 32 },
    { loraBackend: 'sgmv' as const, loraChunkSize: 16, graphs: 32 },
  ];
  type Layout = Pick<EngineOptions, 'maxLoraRank' | 'loraSlotRank' | 'loraBackend' | 'loraChunkSize' | 'loraKernel'> & { graphs: number };
  /**
   * An engine of `slots` slots with the adapters of `batch` loaded in the slots its rows name (and
   * `others` in theirs, which the batch does not use); the batch checked against PEFT.
   */
  const check = (label: string, layout: Layout, batch: Row[], slots = 4, others: Record<number, string> = {}): void => {
    const loaded = new Map<number, string>(Object.entries(others).map(([slot, name]) => [Number(slot), name]));
    for (const r of batch) if (r.slot >= 0) loaded.set(r.slot, r.model);
    verify(label, prepare(layout, slots, loaded), batch);
  };
  /** An engine of `slots` slots with adapter `name` in each slot of `loaded`. */
  const prepare = ({ graphs, ...lora }: Layout, slots: number, loaded: Map<number, string>): number => {
    const h = addon.createEngine(
      ckpt.config,
      ckpt.tensors,
      engineOptions({ device: 'cuda', blockSize: BLOCK, kvBlocks: rows.length * 16, loraSlots: slots, cudaGraphMaxBs: graphs, ...lora }),
    );
    handles.push(h);
    for (const [slot, name] of loaded) loadSlot(h, slot, join(dir, 'adapters', name), ckpt);
    return h;
  };
  /** The batch run on engine h, checked against PEFT. */
  const verify = (label: string, h: number, batch: Row[]): void => {
    const m = run(h, batch);
    console.log(
      `LoRA parity (${label}): max |logprob diff| ${m.maxDiff.toFixed(4)} (bar ${TOL.toFixed(4)}); greedy agrees at ${m.checked - m.mismatches}/${m.checked} positions with top-2 gap > ${BAR}`,
    );
    expect(m.maxDiff).toBeLessThanOrEqual(TOL);
    expect(m.mismatches).toBe(0);
    expect(m.checked).toBeGreaterThan(batch.length * 8);
  };

  const kernels: Array<NonNullable<EngineOptions['loraKernel']>> = ['fma', 'mma', 'mma-pdl', 'mma-overlap', 'fused'];
  it.each(kernels.flatMap((loraKernel) => layouts.map((l) => ({ ...l, loraKernel }))))(
    'mixed batch of base and four adapters: $loraKernel, $loraBackend, chunk $loraChunkSize, graphs up to $graphs',
    ({ loraKernel, loraBackend, loraChunkSize, graphs }) =>
      check(
        `${loraKernel}, ${loraBackend}, chunk ${loraChunkSize}, graphs ${graphs}`,
        { maxLoraRank: 64, loraBackend, loraChunkSize, loraKernel, graphs },
        rows,
      ),
  );

  // r8-qv and r16-all: rank 8 on q/v only (no o or down deltas for its tokens) and rank 16 on all.
  const small = ['base', ...ref.adapters].flatMap((model, mi) =>
    model === 'base' || model.startsWith('r8') || model.startsWith('r16') ? ref.cases[model]!.map((c) => ({ model, slot: mi - 1, c })) : [],
  );
  // The deltas of o and down added by the norm after their GEMM (the default), or in the GEMM.
  it.each([
    { inGemm: 'down', deltaInNorm: '1' },
    { inGemm: 'o,down', deltaInNorm: '1' },
    { inGemm: 'o,down', deltaInNorm: '0' },
    { inGemm: '0', deltaInNorm: '1' },
  ])('adapters up to rank 16, LoRA in the decode GEMM: $inGemm, deltas in the norm: $deltaInNorm', ({ inGemm, deltaInNorm }) => {
    // The engine reads the switches when it is made.
    withEnv({ TROUPE_LORA_IN_GEMM: inGemm, TROUPE_LORA_DELTA_IN_NORM: deltaInNorm }, () =>
      check(
        `rank-16 pool, LoRA in the decode GEMM: ${inGemm}, deltas in the norm: ${deltaInNorm}`,
        { maxLoraRank: 16, loraBackend: 'csgmv', loraChunkSize: 16, loraKernel: 'fused', graphs: 32 },
        small,
      ),
    );
  });

  // Up to rank 16 a decode step's q/k/v GEMM forms the shrink over A rows kept after the weight's,
  // and RoPE adds the deltas (the default, in the cases above); at 0 the item shrink writes the
  // LoRA columns that the GEMM reads with the padding.
  it.each(['0', 'qkv'])('adapters up to rank 16, LoRA tail rows: %s', (value) =>
    withEnv({ TROUPE_LORA_TAIL: value }, () =>
      check(
        `rank-16 pool, LoRA tail rows: ${value}`,
        { maxLoraRank: 16, loraBackend: 'csgmv', loraChunkSize: 16, loraKernel: 'fused', graphs: 32 },
        small,
      ),
    ),
  );

  // Up to rank 16 o's decode GEMM may begin gate/up's shrink and the norm after it finish it, in
  // place of gate/up's item shrink (TROUPE_LORA_GATE_UP_IN_O).
  it.each(['0', '1'])("adapters up to rank 16, gate/up shrink begun in o's decode GEMM: %s", (value) =>
    withEnv({ TROUPE_LORA_GATE_UP_IN_O: value }, () =>
      check(
        `rank-16 pool, gate/up shrink in o's GEMM: ${value}`,
        { maxLoraRank: 16, loraBackend: 'csgmv', loraChunkSize: 16, loraKernel: 'fused', graphs: 32 },
        small,
      ),
    ),
  );

  // A decode step's gate/up GEMM makes gate/up's LoRA columns itself by default up to 256 A rows
  // (the rank-16 cases above), its padding stages taking gate's and up's columns at once; at
  // TROUPE_LORA_GATE_UP_SHRINK=0 the item shrink makes them and cuBLAS's GEMM reads them, at
  // TROUPE_CUDA_GATE_UP_PAIRED=0 the padding stages run once a half.
  it.each([
    ['TROUPE_LORA_GATE_UP_SHRINK', 'gate/up shrink in its GEMM'],
    ['TROUPE_CUDA_GATE_UP_PAIRED', "gate/up GEMM's paired padding stages"],
  ])('adapters up to rank 16, gate/up GEMM with %s=0', (name, label) =>
    withEnv({ [name]: '0' }, () =>
      check(`rank-16 pool, ${label}: 0`, { maxLoraRank: 16, loraBackend: 'csgmv', loraChunkSize: 16, loraKernel: 'fused', graphs: 32 }, small),
    ),
  );

  // o's decode GEMM asks L2 for gate/up's A factors by default (in every case above); at 0 it does
  // not. A prefetch cannot change a result, only a fault or a wrong address could.
  it("adapters up to rank 16, gate/up's A not prefetched by o's decode GEMM", () =>
    withEnv({ TROUPE_LORA_GATE_UP_PREFETCH: '0' }, () =>
      check(
        'rank-16 pool, gate/up prefetch: 0',
        { maxLoraRank: 16, loraBackend: 'csgmv', loraChunkSize: 16, loraKernel: 'fused', graphs: 32 },
        small,
      ),
    ));

  it('rank-64 pool, fused, LoRA not in the decode GEMM (q/k/v, o and down by the item shrink)', () =>
    withEnv({ TROUPE_LORA_IN_GEMM: '0' }, () =>
      check(
        'rank-64 pool, fused, LoRA in the decode GEMM: 0',
        { maxLoraRank: 64, loraBackend: 'csgmv', loraChunkSize: 16, loraKernel: 'fused', graphs: 32 },
        rows,
      ),
    ));

  // Above rank 16 o takes the item shrink, and its decode GEMM reads the attention's rows before
  // the shrink ends and the LoRA columns after (the default), or waits for the shrink first.
  it.each(['1', '0'])("rank-64 pool, o's GEMM reading the rows before its shrink ends: %s", (value) =>
    withEnv({ TROUPE_LORA_O_ROWS_EARLY: value }, () =>
      check(
        `rank-64 pool, o's rows early: ${value}`,
        { maxLoraRank: 64, loraBackend: 'csgmv', loraChunkSize: 16, loraKernel: 'fused', graphs: 32 },
        rows,
      ),
    ),
  );

  // A decode step's GEMMs over every slot's A rows and B columns cover only the slots up to the
  // batch's highest (rounded up to a power of two): with the batch's adapters in low slots of a pool
  // of 8 they read 1 or 2 slots' rows, and a batch that uses slot 6 reads all 8. The unused slots
  // hold adapters too, so a slot read by mistake would change the results.
  const named = (prefix: string): string => ref.adapters.find((a) => a.startsWith(prefix))!;
  const placed = (batch: Row[], place: Record<string, number>): Row[] =>
    batch.filter((r) => r.slot < 0 || r.model in place).map((r) => (r.slot < 0 ? r : { ...r, slot: place[r.model]! }));
  it.each(
    [
      { rank: 16, covered: 1, buckets: '1', place: { [named('r16')]: 0 }, others: { 3: named('r8'), 7: named('r16') } },
      { rank: 16, covered: 8, buckets: '0', place: { [named('r16')]: 0 }, others: { 3: named('r8'), 7: named('r16') } },
      { rank: 16, covered: 2, buckets: '1', place: { [named('r16')]: 0, [named('r8')]: 1 }, others: { 5: named('r16') } },
      { rank: 64, covered: 1, buckets: '1', place: { [named('r64')]: 0 }, others: { 1: named('r16'), 6: named('r64') } },
      { rank: 64, covered: 2, buckets: '1', place: { [named('r16')]: 0, [named('r64')]: 1 }, others: { 4: named('r8') } },
      { rank: 64, covered: 8, buckets: '1', place: { [named('r16')]: 0, [named('r64')]: 1, [named('r8')]: 6 }, others: { 2: named('r64') } },
      // sgmv's decode steps add the deltas by a GEMM over the padding columns alone.
      { rank: 16, covered: 1, buckets: '1', place: { [named('r16')]: 0 }, others: { 3: named('r8') }, backend: 'sgmv' as const },
      { rank: 64, covered: 2, buckets: '1', place: { [named('r16')]: 0, [named('r64')]: 1 }, others: { 4: named('r8') }, backend: 'sgmv' as const },
      // Pools larger than the fused layout once took (its kernels are the default at every size).
      {
        rank: 64,
        covered: 32,
        buckets: '1',
        place: { [named('r16')]: 0, [named('r64')]: 20, [named('r8')]: 31 },
        others: { 7: named('r64') },
        pool: 32,
      },
      {
        rank: 64,
        covered: 16,
        buckets: '1',
        place: { [named('r64')]: 9, [named('r16')]: 15 },
        others: { 3: named('r8'), 40: named('r16') },
        pool: 64,
      },
      { rank: 16, covered: 128, buckets: '1', place: { [named('r16')]: 100, [named('r8')]: 2 }, others: { 64: named('r16') }, pool: 128 },
      // The norms add o's and down's deltas from a transposed copy of B that only the first 128 / rank
      // slots keep: a step whose slots lie there.
      {
        rank: 16,
        covered: 8,
        buckets: '1',
        place: { [named('r16')]: 0, [named('r8')]: 5 },
        others: { 7: named('r16'), 20: named('r8'), 100: named('r16') },
        pool: 128,
      },
      // The tail rows (q/k/v's A rows after the weight's) are kept for the first slots only.
      {
        rank: 16,
        covered: 4,
        buckets: '1',
        place: { [named('r16')]: 0, [named('r8')]: 3 },
        others: { 5: named('r16'), 100: named('r8') },
        pool: 128,
      },
      { rank: 32, covered: 4, buckets: '1', place: { [named('r16')]: 0, [named('r8')]: 3 }, others: { 6: named('r16') }, pool: 8 },
    ].map((c) => ({ pool: 8, backend: 'csgmv' as const, ...c })),
  )(
    'pool of $pool at rank $rank, the batch covering $covered slot(s) (slot buckets: $buckets, $backend)',
    ({ rank, covered, buckets, place, others, backend, pool }) =>
      withEnv({ TROUPE_LORA_SLOT_BUCKETS: buckets }, () =>
        check(
          `rank-${rank} pool of ${pool}, ${covered} slot(s) covered, slot buckets ${buckets}, ${backend}`,
          { maxLoraRank: rank, loraBackend: backend, loraChunkSize: 16, loraKernel: 'fused', graphs: 32 },
          placed(rank === 16 ? small : rows, place),
          pool,
          others,
        ),
      ),
  );

  // A move (swapLoraSlots) between a slot that keeps o's and down's B transposed for the norms and
  // one that does not makes the copy again from the B that arrived; between two such slots it
  // exchanges the copies.
  it('pool of 128 at rank 16, an adapter moved into the low slots and between them', async () => {
    const layout: Layout = { maxLoraRank: 16, loraBackend: 'csgmv', loraChunkSize: 16, loraKernel: 'fused', graphs: 32 };
    const h = prepare(
      layout,
      128,
      new Map([
        [2, named('r8')],
        [3, named('r8')],
        [100, named('r16')],
      ]),
    );
    await addon.swapLoraSlots(h, 100, 3); // r16 into slot 3, that slot's r8 out to 100
    // Slots 0-3 are those whose q/k/v A rows follow the weight's at this model's shape (tail rows).
    verify('rank-16 pool of 128 after a move into slot 3', h, placed(small, { [named('r16')]: 3, [named('r8')]: 2 }));
    await addon.swapLoraSlots(h, 3, 6); // r16 on into the free slot 6
    verify('rank-16 pool of 128 after moves', h, placed(small, { [named('r16')]: 6, [named('r8')]: 2 }));
  });

  // A pool cut into slots of a lower rank (lora_runs.h): each adapter takes the slots its rank
  // needs, a power of two of them from a multiple of that power, its ranks running on from slot to
  // slot. Other adapters sit in the slots around, so a rank read from the wrong slot would show.
  it.each([
    // Rank 16 in slots of 8: the norms' deltas, gate/up's shrink begun in o's GEMM, q/k/v's tail rows.
    { rank: 16, slotRank: 8, pool: 8, place: { [named('r16')]: 0, [named('r8')]: 2 }, others: { 3: named('r8'), 4: named('r16') } },
    { rank: 16, slotRank: 8, pool: 8, place: { [named('r8')]: 1, [named('r16')]: 6 }, others: { 0: named('r8'), 2: named('r16') } },
    // Rank 32 in slots of 8 and 16.
    { rank: 32, slotRank: 8, pool: 16, place: { [named('r16')]: 2, [named('r8')]: 0 }, others: { 1: named('r8'), 4: named('r16') } },
    { rank: 32, slotRank: 16, pool: 8, place: { [named('r16')]: 1, [named('r8')]: 0 }, others: { 2: named('r16') } },
    // Rank 64 in slots of 16: a rank-64 adapter's run of four slots beside single-slot ones.
    {
      rank: 64,
      slotRank: 16,
      pool: 32,
      place: { [named('r16')]: 0, [named('r8')]: 1, [named('r64')]: 4 },
      others: { 2: named('r16'), 8: named('r64') },
    },
    { rank: 64, slotRank: 16, pool: 32, place: { [named('r64')]: 28, [named('r16')]: 5 }, others: { 0: named('r64'), 27: named('r8') } },
    // Rank 32 over two slots of 16: alone in a rank-32 pool, and beside a run of four in a rank-64 one.
    { rank: 32, slotRank: 16, pool: 8, place: { [named('r32')]: 2, [named('r16')]: 0 }, others: { 1: named('r8'), 4: named('r32') } },
    {
      rank: 64,
      slotRank: 16,
      pool: 32,
      place: { [named('r32')]: 6, [named('r64')]: 8, [named('r8')]: 0 },
      others: { 2: named('r32'), 4: named('r16') },
    },
  ])('rank-$rank pool of $pool slots of rank $slotRank, adapters at $place', ({ rank, slotRank, pool, place, others }) =>
    check(
      `rank-${rank} pool of ${pool} slots of rank ${slotRank}`,
      { maxLoraRank: rank, loraSlotRank: slotRank, loraBackend: 'csgmv', loraChunkSize: 16, loraKernel: 'fused', graphs: 32 },
      placed(rows, place),
      pool,
      others,
    ),
  );

  // A decode step takes the kernels of its batch's rank (the longest run of slots an adapter of it
  // takes): one engine runs batches of rank 16 (q/k/v's tail rows, the norms' deltas, o's shrink in
  // the attention), 64 and 32 by turns, each from graphs of its own, with adapters of higher rank
  // in the slots the smaller batches' kernels would read past their own.
  const slotsOf16: Layout = { maxLoraRank: 64, loraSlotRank: 16, loraBackend: 'csgmv', loraChunkSize: 16, loraKernel: 'fused', graphs: 32 };
  /** A rank-64 pool of 32 slots of rank 16 with adapter `name` in each slot of `loaded`. */
  const slotsOf16Engine = (loaded: Record<number, string>): number =>
    prepare(slotsOf16, 32, new Map(Object.entries(loaded).map(([slot, name]) => [Number(slot), name])));
  it('rank-64 pool of 32 slots of rank 16, batches of rank 16, 64 and 32 by turns', () => {
    const h = slotsOf16Engine({ 0: named('r16'), 1: named('r8'), 2: named('r32'), 4: named('r64') });
    const smallBatch = placed(small, { [named('r16')]: 0, [named('r8')]: 1 });
    const allBatch = placed(rows, { [named('r16')]: 0, [named('r8')]: 1, [named('r32')]: 2, [named('r64')]: 4 });
    verify('rank-64 pool of slots of rank 16, a batch of rank 16', h, smallBatch);
    verify('rank-64 pool of slots of rank 16, a batch of rank 64', h, allBatch);
    verify('rank-64 pool of slots of rank 16, a batch of rank 32', h, placed(rows, { [named('r16')]: 0, [named('r32')]: 2 }));
    verify('rank-64 pool of slots of rank 16, a batch of rank 16 again', h, smallBatch);
  });

  // A move of a run into a free run: into the first 128 / 16 slots, which keep o's and down's B
  // transposed for the norms (made again from the B that arrived), and out again.
  it('rank-64 pool of 32 slots of rank 16, a run of four slots moved', async () => {
    const h = slotsOf16Engine({ 0: named('r8'), 1: named('r16'), 20: named('r64') });
    const batch = (at: number): Row[] => placed(rows, { [named('r64')]: at, [named('r8')]: 0, [named('r16')]: 1 });
    await addon.swapLoraSlots(h, 20, 4);
    verify('rank-64 pool of slots of rank 16, a run moved to slot 4', h, batch(4));
    await addon.swapLoraSlots(h, 4, 12);
    verify('rank-64 pool of slots of rank 16, a run moved on to slot 12', h, batch(12));
  });

  it('each adapter changes the continuation (the test would see a missing delta)', () => {
    const base = ref.cases.base!;
    for (const name of ref.adapters) {
      const differs = ref.cases[name]!.some((c, i) => c.continuation.some((t, k) => t !== base[i]!.continuation[k]));
      expect(differs).toBe(true);
    }
  });
});

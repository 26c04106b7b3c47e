// --tp-size on the CPU backend: 2 and 4 ranks (each an executor actor holding its heads, MLP
// features and vocabulary rows, summing and gathering through host collectives) give the same
// logits as one rank, for the base model and a batch mixing two adapters, through chunked
// prefills and decodes; and the whole server generates the same tokens with --tp-size 2.
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { createEngine } from '../src/troupe.js';
import { makeRandomAdapter, makeRandomCheckpoint } from '../src/model/demo.js';
import { LORA_MODULES } from '../src/engine/types.js';
import {
  argmax,
  engineOptions,
  logSoftmax,
  logitsRow,
  makeBatch,
  openCheckpoint,
  prompt,
  SMALL_MODEL,
  tempDir,
  type SeqStep,
} from './engine-fixtures.js';
import { startRanks } from './tp-fixtures.js';

const tmp = tempDir('tp-engine');
afterAll(() => tmp.cleanup());

// Two checkpoints: the small model (tied embeddings, 1000 tokens), and an untied one whose 999
// tokens do not split evenly, so the last rank's vocabulary part is short.
const MODELS = {
  tied: SMALL_MODEL,
  untied: { ...SMALL_MODEL, vocab_size: 999, tie_word_embeddings: false },
};
for (const [name, cfg] of Object.entries(MODELS)) {
  const dir = join(tmp.dir, name);
  makeRandomCheckpoint(dir, cfg, 11);
  // 16-bit files: each rank's slot takes its slice of the host copy's f16 and bf16 bytes.
  makeRandomAdapter(join(dir, 'qv'), { rank: 8, alpha: 16, seed: 5, targetModules: ['q_proj', 'v_proj'], bStd: 0.2, dtype: 'F16' }, cfg);
  makeRandomAdapter(join(dir, 'all'), { rank: 16, alpha: 16, seed: 6, targetModules: [...LORA_MODULES], bStd: 0.2, dtype: 'BF16' }, cfg);
}

/** Base, qv and all on the same two prompts; prefilled in two chunks, then teacher-forced decodes. */
async function run(model: keyof typeof MODELS, tp: number): Promise<{ logprobs: Float64Array[]; greedy: number[] }> {
  const dir = join(tmp.dir, model);
  const ckpt = openCheckpoint(dir);
  const vocab = ckpt.config.vocabSize;
  const group = await startRanks(ckpt, tp, engineOptions({ kvBlocks: 96, loraSlots: 2, maxLoraRank: 16 }));
  try {
    if (tp > 1) expect(group.info.collective).toBe('host');
    await group.loadSlot(0, join(dir, 'qv'));
    await group.loadSlot(1, join(dir, 'all'));
    const seqs = [-1, -1, 0, 0, 1, 1].map((slot, i) => ({
      slot,
      tokens: prompt(12, 40 + (i % 2), vocab),
      blocks: Array.from({ length: 8 }, (_, k) => i * 8 + k),
    }));
    const logprobs: Float64Array[] = [];
    const greedy: number[] = [];
    const collect = (r: Awaited<ReturnType<typeof group.step>>, rows: number[]): void => {
      for (const i of rows) {
        logprobs.push(logSoftmax(logitsRow(r, i, vocab)));
        greedy.push(r.tokens[i]!);
        expect(r.tokens[i]).toBe(argmax(logitsRow(r, i, vocab)));
      }
    };
    // Chunk 1 (not sampled), chunk 2, then 6 decodes fed a fixed token stream.
    const step = (parts: SeqStep[]) => group.step(makeBatch(parts, { maxBlocksPerSeq: 8, returnLogits: true }));
    await step(seqs.map((s) => ({ ...s, tokens: s.tokens.slice(0, 5), cached: 0, sample: false })));
    collect(
      await step(seqs.map((s) => ({ ...s, tokens: s.tokens.slice(5), cached: 5 }))),
      seqs.map((_, i) => i),
    );
    for (let d = 0; d < 6; d++) {
      const parts = seqs.map((s, i) => ({ ...s, tokens: [prompt(1, 100 * d + (i % 2), vocab)[0]!], cached: s.tokens.length + d }));
      collect(
        await step(parts),
        seqs.map((_, i) => i),
      );
    }
    return { logprobs, greedy };
  } finally {
    await group.close();
  }
}

describe.each(Object.keys(MODELS) as Array<keyof typeof MODELS>)('tensor parallel on the CPU (%s)', (model) => {
  let one: Awaited<ReturnType<typeof run>>;

  it('one rank: each adapter changes the logprobs of its rows (so a lost delta would show)', async () => {
    one = await run(model, 1);
    const gap = (a: Float64Array, b: Float64Array): number => Math.max(...Array.from(a, (v, j) => Math.abs(v - b[j]!)));
    for (let k = 0; k < one.logprobs.length; k += 6) {
      for (const p of [0, 1]) {
        expect(gap(one.logprobs[k + 2 + p]!, one.logprobs[k + p]!)).toBeGreaterThan(0.01);
        expect(gap(one.logprobs[k + 4 + p]!, one.logprobs[k + p]!)).toBeGreaterThan(0.01);
      }
    }
  });

  it.each([2, 4])('%i ranks: logprobs within 1e-4 of one rank and the same greedy tokens', async (tp) => {
    const many = await run(model, tp);
    let max = 0;
    many.logprobs.forEach((lp, k) => lp.forEach((v, j) => (max = Math.max(max, Math.abs(v - one.logprobs[k]![j]!)))));
    expect(max).toBeLessThan(1e-4);
    expect(many.greedy).toEqual(one.greedy);
  });
});

describe('tensor parallel through createEngine', () => {
  const dir = join(tmp.dir, 'tied');
  const lora = (name: string) => ({ name, path: join(dir, name) });

  it('--tp-size 2 generates what --tp-size 1 does, for the base model and both adapters', async () => {
    const outputs: Record<number, Array<{ ids: number[]; logprobs: number[] }>> = {};
    for (const tpSize of [1, 2]) {
      const engine = await createEngine({ modelPath: dir, device: 'cpu', tpSize, loraPaths: [lora('qv'), lora('all')] });
      try {
        const res = await Promise.all(
          [null, 'qv', 'all'].map((adapter) =>
            engine.generate({ inputIds: prompt(9, 7, 1000), lora: adapter, sampling: { maxNewTokens: 10, temperature: 0 }, returnLogprob: true }),
          ),
        );
        expect(engine.modelInfo()).toMatchObject({ tpSize, collective: tpSize === 1 ? 'none' : 'host' });
        outputs[tpSize] = res.map((r) => ({ ids: r.outputIds, logprobs: r.outputTokenLogprobs!.map((t) => t[0]) }));
      } finally {
        await engine.close();
      }
    }
    expect(outputs[2]!.map((o) => o.ids)).toEqual(outputs[1]!.map((o) => o.ids));
    outputs[2]!.forEach((o, i) => o.logprobs.forEach((v, k) => expect(v).toBeCloseTo(outputs[1]![i]!.logprobs[k]!, 4)));
    // The adapters took part: their tokens are not the base model's.
    expect(outputs[1]![1]!.ids).not.toEqual(outputs[1]![0]!.ids);
    expect(outputs[1]![2]!.ids).not.toEqual(outputs[1]![0]!.ids);
  });

  it('refuses a tp size that does not divide the heads, naming it', async () => {
    await expect(createEngine({ modelPath: dir, device: 'cpu', tpSize: 3 })).rejects.toThrow(/--tp-size 3: does not divide the 4 attention heads/);
  });

  it('a rank that dies releases the others from their collectives with an error naming it', async () => {
    const ckpt = openCheckpoint(dir);
    const group = await startRanks(ckpt, 2, engineOptions({ kvBlocks: 16, loraSlots: 0, maxLoraRank: 0, loraModules: [] }));
    try {
      const batch = makeBatch([{ tokens: prompt(4, 1, 1000), cached: 0, blocks: [0] }]);
      expect((await group.step(batch)).tokens[0]).toBeGreaterThanOrEqual(0);
      await group.kill(1);
      await expect(group.step(batch)).rejects.toThrow(/executor-1 actor exited/);
      // Rank 0 alone would wait for rank 1 in its first collective; it gets the error instead.
      await expect(group.stepRank(0, makeBatch([{ tokens: prompt(4, 2, 1000), cached: 0, blocks: [1] }]))).rejects.toThrow(
        /executor-1 actor exited|tensor-parallel group stopped/,
      );
    } finally {
      await group.close();
    }
  });
});

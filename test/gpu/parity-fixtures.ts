// Teacher-forced runs against the reference files of make_checkpoint.py (reference.json) and
// make_adapters.py (lora-reference.json), for any engine or tensor-parallel group: one batch
// of rows (a slot and a reference case each), the prompts prefilled in chunks, then one decode
// per continuation token, fed the reference's tokens. Every position records the logprob of the
// reference token, the argmax, the top-2 gap and the sampled (greedy) token.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { expect } from 'vitest';
import type { StepBatch, StepResult } from '../../src/engine/types.js';
import { createEngine as createTroupe } from '../../src/troupe.js';
import { logSoftmax, makeBatch, type SeqStep } from '../engine-fixtures.js';

export interface RefCase {
  prompt: number[];
  continuation: number[];
  logprobs: number[];
  top2Gap: number[];
}

export interface Reference {
  bf16MaxAbsDiff: number;
  cases: RefCase[];
}

export interface LoraReference {
  adapters: string[];
  cases: Record<string, RefCase[]>;
}

export const readReference = (dir: string): Reference => JSON.parse(readFileSync(join(dir, 'reference.json'), 'utf8')) as Reference;
export const readLoraReference = (dir: string): LoraReference => JSON.parse(readFileSync(join(dir, 'lora-reference.json'), 'utf8')) as LoraReference;

/**
 * Where make_adapters.py's adapters go in a pool of max rank 64 cut into 16 slots of rank 16: each
 * at the start of the run of slots its rank needs (r8 and r16 one, r32 two, r64 four), a run of n
 * slots starting at a multiple of n.
 */
export function runStart(adapter: string): number {
  const starts: Record<string, number> = { r8: 0, r16: 1, r32: 2, r64: 4 };
  const start = starts[adapter.split('-')[0]!];
  if (start === undefined) throw new Error(`no run of slots for adapter ${adapter}`);
  return start;
}

export interface Row {
  slot: number;
  c: RefCase;
}

export interface Position {
  lp: number;
  top: number;
  gap: number;
  token: number;
}

/** Blocks of blockSize tokens each row is given: enough for its prompt and continuation. */
export function blocksPerRow(rows: Row[], blockSize: number): number {
  return Math.max(...rows.map(({ c }) => Math.ceil((c.prompt.length + c.continuation.length) / blockSize)));
}

function record(row: Float32Array, want: number, token: number): Position {
  const lp = logSoftmax(row);
  let top = 0;
  let second = -1;
  for (let j = 1; j < lp.length; j++) {
    if (lp[j]! > lp[top]!) {
      second = top;
      top = j;
    } else if (second < 0 || lp[j]! > lp[second]!) {
      second = j;
    }
  }
  return { lp: lp[want]!, top, gap: lp[top]! - lp[second]!, token };
}

/** Positions of every row, in continuation order; `chunks` prefill pieces per prompt. */
export async function teacherForced(
  step: (batch: StepBatch) => StepResult | Promise<StepResult>,
  rows: Row[],
  vocab: number,
  opts: { blockSize: number; chunks: number },
): Promise<Position[][]> {
  const maxBlocks = blocksPerRow(rows, opts.blockSize);
  const blocks = rows.map((_, i) => Array.from({ length: maxBlocks }, (_, k) => i * maxBlocks + k));
  const out = rows.map(() => [] as Position[]);
  const run = async (seqs: SeqStep[], pos: number): Promise<void> => {
    const r = await step(makeBatch(seqs, { maxBlocksPerSeq: maxBlocks, returnLogits: true }));
    seqs.forEach((s, i) => {
      if (s.sample !== false) out[i]!.push(record(r.logits!.subarray(i * vocab, (i + 1) * vocab), rows[i]!.c.continuation[pos]!, r.tokens[i]!));
    });
  };
  const done = rows.map(() => 0);
  for (let k = 0; k < opts.chunks; k++) {
    const last = k === opts.chunks - 1;
    const seqs: SeqStep[] = rows.map(({ slot, c }, i) => {
      const end = last ? c.prompt.length : Math.max(done[i]! + 1, Math.floor(((k + 1) * c.prompt.length) / opts.chunks));
      return { tokens: c.prompt.slice(done[i], end), cached: done[i]!, blocks: blocks[i]!, slot, sample: last };
    });
    await run(seqs, 0);
    seqs.forEach((s, i) => (done[i] = s.cached + s.tokens.length));
  }
  const steps = Math.min(...rows.map(({ c }) => c.continuation.length));
  for (let pos = 1; pos < steps; pos++) {
    await run(
      rows.map(({ slot, c }, i) => ({ tokens: [c.continuation[pos - 1]!], cached: c.prompt.length + pos - 1, blocks: blocks[i]!, slot })),
      pos,
    );
  }
  return out;
}

export interface Parity {
  maxDiff: number;
  checked: number;
  mismatches: number;
  /** Positions whose sampled greedy token is not the argmax of the returned logits. */
  notArgmax: number;
}

/** Against the reference: the largest logprob difference, and the greedy picks where its top-2 gap exceeds `bar`. */
export function againstReference(run: Position[][], rows: Row[], bar: number): Parity {
  const p: Parity = { maxDiff: 0, checked: 0, mismatches: 0, notArgmax: 0 };
  run.forEach((positions, i) =>
    positions.forEach((x, pos) => {
      const c = rows[i]!.c;
      p.maxDiff = Math.max(p.maxDiff, Math.abs(x.lp - c.logprobs[pos]!));
      if (x.token !== x.top) p.notArgmax++;
      if (c.top2Gap[pos]! > bar) {
        p.checked++;
        if (x.token !== c.continuation[pos]) p.mismatches++;
      }
    }),
  );
  return p;
}

/** Against another run of the same rows: the same, with that run's top-2 gaps and argmaxes. */
export function againstRun(run: Position[][], base: Position[][], bar: number): Parity {
  const p: Parity = { maxDiff: 0, checked: 0, mismatches: 0, notArgmax: 0 };
  run.forEach((positions, i) =>
    positions.forEach((x, pos) => {
      const b = base[i]![pos]!;
      p.maxDiff = Math.max(p.maxDiff, Math.abs(x.lp - b.lp));
      if (x.token !== x.top) p.notArgmax++;
      if (b.gap > bar) {
        p.checked++;
        if (x.top !== b.top) p.mismatches++;
      }
    }),
  );
  return p;
}

export const describeParity = (p: Parity, bar: number): string =>
  `max |logprob diff| ${p.maxDiff.toFixed(4)}; greedy agrees at ${p.checked - p.mismatches}/${p.checked} positions with top-2 gap > ${bar.toFixed(3)}`;

/**
 * Serves the checkpoint through createEngine on the GPU and generates each case greedily: up
 * to the first near-tie (top-2 gap within `bar`, where either pick is right and the two
 * continuations part) the tokens must be transformers' and their logprobs within `bar`.
 * Returns how many tokens were compared.
 */
export async function servedGreedyMatches(dir: string, ref: Reference, bar: number): Promise<number> {
  const engine = await createTroupe({ modelPath: dir, device: 'cuda', maxTotalTokens: 8192 });
  try {
    expect(engine.modelInfo().device).toBe('cuda');
    const outs = await Promise.all(
      ref.cases.map((c) =>
        engine.generate({
          inputIds: c.prompt,
          sampling: { maxNewTokens: c.continuation.length, temperature: 0, ignoreEos: true },
          returnLogprob: true,
        }),
      ),
    );
    let compared = 0;
    outs.forEach((o, i) => {
      const c = ref.cases[i]!;
      for (let pos = 0; pos < c.continuation.length && c.top2Gap[pos]! > bar; pos++) {
        expect(o.outputIds[pos]).toBe(c.continuation[pos]);
        expect(Math.abs(o.outputTokenLogprobs![pos]![0] - c.logprobs[pos]!)).toBeLessThanOrEqual(bar);
        compared++;
      }
    });
    return compared;
  } finally {
    await engine.close();
  }
}

// The CUDA backend against transformers (runs only with TROUPE_GPU_TESTS=1, on a CUDA machine).
// TROUPE_GPU_CHECKPOINT names a directory written by `make_checkpoint.py --refs` (default
// /tmp/troupe-llama-1b). Teacher-forced on transformers' greedy continuation, the logprob of
// every continuation token must be within 0.05 of transformers', and the greedy choice must be
// transformers' wherever its top-2 gap exceeds 0.05.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { addon, argmax, engineOptions, logSoftmax, makeBatch, openCheckpoint, type SeqStep } from '../engine-fixtures.js';
import { servedGreedyMatches } from './parity-fixtures.js';

const dir = process.env.TROUPE_GPU_CHECKPOINT ?? '/tmp/troupe-llama-1b';
const BAR = 0.05;

interface Case {
  prompt: number[];
  continuation: number[];
  logprobs: number[];
  top2Gap: number[];
}
const ref = JSON.parse(readFileSync(join(dir, 'reference.json'), 'utf8')) as { bf16MaxAbsDiff: number; cases: Case[] };
const ckpt = openCheckpoint(dir);
const vocab = ckpt.config.vocabSize;
const blockSize = 16;

interface Measured {
  maxDiff: number;
  greedyChecked: number;
  greedyMismatches: number;
}

/** Runs every case teacher-forced: the prompt (in `chunks` pieces), then one decode per continuation token. */
function teacherForced(handle: number, chunks: number): Measured {
  const n = ref.cases.length;
  const blocks = ref.cases.map((c, i) => {
    const need = Math.ceil((c.prompt.length + c.continuation.length) / blockSize);
    return Array.from({ length: need }, (_, k) => i * 64 + k);
  });
  const m: Measured = { maxDiff: 0, greedyChecked: 0, greedyMismatches: 0 };
  const check = (i: number, pos: number, row: Float32Array, sampled: number): void => {
    const c = ref.cases[i]!;
    const lp = logSoftmax(row);
    m.maxDiff = Math.max(m.maxDiff, Math.abs(lp[c.continuation[pos]!]! - c.logprobs[pos]!));
    expect(sampled).toBe(argmax(row));
    if (c.top2Gap[pos]! > BAR) {
      m.greedyChecked++;
      if (sampled !== c.continuation[pos]) m.greedyMismatches++;
    }
  };
  // Prefill, possibly in chunks (later chunks attend over the cached prefix).
  const done = ref.cases.map(() => 0);
  for (let k = 0; k < chunks; k++) {
    const seqs: SeqStep[] = ref.cases.map((c, i) => {
      const end = k === chunks - 1 ? c.prompt.length : Math.floor(((k + 1) * c.prompt.length) / chunks);
      const s: SeqStep = {
        tokens: c.prompt.slice(done[i], Math.max(end, done[i]! + 1)),
        cached: done[i]!,
        blocks: blocks[i]!,
        sample: k === chunks - 1,
      };
      return s;
    });
    const r = addon.step(handle, makeBatch(seqs, { maxBlocksPerSeq: 64, returnLogits: true }));
    seqs.forEach((s, i) => {
      done[i] = s.cached + s.tokens.length;
      if (k === chunks - 1) check(i, 0, r.logits!.subarray(i * vocab, (i + 1) * vocab), r.tokens[i]!);
    });
  }
  for (let pos = 1; pos < ref.cases[0]!.continuation.length; pos++) {
    const seqs: SeqStep[] = ref.cases.map((c, i) => ({ tokens: [c.continuation[pos - 1]!], cached: c.prompt.length + pos - 1, blocks: blocks[i]! }));
    const r = addon.step(handle, makeBatch(seqs, { maxBlocksPerSeq: 64, returnLogits: true }));
    for (let i = 0; i < n; i++) check(i, pos, r.logits!.subarray(i * vocab, (i + 1) * vocab), r.tokens[i]!);
  }
  return m;
}

describe('CUDA backend parity with transformers', () => {
  const handles: number[] = [];
  afterAll(() => handles.forEach((h) => addon.destroyEngine(h)));

  // A step of 129 tokens or more (each case's prefill here) writes q/k/v and gate/up in bf16, as
  // transformers does; the last case keeps them in f32, as decode steps do.
  it.each([
    { name: 'one prefill, decodes in CUDA graphs', chunks: 1, graphs: 8, f32Rows: false },
    { name: 'prefill in 3 chunks, no graphs', chunks: 3, graphs: 0, f32Rows: false },
    { name: 'q/k/v and gate/up in f32 (TROUPE_CUDA_BF16_ROWS=0)', chunks: 1, graphs: 0, f32Rows: true },
  ])('teacher-forced logprobs: $name', ({ chunks, graphs, f32Rows }) => {
    if (f32Rows) process.env.TROUPE_CUDA_BF16_ROWS = '0';
    let h: number;
    try {
      h = addon.createEngine(
        ckpt.config,
        ckpt.tensors,
        engineOptions({ device: 'cuda', blockSize, kvBlocks: 64 * ref.cases.length, loraSlots: 0, loraModules: [], cudaGraphMaxBs: graphs }),
      );
    } finally {
      delete process.env.TROUPE_CUDA_BF16_ROWS;
    }
    handles.push(h);
    expect(addon.engineInfo(h).device).toBe('cuda');
    const m = teacherForced(h, chunks);
    console.log(
      `parity (${chunks} chunk(s), graphs ${graphs}${f32Rows ? ', f32 rows' : ''}): max |logprob diff| ${m.maxDiff.toFixed(4)} (transformers bf16: ${ref.bf16MaxAbsDiff.toFixed(4)}); greedy agrees at ${m.greedyChecked - m.greedyMismatches}/${m.greedyChecked} positions with top-2 gap > ${BAR}`,
    );
    expect(m.maxDiff).toBeLessThanOrEqual(BAR);
    expect(m.greedyMismatches).toBe(0);
    expect(m.greedyChecked).toBeGreaterThan(ref.cases.length * 8);
  });

  it.each([
    ['TROUPE_CUDA_BF16_ROWS', 'down'],
    ['TROUPE_CUDA_BF16_ROWS', 'qkv,'],
    ['TROUPE_CUDA_BF16_ROWS_TOKENS', '0'],
    ['TROUPE_CUDA_BF16_ROWS_TOKENS', '12x'],
  ])('refuses %s=%s, naming the variable', (name, value) => {
    process.env[name] = value;
    try {
      expect(() =>
        addon.createEngine(ckpt.config, ckpt.tensors, engineOptions({ device: 'cuda', blockSize, kvBlocks: 64, loraSlots: 0, loraModules: [] })),
      ).toThrow(new RegExp(name));
    } finally {
      delete process.env[name];
    }
  });

  it('createEngine with --device cuda generates transformers greedy tokens with matching logprobs', async () => {
    const compared = await servedGreedyMatches(dir, ref, BAR);
    console.log(`served greedy generation: ${compared} tokens equal to transformers' before the first near-tie`);
    expect(compared).toBeGreaterThan(ref.cases.length * 4);
  });
});

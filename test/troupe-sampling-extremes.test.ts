// Sampling values at the edge of what the API accepts, through the whole engine on the demo
// model: tiny temperatures with filters (once a crash of the executor), overflowing repetition
// penalties, temperature 1e300 (+Inf as float32), top_k 2^32 + 1 and more top logprobs than the
// vocabulary each give valid tokens, and a stream running beside them is not disturbed.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DEFAULT_SAMPLING, type GenerateChunk, type GenerateRequest, type SamplingOptions } from '../src/api.js';
import { parseArgs } from '../src/config/parse.js';
import { validateFlags } from '../src/config/validate.js';
import { DEMO_MODEL, makeDemo } from '../src/model/demo.js';
import { createEngine, type LocalTroupeEngine } from '../src/troupe.js';

let dir = '';
let engine: LocalTroupeEngine;
const VOCAB = DEMO_MODEL.vocab_size;

const request = (s: Partial<SamplingOptions>, o: Partial<GenerateRequest> = {}): GenerateRequest => ({
  text: 'a',
  lora: null,
  returnLogprob: true,
  topLogprobsNum: 0,
  sampling: { ...DEFAULT_SAMPLING, maxNewTokens: 3, ...s },
  ...o,
});

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'troupe-extremes-'));
  makeDemo(dir);
  engine = await createEngine(validateFlags(parseArgs(['--model-path', dir, '--max-total-tokens', '4096', '--device', 'cpu']).flags).options);
});

afterAll(async () => {
  await engine?.close();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe('sampling values at the edges', () => {
  it('all give valid tokens while a stream beside them runs to its end', async () => {
    const greedy = request({ temperature: 0, maxNewTokens: 12, ignoreEos: true });
    const alone = await engine.generate(greedy);
    const chunks: GenerateChunk[] = [];
    const stream = (async () => {
      for await (const c of engine.stream(greedy)) chunks.push(c);
    })();
    const edges: Array<[Partial<SamplingOptions>, Partial<GenerateRequest>?]> = [
      [{ temperature: 1e-45, topP: 0.9 }],
      [{ temperature: 3e-39, minP: 0.5 }],
      [{ temperature: 1, topP: 0.9, repetitionPenalty: 1e-45 }],
      [{ temperature: 1, minP: 0.1, repetitionPenalty: 1e-39 }],
      [{ temperature: 1e300 }],
      [{ temperature: 1, topK: 2 ** 32 + 1 }],
    ];
    const outs = await Promise.all(edges.map(([s, o]) => engine.generate(request(s, o))));
    // More alternatives than the server allows fail that request alone (the native sampler would
    // clamp them to the vocabulary: test/engine-row-isolation.test.ts).
    await expect(engine.generate(request({ temperature: 0 }, { topLogprobsNum: 200000 }))).rejects.toThrow(/max-top-logprobs-num/);
    await stream;
    for (const out of outs) {
      expect(out.outputIds).toHaveLength(3);
      for (const id of out.outputIds) expect(Number.isInteger(id) && id >= 0 && id < VOCAB).toBe(true);
      for (const [lp] of out.outputTokenLogprobs!) expect(Number.isNaN(lp)).toBe(false);
    }
    // Temperatures below 1e-6 are greedy.
    const first = alone.outputIds.slice(0, 3);
    expect(outs[0]!.outputIds).toEqual(first);
    expect(outs[1]!.outputIds).toEqual(first);
    const last = chunks.at(-1)!;
    expect(last.finishReason).toEqual({ type: 'length', length: 12 });
    expect(last.outputIds).toEqual(alone.outputIds);
  });
});

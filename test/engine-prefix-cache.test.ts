// The prefix cache end to end on the CPU engine: requests that share a prompt's beginning under
// the same adapter read its keys and values instead of computing them, and get exactly what an
// engine that computes every prompt in full (--disable-radix-cache) gives them.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { GenerateInput, GenerateOutput } from '../src/api.js';
import { DEMO_MODEL, makeDemo } from '../src/model/demo.js';
import type { LocalTroupeEngine } from '../src/troupe.js';
import { demoEngine, prompt } from './engine-fixtures.js';

let dir = '';
let cached: LocalTroupeEngine;
let full: LocalTroupeEngine;

const start = (extra: string[]): Promise<LocalTroupeEngine> => demoEngine(dir, ['--chunked-prefill-size', '24', ...extra]);

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'troupe-prefix-'));
  makeDemo(dir);
  [cached, full] = await Promise.all([start([]), start(['--disable-radix-cache'])]);
}, 120_000);

afterAll(async () => {
  await Promise.all([cached?.close(), full?.close()]);
  if (dir) rmSync(dir, { recursive: true, force: true });
});

const promptIds = (seed: number, length: number): number[] => prompt(length, seed, DEMO_MODEL.vocab_size);

const request = (inputIds: number[], lora: string | null): GenerateInput => ({
  inputIds,
  lora,
  sampling: { maxNewTokens: 6, temperature: 0 },
  returnLogprob: true,
});

const what = (o: GenerateOutput) => ({ ids: o.outputIds, logprobs: o.outputTokenLogprobs?.map((t) => t[0]) });

describe('the prefix cache on the CPU engine', () => {
  it('serves a shared prompt beginning from the cache, with the outputs of full prompts', async () => {
    const system = promptIds(7, 41); // five blocks of 8 and one token
    const asks = [
      { ids: [...system, ...promptIds(100, 5)], lora: null },
      { ids: [...system, ...promptIds(101, 9)], lora: null },
      { ids: [...system, ...promptIds(102, 3)], lora: 'a' },
      { ids: [...system, ...promptIds(103, 7)], lora: 'a' },
      { ids: [...system, ...promptIds(104, 2)], lora: 'b' },
    ];
    const got: GenerateOutput[] = [];
    for (const a of asks) got.push(await cached.generate(request(a.ids, a.lora)));
    const want = await Promise.all(asks.map((a) => full.generate(request(a.ids, a.lora))));
    expect(got.map(what)).toEqual(want.map(what));
    // The first request under each adapter computes the shared blocks, the next reads them.
    expect(got.map((o) => o.cachedTokens)).toEqual([0, 40, 0, 40, 0]);
    expect(want.map((o) => o.cachedTokens)).toEqual([0, 0, 0, 0, 0]);
  });

  it('serves a request that repeats an earlier one, and a conversation that goes on from it', async () => {
    const prompt = promptIds(9, 30);
    const first = await cached.generate(request(prompt, 'b'));
    const again = await cached.generate(request(prompt, 'b'));
    expect(what(again)).toEqual(what(first));
    expect(again.cachedTokens).toBe(24);
    const next = [...prompt, ...first.outputIds, ...promptIds(11, 4)];
    const [turn, fullTurn] = await Promise.all([cached.generate(request(next, 'b')), full.generate(request(next, 'b'))]);
    expect(what(turn)).toEqual(what(fullTurn));
    // The prompt and the first five tokens it generated (the sixth never ran): 35 of its 40 tokens,
    // four whole blocks.
    expect(turn.cachedTokens).toBe(32);
  });

  it('computes everything again after flushCache', async () => {
    const prompt = promptIds(13, 20);
    await cached.generate(request(prompt, null));
    expect((await cached.generate(request(prompt, null))).cachedTokens).toBe(16);
    await cached.flushCache();
    expect((await cached.stats()).cachedBlocks).toBe(0);
    const after = await cached.generate(request(prompt, null));
    expect(after.cachedTokens).toBe(0);
    expect(what(after)).toEqual(what(await full.generate(request(prompt, null))));
  });
});

// The prefix cache on the CUDA backend (TROUPE_GPU_TESTS=1, on the checkpoint of
// make_checkpoint.py, TROUPE_GPU_CHECKPOINT or /tmp/troupe-llama-1b): requests that read a shared
// prompt beginning from the cache, under the base model and an adapter on q/k/v, get the tokens
// and logprobs of an engine that computes every prompt (--disable-radix-cache). The cached keys
// and values were written by another request's prefill, or by its decode steps for generated
// tokens, so they may differ from a full prefill's by bf16 rounding: logprobs agree within the
// parity bar, and greedy tokens wherever the full engine's top-2 gap is not a near-tie.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { GenerateInput, GenerateOutput } from '../../src/api.js';
import { parseArgs } from '../../src/config/parse.js';
import { validateFlags } from '../../src/config/validate.js';
import { LORA_MODULES } from '../../src/engine/types.js';
import { makeRandomAdapter } from '../../src/model/demo.js';
import { createEngine, type LocalTroupeEngine } from '../../src/troupe.js';
import { prompt, tempDir } from '../engine-fixtures.js';

const dir = process.env.TROUPE_GPU_CHECKPOINT ?? '/tmp/troupe-llama-1b';
const hfConfig = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8')) as { vocab_size: number };
const vocab = hfConfig.vocab_size;
const tmp = tempDir('gpu-prefix-cache');
makeRandomAdapter(
  join(tmp.dir, 'qkv'),
  { rank: 16, alpha: 32, targetModules: [...LORA_MODULES.slice(0, 3)], seed: 31, dtype: 'BF16', bStd: 0.025 },
  hfConfig,
);
const BAR = 0.05;

let cached: LocalTroupeEngine;
let full: LocalTroupeEngine;
const start = (extra: string[]): Promise<LocalTroupeEngine> =>
  createEngine(
    validateFlags(
      parseArgs(['--model-path', dir, '--device', 'cuda', '--lora-paths', `qkv=${join(tmp.dir, 'qkv')}`, '--mem-fraction-static', '0.3', ...extra])
        .flags,
    ).options,
  );

beforeAll(async () => {
  cached = await start([]);
  full = await start(['--disable-radix-cache']);
}, 300_000);

afterAll(async () => {
  await Promise.all([cached?.close(), full?.close()]);
  tmp.cleanup();
});

const request = (inputIds: number[], lora: string | null): GenerateInput => ({
  inputIds,
  lora,
  sampling: { maxNewTokens: 12, temperature: 0 },
  returnLogprob: true,
  topLogprobsNum: 2,
});

/** Same tokens until the full engine's first near-tie, and logprobs within the bar up to there. */
function expectClose(got: GenerateOutput, want: GenerateOutput): void {
  for (let i = 0; i < want.outputIds.length; i++) {
    const top = want.outputTopLogprobs![i]!;
    expect(Math.abs(got.outputTokenLogprobs![i]![0] - want.outputTokenLogprobs![i]![0]), `logprob ${i}`).toBeLessThan(BAR);
    if (top[0]![0] - top[1]![0] <= 2 * BAR) return;
    expect(got.outputIds[i], `token ${i}`).toBe(want.outputIds[i]);
  }
}

describe('the prefix cache on CUDA', () => {
  it('gives the outputs of full prompts to requests that read a shared beginning, with and without an adapter', async () => {
    const system = prompt(70, 3, vocab);
    const asks = [null, null, 'qkv', 'qkv', null].map((lora, i) => ({ ids: [...system, ...prompt(5 + i, 40 + i, vocab)], lora }));
    const got: GenerateOutput[] = [];
    for (const a of asks) got.push(await cached.generate(request(a.ids, a.lora)));
    const want = await Promise.all(asks.map((a) => full.generate(request(a.ids, a.lora))));
    expect(got.map((o) => o.cachedTokens)).toEqual([0, 64, 0, 64, 64]);
    got.forEach((o, i) => expectClose(o, want[i]!));
  });

  it('serves the next turn of a conversation from the blocks its decode steps wrote', async () => {
    const first = await cached.generate(request(prompt(40, 9, vocab), 'qkv'));
    const next = [...prompt(40, 9, vocab), ...first.outputIds, ...prompt(6, 11, vocab)];
    const [turn, fullTurn] = await Promise.all([cached.generate(request(next, 'qkv')), full.generate(request(next, 'qkv'))]);
    // 40 prompt tokens and the first 11 of the 12 generated: 51 computed, three whole blocks.
    expect(turn.cachedTokens).toBe(48);
    expectClose(turn, fullTurn);
  });
});

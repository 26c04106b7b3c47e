// Text prompts that cannot fit the context are refused with a 400 that names the sizes: by
// length alone, before any tokenizer thread sees them, when even the tokenizer's longest
// tokens could not fit them; after tokenizing (by the scheduler) otherwise.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { DEFAULT_SAMPLING, type GenerateRequest } from '../src/api.js';
import { parseArgs } from '../src/config/parse.js';
import { validateFlags } from '../src/config/validate.js';
import { TroupeError } from '../src/errors.js';
import { makeDemo } from '../src/model/demo.js';
import { TokenizerPool } from '../src/tokenizer/pool.js';
import { createEngine, type LocalTroupeEngine } from '../src/troupe.js';

const CONTEXT = 256;
// The demo model has Llama 3's tokenizer, whose longest token stands for 128 bytes.
const MOST_BYTES = CONTEXT * 128;

let dir = '';
let engine: LocalTroupeEngine;
const encode = vi.spyOn(TokenizerPool.prototype, 'encode');

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'troupe-prompt-size-'));
  makeDemo(dir);
  const argv = ['--model-path', dir, '--context-length', String(CONTEXT), '--max-total-tokens', '1024', '--device', 'cpu'];
  engine = await createEngine(validateFlags(parseArgs(argv).flags).options);
});

afterAll(async () => {
  encode.mockRestore();
  await engine?.close();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

const request = (text: string): GenerateRequest => ({
  text,
  lora: null,
  returnLogprob: false,
  topLogprobsNum: 0,
  sampling: { ...DEFAULT_SAMPLING, maxNewTokens: 4, temperature: 0 },
});

async function refusal(text: string): Promise<TroupeError> {
  const err = await engine.generate(request(text)).then(
    () => null,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(TroupeError);
  expect((err as TroupeError).status).toBe(400);
  return err as TroupeError;
}

describe('prompt size', () => {
  it('refuses a text longer than the context length times the longest token, without tokenizing it', async () => {
    // Short words tokenize fast, so without the check this would reach the scheduler quickly.
    const text = 'hello world, '.repeat(Math.ceil((MOST_BYTES + 1) / 13));
    const calls = encode.mock.calls.length;
    const err = await refusal(text);
    expect(err.message).toBe(
      `the prompt is ${text.length} bytes, more than the context length of ${CONTEXT} tokens can hold ` +
        `(at most 128 bytes per token of this tokenizer, ${MOST_BYTES} bytes in all)`,
    );
    expect(encode.mock.calls.length).toBe(calls);
    // Multi-byte characters count as their UTF-8 bytes.
    expect((await refusal('é'.repeat(MOST_BYTES / 2 + 1))).message).toMatch(new RegExp(`^the prompt is ${MOST_BYTES + 2} bytes`));
    expect(encode.mock.calls.length).toBe(calls);
  });

  it('refuses a text within that bound that tokenizes past the context, after tokenizing it', async () => {
    const calls = encode.mock.calls.length;
    const err = await refusal('hello world, '.repeat(100));
    expect(err.message).toBe(`the input (301 tokens) is longer than the model's context length (${CONTEXT} tokens)`);
    expect(encode.mock.calls.length).toBe(calls + 1);
  });

  it('still serves a prompt that fits', async () => {
    const out = await engine.generate(request('The capital of France is'));
    expect(out.outputIds).toHaveLength(4);
  });
});

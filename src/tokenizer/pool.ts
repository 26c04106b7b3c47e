// Piscina pools of tokenizer threads, so encoding prompts and detokenizing every step never
// block the main thread's event loop. Prompts over LONG_PROMPT_BYTES get a thread of their
// own: encoding megabytes takes seconds, and short prompts and every stream's detokenization
// must not queue behind it.
import { Piscina } from 'piscina';
import { workerUrl } from '../actors/worker-url.js';
import type { DetokItem, DetokResult, TokenizerFacts, TokenizerWorkerData } from './types.js';

/** Texts larger than this (UTF-8 bytes, all texts of one call together) go to the long-prompt thread. */
export const LONG_PROMPT_BYTES = 64 * 1024;

export type { DetokItem, DetokResult };

/** Per-sequence detokenization state the caller keeps between steps. */
export interface DetokState {
  prefixOffset: number;
  readOffset: number;
}

function startThreads(data: TokenizerWorkerData, threads: number): Piscina {
  return new Piscina({
    filename: workerUrl('tokenizer-tasks.cjs', import.meta.url).href,
    workerData: data,
    minThreads: threads,
    maxThreads: threads,
    // Parsing a large tokenizer takes most of a second; keep the threads.
    idleTimeout: Number.POSITIVE_INFINITY,
  });
}

export class TokenizerPool {
  /** Short prompts, decoding and detokenization. */
  private readonly pool: Piscina;
  /** Prompts over LONG_PROMPT_BYTES, one at a time. */
  private readonly longPool: Piscina;
  private facts: TokenizerFacts = { maxTokenBytes: null };

  constructor(data: TokenizerWorkerData, threads = 1) {
    this.pool = startThreads(data, threads);
    this.longPool = startThreads(data, 1);
  }

  /** Threads for short prompts and detokenizing (the long-prompt thread aside). */
  get threads(): number {
    return this.pool.options.maxThreads;
  }

  /**
   * The most UTF-8 bytes of text one token stands for (known once ready() resolved); null when
   * the tokenizer gives no such bound. A text longer than contextLength times this cannot fit.
   */
  get maxTokenBytes(): number | null {
    return this.facts.maxTokenBytes;
  }

  encode(text: string): Promise<number[]> {
    return this.encodeBatch([text]).then((r) => r[0] ?? []);
  }

  encodeBatch(texts: string[]): Promise<number[][]> {
    let bytes = 0;
    for (const t of texts) bytes += Buffer.byteLength(t, 'utf8');
    const pool = bytes > LONG_PROMPT_BYTES ? this.longPool : this.pool;
    return pool.run(texts, { name: 'encode' }) as Promise<number[][]>;
  }

  decode(ids: number[], skipSpecialTokens = true): Promise<string> {
    return this.pool.run({ ids, skipSpecialTokens }, { name: 'decode' }) as Promise<string>;
  }

  tokenTexts(ids: number[]): Promise<Array<string | null>> {
    return this.pool.run(ids, { name: 'tokenTexts' }) as Promise<Array<string | null>>;
  }

  /**
   * Detokenize one step of several sequences in one round trip. Each entry holds the full
   * output ids and the state from the last call; only the window since prefixOffset
   * crosses the thread boundary, so the cost does not grow with the output length.
   */
  async detokenize(
    items: Array<{ ids: number[]; state: DetokState; skipSpecialTokens: boolean; final: boolean }>,
  ): Promise<Array<{ text: string; state: DetokState }>> {
    const wire: DetokItem[] = items.map(({ ids, state, skipSpecialTokens, final }) => ({
      ids: ids.slice(state.prefixOffset),
      prefixOffset: 0,
      readOffset: state.readOffset - state.prefixOffset,
      skipSpecialTokens,
      final,
    }));
    const out = (await this.pool.run(wire, { name: 'detokenize' })) as DetokResult[];
    return out.map((r, i) => {
      const base = items[i]!.state.prefixOffset;
      return { text: r.text, state: { prefixOffset: base + r.prefixOffset, readOffset: base + r.readOffset } };
    });
  }

  /** Resolves once a thread of each kind has parsed the tokenizer; rejects with the reason it could not. */
  async ready(): Promise<void> {
    const [facts] = (await Promise.all([this.pool.run(null, { name: 'ready' }), this.longPool.run(null, { name: 'ready' })])) as TokenizerFacts[];
    this.facts = facts!;
  }

  async close(): Promise<void> {
    await Promise.all([this.pool.destroy(), this.longPool.destroy()]);
  }
}

/**
 * Starts a pool for the tokenizer in tokenizer.json (+ tokenizer_config.json when there is one):
 * `threads` threads (--tokenizer-worker-num) and one more for long prompts.
 */
export function createTokenizerPool(tokenizerFile: string, tokenizerConfigFile: string | null, threads = 1): TokenizerPool {
  return new TokenizerPool({ tokenizerFile, tokenizerConfigFile }, threads);
}

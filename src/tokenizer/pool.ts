// A small piscina pool of tokenizer threads, so encoding long prompts and detokenizing
// every step never blocks the main thread's event loop.
import { Piscina } from 'piscina';
import { workerUrl } from '../actors/worker-url.js';
import type { DetokItem, DetokResult, TokenizerWorkerData } from './types.js';

export type { DetokItem, DetokResult };

/** Per-sequence detokenization state the caller keeps between steps. */
export interface DetokState {
  prefixOffset: number;
  readOffset: number;
}

export class TokenizerPool {
  private readonly pool: Piscina;

  constructor(data: TokenizerWorkerData, threads = 1) {
    this.pool = new Piscina({
      filename: workerUrl('tokenizer.worker.js', import.meta.url).href,
      workerData: data,
      minThreads: threads,
      maxThreads: threads,
      // Parsing a large tokenizer takes most of a second; keep the threads.
      idleTimeout: Number.POSITIVE_INFINITY,
    });
  }

  encode(text: string): Promise<number[]> {
    return this.encodeBatch([text]).then((r) => r[0] ?? []);
  }

  encodeBatch(texts: string[]): Promise<number[][]> {
    return this.pool.run(texts, { name: 'encode' }) as Promise<number[][]>;
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

  /** Resolves once a thread has parsed the tokenizer; rejects with the reason it could not. */
  ready(): Promise<void> {
    return this.pool.run(null, { name: 'ready' }) as Promise<void>;
  }

  close(): Promise<void> {
    return this.pool.destroy();
  }
}

/** Starts a pool for the tokenizer in tokenizer.json (+ tokenizer_config.json when there is one). */
export function createTokenizerPool(tokenizerFile: string, tokenizerConfigFile: string | null, threads = 1): TokenizerPool {
  return new TokenizerPool({ tokenizerFile, tokenizerConfigFile }, threads);
}

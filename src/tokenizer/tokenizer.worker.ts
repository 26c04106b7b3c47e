// Tokenizer pool worker (piscina): encode, decode and incremental detokenization. Each
// thread parses the tokenizer once; calls carry no per-request state.
import { readFileSync } from 'node:fs';
import { Tokenizer } from '@huggingface/tokenizers';
import { Piscina } from 'piscina';
import { parseJson } from '../model/json-text.js';
import { longestTokenBytes } from './token-bytes.js';
import type { DetokItem, DetokResult, TokenizerFacts, TokenizerWorkerData } from './types.js';

// parseJson's errors give the position, never a snippet of the file.
function readJson(file: string): object {
  try {
    return parseJson(readFileSync(file, 'utf8')) as object;
  } catch (err) {
    throw new Error(`${file}: ${(err as Error).message}`, { cause: err });
  }
}

// A tokenizer that cannot load fails every task with the reason instead of killing the
// thread (the pool would restart it and the task would never be answered).
let loaded: Tokenizer | Error;
let facts: TokenizerFacts = { maxTokenBytes: null };
try {
  const init = Piscina.workerData as TokenizerWorkerData;
  const config = init.tokenizerConfigFile ? readJson(init.tokenizerConfigFile) : {};
  const json = readJson(init.tokenizerFile);
  loaded = new Tokenizer(json, config);
  facts = { maxTokenBytes: longestTokenBytes(json) };
} catch (err) {
  loaded = new Error(`cannot load the tokenizer: ${(err as Error).message}`);
}
const tokenizer = new Proxy({} as Tokenizer, {
  get(_t, key) {
    if (loaded instanceof Error) throw loaded;
    const v = (loaded as unknown as Record<string | symbol, unknown>)[key];
    return typeof v === 'function' ? v.bind(loaded) : v;
  },
});

// The library refuses an empty id list; an empty window decodes to nothing.
const decodeIds = (ids: number[], skipSpecialTokens: boolean): string =>
  ids.length === 0 ? '' : tokenizer.decode(ids, { skip_special_tokens: skipSpecialTokens });

export function ready(): TokenizerFacts {
  if (loaded instanceof Error) throw loaded;
  return facts;
}

export function encode(texts: string[]): number[][] {
  return texts.map((t) => tokenizer.encode(t).ids);
}

export function decode(task: { ids: number[]; skipSpecialTokens: boolean }): string {
  return decodeIds(task.ids, task.skipSpecialTokens);
}

/** Token id -> text for logprob tables. */
export function tokenTexts(ids: number[]): Array<string | null> {
  return ids.map((id) => tokenizer.decode([id], { skip_special_tokens: false }));
}

/**
 * vLLM/HF incremental detokenization: decode the window since prefixOffset with and
 * without the unread tokens; the difference is the new text. A trailing U+FFFD means the
 * last token ends inside a multi-byte character, so it waits for the next token — unless
 * this is the final call, which flushes whatever is left.
 */
export function detokenize(items: DetokItem[]): DetokResult[] {
  return items.map(({ ids, prefixOffset, readOffset, skipSpecialTokens, final }) => {
    const prefixText = decodeIds(ids.slice(prefixOffset, readOffset), skipSpecialTokens);
    const newText = decodeIds(ids.slice(prefixOffset), skipSpecialTokens);
    if (newText.length > prefixText.length && (final || !newText.endsWith('\uFFFD'))) {
      return { text: newText.slice(prefixText.length), prefixOffset: readOffset, readOffset: ids.length };
    }
    return { text: '', prefixOffset, readOffset };
  });
}

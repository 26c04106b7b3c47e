// What a request must satisfy before it queues: every refusal here is the client's to fix (a 400),
// given before the request holds anything.
import { badRequest } from '../errors.js';
import type { AdapterRegistry } from './adapter-registry.js';
import type { BlockManager } from './block-manager.js';
import type { SeqInit } from './sequence.js';

/** Throws the refusal of a request that could never run: an empty prompt, an adapter that cannot serve it, or more tokens than the context or the KV cache holds. */
export function checkRequest(init: SeqInit, contextLength: number, kv: BlockManager, registry: AdapterRegistry): void {
  const { promptIds, lora, sampling } = init;
  if (promptIds.length === 0) throw badRequest('the prompt is empty');
  if (lora !== null) {
    const refusal = registry.admit(lora);
    if (refusal) throw refusal;
  }
  const ctx = contextLength;
  if (promptIds.length >= ctx) {
    throw badRequest(`the input (${promptIds.length} tokens) is longer than the model's context length (${ctx} tokens)`);
  }
  // The last sampled token never enters the cache.
  const kvTokens = Math.min(promptIds.length + sampling.maxNewTokens, ctx) - 1;
  const cacheTokens = kv.numBlocks * kv.blockSize;
  if (kv.blocksFor(kvTokens) > kv.numBlocks) {
    throw badRequest(
      `the request needs ${kvTokens + 1} tokens (prompt ${promptIds.length} + max_new_tokens ${sampling.maxNewTokens}) ` +
        `but the KV cache holds only ${cacheTokens} tokens; lower max_new_tokens or shorten the prompt`,
    );
  }
}

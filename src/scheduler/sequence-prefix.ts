// A request's part in the prefix cache (prefix-cache.ts): the cached blocks it starts from when
// admitted, and its own blocks kept for later requests as their tokens are computed.
import type { BlockManager } from './block-manager.js';
import { blockKey } from './prefix-cache.js';
import type { Sequence } from './sequence.js';

/** The key of `s`'s block i, from its tokens; the keys before it are made first and kept. */
function keyAt(s: Sequence, kv: BlockManager, i: number): string {
  const keys = s.prefixKeys;
  const size = kv.blockSize;
  for (let j = keys.length; j <= i; j++) {
    const at = s.tokenOffset + j * size;
    keys.push(blockKey(j === 0 ? '' : keys[j - 1]!, s.prefixScope, s.pool.data.subarray(at, at + size)));
  }
  return keys[i]!;
}

/**
 * Before a request with nothing in the cache is admitted: takes up the cached blocks that begin
 * its tokens and counts their tokens computed. Its last token is always left to compute, since
 * the step that samples after it needs its logits.
 */
export function takeCachedPrefix(s: Sequence, kv: BlockManager): void {
  const prefix = kv.prefix;
  if (prefix === null || s.blocks.length > 0 || s.computed > 0) return;
  const scope = prefix.scope(s.init.lora);
  if (scope !== s.prefixScope) {
    s.prefixScope = scope;
    s.prefixKeys.length = 0;
  }
  kv.takePrefix(s.blocks, Math.floor((s.tokenCount - 1) / kv.blockSize), (i) => keyAt(s, kv, i));
  s.computed = s.blocks.length * kv.blockSize;
  s.keptBlocks = s.blocks.length;
}

/** Gives back the cached blocks takeCachedPrefix took, where the request was not admitted after all. */
export function returnCachedPrefix(s: Sequence, kv: BlockManager): void {
  kv.release(s.blocks);
  s.computed = 0;
  s.keptBlocks = 0;
}

/** After a step: keeps the request's blocks whose every token is now computed. */
export function keepComputedBlocks(s: Sequence, kv: BlockManager): void {
  if (kv.prefix === null) return;
  const size = kv.blockSize;
  while ((s.keptBlocks + 1) * size <= s.computed) {
    kv.keep(s.blocks[s.keptBlocks]!, keyAt(s, kv, s.keptBlocks));
    s.keptBlocks++;
  }
}

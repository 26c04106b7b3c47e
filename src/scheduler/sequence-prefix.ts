// A request's part in the prefix cache (prefix-cache.ts): the cached blocks it starts from when
// admitted, the blocks it is computing (which requests with the same beginning wait for), and its
// own blocks kept for later requests as their tokens are computed.
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

/**
 * Whether the first block `s` would compute is one another admitted request is computing now:
 * it then waits (a step or a few) and reads it, rather than computing the same keys and values.
 * Call after takeCachedPrefix.
 */
export function waitsForPrefix(s: Sequence, kv: BlockManager): boolean {
  const prefix = kv.prefix;
  if (prefix === null) return false;
  const next = s.blocks.length;
  if (next >= Math.floor((s.tokenCount - 1) / kv.blockSize)) return false;
  return prefix.isComputing(keyAt(s, kv, next));
}

/**
 * Once admitted: marks the next block of its prompt it will compute as being computed by it, for
 * waitsForPrefix (one at a time, the next as each is kept, so a long prompt's keys are made as
 * its blocks are computed, not all at once here).
 */
export function claimPrefix(s: Sequence, kv: BlockManager): void {
  s.claimEnd = Math.floor(s.tokenCount / kv.blockSize);
  claimNext(s, kv);
}

function claimNext(s: Sequence, kv: BlockManager): void {
  s.claimedBlock = -1;
  if (kv.prefix === null || s.keptBlocks >= s.claimEnd) return;
  kv.prefix.claim(keyAt(s, kv, s.keptBlocks));
  s.claimedBlock = s.keptBlocks;
}

/** Its claim on a block it has not kept, given up as it leaves the running list. */
export function releasePrefixClaims(s: Sequence, kv: BlockManager): void {
  if (s.claimedBlock >= 0) kv.prefix?.unclaim(keyAt(s, kv, s.claimedBlock));
  s.claimedBlock = -1;
  s.claimEnd = 0;
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
  const claimed = s.claimedBlock;
  while ((s.keptBlocks + 1) * size <= s.computed) {
    kv.keep(s.blocks[s.keptBlocks]!, keyAt(s, kv, s.keptBlocks));
    s.keptBlocks++;
  }
  if (claimed >= 0 && claimed < s.keptBlocks) {
    kv.prefix.unclaim(keyAt(s, kv, claimed));
    claimNext(s, kv);
  }
}

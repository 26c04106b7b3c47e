// The paged KV cache's blocks. Blocks are plain indices; the native side owns the memory. A block
// is free, held by the requests whose tables name it (more than one where they share a cached
// prefix), or idle: cached for a later request with the same prefix (prefix-cache.ts), and
// reused, oldest first, once no free block is left.
import { PrefixCache } from './prefix-cache.js';

export class BlockManager {
  private readonly free: number[] = [];
  /** Requests holding each block. */
  private readonly holders: Int32Array;
  /** Null where prefixes are not kept (--disable-radix-cache). */
  readonly prefix: PrefixCache | null;

  constructor(
    readonly blockSize: number,
    readonly numBlocks: number,
    keepPrefixes = false,
  ) {
    if (!Number.isInteger(blockSize) || blockSize < 1) throw new RangeError(`blockSize must be a positive integer, got ${blockSize}`);
    if (!Number.isInteger(numBlocks) || numBlocks < 1) throw new RangeError(`numBlocks must be a positive integer, got ${numBlocks}`);
    // Popped from the end, so block 0 is handed out first.
    for (let i = numBlocks - 1; i >= 0; i--) this.free.push(i);
    this.holders = new Int32Array(numBlocks);
    this.prefix = keepPrefixes ? new PrefixCache() : null;
  }

  /** Blocks a request may take now: the free ones and the idle cached ones. */
  get freeCount(): number {
    return this.free.length + (this.prefix?.idleCount ?? 0);
  }

  blocksFor(tokens: number): number {
    return Math.ceil(tokens / this.blockSize);
  }

  /** Extra blocks a sequence holding `held` blocks needs to hold `tokens` tokens. */
  shortfall(held: number, tokens: number): number {
    return Math.max(0, this.blocksFor(tokens) - held);
  }

  /** Grows `blocks` to cover `tokens` tokens; false (and nothing taken) if the cache is short. */
  grow(blocks: number[], tokens: number): boolean {
    const need = this.shortfall(blocks.length, tokens);
    if (need > this.freeCount) return false;
    for (let i = 0; i < need; i++) {
      const block = this.free.length > 0 ? this.free.pop()! : this.prefix!.evictOldest()!;
      this.holders[block] = 1;
      blocks.push(block);
    }
    return true;
  }

  release(blocks: number[]): void {
    for (let i = blocks.length - 1; i >= 0; i--) {
      const block = blocks[i]!;
      if (--this.holders[block]! > 0) continue;
      if (this.prefix?.isCached(block)) this.prefix.release(block);
      else this.free.push(block);
    }
    blocks.length = 0;
  }

  /**
   * Takes up the cached blocks that begin a request's tokens: keyAt(i) is the key of its block i,
   * asked for in order until one is not cached or `most` are found. They join `blocks` (empty).
   */
  takePrefix(blocks: number[], most: number, keyAt: (i: number) => string): void {
    const prefix = this.prefix;
    if (prefix === null) return;
    for (let i = 0; i < most; i++) {
      const block = prefix.lookup(keyAt(i));
      if (block === undefined) return;
      if (this.holders[block] === 0) prefix.take(block);
      this.holders[block]!++;
      blocks.push(block);
    }
  }

  /** Keeps a held block, every token of which is computed, for later requests with the same prefix. */
  keep(block: number, key: string): void {
    this.prefix?.add(block, key);
  }

  /** Forgets every cached prefix (/flush_cache): idle blocks are free again, held ones when let go. */
  flushPrefixes(): void {
    if (this.prefix === null) return;
    for (const block of this.prefix.clear()) this.free.push(block);
  }
}

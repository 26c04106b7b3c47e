// The paged KV cache's free list. Blocks are plain indices; the native side owns the memory.
export class BlockManager {
  private readonly free: number[] = [];

  constructor(
    readonly blockSize: number,
    readonly numBlocks: number,
  ) {
    if (!Number.isInteger(blockSize) || blockSize < 1) throw new RangeError(`blockSize must be a positive integer, got ${blockSize}`);
    if (!Number.isInteger(numBlocks) || numBlocks < 1) throw new RangeError(`numBlocks must be a positive integer, got ${numBlocks}`);
    // Popped from the end, so block 0 is handed out first.
    for (let i = numBlocks - 1; i >= 0; i--) this.free.push(i);
  }

  get freeCount(): number {
    return this.free.length;
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
    if (need > this.free.length) return false;
    for (let i = 0; i < need; i++) blocks.push(this.free.pop()!);
    return true;
  }

  release(blocks: number[]): void {
    for (let i = blocks.length - 1; i >= 0; i--) this.free.push(blocks[i]!);
    blocks.length = 0;
  }
}

// The KV cache's reusable prefixes: full blocks whose keys and values a later request with the
// same tokens before them, under the same adapter, may read instead of computing them again
// (SGLang's radix cache at block granularity; vLLM's automatic prefix caching). A block's key
// hashes its tokens, the key of the block before it, and the adapter's scope (its name and how
// many times its weights were read from disk), so a block matches only where everything before
// it does. Blocks no request holds stay cached until the block manager needs room, oldest first.
import { createHash } from 'node:crypto';

/** What a block's key is made of: the key before it, the adapter's scope and the block's tokens. */
export function blockKey(before: string, scope: string, tokens: Int32Array): string {
  return createHash('sha256')
    .update(before)
    .update('\0')
    .update(scope)
    .update('\0')
    .update(new Uint8Array(tokens.buffer, tokens.byteOffset, tokens.byteLength))
    .digest('base64url');
}

export class PrefixCache {
  private readonly blockByKey = new Map<string, number>();
  private readonly keyOfBlock = new Map<number, string>();
  /** Cached blocks that no request holds, least recently released first (a Set keeps insertion order). */
  private readonly idle = new Set<number>();
  /** Times each adapter's weights were read from disk: part of its blocks' scope. */
  private readonly generations = new Map<string, number>();
  /** Prompt tokens of the requests admitted so far, and those of them found cached (for /metrics). */
  queriedTokens = 0;
  hitTokens = 0;
  /**
   * Blocks that admitted requests are computing now, by key (with how many compute each): a
   * request whose next block is one of them waits to read it rather than compute it again, as
   * SGLang's in-batch prefix caching holds back requests that share a prefix being prefilled.
   */
  private readonly computing = new Map<string, number>();
  /** Changes whenever a block stops being computed (kept, or its request left): a waiting request may then go on. */
  version = 0;

  get idleCount(): number {
    return this.idle.size;
  }

  get cachedBlocks(): number {
    return this.keyOfBlock.size;
  }

  /** The scope of blocks computed with `lora`'s weights as they are now (null: the base model). */
  scope(lora: string | null): string {
    return lora === null ? '' : `${lora}#${this.generations.get(lora) ?? 0}`;
  }

  /** `lora`'s weights were read from disk again: blocks computed with the earlier copy no longer match. */
  weightsRead(lora: string): void {
    this.generations.set(lora, (this.generations.get(lora) ?? 0) + 1);
  }

  lookup(key: string): number | undefined {
    return this.blockByKey.get(key);
  }

  isComputing(key: string): boolean {
    return this.computing.has(key);
  }

  /** A request admitted to compute the block of this key. */
  claim(key: string): void {
    this.computing.set(key, (this.computing.get(key) ?? 0) + 1);
  }

  /** That request kept the block, or left before it had computed it. */
  unclaim(key: string): void {
    const n = this.computing.get(key);
    if (n === undefined) return;
    if (n > 1) this.computing.set(key, n - 1);
    else this.computing.delete(key);
    this.version++;
  }

  isCached(block: number): boolean {
    return this.keyOfBlock.has(block);
  }

  /** Keys a block whose tokens are all computed; false where the key or the block has one already. */
  add(block: number, key: string): boolean {
    if (this.blockByKey.has(key) || this.keyOfBlock.has(block)) return false;
    this.blockByKey.set(key, block);
    this.keyOfBlock.set(block, key);
    return true;
  }

  /** A cached block that its last holder let go: it stays until its room is needed. */
  release(block: number): void {
    this.idle.add(block);
  }

  /** A cached block that a request takes up again. */
  take(block: number): void {
    this.idle.delete(block);
  }

  /** Forgets the least recently released idle block and returns it for reuse; undefined if none. */
  evictOldest(): number | undefined {
    for (const block of this.idle) {
      this.idle.delete(block);
      this.forget(block);
      return block;
    }
    return undefined;
  }

  /** Forgets every key (/flush_cache); returns the idle blocks, which are free from now on. */
  clear(): number[] {
    const idle = [...this.idle];
    this.idle.clear();
    this.blockByKey.clear();
    this.keyOfBlock.clear();
    return idle;
  }

  private forget(block: number): void {
    const key = this.keyOfBlock.get(block);
    if (key === undefined) return;
    this.keyOfBlock.delete(block);
    this.blockByKey.delete(key);
  }
}

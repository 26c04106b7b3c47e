// What clients see of the adapters, kept as SGLang keeps it (its LoRA registry and the
// tokenizer manager's cache of every adapter ever loaded): the loaded set, at most
// --max-loaded-loras names ordered least recently used first, and every name ever loaded
// with the path and pin it was loaded with. A name that leaves the loaded set, evicted to make
// room or unloaded, stays servable: a request naming it brings it back from that path.
//
// The adapter machines behind the names are a cache this class does not see: an adapter
// evicted from the loaded set keeps its machine, and its CPU copy and slot until the CPU
// budget or the pool wants them, so bringing it back usually costs nothing.

import { Recency } from './recency.js';

export interface CatalogEntry {
  name: string;
  path: string;
  pinned: boolean;
}

const NONE: readonly string[] = Object.freeze([]);

export class AdapterCatalog {
  /** Loaded names, least recently used first, with whether each is pinned. */
  private readonly loaded = new Recency<boolean>();
  private readonly known = new Map<string, CatalogEntry>();
  /**
   * What a name was remembered as before a load whose weights have not been read yet (null:
   * not at all). SGLang remembers only loads that succeeded; a load that fails restores this.
   */
  private readonly before = new Map<string, CatalogEntry | null>();

  constructor(private readonly maxLoaded: number | null) {}

  isLoaded(name: string): boolean {
    return this.loaded.has(name);
  }

  /** The loaded names, least recently used first. */
  loadedNames(): string[] {
    return [...this.loaded.keys()];
  }

  /** The path and pin a request naming `name` loads it with, or null if it was never loaded. */
  remembered(name: string): CatalogEntry | null {
    return this.known.get(name) ?? null;
  }

  /** An explicit load (or --lora-paths) registered `entry`; it counts once its read succeeds. */
  remember(entry: CatalogEntry): void {
    if (!this.before.has(entry.name)) this.before.set(entry.name, this.known.get(entry.name) ?? null);
    this.known.set(entry.name, { ...entry });
  }

  /** Its weights were read: the load succeeded. */
  confirm(name: string): void {
    this.before.delete(name);
  }

  /** Its load failed: it leaves the loaded set, and a load not yet confirmed is forgotten. */
  failed(name: string): void {
    this.loaded.delete(name);
    if (!this.before.has(name)) return;
    const prior = this.before.get(name)!;
    this.before.delete(name);
    if (prior) this.known.set(name, prior);
    else this.known.delete(name);
  }

  /**
   * `name` enters the loaded set, or is used again, as its most recently used name. Returns the
   * names evicted to stay within --max-loaded-loras: the least recently used unpinned ones, as
   * SGLang evicts (never `name` itself).
   */
  use(name: string, pinned: boolean): readonly string[] {
    if (!this.loaded.use(name, pinned)) this.loaded.add(name, pinned);
    // Every request uses its adapter: most evict nothing, and get no array of their own.
    if (this.maxLoaded === null || this.loaded.size <= this.maxLoaded) return NONE;
    const evicted: string[] = [];
    for (const [other, otherPinned] of this.loaded.entries()) {
      if (this.loaded.size <= this.maxLoaded) break;
      if (otherPinned || other === name) continue;
      this.loaded.delete(other);
      evicted.push(other);
    }
    return evicted;
  }

  /** An explicit unload: it leaves the loaded set and stays remembered (an unread load included: it was checked). */
  unloaded(name: string): void {
    this.loaded.delete(name);
    this.before.delete(name);
  }
}

// An adapter's life as clients drive it: an explicit load, a request that names it (bringing
// back one that left the loaded set), and an explicit unload. These follow SGLang's rules for
// what a client may do with a name, so each asks the catalog what clients see before it asks
// the adapter's machine where it stands and sends it the events that follow.
import { TroupeError, badRequest, notFound } from '../errors.js';
import type { AdapterActors } from './adapter-actors.js';
import type { AdapterCatalog, CatalogEntry as AdapterSpec } from './adapter-catalog.js';
import type { AdapterIndex } from './adapter-index.js';
import type { RegistryLimits } from './adapter-registry.js';

export class AdapterLifecycle {
  constructor(
    private readonly limits: RegistryLimits,
    private readonly index: AdapterIndex,
    private readonly actors: AdapterActors,
    private readonly catalog: AdapterCatalog,
  ) {}

  /**
   * An explicit load (or --lora-paths). A name in the loaded set is refused, as SGLang refuses
   * it; one evicted from it comes back as it is when the path and pin are the same, and is
   * replaced otherwise. Loading past --max-loaded-loras evicts the least recently used
   * unpinned adapter from the loaded set (see AdapterCatalog).
   */
  add(spec: AdapterSpec): void {
    const { name } = spec;
    const label = this.actors.label(name);
    if (label !== null) {
      const removing = this.actors.removing(name);
      if (this.catalog.isLoaded(name) && !removing) {
        throw new TroupeError('conflict', `Failed to load LoRA adapter '${name}' because it is already loaded (state ${label}); unload it first`);
      }
      if (label !== 'failed' && this.sameAs(name, spec)) {
        if (removing) this.actors.revive(name, 'loaded again while its unload waits; it stays');
        this.use(name);
        this.readIfRoom(name);
        return;
      }
      // Refused before the old adapter leaves, so a refused load changes nothing.
      this.assertCanPin(spec, this.actors.snapshot(name)!.context.pinned ? 1 : 0);
      this.replace(spec, label);
    }
    this.register(spec, spec.pinned ? 'added, pinned' : 'added');
    this.catalog.remember(spec);
    this.use(name);
  }

  /**
   * Readies `name` for a new request, or says why it must be refused. As in SGLang, a name that
   * was once loaded stays servable: one evicted from the loaded set, or unloaded, is loaded again
   * from the path it was loaded with (a request naming an adapter whose unload still waits for
   * its requests keeps it instead), and it becomes the most recently used.
   */
  admit(name: string): TroupeError | null {
    // The common case, a request for an adapter that serves: one lookup, and no need to ask the catalog.
    const pinned = this.actors.servingPinned(name);
    if (pinned !== null) {
      this.catalog.use(name, pinned);
      return null;
    }
    const label = this.actors.label(name);
    const remembered = this.catalog.remembered(name);
    if (label === 'failed') {
      // A load that never succeeded is refused with its reason until it is loaded again; a
      // reload from the remembered path is tried again, as SGLang tries every request.
      const refused = badRequest(`LoRA adapter '${name}' failed to load: ${this.actors.error(name)}`);
      if (remembered === null || this.actors.snapshot(name)!.context.users > 0) return refused;
      void this.unregister(name, 'a request names it again; its load is tried again');
      // It waits for the loader to report the rest of its failed load.
      if (this.actors.has(name)) return refused;
    } else if (label !== null) {
      if (this.actors.removing(name)) {
        if (remembered === null || !this.sameAs(name, remembered)) return badRequest(`adapter "${name}" is being unloaded`);
        this.actors.revive(name, 'a request names it while its unload waits; it stays');
      }
      this.use(name);
      return null;
    }
    if (remembered === null) {
      const loaded = this.catalog.loadedNames();
      return badRequest(
        `Got LoRA adapter that has never been loaded: '${name}' (loaded adapters: ${loaded.length > 0 ? loaded.join(', ') : 'none'}); ` +
          'load it with /load_lora_adapter or --lora-paths first',
      );
    }
    try {
      this.register(remembered, `loaded again from ${remembered.path}: a request names it`);
    } catch (err) {
      return badRequest(`Failed to implicitly load LoRA adapter '${name}': ${err instanceof Error ? err.message : String(err)}`);
    }
    this.use(name);
    return null;
  }

  /**
   * An explicit unload: it leaves the loaded set at once and new requests for it load it again
   * (see admit); resolves once its users are gone and its copies are released. An adapter
   * evicted from the loaded set is not loaded, so it cannot be unloaded, as in SGLang.
   */
  remove(name: string): Promise<void> {
    const label = this.actors.label(name);
    const leaving = label !== null && (label === 'failed' || this.actors.removing(name) || this.catalog.isLoaded(name));
    if (!leaving) {
      const evicted = label !== null || this.catalog.remembered(name) !== null;
      const why = evicted ? ': it left the loaded set, and a request naming it loads it again' : '';
      return Promise.reject(notFound(`LoRA adapter '${name}' is not loaded${why}`));
    }
    this.catalog.unloaded(name);
    return this.unregister(name, 'unload requested');
  }

  /** Starts its machine; refused past the pin limit. */
  private register(spec: AdapterSpec, reason: string): void {
    this.assertCanPin(spec, 0);
    this.actors.start({ ...spec, maxRank: this.limits.maxLoraRank, poolModules: this.limits.loraModules }, reason);
    this.readIfRoom(spec.name);
  }

  /** SGLang keeps one slot of every batch for unpinned adapters and the base model; `leaving` pins are about to go. */
  private assertCanPin(spec: AdapterSpec, leaving: number): void {
    const pinned = this.index.pinned.size - leaving;
    if (spec.pinned && pinned >= this.limits.maxPinned) {
      throw badRequest(
        `Failed to load LoRA adapter '${spec.name}' as a pinned adapter. It is not allowed to pin all slots in the LoRA memory pool ` +
          `to avoid starvation for unpinned adapters and base models: ${pinned} adapters are pinned and at most ${this.limits.maxPinned} may be ` +
          '(max_loras_per_batch - 1); increase --max-loras-per-batch or load it unpinned',
      );
    }
  }

  /** Reads a loaded adapter that is on disk while the CPU budget allows, so a bad adapter fails at load time. */
  private readIfRoom(name: string): void {
    if (this.actors.placement(name)?.residency !== 'registered') return;
    const max = this.limits.maxLoaded;
    if (this.actors.snapshot(name)!.context.pinned || max === null || this.index.cpuCount < max) {
      this.actors.send(name, { type: 'LOAD' }, 'read at registration');
    }
  }

  /** An explicit load names an adapter evicted from the loaded set with another path or pin: the old one leaves first. */
  private replace(spec: AdapterSpec, label: string): void {
    const old = this.actors.snapshot(spec.name)!.context;
    if (!this.actors.removing(spec.name)) void this.unregister(spec.name, `replaced by ${spec.path}`).catch(() => {});
    if (this.actors.has(spec.name)) {
      const users = this.actors.snapshot(spec.name)!.context.users;
      throw badRequest(
        `Failed to load LoRA adapter '${spec.name}' from ${spec.path}: the adapter of that name from ${old.path} (state ${label}) is ` +
          `still unloading${users > 0 ? `, waiting for ${users} request(s)` : ''}; load it again once that is done`,
      );
    }
  }

  /** Asks its machine to leave; resolves once it has. */
  private unregister(name: string, reason: string): Promise<void> {
    const { promise, first } = this.actors.removal(name);
    if (first) {
      const users = this.actors.snapshot(name)!.context.users;
      this.actors.send(name, { type: 'UNLOAD' }, users > 0 ? `${reason}; waiting for ${users} request(s)` : reason);
    }
    return promise;
  }

  /**
   * It is used: the most recently used of the loaded set. Those this evicts from the set keep
   * their machines, CPU copies and slots (the cache), which the CPU budget and the pool reclaim.
   */
  private use(name: string): void {
    this.catalog.use(name, this.actors.pinned(name)!);
  }

  /** Whether its machine runs the adapter `spec` describes. */
  private sameAs(name: string, spec: { path: string; pinned: boolean }): boolean {
    const ctx = this.actors.snapshot(name)!.context;
    return ctx.path === spec.path && ctx.pinned === spec.pinned;
  }
}

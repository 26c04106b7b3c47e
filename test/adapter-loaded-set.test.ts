// The loaded set clients see, on the scheduler alone: at most --max-loaded-loras adapters, the
// least recently used unpinned one evicted from it past that, and every name once loaded
// servable again from the path it was loaded with, as SGLang's tokenizer manager serves it. The
// adapter machines stay behind the set as a cache: eviction from the set moves no weights.
import { describe, expect, test } from 'vitest';
import type { Scheduler } from '../src/scheduler/index.js';
import { newScheduler, runAll, seq, serveLoader } from './scheduler-harness.js';

const loadedNames = (s: Scheduler): string[] =>
  s
    .adapters()
    .filter((a) => a.loaded)
    .map((a) => a.name)
    .sort();
const stateOf = (s: Scheduler, name: string): string | undefined => s.adapters([name])[0]?.state;
const add = (s: Scheduler, name: string, o: { path?: string; pinned?: boolean } = {}): void =>
  s.addAdapter({ name, path: o.path ?? `/${name}`, pinned: o.pinned ?? false });

/** Runs one request for `lora` to its end and returns its finish. */
function run(s: Scheduler, id: string, lora: string) {
  s.submit(seq(id, { lora, maxNewTokens: 1 }));
  return runAll(s).out.get(id)!.finish;
}

describe('the loaded set', () => {
  test('loading past max_loaded_loras evicts the least recently used unpinned adapter from it, and nothing else', () => {
    const s = newScheduler({ maxLorasPerBatch: 2, maxLoadedLoras: 2 });
    add(s, 'P', { pinned: true });
    add(s, 'A');
    serveLoader(s);
    add(s, 'B');
    // A leaves the set (P is pinned), but keeps its machine and CPU copy: B stays on disk.
    expect(loadedNames(s)).toEqual(['B', 'P']);
    expect(stateOf(s, 'A')).toBe('cpuLoaded');
    expect(stateOf(s, 'B')).toBe('registered');
    expect(s.takeCommands()).toEqual([]);
  });

  test('a request naming an evicted adapter brings it back as the most recently used, evicting the least recently used', () => {
    const s = newScheduler({ maxLorasPerBatch: 2, maxLoadedLoras: 2 });
    add(s, 'A');
    add(s, 'B');
    serveLoader(s);
    expect(run(s, 'b', 'B')).toMatchObject({ type: 'length' }); // B used after A
    add(s, 'C'); // evicts A
    expect(loadedNames(s)).toEqual(['B', 'C']);
    expect(run(s, 'a', 'A')).toMatchObject({ type: 'length' }); // A comes back, B leaves
    expect(loadedNames(s)).toEqual(['A', 'C']);
    expect(run(s, 'c', 'C')).toMatchObject({ type: 'length' });
    add(s, 'D'); // A is now the least recently used
    expect(loadedNames(s)).toEqual(['C', 'D']);
  });

  test('a request naming an unloaded adapter loads it again from its path and pin; a name never loaded is refused', async () => {
    const s = newScheduler();
    add(s, 'A', { path: '/first/A', pinned: true });
    serveLoader(s);
    await s.removeAdapter('A');
    expect(s.adapters()).toEqual([]);
    expect(s.takeCommands()).toEqual([
      { kind: 'clear-slot', slot: 0 },
      { kind: 'drop-cpu', name: 'A' },
    ]);
    await expect(s.removeAdapter('A')).rejects.toThrow(
      "LoRA adapter 'A' is not loaded: it left the loaded set, and a request naming it loads it again",
    );
    s.submit(seq('a', { lora: 'A', maxNewTokens: 1 }));
    expect(s.takeCommands()).toEqual([{ kind: 'load-cpu', name: 'A', path: '/first/A' }]);
    expect(s.adapters(['A'])[0]).toMatchObject({ path: '/first/A', pinned: true, loaded: true });
    s.onLoaderEvent({ kind: 'cpu-loaded', name: 'A', rank: 8, targetModules: ['q_proj'] });
    expect(runAll(s).out.get('a')!.finish).toMatchObject({ type: 'length' });
    // Loaded again, it is loaded: an explicit load of the name is refused.
    expect(() => add(s, 'A', { path: '/first/A', pinned: true })).toThrow("Failed to load LoRA adapter 'A' because it is already loaded");
    expect(() => s.submit(seq('x', { lora: 'X' }))).toThrow("Got LoRA adapter that has never been loaded: 'X' (loaded adapters: A)");
  });

  test('a request naming an adapter whose unload waits for its requests keeps it, and the unload answers at once', async () => {
    const s = newScheduler({ maxRunningRequests: 1 });
    add(s, 'A');
    s.submit(seq('a1', { lora: 'A', maxNewTokens: 3 }));
    serveLoader(s);
    let answered = false;
    const unload = s.removeAdapter('A').then(() => (answered = true));
    expect(stateOf(s, 'A')).toBe('unloading');
    expect(loadedNames(s)).toEqual([]);
    s.submit(seq('a2', { lora: 'A', maxNewTokens: 1 }));
    expect(stateOf(s, 'A')).toBe('gpuResident.unpinned');
    expect(loadedNames(s)).toEqual(['A']);
    await unload;
    expect(answered).toBe(true);
    const { out } = runAll(s);
    expect([...out.keys()].sort()).toEqual(['a1', 'a2']);
    expect(s.takeCommands()).toEqual([]); // its weights never left
  });

  test('an explicit load of an evicted name keeps its machine for the same path and replaces it for another', () => {
    const s = newScheduler({ maxLorasPerBatch: 2, maxLoadedLoras: 2 });
    add(s, 'A');
    add(s, 'B');
    serveLoader(s);
    add(s, 'C');
    expect(loadedNames(s)).toEqual(['B', 'C']);
    add(s, 'A'); // the same adapter: back in the set with its CPU copy, B leaves
    expect(loadedNames(s)).toEqual(['A', 'C']);
    expect(s.takeCommands()).toEqual([]);
    add(s, 'B', { path: '/elsewhere/B' }); // another adapter under B's name: the old one leaves first
    expect(s.adapters(['B'])[0]).toMatchObject({ path: '/elsewhere/B', loaded: true });
    expect(s.takeCommands()).toEqual([
      { kind: 'drop-cpu', name: 'B' },
      { kind: 'load-cpu', name: 'B', path: '/elsewhere/B' },
    ]);
  });

  test('an evicted adapter cannot be unloaded, as SGLang has no such name loaded', async () => {
    const s = newScheduler({ maxLorasPerBatch: 2, maxLoadedLoras: 2 });
    for (const n of ['A', 'B', 'C']) add(s, n);
    await expect(s.removeAdapter('A')).rejects.toThrow("LoRA adapter 'A' is not loaded: it left the loaded set");
    expect(stateOf(s, 'A')).toBe('loading');
  });

  test('a load that fails is forgotten, and a failed load of another path leaves the earlier one to reload', async () => {
    const s = newScheduler();
    add(s, 'bad');
    serveLoader(s, { bad: { failWith: 'no such file' } });
    await s.removeAdapter('bad');
    expect(() => s.submit(seq('r', { lora: 'bad' }))).toThrow("has never been loaded: 'bad'");

    add(s, 'A', { path: '/good/A' });
    serveLoader(s);
    await s.removeAdapter('A');
    add(s, 'A', { path: '/broken/A' });
    serveLoader(s, { A: { failWith: 'NaN in lora_B' } });
    await s.removeAdapter('A');
    s.submit(seq('a', { lora: 'A', maxNewTokens: 1 }));
    expect(s.takeCommands()).toEqual([{ kind: 'load-cpu', name: 'A', path: '/good/A' }]);
  });

  test('a reload of a pinned adapter is refused while every other pin is taken', async () => {
    const s = newScheduler({ maxLorasPerBatch: 2 });
    add(s, 'P', { pinned: true });
    serveLoader(s);
    await s.removeAdapter('P');
    add(s, 'Q', { pinned: true });
    expect(() => s.submit(seq('p', { lora: 'P' }))).toThrow(
      /^Failed to implicitly load LoRA adapter 'P': Failed to load LoRA adapter 'P' as a pinned adapter\. .*to avoid starvation/,
    );
  });

  test('a failed adapter leaves only once the loader has reported the copy queued behind its failed reread', () => {
    const s = newScheduler();
    add(s, 'A');
    serveLoader(s);
    s.submit(seq('a', { lora: 'A', maxNewTokens: 1 }));
    expect(s.takeCommands()).toEqual([{ kind: 'copy-to-slot', name: 'A', slot: 0 }]);
    // The loader dies during the copy: the read and the copy are issued again; the read fails.
    s.loaderRestarted();
    expect(s.takeCommands()).toEqual([
      { kind: 'load-cpu', name: 'A', path: '/A' },
      { kind: 'copy-to-slot', name: 'A', slot: 0 },
    ]);
    s.onLoaderEvent({ kind: 'load-failed', name: 'A', error: 'disk gone' });
    expect(stateOf(s, 'A')).toBe('failed');
    // A request for it cannot load it again yet: the copy's failure is still to come.
    expect(() => s.submit(seq('b', { lora: 'A' }))).toThrow("LoRA adapter 'A' failed to load: disk gone");
    s.onLoaderEvent({ kind: 'load-failed', name: 'A', error: "adapter 'A' is not in CPU memory" });
    expect(s.adapters()).toEqual([]);
    // Now it is loaded again from its path, and the report went to the old adapter, not this one.
    s.submit(seq('c', { lora: 'A', maxNewTokens: 1 }));
    expect(stateOf(s, 'A')).toBe('loading');
    expect(runAll(s).out.get('c')!.finish).toMatchObject({ type: 'length' });
  });

  test('a failed adapter whose queued copy is lost with a second loader restart leaves, and its unload completes', async () => {
    const s = newScheduler();
    add(s, 'A');
    serveLoader(s);
    s.submit(seq('a', { lora: 'A', maxNewTokens: 1 }));
    s.takeCommands();
    s.loaderRestarted();
    s.takeCommands(); // the read and the copy issued again
    s.onLoaderEvent({ kind: 'load-failed', name: 'A', error: 'disk gone' });
    const unloaded = s.removeAdapter('A');
    expect(stateOf(s, 'A')).toBe('failed');
    // The new loader never had the copy, so its failure will not be reported.
    s.loaderRestarted();
    await unloaded;
    expect(s.adapters()).toEqual([]);
    s.addAdapter({ name: 'A', path: '/A', pinned: false });
    s.submit(seq('b', { lora: 'A', maxNewTokens: 1 }));
    expect(runAll(s).out.get('b')!.finish).toMatchObject({ type: 'length' });
  });
});

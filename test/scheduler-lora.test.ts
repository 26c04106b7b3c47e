import { describe, expect, test } from 'vitest';
import type { Scheduler } from '../src/scheduler/index.js';
import { BlockTables, newScheduler, runAll, seq, serveLoader, step } from './scheduler-harness.js';

const stateOf = (s: Scheduler, name: string) => s.adapters().find((a) => a.name === name)?.state;
const slotOf = (s: Scheduler, name: string) => s.adapters().find((a) => a.name === name)?.slot;

/** Steps until `id` finishes, serving the loader; returns the steps' id lists. */
function runUntilDone(s: Scheduler, id: string): string[][] {
  const seen: string[][] = [];
  for (let i = 0; i < 100; i++) {
    serveLoader(s);
    const r = step(s);
    if (r) seen.push(r.ids);
    if (r?.events.some((e) => e.id === id && e.finish)) return seen;
  }
  throw new Error(`${id} did not finish`);
}

describe('adapter residency', () => {
  test('an adapter goes registered -> loading -> cpuLoaded at add and to a slot on demand', () => {
    const s = newScheduler();
    const seen: string[] = [];
    s.subscribe((t) => seen.push(`${t.adapter}:${t.from}->${t.to}`));
    s.addAdapter({ name: 'A', path: '/ad/A', pinned: false });
    expect(s.takeCommands()).toEqual([{ kind: 'load-cpu', name: 'A', path: '/ad/A' }]);
    s.onLoaderEvent({ kind: 'cpu-loaded', name: 'A', rank: 8, targetModules: ['q_proj', 'v_proj'] });
    expect(s.takeCommands()).toEqual([]);
    s.submit(seq('r', { lora: 'A' }));
    expect(s.takeCommands()).toEqual([{ kind: 'copy-to-slot', name: 'A', slot: 0 }]);
    expect(s.schedule()).toBeNull(); // not resident yet
    s.onLoaderEvent({ kind: 'slot-ready', name: 'A', slot: 0 });
    const r = step(s)!;
    expect(Array.from(r.batch.loraSlots)).toEqual([0]);
    expect(seen).toEqual([
      'A:none->registered',
      'A:registered->loading',
      'A:loading->cpuLoaded',
      'A:cpuLoaded->h2dInFlight',
      'A:h2dInFlight->gpuResident.unpinned',
    ]);
    expect(s.adapters()).toEqual([
      {
        name: 'A',
        path: '/ad/A',
        pinned: false,
        loaded: true,
        state: 'gpuResident.unpinned',
        rank: 8,
        targetModules: ['q_proj', 'v_proj'],
        slot: 0,
        error: null,
      },
    ]);
  });

  test('submit refuses unknown adapters and duplicate names are refused at add', () => {
    const s = newScheduler();
    expect(() => s.submit(seq('r', { lora: 'nope' }))).toThrow("Got LoRA adapter that has never been loaded: 'nope'");
    s.addAdapter({ name: 'A', path: '/a', pinned: false });
    expect(() => s.addAdapter({ name: 'A', path: '/b', pinned: false })).toThrow("Failed to load LoRA adapter 'A' because it is already loaded");
  });
});

describe('max_loras_per_batch', () => {
  test('the base model counts as one adapter', () => {
    const s = newScheduler({ maxLorasPerBatch: 2 });
    for (const n of ['A', 'B']) s.addAdapter({ name: n, path: `/${n}`, pinned: false });
    s.submit(seq('base', { maxNewTokens: 6 }));
    s.submit(seq('a', { lora: 'A', maxNewTokens: 2 }));
    s.submit(seq('b', { lora: 'B', maxNewTokens: 2 }));
    const { steps } = runAll(s);
    for (const st of steps) {
      const distinct = new Set(Array.from(st.batch.loraSlots));
      expect(distinct.size).toBeLessThanOrEqual(2);
    }
    const firstB = steps.findIndex((x) => x.ids.includes('b'));
    const lastA = steps.map((x) => x.ids.includes('a')).lastIndexOf(true);
    expect(firstB).toBeGreaterThan(lastA);
    expect(steps[0]!.ids).toEqual(['base', 'a']);
  });

  test('three adapters with limit 2: the third waits and gets in after one finishes', () => {
    const s = newScheduler({ maxLorasPerBatch: 2 });
    for (const n of ['A', 'B', 'C']) s.addAdapter({ name: n, path: `/${n}`, pinned: false });
    s.submit(seq('a', { lora: 'A', maxNewTokens: 2 }));
    s.submit(seq('b', { lora: 'B', maxNewTokens: 5 }));
    s.submit(seq('c', { lora: 'C', maxNewTokens: 2 }));
    const { steps, out } = runAll(s);
    expect(steps[0]!.ids).toEqual(['a', 'b']);
    const aDone = steps.findIndex((x) => x.events.some((e) => e.id === 'a' && e.finish));
    const cFirst = steps.findIndex((x) => x.ids.includes('c'));
    expect(cFirst).toBe(aDone + 1);
    // C took A's slot (A idle, B busy).
    expect(Array.from(steps[cFirst]!.batch.loraSlots)).toEqual([1, 0]);
    expect(out.get('c')!.tokens).toEqual([100, 101]);
    expect(stateOf(s, 'A')).toBe('cpuLoaded');
  });
});

describe('slots and eviction', () => {
  test('an adapter whose request has waited longest gets a slot, though newer requests keep the resident adapters wanted', () => {
    const s = newScheduler({ maxLorasPerBatch: 2, maxRunningRequests: 2 });
    for (const n of ['A', 'B', 'C']) s.addAdapter({ name: n, path: `/${n}`, pinned: false });
    // A and B are wanted (a1 and b1 wait) before c arrives, and stay wanted as long as the loop runs.
    for (const id of ['a0', 'b0', 'a1', 'b1']) s.submit(seq(id, { lora: id[0]!.toUpperCase(), maxNewTokens: 3 }));
    s.submit(seq('c', { lora: 'C', maxNewTokens: 2 }));
    let cDone = -1;
    for (let i = 2; i < 60 && cDone < 0; i++) {
      s.submit(seq(`a${i}`, { lora: 'A', maxNewTokens: 3 }));
      s.submit(seq(`b${i}`, { lora: 'B', maxNewTokens: 3 }));
      serveLoader(s);
      if (step(s)?.events.some((e) => e.id === 'c' && e.finish)) cDone = i;
    }
    expect(cDone).toBeGreaterThan(0);
  });

  function evictionVictim(policy: 'lru' | 'fifo'): { victim: string; copy: unknown } {
    const s = newScheduler({ maxLorasPerBatch: 2, evictionPolicy: policy });
    for (const n of ['A', 'B', 'C']) s.addAdapter({ name: n, path: `/${n}`, pinned: false });
    serveLoader(s);
    s.submit(seq('a1', { lora: 'A', maxNewTokens: 1 })); // A loaded first
    runUntilDone(s, 'a1');
    s.submit(seq('b1', { lora: 'B', maxNewTokens: 1 }));
    runUntilDone(s, 'b1');
    s.submit(seq('a2', { lora: 'A', maxNewTokens: 1 })); // A used last
    runUntilDone(s, 'a2');
    expect([slotOf(s, 'A'), slotOf(s, 'B')]).toEqual([0, 1]);
    s.submit(seq('c1', { lora: 'C', maxNewTokens: 1 }));
    const cmds = s.takeCommands();
    const victim = ['A', 'B'].find((n) => stateOf(s, n) === 'cpuLoaded')!;
    return { victim, copy: cmds };
  }

  test('lru evicts the adapter least recently used by a step', () => {
    // B gives up slot 1; A, idle in slot 0, moves there, so that C, wanted, takes the lower slot.
    expect(evictionVictim('lru')).toEqual({
      victim: 'B',
      copy: [
        { kind: 'swap-slots', slots: [0, 1], names: ['A', null] },
        { kind: 'copy-to-slot', name: 'C', slot: 0 },
      ],
    });
  });

  test('fifo evicts the adapter loaded first', () => {
    expect(evictionVictim('fifo')).toEqual({ victim: 'A', copy: [{ kind: 'copy-to-slot', name: 'C', slot: 0 }] });
  });

  test('an adapter with running requests is never evicted', () => {
    const s = newScheduler({ maxLorasPerBatch: 2 });
    for (const n of ['A', 'B', 'C']) s.addAdapter({ name: n, path: `/${n}`, pinned: false });
    s.submit(seq('a', { lora: 'A', maxNewTokens: 6 }));
    s.submit(seq('b', { lora: 'B', maxNewTokens: 6 }));
    serveLoader(s);
    step(s);
    s.submit(seq('c', { lora: 'C', maxNewTokens: 1 }));
    expect(s.takeCommands()).toEqual([]);
    expect(stateOf(s, 'C')).toBe('cpuLoaded');
  });

  test('pinned adapters get a slot at load and keep it; the pin limit is max_loras_per_batch - 1', () => {
    const s = newScheduler({ maxLorasPerBatch: 2, evictionPolicy: 'fifo' });
    s.addAdapter({ name: 'P', path: '/P', pinned: true });
    expect(() => s.addAdapter({ name: 'Q', path: '/Q', pinned: true })).toThrow(/at most 1 may be/);
    expect(s.adapters().map((a) => a.name)).toEqual(['P']);
    serveLoader(s);
    expect(stateOf(s, 'P')).toBe('gpuResident.pinned');
    expect(slotOf(s, 'P')).toBe(0);
    for (const n of ['A', 'B']) s.addAdapter({ name: n, path: `/${n}`, pinned: false });
    s.submit(seq('a', { lora: 'A', maxNewTokens: 2 }));
    runUntilDone(s, 'a');
    s.submit(seq('b', { lora: 'B', maxNewTokens: 2 }));
    runUntilDone(s, 'b');
    // P was loaded first and never used, yet B displaced A, not P. P stays resident, but moved
    // up into A's slot (inside the GPU) so that B, wanted, took the lower one.
    expect(stateOf(s, 'P')).toBe('gpuResident.pinned');
    expect(slotOf(s, 'P')).toBe(1);
    expect(stateOf(s, 'A')).toBe('cpuLoaded');
    expect(slotOf(s, 'B')).toBe(0);
  });

  test('max_loaded_loras keeps at most that many CPU copies, dropping the least recently used', () => {
    const s = newScheduler({ maxLoadedLoras: 2 });
    for (const n of ['A', 'B', 'C']) s.addAdapter({ name: n, path: `/${n}`, pinned: false });
    expect(
      serveLoader(s)
        .filter((c) => c.kind === 'load-cpu')
        .map((c) => (c as { name: string }).name),
    ).toEqual(['A', 'B']);
    expect(stateOf(s, 'C')).toBe('registered');
    s.submit(seq('c', { lora: 'C', maxNewTokens: 1 }));
    expect(s.takeCommands()).toEqual([
      { kind: 'drop-cpu', name: 'A' },
      { kind: 'load-cpu', name: 'C', path: '/C' },
    ]);
    expect(stateOf(s, 'A')).toBe('registered');
    s.onLoaderEvent({ kind: 'cpu-loaded', name: 'C', rank: 8, targetModules: ['q_proj'] });
    runAll(s);
    expect(stateOf(s, 'C')).toBe('gpuResident.unpinned');
    // A is loaded again on demand, displacing B (C was used more recently).
    s.submit(seq('a', { lora: 'A', maxNewTokens: 1 }));
    expect(s.takeCommands()).toEqual([
      { kind: 'drop-cpu', name: 'B' },
      { kind: 'load-cpu', name: 'A', path: '/A' },
    ]);
    s.onLoaderEvent({ kind: 'cpu-loaded', name: 'A', rank: 8, targetModules: ['q_proj'] });
    const { out } = runAll(s);
    expect(out.get('a')!.finish).toEqual({ type: 'length', length: 1 });
  });
});

describe('overlap loading', () => {
  function withCopyInFlight(overlapLoading: boolean) {
    const s = newScheduler({ overlapLoading });
    s.addAdapter({ name: 'A', path: '/A', pinned: false });
    serveLoader(s);
    s.submit(seq('base', { maxNewTokens: 8 }));
    step(s);
    s.submit(seq('a', { lora: 'A', maxNewTokens: 2 }));
    s.submit(seq('base2', { maxNewTokens: 2 }));
    expect(s.takeCommands()).toEqual([{ kind: 'copy-to-slot', name: 'A', slot: 0 }]);
    return s;
  }

  test('off: no step runs while a needed copy is in flight', () => {
    const s = withCopyInFlight(false);
    expect(s.schedule()).toBeNull();
    s.onLoaderEvent({ kind: 'slot-ready', name: 'A', slot: 0 });
    expect(step(s)!.ids).toEqual(['base', 'a', 'base2']);
  });

  test('on: resident requests run while the copy is in flight', () => {
    const s = withCopyInFlight(true);
    expect(step(s)!.ids).toEqual(['base', 'base2']);
    s.onLoaderEvent({ kind: 'slot-ready', name: 'A', slot: 0 });
    expect(step(s)!.ids).toEqual(['base', 'base2', 'a']);
  });
});

describe('load failures and unloading', () => {
  test('a failed load ends waiting requests and later submits name the adapter and reason', () => {
    const s = newScheduler({ maxLoadedLoras: 1 });
    s.addAdapter({ name: 'A', path: '/A', pinned: false });
    s.addAdapter({ name: 'B', path: '/B', pinned: false });
    serveLoader(s);
    s.submit(seq('b', { lora: 'B' }));
    serveLoader(s, { B: { failWith: 'adapter_config.json: missing field "r"' } });
    expect(s.takeEvents()).toEqual([
      expect.objectContaining({ id: 'b', finish: { type: 'abort', message: 'adapter "B" failed to load: adapter_config.json: missing field "r"' } }),
    ]);
    expect(() => s.submit(seq('b2', { lora: 'B' }))).toThrow(`LoRA adapter 'B' failed to load: adapter_config.json: missing field "r"`);
    expect(s.adapters().find((a) => a.name === 'B')).toMatchObject({ state: 'failed', error: 'adapter_config.json: missing field "r"' });
    expect(s.hasWork()).toBe(false);
  });

  test('an adapter the pool cannot hold fails and its CPU copy is dropped', () => {
    const s = newScheduler({ maxLoraRank: 16 });
    s.addAdapter({ name: 'big', path: '/big', pinned: false });
    s.takeCommands();
    s.onLoaderEvent({ kind: 'cpu-loaded', name: 'big', rank: 64, targetModules: ['q_proj'] });
    expect(s.takeCommands()).toEqual([{ kind: 'drop-cpu', name: 'big' }]);
    expect(() => s.submit(seq('r', { lora: 'big' }))).toThrow(/LoRA adapter 'big' failed to load: rank 64 exceeds/);
  });

  test('removeAdapter takes it out of the loaded set at once and resolves once its requests are done', async () => {
    const s = newScheduler({ maxRunningRequests: 1 });
    s.addAdapter({ name: 'A', path: '/A', pinned: false });
    s.submit(seq('a1', { lora: 'A', maxNewTokens: 2 }));
    s.submit(seq('a2', { lora: 'A', maxNewTokens: 2 }));
    serveLoader(s);
    step(s);
    let resolved = false;
    const removal = s.removeAdapter('A').then(() => (resolved = true));
    expect(stateOf(s, 'A')).toBe('unloading');
    expect(s.adapters()[0]!.loaded).toBe(false);
    runUntilDone(s, 'a1');
    await new Promise((r) => setImmediate(r));
    expect(resolved).toBe(false);
    const rest = runUntilDone(s, 'a2');
    expect(rest.flat()).toContain('a2');
    expect(s.takeCommands()).toEqual([
      { kind: 'clear-slot', slot: 0 },
      { kind: 'drop-cpu', name: 'A' },
    ]);
    await removal;
    expect(resolved).toBe(true);
    expect(s.adapters()).toEqual([]);
    s.addAdapter({ name: 'A', path: '/A2', pinned: false });
    expect(stateOf(s, 'A')).toBe('loading');
  });

  test('removing an idle or failed adapter resolves at once; unknown names reject', async () => {
    const s = newScheduler();
    s.addAdapter({ name: 'A', path: '/A', pinned: true });
    s.addAdapter({ name: 'F', path: '/F', pinned: false });
    serveLoader(s, { F: { failWith: 'no such file' } });
    await s.removeAdapter('A');
    expect(s.takeCommands()).toEqual([
      { kind: 'clear-slot', slot: 0 },
      { kind: 'drop-cpu', name: 'A' },
    ]);
    await s.removeAdapter('F');
    expect(s.adapters()).toEqual([]);
    await expect(s.removeAdapter('A')).rejects.toThrow("LoRA adapter 'A' is not loaded");
  });

  test('an unload requested while the adapter is still loading waits for the load to land', async () => {
    const s = newScheduler();
    s.addAdapter({ name: 'A', path: '/A', pinned: false });
    let resolved = false;
    const p = s.removeAdapter('A').then(() => (resolved = true));
    expect(s.takeCommands()).toEqual([{ kind: 'load-cpu', name: 'A', path: '/A' }]);
    await new Promise((r) => setImmediate(r));
    expect(resolved).toBe(false);
    s.onLoaderEvent({ kind: 'cpu-loaded', name: 'A', rank: 8, targetModules: ['q_proj'] });
    expect(s.takeCommands()).toEqual([{ kind: 'drop-cpu', name: 'A' }]);
    await p;
    expect(resolved).toBe(true);
  });
});

describe('invariants under a mixed load', () => {
  test.each([
    { overlapLoading: true, evictionPolicy: 'lru' as const },
    { overlapLoading: false, evictionPolicy: 'fifo' as const },
  ])('every request finishes with its own tokens; each step respects blocks, budget and adapter limits (%o)', (mode) => {
    let state = 12345;
    const rand = (n: number) => {
      state = (state * 1103515245 + 12345) % 2 ** 31;
      return Math.floor((state / 2 ** 31) * n);
    };
    const s = newScheduler({
      numBlocks: 12,
      blockSize: 4,
      chunkedPrefillSize: 16,
      maxLorasPerBatch: 3,
      maxLoadedLoras: 3,
      maxRunningRequests: 6,
      ...mode,
    });
    const names = ['A', 'B', 'C', 'D', 'E'];
    for (const n of names) s.addAdapter({ name: n, path: `/${n}`, pinned: n === 'A' });
    const expected = new Map<string, number>();
    const got = new Map<string, number[]>();
    let submitted = 0;
    let recomputes = 0;
    const starts = new Set<string>();
    const copies = new Set<string>();
    const tables = new BlockTables();
    s.subscribe((t) => t.to === 'h2dInFlight' && copies.add(t.adapter));
    for (let i = 0; i < 400 && (submitted < 60 || s.hasWork()); i++) {
      if (submitted < 60 && rand(2) === 0) {
        const id = `r${submitted++}`;
        const lora = rand(6) === 0 ? null : names[rand(names.length)]!;
        const maxNewTokens = 1 + rand(8);
        s.submit(seq(id, { prompt: 1 + rand(30), maxNewTokens, lora }));
        expected.set(id, maxNewTokens);
      }
      serveLoader(s);
      const r = step(s, (id, d) => (Number(id.slice(1)) + 1) * 1000 + d);
      if (!r) continue;
      const b = r.batch;
      for (let j = 0; j < r.ids.length; j++) {
        if (b.positions[b.seqStarts[j]!] !== 0) continue;
        if (starts.has(r.ids[j]!)) recomputes++;
        starts.add(r.ids[j]!);
      }
      expect(new Set(Array.from(b.loraSlots)).size).toBeLessThanOrEqual(3);
      let prompt = 0;
      const used = new Set<number>();
      const rows = tables.rows(b);
      for (let j = 0; j < r.ids.length; j++) {
        const len = b.seqStarts[j + 1]! - b.seqStarts[j]!;
        if (len > 1 || b.positions[b.seqStarts[j]!] === 0) prompt += len;
        const need = Math.ceil(b.contextLens[j]! / 4);
        for (let k = 0; k < need; k++) {
          const blk = rows[j]![k]!;
          expect(blk).toBeGreaterThanOrEqual(0);
          expect(used.has(blk)).toBe(false);
          used.add(blk);
        }
      }
      expect(prompt).toBeLessThanOrEqual(16);
      for (const e of r.events) got.set(e.id, [...(got.get(e.id) ?? []), ...(e.token >= 0 ? [e.token] : [])]);
    }
    expect(s.hasWork()).toBe(false);
    expect(got.size).toBe(60);
    // The load exercised preemption and slot turnover.
    expect(recomputes).toBeGreaterThan(0);
    expect(copies.size).toBe(5);
    for (const [id, n] of expected) {
      const base = (Number(id.slice(1)) + 1) * 1000;
      expect(got.get(id)).toEqual(Array.from({ length: n }, (_, d) => base + d));
    }
    expect(s.stats()).toEqual({ waiting: 0, running: 0, freeBlocks: 12, totalBlocks: 12, cachedBlocks: 0 });
    expect(s.adapters().filter((a) => a.state.startsWith('gpuResident')).length).toBeLessThanOrEqual(3);
    expect(s.adapters().filter((a) => a.state !== 'registered').length).toBeLessThanOrEqual(3);
  });
});

// What the engine does when an actor thread dies: the loader is replaced and the adapters it
// held are read again; the scheduler and the executors are essential, so the health probes
// turn 503; a dead tokenizer thread is replaced by its pool.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Worker } from 'node:worker_threads';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { DEFAULT_SAMPLING, type GenerateInput } from '../src/api.js';
import { Supervisor } from '../src/actors/supervisor.js';
import type { AdapterTransition } from '../src/actors/protocol.js';
import { parseArgs } from '../src/config/parse.js';
import { validateFlags } from '../src/config/validate.js';
import { createApp } from '../src/http/app.js';
import { makeDemo } from '../src/model/demo.js';
import type { TokenizerPool } from '../src/tokenizer/pool.js';
import { createEngine, type LocalTroupeEngine } from '../src/troupe.js';
import { newScheduler, runAll, seq, serveLoader } from './scheduler-harness.js';

let dir = '';
const open: LocalTroupeEngine[] = [];

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'troupe-restart-'));
  makeDemo(dir);
});
afterEach(async () => {
  await Promise.all(open.splice(0).map((e) => e.close()));
});
afterAll(() => {
  if (dir) rmSync(dir, { recursive: true, force: true });
});

async function engineWith(extra: string[] = []): Promise<LocalTroupeEngine> {
  const argv = ['--model-path', dir, '--device', 'cpu', '--max-total-tokens', '2048', ...extra];
  const engine = await createEngine(validateFlags(parseArgs(argv).flags).options);
  open.push(engine);
  return engine;
}

// The supervisor is private to the engine; fault drills reach for it like an operator's debugger would.
const supervisorOf = (e: LocalTroupeEngine): Supervisor => (e as unknown as { supervisor: Supervisor }).supervisor;

async function kill(w: Worker): Promise<void> {
  const exited = new Promise((r) => w.once('exit', r));
  await w.terminate();
  await exited;
}

const greedy = (lora: string | null): GenerateInput => ({
  text: 'The capital of France is',
  lora,
  sampling: { ...DEFAULT_SAMPLING, maxNewTokens: 8, temperature: 0, ignoreEos: true },
});

describe('an essential actor dies', () => {
  for (const actor of ['scheduler', 'executor'] as const) {
    it(`the ${actor}: /health and /health_generate answer 503 naming it`, async () => {
      const engine = await engineWith();
      const app = createApp(engine, { servedModelName: 'demo' });
      expect((await app.request('/health')).status).toBe(200);
      // Idle, so the executor is not inside a native step (terminating it there would end the process).
      await kill(supervisorOf(engine).worker(actor));
      for (const path of ['/health', '/health_generate']) {
        const res = await app.request(path);
        expect(res.status).toBe(503);
        const body = (await res.json()) as { error: { message: string; code: number } };
        expect(body.error.code).toBe(503);
        expect(body.error.message).toMatch(new RegExp(`the ${actor} actor exited with code 1`));
      }
    });
  }
});

describe('the loader dies', () => {
  it('is restarted; adapters it held are read from disk again and give the same greedy outputs', async () => {
    const b = join(dir, 'adapters', 'demo-b');
    // Two pool slots; demo-b2 has demo-b's weights, so the same outputs.
    const engine = await engineWith([
      '--lora-paths',
      `demo-a=${join(dir, 'adapters', 'demo-a')}`,
      `demo-b=${b}`,
      `demo-b2=${b}`,
      '--max-loras-per-batch',
      '2',
    ]);
    const refA = await engine.generate(greedy('demo-a'));
    const refB = await engine.generate(greedy('demo-b'));
    const state = async (name: string): Promise<string | undefined> => (await engine.adapters()).find((a) => a.name === name)?.state;
    expect([await state('demo-a'), await state('demo-b'), await state('demo-b2')]).toEqual([
      'gpuResident.unpinned',
      'gpuResident.unpinned',
      'cpuLoaded',
    ]);

    const forgotten = new Promise<AdapterTransition>((resolve) => {
      engine.onAdapterTransition((ts) => {
        const t = ts.find((x) => x.adapter === 'demo-b2' && x.to === 'registered');
        if (t) resolve(t);
      });
    });
    const old = supervisorOf(engine).worker('loader');
    await kill(old);
    expect((await forgotten).reason).toMatch(/the loader restarted/);
    expect(supervisorOf(engine).worker('loader')).not.toBe(old);
    expect(engine.unhealthy()).toBeNull();
    expect((await createApp(engine, { servedModelName: 'demo' }).request('/health')).status).toBe(200);
    // Resident adapters keep their slots.
    expect([await state('demo-a'), await state('demo-b')]).toEqual(['gpuResident.unpinned', 'gpuResident.unpinned']);

    // demo-b2 is read by the new loader and takes demo-a's slot; demo-a then comes back from
    // the CPU copy the new loader read for it, taking demo-b's.
    expect((await engine.generate(greedy('demo-b2'))).outputIds).toEqual(refB.outputIds);
    expect(await state('demo-a')).toBe('cpuLoaded');
    expect((await engine.generate(greedy('demo-a'))).outputIds).toEqual(refA.outputIds);
    expect((await engine.adapters()).map((a) => a.error)).toEqual([null, null, null]);
  });

  it('a loader that keeps dying is given up on after 3 restarts within a minute', async () => {
    const sup = new Supervisor();
    try {
      const crashes: string[] = [];
      sup.onCrash((e) => crashes.push(e.message));
      for (let i = 0; i < 3; i++) {
        const w = sup.worker('loader');
        await kill(w);
        expect(sup.unhealthy).toBeNull();
        expect(sup.worker('loader')).not.toBe(w);
      }
      await kill(sup.worker('loader'));
      expect(crashes).toHaveLength(1);
      expect(sup.unhealthy?.status).toBe(503);
      expect(sup.unhealthy?.message).toMatch(/the loader actor exited with code \d+, after 3 restarts within 60 s; it is not restarted again/);
    } finally {
      await sup.close();
    }
  });
});

describe('the scheduler hears of a new loader', () => {
  it('forgets CPU copies, issues again lost reads and an in-flight copy, and keeps slots', () => {
    const s = newScheduler();
    for (const n of ['A', 'B', 'C']) s.addAdapter({ name: n, path: `/${n}`, pinned: false });
    serveLoader(s);
    s.submit(seq('a', { lora: 'A' }));
    s.submit(seq('b', { lora: 'B' }));
    const copies = s.takeCommands();
    expect(copies).toEqual([
      { kind: 'copy-to-slot', name: 'A', slot: 0 },
      { kind: 'copy-to-slot', name: 'B', slot: 1 },
    ]);
    s.onLoaderEvent({ kind: 'slot-ready', name: 'A', slot: 0 }); // B's copy is still in flight
    s.addAdapter({ name: 'D', path: '/D', pinned: false }); // its read is in flight
    expect(s.takeCommands()).toEqual([{ kind: 'load-cpu', name: 'D', path: '/D' }]);
    const states = (): Record<string, string> => Object.fromEntries(s.adapters().map((a) => [a.name, a.state]));
    expect(states()).toEqual({ A: 'gpuResident.unpinned', B: 'h2dInFlight', C: 'cpuLoaded', D: 'loading' });

    s.loaderRestarted();
    const reissued = s.takeCommands();
    expect(reissued).toEqual([
      { kind: 'load-cpu', name: 'A', path: '/A' },
      { kind: 'load-cpu', name: 'B', path: '/B' },
      { kind: 'copy-to-slot', name: 'B', slot: 1 },
      { kind: 'load-cpu', name: 'D', path: '/D' },
    ]);
    expect(states()).toEqual({ A: 'gpuResident.unpinned', B: 'h2dInFlight', C: 'registered', D: 'loading' });
    expect(s.adapters().map((a) => a.slot)).toEqual([0, 1, null, null]);

    // The new loader answers them in order; a read for a resident or in-flight adapter changes no state.
    for (const c of reissued) {
      if (c.kind === 'load-cpu') s.onLoaderEvent({ kind: 'cpu-loaded', name: c.name, rank: 8, targetModules: ['q_proj', 'v_proj'] });
      else if (c.kind === 'copy-to-slot') s.onLoaderEvent({ kind: 'slot-ready', name: c.name, slot: c.slot });
    }
    expect(states()).toEqual({ A: 'gpuResident.unpinned', B: 'gpuResident.unpinned', C: 'registered', D: 'cpuLoaded' });

    s.submit(seq('c', { lora: 'C' }));
    const { out } = runAll(s);
    expect([...out.keys()].sort()).toEqual(['a', 'b', 'c']);
    for (const r of out.values()) expect(r.finish?.type).toBe('length');
    expect(states()).toMatchObject({ C: 'gpuResident.unpinned', D: 'cpuLoaded' });
  });
});

describe('a tokenizer thread dies', () => {
  it('the pool replaces it and text requests still work', async () => {
    const engine = await engineWith();
    const before = await engine.generate(greedy(null));
    const pool = (engine as unknown as { tokenizer: TokenizerPool }).tokenizer;
    const threads = (pool as unknown as { pool: { threads: Worker[] } }).pool.threads;
    expect(threads).toHaveLength(1);
    await kill(threads[0]!);
    expect(engine.unhealthy()).toBeNull();
    const after = await engine.generate(greedy(null));
    expect(after.text).toBe(before.text);
    expect(after.outputIds).toEqual(before.outputIds);
  });
});

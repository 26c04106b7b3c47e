// Churn: one adapter name is loaded and unloaded a fixed number of times while clients keep
// generating with it, with two stable adapters and with the base model. No request may fail
// (as in SGLang, a request naming the churned adapter between an unload and the next load
// loads it again from its path, and that load then finds it loaded), every output must equal
// the one that request gets on a quiet engine, and no thread of the engine may keep memory
// from the cycles.
//
// Memory is read as the live JavaScript heap of every engine thread after a full collection
// (the main thread's own heap, and a heap snapshot of each actor thread, which counts the
// buffers behind typed arrays too), at cycle WARMUP and at 3 x WARMUP. RSS is no measure of
// that within a test's time: under load it rises by 100 MiB or more in the first minutes, as
// V8 enlarges each thread's young generation and the allocator keeps its high-water mark, and
// then swings by tens of MiB with each thread's own collections (bench/churn-memory.js follows
// both over 10,000 cycles).
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import type { Worker } from 'node:worker_threads';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import type { LocalTroupeEngine } from '../src/troupe.js';
import { makeWorld, startEngine, type World } from './adapter-fixtures.js';

// The engine's actor threads, recorded as the supervisor creates them, so their heaps can be read.
const threads = vi.hoisted(() => [] as Array<{ name: string; worker: Worker }>);
vi.mock('node:worker_threads', async (importOriginal) => {
  const real = await importOriginal<typeof import('node:worker_threads')>();
  class RecordedWorker extends real.Worker {
    constructor(...args: ConstructorParameters<typeof real.Worker>) {
      super(...args);
      threads.push({ name: args[1]?.name ?? `thread ${threads.length}`, worker: this });
    }
  }
  return { ...real, Worker: RecordedWorker };
});

const WARMUP = 15;
const CYCLES = 3 * WARMUP;
/**
 * Live heap growth allowed per cycle over the last 2 x WARMUP cycles. Keeping demo-b's CPU copy
 * (1.2 MiB) per cycle passes it forty times over, and 95 KiB per cycle three times; what V8
 * still compiles, optimizes or flushes after the warm-up moves the total by a few hundred KiB
 * either way.
 */
const BOUND_KIB_PER_CYCLE = 32;
const CLIENTS = 4;
const LORAS = [null, 'demo-a', 'demo-b', 'churn'] as const;

setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;

/** Bytes of the live objects (and their array buffers) in a worker's heap; the snapshot collects garbage first. */
async function workerHeapBytes(worker: Worker): Promise<number> {
  let text = '';
  for await (const chunk of await worker.getHeapSnapshot()) text += chunk;
  const snap = JSON.parse(text) as { snapshot: { meta: { node_fields: string[] } }; nodes: number[] };
  const fields = snap.snapshot.meta.node_fields;
  let bytes = 0;
  for (let i = fields.indexOf('self_size'); i < snap.nodes.length; i += fields.length) bytes += snap.nodes[i]!;
  return bytes;
}

async function liveBytes(): Promise<{ total: number; byThread: Record<string, number> }> {
  // The buffers a collection frees are counted out by a sweeper that finishes at the next one.
  gc();
  gc();
  const main = process.memoryUsage();
  const byThread: Record<string, number> = { main: main.heapUsed + main.arrayBuffers };
  for (const { name, worker } of threads) byThread[name] = await workerHeapBytes(worker);
  return { total: Object.values(byThread).reduce((a, b) => a + b, 0), byThread };
}

let world: World;
let engine: LocalTroupeEngine;
beforeAll(async () => {
  world = makeWorld('churn');
  engine = await startEngine(world, [
    '--lora-paths',
    `demo-a=${world.demoA}`,
    `demo-b=${world.demoB}`,
    '--max-loras-per-batch',
    '3',
    '--max-loaded-loras',
    '3',
  ]);
});
afterAll(async () => {
  await engine?.close();
  world?.cleanup();
});

const greedy = (text: string, lora: string | null): Promise<number[]> =>
  engine.generate({ text, lora, sampling: { maxNewTokens: 4, temperature: 0, ignoreEos: true } }).then((o) => o.outputIds);
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

describe(`${CYCLES} load/unload cycles during traffic`, () => {
  it('fails no request for a loaded adapter, changes no output and keeps no memory per cycle', async () => {
    // The executor(s), the loader and the scheduler.
    expect(threads.length).toBeGreaterThanOrEqual(3);
    const prompts = Array.from({ length: CLIENTS }, (_, c) => `client ${c} keeps asking`);
    // Expected outputs, the churned name served by demo-b's weights.
    const expected = new Map<string, number[]>();
    await engine.loadAdapter({ name: 'churn', path: world.demoB });
    for (const text of prompts) for (const lora of LORAS) expected.set(`${lora}|${text}`, await greedy(text, lora));
    await engine.unloadAdapter('churn');

    let stop = false;
    const stats = { ok: 0, churnOk: 0, loadsFoundLoaded: 0 };
    const failures: string[] = [];
    const clients = prompts.map(async (text, c) => {
      for (let i = c; !stop; i++) {
        const lora = LORAS[i % LORAS.length]!;
        try {
          const ids = await greedy(text, lora);
          stats.ok++;
          if (lora === 'churn') stats.churnOk++;
          const want = expected.get(`${lora}|${text}`)!;
          if (ids.join() !== want.join()) failures.push(`${lora} "${text}": got ${ids}, alone ${want}`);
        } catch (err) {
          failures.push(`${lora} "${text}": ${(err as Error).message}`);
        }
      }
    });

    let atWarmup: Awaited<ReturnType<typeof liveBytes>> | null = null;
    for (let cycle = 1; cycle <= CYCLES; cycle++) {
      await engine.loadAdapter({ name: 'churn', path: world.demoB }).catch((err: Error) => {
        // A request named it since the last unload and loaded it again.
        if (!/because it is already loaded/.test(err.message)) throw err;
        stats.loadsFoundLoaded++;
      });
      // Held for a varying while, so requests for it are queued, copied into a slot and run.
      await sleep(5 + (cycle % 4) * 10);
      await engine.unloadAdapter('churn');
      await sleep(cycle % 3);
      if (cycle === WARMUP) atWarmup = await liveBytes();
    }
    const atEnd = await liveBytes();
    stop = true;
    await Promise.all(clients);
    // The clients' last requests may have loaded it again.
    await engine.unloadAdapter('churn').catch(() => {});

    expect(failures).toEqual([]);
    expect(stats.churnOk).toBeGreaterThan(0);
    expect((await engine.adapters()).map((a) => a.name)).toEqual(['demo-a', 'demo-b']);
    expect((await engine.stats()).running).toBe(0);
    const perCycleKiB = (atEnd.total - atWarmup!.total) / 1024 / (CYCLES - WARMUP);
    const threadsKiB = Object.keys(atEnd.byThread).map((t) => `${t} ${((atEnd.byThread[t]! - atWarmup!.byThread[t]!) / 1024).toFixed(0)}`);
    const summary = `live heap ${perCycleKiB.toFixed(2)} KiB/cycle after cycle ${WARMUP} (KiB by thread: ${threadsKiB.join(', ')})`;
    console.info(
      `churn: ${CYCLES} cycles, ${stats.ok} requests ok (${stats.churnOk} on the churned name), ${stats.loadsFoundLoaded} loads found it loaded again; ${summary}`,
    );
    expect(perCycleKiB, summary).toBeLessThan(BOUND_KIB_PER_CYCLE);
  }, 180_000);
});

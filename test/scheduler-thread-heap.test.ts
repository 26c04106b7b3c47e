// The scheduler's thread starts with its young generation at full size, and threads spawned
// after it do not (the V8 flag that sizes it is put back).
import { Worker, type ResourceLimits } from 'node:worker_threads';
import { describe, expect, it } from 'vitest';
import { SCHEDULER_RESOURCE_LIMITS, spawnSchedulerThread } from '../src/actors/scheduler-limits.js';

/** A thread that reports its young generation's current semi-space size (V8's new_space) and ends. */
function newSpaceOf(spawn: (code: string, limits: Readonly<ResourceLimits>) => Worker): Promise<number> {
  const code =
    "const v8 = require('node:v8'); const { parentPort } = require('node:worker_threads');" +
    "parentPort.postMessage(v8.getHeapSpaceStatistics().find((s) => s.space_name === 'new_space').space_size);";
  const w = spawn(code, SCHEDULER_RESOURCE_LIMITS);
  return new Promise((resolve, reject) => {
    w.once('error', reject);
    w.once('message', (size: number) => void w.terminate().then(() => resolve(size)));
  });
}

const plain = (code: string, limits: Readonly<ResourceLimits>): Worker => new Worker(code, { eval: true, resourceLimits: limits });

describe("the scheduler thread's heap", () => {
  it('starts with a semi-space of a third of its young generation; other threads start as V8 starts them', async () => {
    const full = (SCHEDULER_RESOURCE_LIMITS.maxYoungGenerationSizeMb! / 3) * 2 ** 20;
    const before = await newSpaceOf(plain);
    const scheduler = await newSpaceOf((code) => spawnSchedulerThread((limits) => plain(code, limits)));
    const after = await newSpaceOf(plain);
    expect(scheduler).toBe(full);
    expect(before).toBeLessThan(full);
    expect(after).toBe(before);
  });
});

// The scheduler thread's heap: one place, read by the supervisor that spawns the thread and by
// bench/scheduler.js, which times the scheduler under the same heap.
import { setFlagsFromString } from 'node:v8';
import type { ResourceLimits, Worker } from 'node:worker_threads';

/**
 * Every step leaves about 90 KB of short-lived garbage (mostly the token events of 256 rows),
 * and each young-generation collection pauses the step it falls in. A young generation of 96 MB,
 * twice V8's default, halves how often that happens; larger ones cut it a little more but slow
 * every step (the nursery no longer fits the caches). The old generation keeps V8's default.
 */
const YOUNG_GENERATION_MB = 96;

export const SCHEDULER_RESOURCE_LIMITS: Readonly<ResourceLimits> = Object.freeze({ maxYoungGenerationSizeMb: YOUNG_GENERATION_MB });

/** Spawns still waiting for their isolate (see spawnSchedulerThread). */
let spawning = 0;

/**
 * Spawns the scheduler's thread with its young generation at full size from the start (V8's
 * young generation is two semi-spaces and a third as much again, so a semi-space of a third).
 * V8 grows a young generation only as objects survive its collections, and the scheduler's
 * survivors are few (sequences keep their tokens outside the heap, token-pool.ts): left to
 * grow, it stayed small and its collections came often, and the slowest 1% of steps took half
 * as long again (bench/scheduler.js, 10 adapters, 16-token prompts: p99 0.46-0.65 ms against
 * 0.35-0.46 started full). The size is a process-wide V8 flag read when an isolate is made, on
 * the new thread: it is set for the spawn and put back once the thread is online. A thread
 * spawned meanwhile starts the same way, which costs it only address space (V8 commits the
 * pages as they are used).
 */
export function spawnSchedulerThread(spawn: (limits: Readonly<ResourceLimits>) => Worker): Worker {
  if (spawning++ === 0) setFlagsFromString(`--min-semi-space-size=${YOUNG_GENERATION_MB / 3}`);
  const worker = spawn(SCHEDULER_RESOURCE_LIMITS);
  let done = false;
  const started = (): void => {
    if (done) return;
    done = true;
    // 0 is V8's own default.
    if (--spawning === 0) setFlagsFromString('--min-semi-space-size=0');
  };
  worker.once('online', started);
  worker.once('exit', started);
  return worker;
}

// The scheduler thread's heap limits: one place, read by the supervisor that spawns the
// thread and by bench/scheduler.js, which times the scheduler under the same limits.
import type { ResourceLimits } from 'node:worker_threads';

/**
 * Every step leaves about 90 KB of short-lived garbage (mostly the token events of 256 rows),
 * and each young-generation collection pauses the step it falls in for 1 to 4 ms, ten times a
 * step's usual time. A young generation of 96 MB, twice V8's default, halves how often that
 * happens; larger ones cut it a little more but slow every step (the nursery no longer fits
 * the caches). The old generation keeps V8's default.
 */
export const SCHEDULER_RESOURCE_LIMITS: Readonly<ResourceLimits> = Object.freeze({ maxYoungGenerationSizeMb: 96 });

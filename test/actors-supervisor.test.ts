import { afterEach, describe, expect, it } from 'vitest';
import { SCHEDULER_RESOURCE_LIMITS } from '../src/actors/scheduler-limits.js';
import { Supervisor } from '../src/actors/supervisor.js';
import { TroupeError } from '../src/errors.js';

let sup: Supervisor | null = null;
afterEach(async () => {
  await sup?.close();
  sup = null;
});

describe('Supervisor', () => {
  it('a dead actor fails outstanding calls with an error naming it and marks the engine unhealthy', async () => {
    sup = new Supervisor();
    const crashes: TroupeError[] = [];
    sup.onCrash((e) => crashes.push(e));
    expect(sup.unhealthy).toBeNull();
    // The scheduler is not initialized, so this call is answered with an error, not a hang.
    await expect(sup.actors.scheduler.call({ type: 'stats' })).rejects.toThrow(/not initialized/);

    // Shutting down an executor that never got an engine is harmless.
    await expect(sup.actors.executor.call({ type: 'shutdown' })).resolves.toBeUndefined();

    const exited = new Promise((r) => sup!.worker('executor').once('exit', r));
    await sup.worker('executor').terminate();
    await exited;
    expect(crashes).toHaveLength(1);
    expect(sup.unhealthy).toBeInstanceOf(TroupeError);
    expect(sup.unhealthy!.status).toBe(503);
    expect(sup.unhealthy!.message).toMatch(/the executor actor exited with code 1/);
    await expect(sup.actors.scheduler.call({ type: 'stats' })).rejects.toThrow(/executor actor exited/);
  });

  it('runs the scheduler with a larger young generation than the other actors', async () => {
    sup = new Supervisor();
    // Answered once the scheduler thread runs, so its limits are the ones V8 applied.
    await expect(sup.actors.scheduler.call({ type: 'stats' })).rejects.toThrow(/not initialized/);
    await expect(sup.actors.executor.call({ type: 'shutdown' })).resolves.toBeUndefined();
    const young = (name: 'scheduler' | 'executor'): number | undefined => sup!.worker(name).resourceLimits?.maxYoungGenerationSizeMb;
    expect(young('scheduler')).toBe(SCHEDULER_RESOURCE_LIMITS.maxYoungGenerationSizeMb);
    expect(young('executor')).toBeLessThan(young('scheduler')!);
  });

  it('close() ends every actor without reporting a crash', async () => {
    sup = new Supervisor();
    const crashes: TroupeError[] = [];
    sup.onCrash((e) => crashes.push(e));
    const exits = (['executor', 'loader', 'scheduler'] as const).map((n) => new Promise<number>((r) => sup!.worker(n).once('exit', r)));
    await sup.close();
    expect(await Promise.all(exits)).toHaveLength(3);
    expect(crashes).toEqual([]);
    await expect(sup.actors.loader.call({ type: 'command', command: { kind: 'drop-cpu', name: 'x' } })).rejects.toThrow(/closed/);
  });
});

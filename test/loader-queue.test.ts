// The loader's command order: commands naming the same adapter or slot run one after another in
// the order they came, others at once; reads are bounded. Driven by hand-released tasks, so
// nothing depends on timing.
import { describe, expect, it } from 'vitest';
import { KeyedQueue, Limit } from '../src/actors/keyed-queue.js';

/** A task that records its start and ends when released. */
function gate(log: string[], name: string): { task: () => Promise<string>; release: () => void; fail: (e: Error) => void } {
  let release!: () => void;
  let fail!: (e: Error) => void;
  const ended = new Promise<void>((res, rej) => {
    release = res;
    fail = rej;
  });
  return {
    task: async () => {
      log.push(`start ${name}`);
      await ended;
      log.push(`end ${name}`);
      return name;
    },
    release,
    fail,
  };
}

const settle = (): Promise<void> => new Promise((r) => setImmediate(r));

describe('KeyedQueue', () => {
  it('runs tasks with no key in common at once, and tasks sharing a key in arrival order', async () => {
    const q = new KeyedQueue();
    const log: string[] = [];
    const readA = gate(log, 'read a');
    const readB = gate(log, 'read b');
    const copyA = gate(log, 'copy a to 0');
    const clear0 = gate(log, 'clear 0');
    const copyB = gate(log, 'copy b to 0');
    const results = [
      q.run(['adapter:a'], readA.task),
      q.run(['adapter:b'], readB.task),
      q.run(['adapter:a', 'slot:0'], copyA.task),
      q.run(['slot:0'], clear0.task),
      q.run(['adapter:b', 'slot:0'], copyB.task),
    ];
    await settle();
    // Both reads run together; the copy of a waits for the read of a.
    expect(log).toEqual(['start read a', 'start read b']);
    readB.release();
    await settle();
    expect(log).toEqual(['start read a', 'start read b', 'end read b']);
    readA.release();
    await settle();
    expect(log.slice(3)).toEqual(['end read a', 'start copy a to 0']);
    copyA.release();
    await settle();
    // The clear of slot 0 comes after the copy into it, the copy of b after the clear.
    expect(log.slice(5)).toEqual(['end copy a to 0', 'start clear 0']);
    clear0.release();
    await settle();
    copyB.release();
    expect(await Promise.all(results)).toEqual(['read a', 'read b', 'copy a to 0', 'clear 0', 'copy b to 0']);
    expect(log.slice(7)).toEqual(['end clear 0', 'start copy b to 0', 'end copy b to 0']);
    await settle();
    expect(q.busyKeys).toBe(0);
  });

  it('runs the tasks after a failed one, and hands the failure to its caller only', async () => {
    const q = new KeyedQueue();
    const log: string[] = [];
    const read = gate(log, 'read');
    const copy = gate(log, 'copy');
    const failed = q.run(['adapter:a'], read.task);
    const next = q.run(['adapter:a'], copy.task);
    read.fail(new Error('no such file'));
    await expect(failed).rejects.toThrow('no such file');
    await settle();
    expect(log).toEqual(['start read', 'start copy']);
    copy.release();
    expect(await next).toBe('copy');
  });
});

describe('Limit', () => {
  it('runs at most max tasks at once, starting the rest in order as others end', async () => {
    const limit = new Limit(2);
    const log: string[] = [];
    const gates = ['r1', 'r2', 'r3', 'r4'].map((n) => gate(log, n));
    const all = gates.map((g) => limit.run(g.task));
    await settle();
    expect(log).toEqual(['start r1', 'start r2']);
    gates[1]!.release();
    await settle();
    expect(log).toEqual(['start r1', 'start r2', 'end r2', 'start r3']);
    gates[0]!.fail(new Error('bad file'));
    await expect(all[0]).rejects.toThrow('bad file');
    await settle();
    expect(log.at(-1)).toBe('start r4');
    gates[2]!.release();
    gates[3]!.release();
    expect(await Promise.all(all.slice(1))).toEqual(['r2', 'r3', 'r4']);
  });
});

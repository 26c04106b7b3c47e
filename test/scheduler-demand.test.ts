// Requests a step admits together leave demand in one removal per adapter, with the same
// outcome as one removal per request: the order of wanted adapters and each one's place.
import fc from 'fast-check';
import { afterEach, describe, expect, test, vi } from 'vitest';
import { Demand } from '../src/scheduler/demand.js';
import { newScheduler, seq, serveLoader, step } from './scheduler-harness.js';

afterEach(() => {
  vi.restoreAllMocks();
});

const NAMES = ['A', 'B', 'C', 'D'];

function state(d: Demand): Array<[string, number | null]> {
  return [...d.names()].map((n) => [n, d.seq(n)]);
}

describe('Demand.removeAll', () => {
  test('ends as removing each request in turn does', () => {
    const scenario = fc.record({
      // Arrival k waits for NAMES[owner[k]].
      owner: fc.array(fc.integer({ min: 0, max: NAMES.length - 1 }), { minLength: 1, maxLength: 40 }),
      leaving: fc.array(fc.boolean(), { minLength: 40, maxLength: 40 }),
      name: fc.constantFrom(...NAMES),
    });
    fc.assert(
      fc.property(scenario, ({ owner, leaving, name }) => {
        const one = new Demand();
        const all = new Demand();
        owner.forEach((o, k) => {
          one.add(NAMES[o]!, k);
          all.add(NAMES[o]!, k);
        });
        const arrivals = owner.flatMap((o, k) => (NAMES[o] === name && leaving[k] ? [k] : []));
        if (arrivals.length === 0) return;
        let gone = false;
        for (const a of arrivals) gone = one.remove(name, a);
        const headBefore = all.seq(name);
        const versionBefore = all.version;
        expect(all.removeAll(name, arrivals)).toBe(gone);
        expect(state(all)).toEqual(state(one));
        expect(all.has(name)).toBe(one.has(name));
        // Its version moves only when the adapter's place did: its oldest request left.
        expect(all.version > versionBefore).toBe(arrivals[0] === headBefore);
      }),
    );
  });

  test('refuses a request that does not wait for the adapter, and changes nothing', () => {
    const d = new Demand();
    for (const k of [1, 3, 5]) d.add('A', k);
    d.add('B', 2);
    expect(() => d.removeAll('A', [1, 4])).toThrow('request 4 is not waiting for adapter "A"');
    expect(() => d.removeAll('C', [1])).toThrow('request 1 is not waiting for adapter "C"');
    expect(state(d)).toEqual([
      ['A', 1],
      ['B', 2],
    ]);
  });
});

test("a step that starts an adapter's requests takes them out of demand at once", () => {
  const s = newScheduler({ maxRunningRequests: 64, numBlocks: 512, chunkedPrefillSize: 512 });
  s.addAdapter({ name: 'A', path: '/A', pinned: false });
  for (let i = 0; i < 30; i++) s.submit(seq(`r${i}`, { lora: 'A' }));
  serveLoader(s);
  const one = vi.spyOn(Demand.prototype, 'remove');
  const all = vi.spyOn(Demand.prototype, 'removeAll');
  expect(step(s)!.ids).toHaveLength(30);
  expect(one).not.toHaveBeenCalled();
  expect(all).toHaveBeenCalledTimes(1);
  expect(s.load().waitingAdapters).toEqual([]);
});

// The victim choice: the first unwanted adapter in the eviction order that may go; failing
// that, of those wanted later than the adapter that needs room, the one wanted last that may
// go; never one wanted sooner, nor one a running request uses. Checked on examples and, against
// the rule written as a plain walk over the order, on random orders, demands and refusals.
import fc from 'fast-check';
import { describe, expect, test } from 'vitest';
import { AdapterIndex } from '../src/scheduler/adapter-index.js';
import { pickVictim, type Victim } from '../src/scheduler/victim-policy.js';

/** An index whose demand has each named adapter's oldest waiting request at the given arrival. */
function indexWanting(wanted: Record<string, number>): AdapterIndex {
  const index = new AdapterIndex(4, 'lru');
  for (const [name, arrival] of Object.entries(wanted)) index.want(name, arrival, 'gpuResident.unpinned');
  return index;
}

const orderOf = (names: readonly string[]): Map<string, true> => new Map(names.map((n) => [n, true]));

const idle = (): boolean => false;

/** The rule, as one walk over the order asking every candidate it meets. */
function reference(order: readonly string[], index: AdapterIndex, forSeq: number, mayGo: (n: string) => boolean, policy: string): Victim | null {
  let later: string | null = null;
  let laterSeq = forSeq;
  for (const name of order) {
    const seq = index.demand.seq(name);
    if (seq === null) {
      if (mayGo(name)) return { name, why: policy };
    } else if (seq > laterSeq && mayGo(name)) {
      later = name;
      laterSeq = seq;
    }
  }
  return later === null ? null : { name: later, why: 'wanted last by the waiting requests' };
}

describe('pickVictim', () => {
  test('an adapter nobody waits for goes first, wherever it is in the order', () => {
    const index = indexWanting({ A: 5, B: 9 });
    const victim = pickVictim(orderOf(['A', 'B', 'C', 'D']), index, 3, idle, () => true, 'lru');
    expect(victim).toEqual({ name: 'C', why: 'lru' });
  });

  test('one that may not go is passed over for the next in the order', () => {
    const index = indexWanting({});
    expect(pickVictim(orderOf(['A', 'B']), index, 3, idle, (n) => n !== 'A', 'fifo')).toEqual({ name: 'B', why: 'fifo' });
  });

  test('when every candidate is wanted, the one wanted last that may go; never one wanted sooner', () => {
    const index = indexWanting({ A: 7, B: 12, C: 2, D: 10 });
    const wantedLast = { why: 'wanted last by the waiting requests' };
    expect(pickVictim(orderOf(['A', 'B', 'C', 'D']), index, 5, idle, () => true, 'lru')).toEqual({ name: 'B', ...wantedLast });
    expect(pickVictim(orderOf(['A', 'B', 'C', 'D']), index, 5, idle, (n) => n !== 'B', 'lru')).toEqual({ name: 'D', ...wantedLast });
    // C is wanted sooner than the adapter that needs room: it stays even when nothing else may go.
    expect(pickVictim(orderOf(['A', 'B', 'C', 'D']), index, 5, idle, (n) => n === 'C', 'lru')).toBeNull();
    expect(pickVictim(orderOf(['A', 'B', 'C', 'D']), index, 11, idle, () => true, 'lru')).toEqual({ name: 'B', ...wantedLast });
    expect(pickVictim(orderOf(['A', 'B', 'C', 'D']), index, 12, idle, () => true, 'lru')).toBeNull();
  });

  test('one a running request uses never goes, and its machine is not asked', () => {
    const index = indexWanting({ B: 9 });
    const asked: string[] = [];
    const canGo = (n: string): boolean => (asked.push(n), true);
    expect(pickVictim(orderOf(['A', 'B']), index, 3, (n) => n === 'A', canGo, 'lru')).toEqual({
      name: 'B',
      why: 'wanted last by the waiting requests',
    });
    expect(pickVictim(orderOf(['A']), index, 3, () => true, canGo, 'lru')).toBeNull();
    expect(asked).toEqual(['B']);
  });

  test('a pinned adapter (wanted at -Infinity) may displace any wanted adapter', () => {
    const index = indexWanting({ A: 1, B: 0 });
    expect(pickVictim(orderOf(['B', 'A']), index, -Infinity, idle, () => true, 'lru')?.name).toBe('A');
  });

  test('chooses as the walk over the order does, for any order, demand and refusals', () => {
    const names = ['A', 'B', 'C', 'D', 'E', 'F', 'G', 'H'];
    const scenario = fc.record({
      order: fc.shuffledSubarray(names),
      // Distinct arrivals, as the oldest waiting requests of distinct adapters have.
      arrivals: fc.uniqueArray(fc.integer({ min: 0, max: 40 }), { minLength: names.length, maxLength: names.length }),
      wanted: fc.array(fc.boolean(), { minLength: names.length, maxLength: names.length }),
      refused: fc.array(fc.boolean(), { minLength: names.length, maxLength: names.length }),
      running: fc.array(fc.boolean(), { minLength: names.length, maxLength: names.length }),
      forSeq: fc.oneof(fc.integer({ min: -1, max: 41 }), fc.constant(-Infinity)),
    });
    fc.assert(
      fc.property(scenario, ({ order, arrivals, wanted, refused, running, forSeq }) => {
        const index = indexWanting(Object.fromEntries(names.flatMap((n, i) => (wanted[i] ? [[n, arrivals[i]!]] : []))));
        const busy = (n: string): boolean => running[names.indexOf(n)]!;
        const canGo = (n: string): boolean => !refused[names.indexOf(n)];
        const chosen = pickVictim(orderOf(order), index, forSeq, busy, canGo, 'lru');
        expect(chosen).toEqual(reference(order, index, forSeq, (n) => !busy(n) && canGo(n), 'lru'));
      }),
      { numRuns: 500 },
    );
  });
});

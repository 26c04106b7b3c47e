// The eviction orders and the loaded set keep names least recently used first, and using a
// name changes no hash table: a Map kept in order by deleting and re-adding rebuilds its whole
// table every few hundred uses, which with thousands of registered adapters lands in a step.
import { afterEach, describe, expect, test, vi } from 'vitest';
import { AdapterCatalog } from '../src/scheduler/adapter-catalog.js';
import { AdapterIndex } from '../src/scheduler/adapter-index.js';
import { Recency } from '../src/scheduler/recency.js';

afterEach(() => {
  vi.restoreAllMocks();
});

describe('Recency', () => {
  test('keeps names least recently used first; adding one already there keeps its place', () => {
    const r = new Recency<number>();
    for (const [i, name] of ['a', 'b', 'c', 'd'].entries()) r.add(name, i);
    expect(r.use('b')).toBe(true);
    expect(r.use('d', 9)).toBe(true);
    expect(r.use('x')).toBe(false);
    r.add('a', 7);
    expect([...r.entries()]).toEqual([
      ['a', 7],
      ['c', 2],
      ['b', 1],
      ['d', 9],
    ]);
    expect(r.delete('c')).toBe(true);
    expect(r.delete('c')).toBe(false);
    expect([...r.keys()]).toEqual(['a', 'b', 'd']);
    expect(r.size).toBe(3);
    expect(r.get('d')).toBe(9);
    expect(r.has('c')).toBe(false);
  });

  test('a walk may delete the name it is on, and reaches the rest', () => {
    const r = new Recency();
    for (const name of ['a', 'b', 'c', 'd']) r.add(name, true);
    const seen: string[] = [];
    for (const name of r.keys()) {
      seen.push(name);
      if (name !== 'c') r.delete(name);
    }
    expect(seen).toEqual(['a', 'b', 'c', 'd']);
    expect([...r.keys()]).toEqual(['c']);
    r.delete('c');
    r.add('e', true);
    expect([...r.keys()]).toEqual(['e']);
  });
});

describe('using an adapter', () => {
  test('moves it to the back of the eviction orders without changing a Map', () => {
    const index = new AdapterIndex(4, 'lru');
    for (let i = 0; i < 3; i++) index.add(`a${i}`, false, { residency: 'gpuResident.unpinned', slot: i, span: 1 });
    index.add('c', false, { residency: 'cpuLoaded', slot: null, span: 1 });
    const sets = vi.spyOn(Map.prototype, 'set');
    const deletes = vi.spyOn(Map.prototype, 'delete');
    for (let k = 0; k < 100; k++) index.touch(`a${k % 2}`);
    expect(sets).not.toHaveBeenCalled();
    expect(deletes).not.toHaveBeenCalled();
    expect([...index.slotOrder.keys()]).toEqual(['a2', 'a0', 'a1']);
    expect([...index.cpuOrder.keys()]).toEqual(['a2', 'c', 'a0', 'a1']);
  });

  test('moves it to the back of the loaded set without changing a Map, and evicts the least recently used', () => {
    const catalog = new AdapterCatalog(3);
    for (const name of ['a', 'b', 'c']) catalog.use(name, false);
    const sets = vi.spyOn(Map.prototype, 'set');
    const deletes = vi.spyOn(Map.prototype, 'delete');
    for (let k = 0; k < 100; k++) catalog.use(k % 2 ? 'a' : 'b', false);
    expect(sets).not.toHaveBeenCalled();
    expect(deletes).not.toHaveBeenCalled();
    vi.restoreAllMocks();
    expect(catalog.loadedNames()).toEqual(['c', 'b', 'a']);
    expect(catalog.use('d', false)).toEqual(['c']);
    expect(catalog.loadedNames()).toEqual(['b', 'a', 'd']);
  });

  test('moving adapters between slots and CPU memory changes no table holding every registered adapter, without a CPU budget', () => {
    const index = new AdapterIndex(2, 'lru', false);
    const cpu = { residency: 'cpuLoaded', slot: null, span: 1 };
    for (let i = 0; i < 1000; i++) index.add(`a${i}`, false, cpu);
    index.move('a0', false, cpu, { residency: 'gpuResident.unpinned', slot: 0, span: 1 });
    const changed = [
      vi.spyOn(Set.prototype, 'add'),
      vi.spyOn(Set.prototype, 'delete'),
      vi.spyOn(Map.prototype, 'set'),
      vi.spyOn(Map.prototype, 'delete'),
    ];
    for (const spy of changed) spy.mockClear();
    // a0 leaves its slot for a1, which is copied in; both are used by a step.
    index.move('a0', false, { residency: 'gpuResident.unpinned', slot: 0, span: 1 }, cpu);
    index.move('a1', false, cpu, { residency: 'h2dInFlight', slot: 0, span: 1 });
    index.move('a1', false, { residency: 'h2dInFlight', slot: 0, span: 1 }, { residency: 'gpuResident.unpinned', slot: 0, span: 1 });
    index.touch('a1');
    const sizes = changed.flatMap((spy) => spy.mock.contexts.map((table) => (table as Set<unknown>).size));
    expect(sizes.length).toBeGreaterThan(0);
    expect(Math.max(...sizes)).toBeLessThanOrEqual(2);
    vi.restoreAllMocks();
    expect([...index.inResidency('gpuResident.unpinned')]).toEqual(['a1']);
    expect(index.inResidency('h2dInFlight').size).toBe(0);
    expect([...index.slotOrder.keys()]).toEqual(['a1']);
    expect(index.cpuCount).toBe(1000);
    expect(index.lowestFreeSlot()).toBe(1);
  });
});

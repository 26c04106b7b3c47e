import { describe, expect, test } from 'vitest';
import { createActor, initialTransition, transition } from 'xstate';
import { adapterChartJson, adapterMachine, adapterStateLabel, type AdapterEvent } from '../statecharts/adapter.machine.js';

const input = (pinned = false) => ({
  name: 'a',
  path: '/adapters/a',
  pinned,
  maxRank: 16,
  poolModules: ['q_proj', 'v_proj'] as const,
});

function run(events: AdapterEvent[], pinned = false) {
  let [snap] = initialTransition(adapterMachine, { ...input(pinned), poolModules: [...input().poolModules] });
  const labels = [adapterStateLabel(snap)];
  for (const e of events) {
    [snap] = transition(adapterMachine, snap, e);
    labels.push(adapterStateLabel(snap));
  }
  return { snap, labels };
}

const loaded: AdapterEvent = { type: 'CPU_LOADED', rank: 8, targetModules: ['q_proj'] };

describe('adapter statechart', () => {
  test('walks disk -> CPU -> slot and back on eviction and CPU drop', () => {
    const { snap, labels } = run([{ type: 'LOAD' }, loaded, { type: 'COPY', slot: 2 }, { type: 'SLOT_READY' }, { type: 'EVICT' }, { type: 'DROP_CPU' }]);
    expect(labels).toEqual(['registered', 'loading', 'cpuLoaded', 'h2dInFlight', 'gpuResident.unpinned', 'cpuLoaded', 'registered']);
    expect(snap.context).toMatchObject({ rank: 8, targetModules: ['q_proj'], slot: null, error: null });
    expect(snap.value).toEqual({ live: { residency: 'registered', admission: 'open' } });
  });

  test('the slot is recorded while in flight and resident', () => {
    const { snap } = run([{ type: 'LOAD' }, loaded, { type: 'COPY', slot: 3 }, { type: 'SLOT_READY' }]);
    expect(snap.context.slot).toBe(3);
  });

  test('a pinned adapter becomes gpuResident.pinned and ignores EVICT', () => {
    const { snap, labels } = run([{ type: 'LOAD' }, loaded, { type: 'COPY', slot: 0 }, { type: 'SLOT_READY' }, { type: 'EVICT' }], true);
    expect(labels.slice(-2)).toEqual(['gpuResident.pinned', 'gpuResident.pinned']);
    expect(snap.context.slot).toBe(0);
  });

  test('events that do not apply are ignored', () => {
    const { labels, snap } = run([{ type: 'SLOT_READY' }, { type: 'COPY', slot: 1 }, { type: 'EVICT' }, { type: 'DRAINED' }, loaded, { type: 'DROP_CPU' }]);
    expect(new Set(labels)).toEqual(new Set(['registered']));
    expect(snap.context).toMatchObject({ rank: null, slot: null });
  });

  test('failed carries the reason', () => {
    const { snap, labels } = run([{ type: 'LOAD' }, { type: 'LOAD_FAILED', error: 'adapter_config.json: missing "r"' }]);
    expect(labels.at(-1)).toBe('failed');
    expect(snap.context.error).toBe('adapter_config.json: missing "r"');
  });

  test('an adapter outside the pool fails with a reason naming the limit', () => {
    const big = run([{ type: 'LOAD' }, { type: 'CPU_LOADED', rank: 32, targetModules: ['q_proj'] }]).snap;
    expect(adapterStateLabel(big)).toBe('failed');
    expect(big.context.error).toMatch(/rank 32 exceeds .* 16/);
    const mods = run([{ type: 'LOAD' }, { type: 'CPU_LOADED', rank: 4, targetModules: ['q_proj', 'down_proj'] }]).snap;
    expect(mods.context.error).toMatch(/targets down_proj/);
  });

  test('a copy that fails frees the slot and fails the adapter', () => {
    const { snap } = run([{ type: 'LOAD' }, loaded, { type: 'COPY', slot: 1 }, { type: 'LOAD_FAILED', error: 'out of memory' }]);
    expect(adapterStateLabel(snap)).toBe('failed');
    expect(snap.context).toMatchObject({ slot: null, error: 'out of memory' });
  });

  test('unloading keeps residency working until drained, then the machine is done', () => {
    const { snap, labels } = run([{ type: 'LOAD' }, { type: 'UNLOAD' }, loaded, { type: 'COPY', slot: 0 }, { type: 'SLOT_READY' }]);
    expect(labels.slice(1)).toEqual(['loading', 'unloading', 'unloading', 'unloading', 'unloading']);
    expect(snap.value).toEqual({ live: { residency: { gpuResident: 'unpinned' }, admission: 'unloading' } });
    const [done] = transition(adapterMachine, snap, { type: 'DRAINED' });
    expect(done.value).toBe('unloaded');
    expect(done.status).toBe('done');
    expect(done.context.slot).toBeNull();
  });

  test('a failed adapter can be unloaded', () => {
    const actor = createActor(adapterMachine, { input: { ...input(), poolModules: ['q_proj'] } }).start();
    actor.send({ type: 'LOAD' });
    actor.send({ type: 'LOAD_FAILED', error: 'no such file' });
    actor.send({ type: 'LOAD' });
    expect(actor.getSnapshot().value).toBe('failed');
    actor.send({ type: 'UNLOAD' });
    expect(actor.getSnapshot().status).toBe('done');
  });

  test('chart JSON lists the states and transitions', () => {
    const chart = adapterChartJson();
    const ids = chart.states.map((s) => s.id);
    for (const id of ['live.residency.registered', 'live.residency.loading', 'live.residency.cpuLoaded', 'live.residency.h2dInFlight',
      'live.residency.gpuResident.unpinned', 'live.residency.gpuResident.pinned', 'live.admission.unloading', 'failed', 'unloaded']) {
      expect(ids).toContain(id);
    }
    expect(chart.states.find((s) => s.id === 'live.residency.cpuLoaded')).toMatchObject({ parent: 'live.residency' });
    expect(chart.transitions).toContainEqual({ from: 'live.residency.gpuResident.unpinned', to: 'live.residency.cpuLoaded', event: 'EVICT' });
    expect(chart.transitions).toContainEqual({ from: 'live.admission.unloading', to: 'unloaded', event: 'DRAINED' });
    expect(chart.transitions).toContainEqual({ from: 'live.residency.loading', to: 'failed', event: 'LOAD_FAILED' });
    expect(JSON.parse(JSON.stringify(chart))).toEqual(chart);
  });
});

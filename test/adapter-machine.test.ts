import { describe, expect, test } from 'vitest';
import { createActor, initialTransition, transition, type ExecutableActionsFrom } from 'xstate';
import { adapterChartJson, adapterMachine, adapterStateLabel, type AdapterEvent } from '../statecharts/adapter.machine.js';
import type { LoaderCommand } from '../src/scheduler/index.js';

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

const loaded: AdapterEvent = { type: 'CPU_LOADED', rank: 8, targetModules: ['q_proj'], bytes: 4096 };

/** The loader commands a transition emits, in order. */
function commandsOf(actions: ExecutableActionsFrom<typeof adapterMachine>[]): LoaderCommand[] {
  return actions.filter((a) => a.type === 'xstate.emit').map((a) => (a.params as { event: { command: LoaderCommand } }).event.command);
}

/** Runs events and collects the commands each emits. */
function commands(events: AdapterEvent[], pinned = false): LoaderCommand[] {
  let [snap] = initialTransition(adapterMachine, { ...input(pinned), poolModules: [...input().poolModules] });
  const out: LoaderCommand[] = [];
  for (const e of events) {
    const [next, actions] = transition(adapterMachine, snap, e);
    out.push(...commandsOf(actions));
    snap = next;
  }
  return out;
}

describe('adapter statechart', () => {
  test('walks disk -> CPU -> slot and back on eviction and CPU drop', () => {
    const { snap, labels } = run([
      { type: 'LOAD' },
      loaded,
      { type: 'COPY', slot: 2 },
      { type: 'SLOT_READY', slot: 2 },
      { type: 'EVICT' },
      { type: 'DROP_CPU' },
    ]);
    expect(labels).toEqual(['registered', 'loading', 'cpuLoaded', 'h2dInFlight', 'gpuResident.unpinned', 'cpuLoaded', 'registered']);
    expect(snap.context).toMatchObject({ rank: 8, targetModules: ['q_proj'], slot: null, error: null });
    expect(snap.value).toEqual({ live: { residency: 'registered', admission: 'open' } });
  });

  test('the slot is recorded while in flight and resident', () => {
    const { snap } = run([{ type: 'LOAD' }, loaded, { type: 'COPY', slot: 3 }, { type: 'SLOT_READY', slot: 3 }]);
    expect(snap.context.slot).toBe(3);
  });

  test('a pinned adapter becomes gpuResident.pinned and ignores EVICT', () => {
    const { snap, labels } = run([{ type: 'LOAD' }, loaded, { type: 'COPY', slot: 0 }, { type: 'SLOT_READY', slot: 0 }, { type: 'EVICT' }], true);
    expect(labels.slice(-2)).toEqual(['gpuResident.pinned', 'gpuResident.pinned']);
    expect(snap.context.slot).toBe(0);
  });

  test('events that do not apply are ignored', () => {
    const { labels, snap } = run([
      { type: 'SLOT_READY', slot: 0 },
      { type: 'COPY', slot: 1 },
      { type: 'EVICT' },
      { type: 'START' },
      { type: 'PREEMPT' },
      { type: 'RELEASE', running: false },
      loaded,
      { type: 'DROP_CPU' },
    ]);
    expect(new Set(labels)).toEqual(new Set(['registered']));
    expect(snap.context).toMatchObject({ rank: null, slot: null, users: 0, running: 0 });
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
    const { snap, labels } = run([
      { type: 'ACQUIRE' },
      { type: 'LOAD' },
      { type: 'UNLOAD' },
      loaded,
      { type: 'COPY', slot: 0 },
      { type: 'SLOT_READY', slot: 0 },
      { type: 'START' },
    ]);
    expect(labels.slice(2)).toEqual(['loading', 'unloading', 'unloading', 'unloading', 'unloading', 'unloading']);
    expect(snap.value).toEqual({ live: { residency: { gpuResident: 'unpinned' }, admission: 'unloading' } });
    expect(snap.context).toMatchObject({ users: 1, running: 1, removal: true });
    // A new request is not admitted while unloading.
    expect(snap.can({ type: 'ACQUIRE' })).toBe(false);
    const [idle] = transition(adapterMachine, snap, { type: 'RELEASE', running: true });
    expect(idle.can({ type: 'DRAINED' })).toBe(true);
    const [done, actions] = transition(adapterMachine, idle, { type: 'DRAINED' });
    expect(done.value).toBe('unloaded');
    expect(done.status).toBe('done');
    expect(done.context.slot).toBeNull();
    expect(commandsOf(actions)).toEqual([
      { kind: 'clear-slot', slot: 0 },
      { kind: 'drop-cpu', name: 'a' },
    ]);
  });

  test('an unload waits for a read in flight even with no users', () => {
    const { snap } = run([{ type: 'LOAD' }, { type: 'UNLOAD' }]);
    expect(adapterStateLabel(snap)).toBe('unloading');
    expect(snap.can({ type: 'DRAINED' })).toBe(false);
    const [landed] = transition(adapterMachine, snap, loaded);
    const [done, actions] = transition(adapterMachine, landed, { type: 'DRAINED' });
    expect(done.status).toBe('done');
    expect(commandsOf(actions)).toEqual([{ kind: 'drop-cpu', name: 'a' }]);
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
    for (const id of [
      'live.residency.registered',
      'live.residency.loading',
      'live.residency.cpuLoaded',
      'live.residency.h2dInFlight',
      'live.residency.gpuResident.unpinned',
      'live.residency.gpuResident.pinned',
      'live.admission.unloading',
      'failed',
      'unloaded',
    ]) {
      expect(ids).toContain(id);
    }
    expect(chart.states.find((s) => s.id === 'live.residency.cpuLoaded')).toMatchObject({ parent: 'live.residency' });
    expect(chart.transitions).toContainEqual({
      from: 'live.residency.gpuResident.unpinned',
      to: 'live.residency.cpuLoaded',
      event: 'EVICT',
      guard: 'evictableWithCopy',
    });
    expect(chart.transitions).toContainEqual({ from: 'live.admission.unloading', to: 'unloaded', event: 'DRAINED', guard: 'drained' });
    expect(chart.transitions).toContainEqual({ from: 'live.residency.loading', to: 'failed', event: 'LOAD_FAILED' });
    expect(JSON.parse(JSON.stringify(chart))).toEqual(chart);
  });
});

describe('what the machine owns', () => {
  test('its transitions emit the loader commands: read, copy, drop', () => {
    expect(
      commands([{ type: 'LOAD' }, loaded, { type: 'COPY', slot: 2 }, { type: 'SLOT_READY', slot: 2 }, { type: 'EVICT' }, { type: 'DROP_CPU' }]),
    ).toEqual([
      { kind: 'load-cpu', name: 'a', path: '/adapters/a' },
      { kind: 'copy-to-slot', name: 'a', slot: 2 },
      { kind: 'drop-cpu', name: 'a' },
    ]);
  });

  test('a failure frees what the adapter held', () => {
    expect(commands([{ type: 'LOAD' }, { type: 'CPU_LOADED', rank: 64, targetModules: ['q_proj'] }]).at(-1)).toEqual({ kind: 'drop-cpu', name: 'a' });
    expect(commands([{ type: 'LOAD' }, loaded, { type: 'COPY', slot: 1 }, { type: 'LOAD_FAILED', error: 'out of memory' }]).slice(2)).toEqual([
      { kind: 'clear-slot', slot: 1 },
      { kind: 'drop-cpu', name: 'a' },
    ]);
  });

  test('refcounts: requests are counted, and one a running request uses is not evicted', () => {
    const { snap } = run([
      { type: 'LOAD' },
      loaded,
      { type: 'ACQUIRE' },
      { type: 'ACQUIRE' },
      { type: 'COPY', slot: 0 },
      { type: 'SLOT_READY', slot: 0 },
      { type: 'START' },
    ]);
    expect(snap.context).toMatchObject({ users: 2, running: 1 });
    expect(snap.can({ type: 'EVICT' })).toBe(false);
    const [idle] = transition(adapterMachine, snap, { type: 'RELEASE', running: true });
    expect(idle.context).toMatchObject({ users: 1, running: 0 });
    expect(idle.can({ type: 'EVICT' })).toBe(true);
    // A release with nobody to release is refused rather than driving the count negative.
    const [empty] = transition(adapterMachine, idle, { type: 'RELEASE', running: false });
    expect(empty.context.users).toBe(0);
    expect(empty.can({ type: 'RELEASE', running: false })).toBe(false);
  });

  test('requests a step starts or ends together are counted by one event', () => {
    const { snap } = run([
      { type: 'LOAD' },
      loaded,
      { type: 'ACQUIRE' },
      { type: 'ACQUIRE' },
      { type: 'ACQUIRE' },
      { type: 'COPY', slot: 0 },
      { type: 'SLOT_READY', slot: 0 },
      { type: 'START', count: 3 },
    ]);
    expect(snap.context).toMatchObject({ users: 3, running: 3 });
    // More running requests ending than run is refused, and so is an empty count.
    expect(snap.can({ type: 'RELEASE', running: true, count: 4 })).toBe(false);
    expect(snap.can({ type: 'RELEASE', running: true, count: 0 })).toBe(false);
    const [idle] = transition(adapterMachine, snap, { type: 'RELEASE', running: true, count: 3 });
    expect(idle.context).toMatchObject({ users: 0, running: 0 });
    expect(idle.can({ type: 'EVICT' })).toBe(true);
  });

  test('a request only starts on a resident adapter', () => {
    const { snap } = run([{ type: 'LOAD' }, loaded, { type: 'ACQUIRE' }]);
    expect(snap.can({ type: 'START' })).toBe(false);
  });

  test('a loader restart: reads are issued again, a CPU copy is forgotten, an in-flight copy is redone', () => {
    expect(commands([{ type: 'LOAD' }, { type: 'LOADER_RESTARTED' }])).toEqual([
      { kind: 'load-cpu', name: 'a', path: '/adapters/a' },
      { kind: 'load-cpu', name: 'a', path: '/adapters/a' },
    ]);
    expect(run([{ type: 'LOAD' }, loaded, { type: 'LOADER_RESTARTED' }]).labels.at(-1)).toBe('registered');
    const inFlight = [{ type: 'LOAD' }, loaded, { type: 'COPY', slot: 1 }, { type: 'LOADER_RESTARTED' }] as AdapterEvent[];
    expect(commands(inFlight).slice(2)).toEqual([
      { kind: 'load-cpu', name: 'a', path: '/adapters/a' },
      { kind: 'copy-to-slot', name: 'a', slot: 1 },
    ]);
    const { snap } = run([...inFlight, loaded, { type: 'SLOT_READY', slot: 1 }]);
    expect(adapterStateLabel(snap)).toBe('gpuResident.unpinned');
    expect(snap.context).toMatchObject({ cpuCopy: true, rereading: false, slot: 1 });
  });

  test('a resident adapter being read again is neither evicted nor unloaded until the read lands', () => {
    const { snap } = run([
      { type: 'LOAD' },
      loaded,
      { type: 'COPY', slot: 0 },
      { type: 'SLOT_READY', slot: 0 },
      { type: 'LOADER_RESTARTED' },
      { type: 'UNLOAD' },
    ]);
    expect(adapterStateLabel(snap)).toBe('unloading');
    expect(snap.can({ type: 'EVICT' })).toBe(false);
    expect(snap.can({ type: 'DRAINED' })).toBe(false);
    const [landed] = transition(adapterMachine, snap, loaded);
    expect(transition(adapterMachine, landed, { type: 'DRAINED' })[0].status).toBe('done');
  });
});

// Path coverage of the adapter statechart: an explicit table of event paths, run through the
// machine, must reach every state and take every transition of the chart (both branches of
// every guard, the failure paths included).
import { describe, expect, test } from 'vitest';
import { initialTransition, transition } from 'xstate';
import { adapterChartJson, adapterMachine, type AdapterEvent, type AdapterSnapshot } from '../statecharts/adapter.machine.js';

const fits: AdapterEvent = { type: 'CPU_LOADED', rank: 8, targetModules: ['q_proj'] };
const tooBig: AdapterEvent = { type: 'CPU_LOADED', rank: 64, targetModules: ['q_proj'] };
const failed: AdapterEvent = { type: 'LOAD_FAILED', error: 'boom' };
const toSlot: AdapterEvent[] = [{ type: 'LOAD' }, fits, { type: 'COPY', slot: 1 }, { type: 'SLOT_READY' }];

const PATHS: Array<{ name: string; pinned?: boolean; events: AdapterEvent[] }> = [
  { name: 'disk -> slot -> evicted -> dropped -> reloaded', events: [...toSlot, { type: 'EVICT' }, { type: 'DROP_CPU' }, { type: 'LOAD' }, fits] },
  { name: 'pinned', pinned: true, events: [...toSlot, { type: 'UNLOAD' }, { type: 'DRAINED' }] },
  { name: 'read fails', events: [{ type: 'LOAD' }, failed, { type: 'UNLOAD' }] },
  { name: 'does not fit the pool', events: [{ type: 'LOAD' }, tooBig, { type: 'UNLOAD' }] },
  { name: 'copy fails', events: [{ type: 'LOAD' }, fits, { type: 'COPY', slot: 0 }, failed] },
  { name: 'unloaded while registered', events: [{ type: 'UNLOAD' }, { type: 'DRAINED' }] },
];

/** Every active state id (dotted path from the root, as in the chart JSON), ancestors included. */
function active(snap: AdapterSnapshot): Set<string> {
  const out = new Set<string>();
  const walk = (v: unknown, prefix: string): void => {
    if (typeof v === 'string') {
      out.add(prefix ? `${prefix}.${v}` : v);
      return;
    }
    for (const [k, inner] of Object.entries(v as Record<string, unknown>)) {
      const id = prefix ? `${prefix}.${k}` : k;
      out.add(id);
      walk(inner, id);
    }
  };
  walk(snap.value, '');
  return out;
}

describe('adapter statechart path coverage', () => {
  const chart = adapterChartJson();
  const visited = new Set<string>();
  const taken = new Set<string>();
  const key = (t: { from: string; to: string; event: string; guard?: string }): string => `${t.from} -${t.event}${t.guard ? `[${t.guard}]` : ''}-> ${t.to}`;

  for (const path of PATHS) {
    let [snap] = initialTransition(adapterMachine, {
      name: 'a', path: '/a', pinned: path.pinned ?? false, maxRank: 16, poolModules: ['q_proj', 'v_proj'],
    });
    for (const s of active(snap)) visited.add(s);
    for (const event of path.events) {
      const before = active(snap);
      [snap] = transition(adapterMachine, snap, event);
      const after = active(snap);
      for (const s of after) visited.add(s);
      // A chart transition was taken when its source was active, its event was sent, and its
      // target is active afterwards; of guarded alternatives, the first whose target was reached.
      const candidates = chart.transitions.filter((t) => t.event === event.type && before.has(t.from));
      const hit = candidates.find((t) => after.has(t.to) && !before.has(t.to)) ?? candidates.find((t) => after.has(t.to));
      if (hit) taken.add(key(hit));
    }
  }

  test('the table reaches every state of the chart', () => {
    const states = chart.states.map((s) => s.id);
    expect(states.length).toBeGreaterThanOrEqual(14);
    expect(states.filter((s) => !visited.has(s))).toEqual([]);
  });

  test('the table takes every transition of the chart, guards on both branches and failure paths included', () => {
    const all = chart.transitions.map(key);
    expect(all).toContain('live.residency.loading -CPU_LOADED[fitsPool]-> live.residency.cpuLoaded');
    expect(all).toContain('live.residency.loading -CPU_LOADED-> failed');
    expect(all).toContain('live.residency.h2dInFlight -LOAD_FAILED-> failed');
    expect(all.filter((k) => !taken.has(k))).toEqual([]);
  });
});

// Path coverage of the adapter statechart: an explicit table of event paths, run through the
// machine, must reach every state and take every transition of the chart (both branches of
// every guard and the failure paths included). Taken transitions are read from XState's
// inspection stream, so they are exactly the chart's, not guessed from states before and after.
import { describe, expect, test } from 'vitest';
import { createActor, type AnyStateNode } from 'xstate';
import { adapterChartJson, adapterMachine, type AdapterEvent } from '../statecharts/adapter.machine.js';

const fits: AdapterEvent = { type: 'CPU_LOADED', rank: 8, targetModules: ['q_proj'] };
const tooBig: AdapterEvent = { type: 'CPU_LOADED', rank: 64, targetModules: ['q_proj'] };
const failed: AdapterEvent = { type: 'LOAD_FAILED', error: 'boom' };
const toSlot: AdapterEvent[] = [{ type: 'LOAD' }, fits, { type: 'COPY', slot: 1 }, { type: 'SLOT_READY', slot: 1 }];

const PATHS: Array<{ name: string; pinned?: boolean; events: AdapterEvent[] }> = [
  { name: 'disk -> slot -> evicted -> dropped -> reloaded', events: [...toSlot, { type: 'EVICT' }, { type: 'DROP_CPU' }, { type: 'LOAD' }, fits] },
  { name: 'pinned', pinned: true, events: [...toSlot, { type: 'UNLOAD' }, { type: 'DRAINED' }] },
  { name: 'read fails', events: [{ type: 'LOAD' }, failed, { type: 'UNLOAD' }] },
  { name: 'does not fit the pool', events: [{ type: 'LOAD' }, tooBig, { type: 'UNLOAD' }] },
  { name: 'copy fails', events: [{ type: 'LOAD' }, fits, { type: 'COPY', slot: 0 }, failed] },
  {
    name: 'the loader restarts during a copy, the read fails, and the unload waits for the copy to fail too',
    events: [
      { type: 'LOAD' },
      fits,
      { type: 'COPY', slot: 0 },
      { type: 'LOADER_RESTARTED' },
      failed,
      { type: 'UNLOAD' },
      failed,
      { type: 'DRAINED' },
    ],
  },
  { name: 'unloaded while registered', events: [{ type: 'UNLOAD' }, { type: 'DRAINED' }] },
  {
    name: 'named again while its unload waits for a request',
    events: [{ type: 'ACQUIRE' }, { type: 'UNLOAD' }, { type: 'REVIVE' }, { type: 'ACQUIRE' }],
  },
  { name: 'the loader restarts while it holds the CPU copy', events: [{ type: 'LOAD' }, fits, { type: 'LOADER_RESTARTED' }] },
  {
    name: 'the loader restarts and the read for a resident adapter fails',
    events: [...toSlot, { type: 'LOADER_RESTARTED' }, failed, { type: 'EVICT' }],
  },
  {
    name: 'moves to another slot, and gives its slot to another adapter',
    events: [
      ...toSlot,
      { type: 'MOVE', slot: 0, partner: 'b' },
      { type: 'SLOT_READY', slot: 0 },
      { type: 'GIVE_SLOT', slot: 3 },
      { type: 'SLOT_READY', slot: 3 },
    ],
  },
  { name: 'a pinned adapter moves', pinned: true, events: [...toSlot, { type: 'GIVE_SLOT', slot: 2 }, { type: 'SLOT_READY', slot: 2 }] },
  {
    name: 'a move fails: back to its CPU copy',
    events: [...toSlot, { type: 'MOVE', slot: 0, partner: null }, { type: 'MOVE_FAILED', error: 'boom' }],
  },
  {
    name: 'a move fails after the loader restarted and its read failed: back to disk',
    events: [...toSlot, { type: 'LOADER_RESTARTED' }, failed, { type: 'MOVE', slot: 0, partner: null }, { type: 'MOVE_FAILED', error: 'boom' }],
  },
  {
    name: 'the loader restarts during a move: read and copied again into the new slot',
    events: [...toSlot, { type: 'GIVE_SLOT', slot: 2 }, { type: 'LOADER_RESTARTED' }, fits, { type: 'SLOT_READY', slot: 2 }],
  },
  {
    name: 'unloaded while a waiting request keeps it, then its read fails',
    events: [{ type: 'ACQUIRE' }, { type: 'LOAD' }, { type: 'UNLOAD' }, failed, { type: 'RELEASE', running: false }, { type: 'DRAINED' }],
  },
];

type Key = string;
const key = (t: { from: string; to: string; event: string; guard?: string }): Key =>
  `${t.from} -${t.event}${t.guard ? `[${t.guard}]` : ''}-> ${t.to}`;

/** Runs a path and returns the chart transitions it took (as keys) and every state it entered. */
function walk(path: (typeof PATHS)[number]): { taken: Key[]; entered: string[] } {
  const taken: Key[] = [];
  const entered: string[] = [];
  const actor = createActor(adapterMachine, {
    input: { name: 'a', path: '/a', pinned: path.pinned ?? false, maxRank: 16, poolModules: ['q_proj', 'v_proj'] },
    inspect: (ev) => {
      if (ev.type !== '@xstate.microstep') return;
      const transitions = (
        ev as unknown as { _transitions: Array<{ source: AnyStateNode; target?: AnyStateNode[]; eventType: string; guard?: unknown }> }
      )._transitions;
      for (const t of transitions) {
        for (const target of t.target ?? []) {
          const guard = typeof t.guard === 'string' ? t.guard : undefined;
          taken.push(
            key({
              from: t.source.path.join('.'),
              to: target.path.join('.'),
              event: t.eventType === '' ? 'always' : t.eventType,
              ...(guard ? { guard } : {}),
            }),
          );
        }
      }
      for (const node of (ev.snapshot as unknown as { _nodes: AnyStateNode[] })._nodes) entered.push(node.path.join('.'));
    },
  });
  actor.start();
  for (const n of (actor.getSnapshot() as unknown as { _nodes: AnyStateNode[] })._nodes) entered.push(n.path.join('.'));
  for (const event of path.events) {
    expect(actor.getSnapshot().can(event), `${path.name}: ${event.type} is accepted`).toBe(true);
    actor.send(event);
  }
  return { taken, entered };
}

describe('adapter statechart path coverage', () => {
  const chart = adapterChartJson();
  const visited = new Set<string>();
  const taken = new Set<string>();
  for (const path of PATHS) {
    const r = walk(path);
    for (const s of r.entered) visited.add(s);
    for (const t of r.taken) taken.add(t);
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
    expect(all).toContain('live.admission.unloading -DRAINED[drained]-> unloaded');
    expect(all.filter((k) => !taken.has(k))).toEqual([]);
  });
});

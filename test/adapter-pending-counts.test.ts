// Requests that start or end running reach a resident adapter's machine as counts it hears later
// (AdapterActors.countStarted and countEnded), so the step that turns a batch over costs no
// transition for them. These hold the claims that make it safe: against every reachable state of
// the machine, and through the scheduler where placement and unloading read the counts.
import { afterEach, describe, expect, test, vi } from 'vitest';
import { transition } from 'xstate';
import { AdapterActors } from '../src/scheduler/adapter-actors.js';
import { AdapterIndex } from '../src/scheduler/adapter-index.js';
import { adapterMachine, type AdapterEvent, type AdapterSnapshot } from '../statecharts/adapter.machine.js';
import { reachable } from './adapter-reachable.js';
import { newScheduler, seq, serveLoader, step } from './scheduler-harness.js';

afterEach(() => {
  vi.restoreAllMocks();
});

const start = (count: number): AdapterEvent => ({ type: 'START', count });
const end = (count: number): AdapterEvent => ({ type: 'RELEASE', running: true, count });

/** Runs `events` from `snap`; null as soon as the machine refuses one. */
function run(snap: AdapterSnapshot, events: readonly AdapterEvent[]): AdapterSnapshot | null {
  let s = snap;
  for (const e of events) {
    if (!s.can(e)) return null;
    s = transition(adapterMachine, s, e)[0];
  }
  return s;
}

/** Every sequence of up to `length` events drawn from `alphabet`. */
function sequences(alphabet: readonly AdapterEvent[], length: number): AdapterEvent[][] {
  let last: AdapterEvent[][] = [[]];
  const all: AdapterEvent[][] = [];
  for (let n = 1; n <= length; n++) {
    last = last.flatMap((xs) => alphabet.map((e) => [...xs, e]));
    all.push(...last);
  }
  return all;
}

const counts = (acquired: number, started: number, ended: number): AdapterEvent => ({ type: 'COUNTS', acquired, started, ended });

describe('pending starts and ends', () => {
  test('heard as one COUNTS, they end as in the order they happened, by every reachable resident state', () => {
    const resident = reachable(7).filter((s) => s.status === 'active' && JSON.stringify(s.value).includes('gpuResident'));
    expect(resident.length).toBeGreaterThan(10);
    let compared = 0;
    for (const s of resident) {
      for (const events of sequences([{ type: 'ACQUIRE' }, start(1), start(2), end(1), end(2)], 3)) {
        const inOrder = run(s, events);
        if (inOrder === null) continue;
        const sum = (type: string): number => events.reduce((a, e) => a + (e.type === type ? ('count' in e && e.count) || 1 : 0), 0);
        const settled = run(s, [counts(sum('ACQUIRE'), sum('START'), sum('RELEASE'))]);
        expect(settled, `${events.map((e) => e.type).join(',')} in ${JSON.stringify(s.value)}`).not.toBeNull();
        expect({ value: settled!.value, context: settled!.context }).toEqual({ value: inOrder.value, context: inOrder.context });
        compared++;
      }
    }
    expect(compared).toBeGreaterThan(500);
  });

  test('COUNTS (a resident adapter event) and an EVICT carrying ends are taken exactly where the events they stand for are, and end the same, by every reachable state', () => {
    const pairs: Array<[AdapterEvent, AdapterEvent[]]> = [];
    for (const [a, st, e] of [
      [0, 0, 1],
      [0, 1, 0],
      [2, 0, 0],
      [1, 2, 1],
      [0, 1, 2],
      [3, 0, 3],
    ] as const) {
      const apart: AdapterEvent[] = [
        ...(a > 0 ? [{ type: 'ACQUIRE', count: a } as const] : []),
        ...(st > 0 ? [start(st)] : []),
        ...(e > 0 ? [end(e)] : []),
      ];
      pairs.push([counts(a, st, e), apart]);
    }
    for (const e of [1, 2]) pairs.push([{ type: 'EVICT', ended: e }, [end(e), { type: 'EVICT' }]]);
    pairs.push([{ type: 'EVICT', started: 1, ended: 2 }, [start(1), end(2), { type: 'EVICT' }]]);
    pairs.push([{ type: 'EVICT', started: 2, ended: 1 }, [start(2), end(1), { type: 'EVICT' }]]);
    pairs.push([{ type: 'EVICT', started: 0, ended: 0 }, [{ type: 'EVICT' }]]);
    let taken = 0;
    let refused = 0;
    for (const s of reachable(7).filter((x) => x.status === 'active')) {
      const resident = JSON.stringify(s.value).includes('gpuResident');
      for (const [merged, apart] of pairs) {
        if (merged.type === 'COUNTS' && !resident) continue;
        const one = run(s, [merged]);
        const many = run(s, apart);
        const what = `${JSON.stringify(merged)} in ${JSON.stringify(s.value)} ${JSON.stringify(s.context)}`;
        if (many === null) {
          expect(one, what).toBeNull();
          refused++;
          continue;
        }
        expect(one, what).not.toBeNull();
        expect({ value: one!.value, context: one!.context }, what).toEqual({ value: many.value, context: many.context });
        taken++;
      }
    }
    expect(taken).toBeGreaterThan(100);
    expect(refused).toBeGreaterThan(100);
  });

  test('a machine that would refuse them hears them at once, so the error names the call; inUse counts those pending', () => {
    const actors = new AdapterActors(new AdapterIndex(2, 'lru'), () => true);
    actors.start({ name: 'A', path: '/A', pinned: false, maxRank: 16, poolModules: ['q_proj'] }, 'added');
    expect(() => actors.countStarted('A', 1)).toThrow(/adapter "A" in state registered does not accept START/);
    actors.send('A', { type: 'LOAD' }, 'read');
    actors.send('A', { type: 'CPU_LOADED', rank: 8, targetModules: ['q_proj'] }, 'read');
    actors.send('A', { type: 'COPY', slot: 0 }, 'copy');
    actors.send('A', { type: 'SLOT_READY', slot: 0 }, 'copied');
    actors.acquire('A', 'a request');
    actors.acquire('A', 'a request');
    const transitions = vi.spyOn(adapterMachine, 'transition');
    actors.countStarted('A', 2);
    expect(actors.inUse('A')).toBe(true);
    actors.countEnded('A', 1);
    expect(actors.inUse('A')).toBe(true);
    expect(transitions).not.toHaveBeenCalled();
    // More than run: the machine hears what is pending (the release needing the acquisitions)
    // and refuses it.
    expect(() => actors.countEnded('A', 2)).toThrow(/adapter "A" in state gpuResident.unpinned does not accept RELEASE/);
    expect(transitions.mock.calls.map((c) => c[1])).toEqual([{ type: 'COUNTS', acquired: 2, started: 2, ended: 1 }, end(2)]);
    actors.countEnded('A', 1);
    expect(actors.inUse('A')).toBe(false);
    expect(actors.snapshot('A')!.context).toMatchObject({ users: 0, running: 0 });
  });

  test('placement counts them: an adapter whose requests all ended in a step gives its slot to a waiting adapter in that step', () => {
    const s = newScheduler({ maxLorasPerBatch: 2, maxRunningRequests: 8, numBlocks: 256 });
    for (const name of ['A', 'B', 'C']) s.addAdapter({ name, path: `/${name}`, pinned: false });
    s.submit(seq('a', { lora: 'A', maxNewTokens: 2 }));
    s.submit(seq('b', { lora: 'B', maxNewTokens: 6 }));
    serveLoader(s);
    expect(step(s)!.ids).toEqual(['a', 'b']);
    s.submit(seq('c', { lora: 'C' }));
    // C, read at registration, waits for a slot: both are held by running requests.
    expect(serveLoader(s)).toEqual([]);
    const transitions = vi.spyOn(adapterMachine, 'transition');
    expect(step(s)!.events.find((e) => e.id === 'a')?.finish).toEqual({ type: 'length', length: 2 });
    // A's only request ended: its slot goes to C in the same step, and A hears of its start and
    // end with its eviction, in one transition.
    expect(s.takeCommands()).toEqual([{ kind: 'copy-to-slot', name: 'C', slot: 0 }]);
    expect(transitions.mock.calls.map((c) => [c[0].context.name, c[1]])).toEqual([
      ['A', { type: 'EVICT', started: 1, ended: 1 }],
      ['C', { type: 'COPY', slot: 0 }],
    ]);
    expect(s.adapterDetails().find((d) => d.name === 'A')).toMatchObject({ state: 'cpuLoaded', refcount: 0, running: 0 });
  });

  test("steps with time to spare let machines hear starts and ends, and leave a waiting adapter's acquisitions pending", () => {
    // One place: B's requests wait while A's run.
    const s = newScheduler({ maxLorasPerBatch: 1, maxRunningRequests: 8, numBlocks: 256 });
    for (const name of ['A', 'B']) s.addAdapter({ name, path: `/${name}`, pinned: false });
    s.submit(seq('a', { lora: 'A', maxNewTokens: 6 }));
    serveLoader(s);
    s.adapterDetails();
    const transitions = vi.spyOn(adapterMachine, 'transition');
    step(s);
    for (let i = 0; i < 3; i++) s.submit(seq(`b${i}`, { lora: 'B' }));
    for (let k = 0; k < 3; k++) expect(step(s)!.ids).toEqual(['a']);
    expect(transitions.mock.calls.map((c) => c[1])).toEqual([{ type: 'COUNTS', acquired: 0, started: 1, ended: 0 }]);
    expect(s.adapterDetails().find((d) => d.name === 'B')).toMatchObject({ refcount: 3, running: 0 });
  });

  test('an adapter being unloaded hears them at once and leaves as soon as its last request ends', async () => {
    const s = newScheduler({ maxRunningRequests: 8, numBlocks: 256 });
    s.addAdapter({ name: 'A', path: '/A', pinned: false });
    s.submit(seq('a0', { lora: 'A', maxNewTokens: 2 }));
    s.submit(seq('a1', { lora: 'A', maxNewTokens: 3 }));
    serveLoader(s);
    step(s);
    let gone = false;
    void s.removeAdapter('A').then(() => (gone = true));
    step(s);
    await Promise.resolve();
    expect(gone).toBe(false);
    expect(step(s)!.events.find((e) => e.id === 'a1')?.finish).toEqual({ type: 'length', length: 3 });
    await Promise.resolve();
    expect(gone).toBe(true);
    expect(s.adapters(['A'])).toEqual([]);
  });
});

// Acquisitions an adapter's machine has not heard yet stay pending past the events that do not
// depend on them, and placement walks again only once something it reads has changed: a step
// that turns a batch over costs fewer statechart transitions and fewer walks, with the same
// outcome.
import { afterEach, describe, expect, test, vi } from 'vitest';
import { transition, type ExecutableActionsFrom } from 'xstate';
import { ACQUIRE_INDEPENDENT, ACQUIRE_MONOTONE } from '../src/scheduler/adapter-pending.js';
import { AdapterIndex } from '../src/scheduler/adapter-index.js';
import { adapterMachine, type AdapterEvent, type AdapterSnapshot } from '../statecharts/adapter.machine.js';
import { ALPHABET, reachable } from './adapter-reachable.js';
import { newScheduler, runAll, seq, serveLoader, step } from './scheduler-harness.js';

afterEach(() => {
  vi.restoreAllMocks();
});

type Actions = ExecutableActionsFrom<typeof adapterMachine>[];
const emitted = (actions: Actions): unknown[] => actions.filter((a) => a.type === 'xstate.emit').map((a) => a.params);
const outcome = (snap: AdapterSnapshot, actions: Actions) => ({
  value: snap.value,
  context: snap.context,
  status: snap.status,
  emitted: emitted(actions),
});

describe('pending acquisitions', () => {
  /**
   * For each reachable state that takes ACQUIRE and each event `pick` chooses there: taking the
   * event then ACQUIRE ends as taking ACQUIRE then the event (same state, context and emitted
   * commands). Returns how many pairs were compared.
   */
  const compareOrders = (
    pick: (s: AdapterSnapshot, e: AdapterEvent) => boolean,
    check: (s: AdapterSnapshot, acquired: AdapterSnapshot, e: AdapterEvent) => boolean,
    alphabet: readonly AdapterEvent[] = ALPHABET,
  ): number => {
    const acquire: AdapterEvent = { type: 'ACQUIRE', count: 3 };
    const states = reachable(7).filter((s) => s.status === 'active' && s.can(acquire));
    expect(states.length).toBeGreaterThan(30);
    let compared = 0;
    for (const s of states) {
      for (const e of alphabet.filter((x) => pick(s, x))) {
        const [acquired, first] = transition(adapterMachine, s, acquire);
        if (!check(s, acquired, e)) continue;
        const [after, second] = transition(adapterMachine, acquired, e);
        const [moved, early] = transition(adapterMachine, s, e);
        expect(moved.can(acquire), `ACQUIRE after ${e.type} in ${JSON.stringify(s.value)}`).toBe(true);
        const [late, last] = transition(adapterMachine, moved, acquire);
        expect(outcome(late, [...early, ...last])).toEqual(outcome(after, [...first, ...second]));
        compared++;
      }
    }
    return compared;
  };

  test('the events they stay pending past are taken the same before and after them, by every reachable state', () => {
    const compared = compareOrders(
      (_s, e) => ACQUIRE_INDEPENDENT.has(e.type),
      (s, acquired, e) => {
        // Taken (or refused) alike either way.
        expect(acquired.can(e), `${e.type} in ${JSON.stringify(s.value)}`).toBe(s.can(e));
        return s.can(e);
      },
    );
    expect(compared).toBeGreaterThan(30);
  });

  test('the events taken before them when the machine accepts them so end the same as after them, by every reachable state', () => {
    const compared = compareOrders(
      (s, e) => ACQUIRE_MONOTONE.has(e.type) && s.can(e),
      (s, acquired, e) => {
        expect(acquired.can(e), `${e.type} in ${JSON.stringify(s.value)}`).toBe(true);
        return true;
      },
      // With the ends an EVICT or a COUNTS carries, whose guards count users.
      [
        ...ALPHABET,
        { type: 'EVICT', ended: 1 },
        { type: 'EVICT', started: 1, ended: 2 },
        { type: 'COUNTS', acquired: 0, started: 1, ended: 1 },
        { type: 'COUNTS', acquired: 0, started: 0, ended: 1 },
      ],
    );
    expect(compared).toBeGreaterThan(30);
  });

  test('a step that starts requests queued since the last one costs their adapter no transition; a read hears both', () => {
    const s = newScheduler({ maxRunningRequests: 64, numBlocks: 512, chunkedPrefillSize: 512 });
    s.addAdapter({ name: 'A', path: '/A', pinned: false });
    s.submit(seq('first', { lora: 'A', maxNewTokens: 1 }));
    runAll(s);
    s.adapterDetails();
    for (let i = 0; i < 40; i++) s.submit(seq(`r${i}`, { lora: 'A' }));
    const transitions = vi.spyOn(adapterMachine, 'transition');
    expect(step(s)!.ids).toHaveLength(40);
    expect(transitions).not.toHaveBeenCalled();
    // Read, the machine has heard both.
    expect(s.adapterDetails().find((d) => d.name === 'A')).toMatchObject({ refcount: 40, running: 40 });
    expect(transitions.mock.calls.map((c) => c[1])).toEqual([{ type: 'COUNTS', acquired: 40, started: 40, ended: 0 }]);
  });

  /** Adapter A with four one-token requests its machine has heard of (a read settles them). */
  const fourHeard = (): ReturnType<typeof newScheduler> => {
    const s = newScheduler({ maxRunningRequests: 64, numBlocks: 512, chunkedPrefillSize: 512 });
    s.addAdapter({ name: 'A', path: '/A', pinned: false });
    for (let i = 0; i < 4; i++) s.submit(seq(`old${i}`, { lora: 'A', maxNewTokens: 1 }));
    serveLoader(s);
    s.adapterDetails();
    return s;
  };

  test('requests that start and end in one step cost no transition there; the next event hears them first, with the acquisitions a release needs', () => {
    const s = fourHeard();
    // Heard: 4 users. Pending: 3 more.
    for (let i = 0; i < 3; i++) s.submit(seq(`new${i}`, { lora: 'A', maxNewTokens: 1 }));
    const transitions = vi.spyOn(adapterMachine, 'transition');
    const first = step(s)!;
    expect(first.ids).toHaveLength(7);
    expect(first.events.every((e) => e.finish !== null)).toBe(true);
    expect(transitions).not.toHaveBeenCalled();
    for (let i = 0; i < 2; i++) s.submit(seq(`later${i}`, { lora: 'A', maxNewTokens: 1 }));
    s.submit(seq('x', { lora: 'A', maxNewTokens: 1 }));
    // The abort is heard after the step's starts and ends; seven ended, more than the four
    // users heard, so the six acquisitions pending are heard with them.
    expect(s.abort('x')?.finish).toEqual({ type: 'abort', message: 'Request aborted' });
    expect(transitions.mock.calls.map((c) => c[1])).toEqual([
      { type: 'COUNTS', acquired: 6, started: 7, ended: 7 },
      { type: 'RELEASE', running: false },
    ]);
    expect(step(s)!.ids).toEqual(['later0', 'later1']);
    expect(s.adapterDetails().find((d) => d.name === 'A')).toMatchObject({ refcount: 0, running: 0 });
  });

  test('a step that moves no adapter lets one hear what is pending for it, and the step that ends its requests costs no transition', () => {
    const s = newScheduler({ maxRunningRequests: 64, numBlocks: 512, chunkedPrefillSize: 512 });
    s.addAdapter({ name: 'A', path: '/A', pinned: false });
    serveLoader(s);
    s.submit(seq('warm', { lora: 'A', maxNewTokens: 1 }));
    runAll(s);
    s.adapterDetails();
    for (let i = 0; i < 4; i++) s.submit(seq(`r${i}`, { lora: 'A', maxNewTokens: 3 }));
    const transitions = vi.spyOn(adapterMachine, 'transition');
    const heard = (): unknown[] => {
      const events = transitions.mock.calls.map((c) => c[1]);
      transitions.mockClear();
      return events;
    };
    step(s);
    expect(heard()).toEqual([]);
    step(s);
    expect(heard()).toEqual([{ type: 'COUNTS', acquired: 4, started: 4, ended: 0 }]);
    expect(step(s)!.events.every((e) => e.finish !== null)).toBe(true);
    expect(heard()).toEqual([]);
    expect(s.adapterDetails().find((d) => d.name === 'A')).toMatchObject({ refcount: 0, running: 0 });
    expect(heard()).toEqual([{ type: 'COUNTS', acquired: 0, started: 0, ended: 4 }]);
  });

  test('requests ending while the machine has newer ones to hear of are one transition', () => {
    const s = fourHeard();
    for (let i = 0; i < 3; i++) s.submit(seq(`new${i}`, { lora: 'A', maxNewTokens: 1 }));
    // One of the four old ones ends: the machine heard of enough users, the three stay pending.
    const transitions = vi.spyOn(adapterMachine, 'transition');
    s.abort('old1');
    expect(transitions.mock.calls.map((c) => c[1])).toEqual([{ type: 'RELEASE', running: false }]);
    expect(s.adapterDetails().find((d) => d.name === 'A')).toMatchObject({ refcount: 6, running: 0 });
  });
});

describe('placement', () => {
  test('requests arriving while no wanted adapter can move do not walk it again, and the adapter still gets its slot', () => {
    // Two slots, both held by running adapters; C is read and waits for one.
    const s = newScheduler({ maxLorasPerBatch: 2, maxRunningRequests: 8, numBlocks: 256 });
    for (const name of ['A', 'B', 'C']) s.addAdapter({ name, path: `/${name}`, pinned: false });
    s.submit(seq('a0', { lora: 'A', maxNewTokens: 8 }));
    s.submit(seq('b0', { lora: 'B', maxNewTokens: 8 }));
    serveLoader(s);
    step(s);
    s.submit(seq('c0', { lora: 'C' }));
    serveLoader(s);
    step(s);
    // The step let a machine hear its requests: the next walk looks again, and finds nothing to do.
    s.submit(seq('c1', { lora: 'C' }));
    const walks = vi.spyOn(AdapterIndex.prototype, 'wantedInResidency');
    // More requests for the adapter that waits change nothing placement reads.
    for (let i = 1; i <= 12; i++) s.submit(seq(`x${i}`, { lora: 'C' }));
    expect(walks).not.toHaveBeenCalled();
    // A newly wanted adapter changes demand's order: one walk.
    s.submit(seq('a1', { lora: 'A' }));
    s.submit(seq('a2', { lora: 'A' }));
    expect(walks.mock.calls).toEqual([['registered'], ['cpuLoaded']]);
    walks.mockRestore();
    const { out } = runAll(s);
    expect([...out.keys()].sort()).toEqual(['a0', 'a1', 'a2', 'b0', 'c0', 'c1', ...Array.from({ length: 12 }, (_, i) => `x${i + 1}`)].sort());
    for (const r of out.values()) expect(r.finish).not.toBeNull();
  });
});

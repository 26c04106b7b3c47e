// Property test of the scheduler's adapter handling: random sequences of adapter loads, unloads
// and pins, request submits and aborts, steps (scheduled and completed apart, so the loader may
// answer in between), and loader successes, failures and restarts, against a small reference
// model of what must hold:
// - the scheduler accepts and refuses exactly what the model says (names, pins, refusals), and
//   its loaded set is the model's: SGLang's, at most --max-loaded-loras names, the least recently
//   used unpinned one evicted past it, and every name once loaded servable again;
// - no slot is shared, and a step only uses the slot its adapter holds; in a pool cut into slots
//   of rank 8, each adapter holds the run of slots its rank needs, from a multiple of its length;
// - pinned adapters, and adapters a running request uses, are never evicted (and adapters move
//   between slots only while no request runs on them);
// - each adapter's refcount is the number of its live requests (and of running requests aborted
//   while a step in flight has their rows, until that step is done), and returns to zero;
// - once the loader answers, every waiting request for an adapter that loaded runs to its end,
//   and every unload completes.
// The loader is a fake that runs its commands in order, as the real one does, and fails a copy
// of an adapter it holds no CPU copy of.
import fc from 'fast-check';
import { describe, expect, test } from 'vitest';
import {
  Scheduler,
  type AdapterTransition,
  type LoaderCommand,
  type SchedulerOptions,
  type StepBatch,
  type TokenEvent,
} from '../src/scheduler/index.js';
import type { Sequence } from '../src/scheduler/sequence.js';
import { loraSlotSpan } from '../src/engine/lora-slots.js';
import { fakeResult, options, seq } from './scheduler-harness.js';

const NAMES = ['A', 'B', 'C', 'D'] as const;
type Name = (typeof NAMES)[number];

type Action =
  | { kind: 'load'; name: Name; pinned: boolean }
  | { kind: 'unload'; name: Name }
  | { kind: 'submit'; lora: Name | null; prompt: number; maxNewTokens: number }
  | { kind: 'abort'; pick: number }
  | { kind: 'schedule' }
  | { kind: 'complete' }
  | { kind: 'step' }
  | { kind: 'loader'; fail: boolean }
  | { kind: 'loaderAll' }
  | { kind: 'loaderRestart' };

const name = fc.constantFrom(...NAMES);
const action: fc.Arbitrary<Action> = fc.oneof(
  { arbitrary: fc.record({ kind: fc.constant('load' as const), name, pinned: fc.boolean() }), weight: 3 },
  { arbitrary: fc.record({ kind: fc.constant('unload' as const), name }), weight: 1 },
  {
    arbitrary: fc.record({
      kind: fc.constant('submit' as const),
      lora: fc.option(name, { nil: null, freq: 5 }),
      prompt: fc.integer({ min: 1, max: 12 }),
      maxNewTokens: fc.integer({ min: 1, max: 6 }),
    }),
    weight: 8,
  },
  { arbitrary: fc.record({ kind: fc.constant('abort' as const), pick: fc.nat() }), weight: 1 },
  { arbitrary: fc.constant({ kind: 'schedule' as const }), weight: 2 },
  { arbitrary: fc.constant({ kind: 'complete' as const }), weight: 2 },
  { arbitrary: fc.constant({ kind: 'step' as const }), weight: 5 },
  { arbitrary: fc.record({ kind: fc.constant('loader' as const), fail: fc.boolean() }), weight: 3 },
  { arbitrary: fc.constant({ kind: 'loaderAll' as const }), weight: 3 },
  { arbitrary: fc.constant({ kind: 'loaderRestart' as const }), weight: 1 },
);

const config: fc.Arbitrary<Partial<SchedulerOptions>> = fc
  .record({
    maxLorasPerBatch: fc.integer({ min: 2, max: 3 }),
    extraSlots: fc.integer({ min: 0, max: 2 }),
    // The CPU budget and the loaded set: none, as many as the slots, or one more.
    limitCpu: fc.constantFrom(null, 0, 1),
    evictionPolicy: fc.constantFrom('lru' as const, 'fifo' as const),
    overlapLoading: fc.boolean(),
    maxRunningRequests: fc.integer({ min: 1, max: 3 }),
    // Never, or after a few steps of waiting for a place: running requests give theirs up.
    maxPlaceWaitSteps: fc.constantFrom(0, 1, 3),
    // One slot an adapter, or a pool of max rank 32 cut into slots of rank 8 (lora-slots.ts), where
    // the adapters' ranks (CUT_RANKS) take one to four slots.
    cut: fc.boolean(),
  })
  .map(({ extraSlots, limitCpu, cut, ...o }) => ({
    ...o,
    gpuSlots: (o.maxLorasPerBatch + extraSlots) * (cut ? 4 : 1),
    ...(cut ? { maxLoraRank: 32, loraSlotRank: 8 } : {}),
    maxLoadedLoras: limitCpu === null ? null : o.maxLorasPerBatch + extraSlots + limitCpu,
    // Small enough that requests are preempted.
    blockSize: 4,
    numBlocks: 12,
    chunkedPrefillSize: 16,
  }));

/** The adapters' ranks in a pool cut into slots of rank 8 (8 everywhere else): runs of 1, 2, 4 and 2 slots. */
const CUT_RANKS: Record<Name, number> = { A: 8, B: 16, C: 32, D: 12 };

/** Runs commands in order; a copy fails when it holds no CPU copy of the adapter, as the real loader's does. */
class FakeLoader {
  private queue: LoaderCommand[] = [];
  private readonly cpu = new Set<string>();
  constructor(
    private readonly s: Scheduler,
    private readonly cut: boolean,
  ) {}

  get idle(): boolean {
    this.queue.push(...this.s.takeCommands());
    return this.queue.length === 0;
  }

  runNext(fail: boolean): void {
    this.queue.push(...this.s.takeCommands());
    const c = this.queue.shift();
    if (!c) return;
    if (c.kind === 'load-cpu') {
      if (fail) return this.s.onLoaderEvent({ kind: 'load-failed', name: c.name, error: 'disk read failed' });
      this.cpu.add(c.name);
      const rank = this.cut ? CUT_RANKS[c.name as Name] : 8;
      this.s.onLoaderEvent({ kind: 'cpu-loaded', name: c.name, rank, targetModules: ['q_proj'], bytes: 64 });
    } else if (c.kind === 'copy-to-slot') {
      if (fail || !this.cpu.has(c.name)) {
        return this.s.onLoaderEvent({ kind: 'load-failed', name: c.name, error: fail ? 'copy failed' : 'not in CPU memory' });
      }
      this.s.onLoaderEvent({ kind: 'slot-ready', name: c.name, slot: c.slot });
    } else if (c.kind === 'swap-slots') {
      // Inside the engines: no CPU copy needed. A failure leaves both slots empty.
      for (const [i, n] of c.names.entries()) {
        if (n === null) continue;
        if (fail) this.s.onLoaderEvent({ kind: 'move-failed', name: n, error: 'swap failed' });
        else this.s.onLoaderEvent({ kind: 'slot-ready', name: n, slot: c.slots[1 - i]! });
      }
    } else if (c.kind === 'drop-cpu') {
      this.cpu.delete(c.name);
    }
  }

  restart(): void {
    // Commands the old loader had not run, sent or not, are lost with it.
    this.s.takeCommands();
    this.queue = [];
    this.cpu.clear();
    this.s.loaderRestarted();
  }
}

interface ModelAdapter {
  pinned: boolean;
  unloading: boolean;
  failed: boolean;
}

/**
 * What clients see, as SGLang keeps it: the loaded set (least recently used first) and every name
 * once loaded with its pin, a load counting once its weights were read.
 */
class LoadedSetModel {
  readonly order: Name[] = [];
  readonly known = new Map<Name, boolean>();
  private readonly before = new Map<Name, boolean | null>();
  constructor(
    private readonly max: number | null,
    private readonly pinnedOf: (n: Name) => boolean,
  ) {}

  has(n: Name): boolean {
    return this.order.includes(n);
  }

  use(n: Name): void {
    this.leave(n);
    this.order.push(n);
    for (const other of [...this.order]) {
      if (this.max === null || this.order.length <= this.max) break;
      if (other !== n && !this.pinnedOf(other)) this.leave(other);
    }
  }

  leave(n: Name): void {
    const i = this.order.indexOf(n);
    if (i >= 0) this.order.splice(i, 1);
  }

  remember(n: Name, pinned: boolean): void {
    if (!this.before.has(n)) this.before.set(n, this.known.get(n) ?? null);
    this.known.set(n, pinned);
  }

  confirm(n: Name): void {
    this.before.delete(n);
  }

  failed(n: Name): void {
    this.leave(n);
    if (!this.before.has(n)) return;
    const prior = this.before.get(n)!;
    this.before.delete(n);
    if (prior === null) this.known.delete(n);
    else this.known.set(n, prior);
  }

  unloaded(n: Name): void {
    this.leave(n);
    this.before.delete(n);
  }
}

interface ModelRequest {
  lora: Name | null;
  finish: TokenEvent['finish'];
  /** The adapter failed while the request waited, so it was ended with the failure. */
  failedWith: string | null;
}

async function play(opts: Partial<SchedulerOptions>, actions: Action[]): Promise<void> {
  const o = options(opts);
  const s = new Scheduler(o);
  const loader = new FakeLoader(s, o.loraSlotRank !== undefined);
  const adapters = new Map<Name, ModelAdapter>();
  const requests = new Map<string, ModelRequest>();
  const unloads: Array<{ name: Name; done: boolean }> = [];
  const refusals: Array<Promise<void>> = [];
  let inFlight: { batch: StepBatch; seqIds: string[] } | null = null;
  // Running requests aborted while the step in flight has their rows: their adapter keeps them
  // as users until the step is done, so that its slot is not refilled under the step.
  const heldByStep: string[] = [];
  let nextId = 0;
  const running = (): Sequence[] => (s as unknown as { queues: { running: Sequence[] } }).queues.running;
  const loaded = new LoadedSetModel(o.maxLoadedLoras, (n) => adapters.get(n)?.pinned ?? false);
  const pinnedCount = (): number => [...adapters.values()].filter((x) => x.pinned).length;
  const users = (n: Name): number => [...requests.values()].filter((r) => r.lora === n && r.finish === null).length;
  const register = (n: Name, pinned: boolean): void => {
    adapters.set(n, { pinned, unloading: false, failed: false });
    loaded.use(n);
  };

  s.subscribe((t: AdapterTransition) => {
    const a = adapters.get(t.adapter as Name);
    if (t.from === 'loading' && t.to === 'cpuLoaded') loaded.confirm(t.adapter as Name);
    if (t.to === 'failed') loaded.failed(t.adapter as Name);
    // A pinned adapter may move to another slot, and leaves slots only when a move fails (both
    // slots are then empty) or it is unloaded.
    if (t.from === 'gpuResident.pinned') expect(['unloading', 'unloaded', 'moving'], `pinned ${t.adapter} left its slot`).toContain(t.to);
    if (t.from === 'moving' && t.to !== 'gpuResident.pinned' && t.to !== 'gpuResident.unpinned' && t.to !== 'unloading') {
      expect(/swap failed|restarted/.test(t.reason), `${t.adapter} left a move for ${t.to}: ${t.reason}`).toBe(true);
    }
    if (t.from === 'gpuResident.unpinned' && (t.to === 'cpuLoaded' || t.to === 'registered')) {
      expect(
        running().some((r) => r.init.lora === t.adapter),
        `${t.adapter} evicted while a request runs on it`,
      ).toBe(false);
    }
    if (t.to === 'moving') {
      expect(
        running().some((r) => r.init.lora === t.adapter),
        `${t.adapter} moved while a request runs on it`,
      ).toBe(false);
    }
    if (t.to === 'failed' && a) a.failed = true;
    // Its last request's end is reported after this, when the call that ended it returns.
    if (t.to === 'unloaded') adapters.delete(t.adapter as Name);
  });

  const record = (events: TokenEvent[]): void => {
    for (const e of events) {
      const r = requests.get(e.id);
      if (!r || e.finish === null) continue;
      expect(r.finish, `${e.id} finished twice`).toBeNull();
      r.finish = e.finish;
      if (e.finish.type === 'abort' && /failed to load/.test(e.finish.message)) r.failedWith = e.finish.message;
    }
  };

  const check = (): void => {
    const details = s.adapterDetails();
    expect(details.map((d) => d.name).sort()).toEqual([...adapters.keys()].sort());
    expect(
      details
        .filter((d) => d.loaded)
        .map((d) => d.name)
        .sort(),
      'the loaded set',
    ).toEqual([...loaded.order].sort());
    const taken = new Set<number>();
    for (const d of details) {
      if (d.slot === null) continue;
      const span = o.loraSlotRank === undefined ? 1 : loraSlotSpan(CUT_RANKS[d.name as Name], o.loraSlotRank);
      expect([d.slotSpan, d.slot % span], `${d.name}'s run`).toEqual([span, 0]);
      for (let k = d.slot; k < d.slot + span; k++) {
        expect(taken.has(k), `slot ${k} is shared`).toBe(false);
        taken.add(k);
        expect(k).toBeLessThan(o.gpuSlots!);
      }
    }
    for (const r of requests.values()) {
      if (r.finish === null && r.lora !== null) expect(adapters.has(r.lora), `${r.lora} unloaded while a request uses it`).toBe(true);
    }
    for (const d of details) {
      const live = [...requests.values()].filter((r) => r.lora === d.name && r.finish === null).length;
      const held = heldByStep.filter((id) => requests.get(id)!.lora === d.name).length;
      expect(d.refcount, `refcount of ${d.name}`).toBe(live + held);
      expect(d.running, `running count of ${d.name}`).toBe(running().filter((r) => r.init.lora === d.name).length + held);
    }
  };

  const apply = (a: Action): void => {
    switch (a.kind) {
      case 'load': {
        const m = adapters.get(a.name);
        const add = (): void => s.addAdapter({ name: a.name, path: `/adapters/${a.name}`, pinned: a.pinned });
        const canPin = !a.pinned || pinnedCount() < o.maxLorasPerBatch - 1;
        if (m && loaded.has(a.name) && !m.unloading) {
          expect(add).toThrow(`Failed to load LoRA adapter '${a.name}' because it is already loaded`);
        } else if (m && !m.failed && m.pinned === a.pinned) {
          // Evicted from the loaded set, or being unloaded: the same adapter comes back as it is.
          add();
          m.unloading = false;
          loaded.use(a.name);
        } else if (m && a.pinned && pinnedCount() - (m.pinned ? 1 : 0) >= o.maxLorasPerBatch - 1) {
          expect(add).toThrow(/to avoid starvation/);
        } else if (m) {
          // Another pin (or a failed load): the old adapter leaves first, and the load is refused
          // while it cannot leave at once.
          let threw: unknown = null;
          try {
            add();
          } catch (err) {
            threw = err;
          }
          if (adapters.has(a.name)) {
            expect(String(threw)).toMatch(/still unloading/);
            adapters.get(a.name)!.unloading = true;
          } else {
            expect(threw).toBeNull();
            register(a.name, a.pinned);
            loaded.remember(a.name, a.pinned);
          }
        } else if (!canPin) {
          expect(add).toThrow(/to avoid starvation/);
        } else {
          add();
          register(a.name, a.pinned);
          loaded.remember(a.name, a.pinned);
        }
        return;
      }
      case 'unload': {
        const m = adapters.get(a.name);
        const p = s.removeAdapter(a.name);
        if (!m || !(m.failed || m.unloading || loaded.has(a.name))) {
          refusals.push(expect(p).rejects.toThrow(`LoRA adapter '${a.name}' is not loaded`));
          return;
        }
        loaded.unloaded(a.name);
        m.unloading = true;
        const u = { name: a.name, done: false };
        unloads.push(u);
        void p.then(() => (u.done = true));
        return;
      }
      case 'submit': {
        const id = `r${nextId++}`;
        const submit = (): void => s.submit(seq(id, { lora: a.lora, prompt: a.prompt, maxNewTokens: a.maxNewTokens }));
        const accept = (): void => {
          requests.set(id, { lora: a.lora, finish: null, failedWith: null });
          submit();
        };
        if (a.lora === null) return accept();
        const m = adapters.get(a.lora);
        const known = loaded.known.get(a.lora);
        if (m && !m.failed) {
          if (m.unloading) {
            // Named again while its unload waits: it stays, unless the name now means another adapter.
            if (known !== m.pinned) return expect(submit).toThrow(`adapter "${a.lora}" is being unloaded`);
            m.unloading = false;
          }
          loaded.use(a.lora);
          return accept();
        }
        if (m?.failed && (known === undefined || users(a.lora) > 0)) return expect(submit).toThrow(`LoRA adapter '${a.lora}' failed to load`);
        // Not registered (or its reload failed): loaded again from where it was loaded, if it ever was.
        if (known === undefined) return expect(submit).toThrow(`Got LoRA adapter that has never been loaded: '${a.lora}'`);
        const pins = pinnedCount() - (m?.pinned ? 1 : 0);
        if (known && pins >= o.maxLorasPerBatch - 1) return expect(submit).toThrow(`Failed to implicitly load LoRA adapter '${a.lora}'`);
        if (m?.failed) {
          // The failed adapter leaves first; until the loader has reported the rest of its
          // failed load it cannot, and the request is refused with the failure.
          requests.set(id, { lora: a.lora, finish: null, failedWith: null });
          let threw: unknown = null;
          try {
            submit();
          } catch (err) {
            threw = err;
          }
          if (adapters.has(a.lora)) {
            requests.delete(id);
            return expect(String(threw)).toMatch(`LoRA adapter '${a.lora}' failed to load`);
          }
          expect(threw).toBeNull();
        } else {
          accept();
        }
        register(a.lora, known);
        return;
      }
      case 'abort': {
        const live = [...requests.entries()].filter(([, r]) => r.finish === null);
        if (live.length === 0) return;
        const [id] = live[a.pick % live.length]!;
        const wasRunning = running().some((r) => r.id === id);
        const ev = s.abort(id);
        if (wasRunning && inFlight?.seqIds.includes(id)) heldByStep.push(id);
        expect(ev, `abort of live request ${id}`).not.toBeNull();
        record([ev!]);
        return;
      }
      case 'schedule': {
        // A step scheduled again forgets the one in flight, and what it held is let go.
        heldByStep.length = 0;
        inFlight = s.schedule();
        if (!inFlight) return;
        const { batch, seqIds } = inFlight;
        const details = new Map(s.adapterDetails().map((d) => [d.name, d]));
        const loras = new Set<string | null>();
        seqIds.forEach((id, i) => {
          const lora = requests.get(id)!.lora;
          loras.add(lora);
          if (lora === null) return expect(batch.loraSlots[i]).toBe(-1);
          const d = details.get(lora)!;
          expect(d.state.startsWith('gpuResident') || d.state === 'unloading', `${lora} in a step while ${d.state}`).toBe(true);
          expect(batch.loraSlots[i], `slot of ${id}`).toBe(d.slot);
        });
        expect(loras.size).toBeLessThanOrEqual(o.maxLorasPerBatch);
        return;
      }
      case 'complete':
        if (inFlight) record(s.complete(fakeResult(inFlight.batch, inFlight.seqIds)));
        inFlight = null;
        heldByStep.length = 0;
        return;
      case 'step':
        apply({ kind: 'schedule' });
        apply({ kind: 'complete' });
        return;
      case 'loader':
        loader.runNext(a.fail);
        return;
      case 'loaderAll':
        while (!loader.idle) loader.runNext(false);
        return;
      case 'loaderRestart':
        loader.restart();
        return;
    }
  };

  for (const a of actions) {
    apply(a);
    record(s.takeEvents());
    check();
  }

  // The loader now answers every command: all work must drain.
  if (inFlight) apply({ kind: 'complete' });
  for (let i = 0; i < 500 && (s.hasWork() || !loader.idle); i++) {
    apply({ kind: 'loaderAll' });
    record(s.takeEvents());
    apply({ kind: 'step' });
    record(s.takeEvents());
    check();
  }
  expect(s.hasWork(), 'work left after the loader answered everything').toBe(false);
  for (const [id, r] of requests) {
    expect(r.finish, `${id} never finished`).not.toBeNull();
    if (r.finish!.type === 'abort' && !r.failedWith) expect(r.finish!.message).toMatch(/aborted/);
  }
  for (const d of s.adapterDetails()) expect([d.name, d.refcount, d.running]).toEqual([d.name, 0, 0]);
  await Promise.all(refusals);
  await new Promise((r) => setImmediate(r));
  for (const u of unloads) expect(u.done, `unload of ${u.name} completed`).toBe(true);
}

describe('adapter scheduling under random sequences', () => {
  test('matches the reference model', async () => {
    await fc.assert(
      fc.asyncProperty(config, fc.array(action, { minLength: 1, maxLength: 100, size: 'max' }), (opts, actions) => play(opts, actions)),
      { seed: 20261129, numRuns: 300, endOnFailure: false },
    );
  });
});

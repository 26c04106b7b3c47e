// --max-place-wait-steps: a request that waits that many steps for a place in the batch (every
// place held by other adapters) gets one. The running requests of one adapter give theirs up:
// they are preempted and queue again behind it, run again later and end with every token they
// would have had. One adapter at a time, a request at most once; pinned adapters keep theirs.
import { afterAll, beforeAll, describe, expect, it, test } from 'vitest';
import type { Scheduler, SchedulerOptions } from '../src/scheduler/index.js';
import type { LocalTroupeEngine } from '../src/troupe.js';
import { makeWorld, startEngine, type World } from './adapter-fixtures.js';
import { newScheduler, runAll, seq } from './scheduler-harness.js';

function withAdapters(names: string[], o: Partial<SchedulerOptions>, pinned: string[] = []): Scheduler {
  const s = newScheduler({ numBlocks: 256, ...o });
  for (const n of names) s.addAdapter({ name: n, path: `/${n}`, pinned: pinned.includes(n) });
  return s;
}

/** Per request: the steps it ran in. */
function stepsOf(steps: Array<{ ids: string[] }>): Map<string, number[]> {
  const at = new Map<string, number[]>();
  steps.forEach((st, i) => {
    for (const id of st.ids) at.set(id, [...(at.get(id) ?? []), i]);
  });
  return at;
}

/** How many times a request left the batch before it ended (a gap in the steps it ran in). */
const gaps = (steps: number[]): number => steps.slice(1).filter((k, i) => k !== steps[i]! + 1).length;

/** The counting model's tokens for a request that sampled n of them: 100, 101, ... */
const counted = (n: number): number[] => Array.from({ length: n }, (_, i) => 100 + i);

describe('a bounded wait for a place', () => {
  // Both places are held by adapters with long outputs; x arrives in the second step.
  function scenario(maxPlaceWaitSteps: number, pinned: string[] = []) {
    const s = withAdapters(['A', 'B', 'X'], { maxLorasPerBatch: 2, maxPlaceWaitSteps }, pinned);
    s.submit(seq('a0', { lora: 'A', maxNewTokens: 40 }));
    s.submit(seq('b0', { lora: 'B', maxNewTokens: 30 }));
    const first = runAll(s, { maxSteps: 2 });
    s.submit(seq('x', { lora: 'X', maxNewTokens: 3 }));
    const rest = runAll(s);
    const steps = [...first.steps, ...rest.steps];
    const out = new Map([...first.out]);
    for (const [id, r] of rest.out)
      out.set(id, { tokens: [...(out.get(id)?.tokens ?? []), ...r.tokens], finish: r.finish ?? out.get(id)?.finish ?? null });
    return { at: stepsOf(steps), out };
  }

  test('without a bound, the request waits until a place frees', () => {
    const { at } = scenario(0);
    // b0 is B's only request: its place frees once its 30 tokens are done.
    expect(at.get('x')![0]).toBeGreaterThan(at.get('b0')!.at(-1)!);
    expect(gaps(at.get('a0')!)).toBe(0);
  });

  test('with a bound, the adapter holding its place longest gives it up, and its request runs again to the same end', () => {
    const { at, out } = scenario(4);
    const x = at.get('x')![0]!;
    // x waited about the bound (plus a step for its adapter's copy), not for b0's 30 tokens.
    expect(x).toBeLessThanOrEqual(2 + 4 + 2);
    expect(x).toBeLessThan(at.get('b0')!.at(-1)!);
    // A had the most tokens left of the two single-request adapters: a0 left the batch once and came back.
    expect(gaps(at.get('a0')!)).toBe(1);
    expect(gaps(at.get('b0')!)).toBe(0);
    // Nothing is lost: every request ends with the tokens it would have had alone.
    expect(out.get('a0')).toEqual({ tokens: counted(40), finish: { type: 'length', length: 40 } });
    expect(out.get('b0')).toEqual({ tokens: counted(30), finish: { type: 'length', length: 30 } });
    expect(out.get('x')).toEqual({ tokens: counted(3), finish: { type: 'length', length: 3 } });
  });

  test('a pinned adapter keeps its place: the other one gives its up', () => {
    const { at } = scenario(4, ['A']);
    expect(gaps(at.get('a0')!)).toBe(0);
    expect(gaps(at.get('b0')!)).toBe(1);
    expect(at.get('x')![0]).toBeLessThan(at.get('b0')!.at(-1)!);
  });

  test('one adapter is paused at a time, no request twice, and every request ends', () => {
    const names = ['A', 'B', 'C', 'X', 'Y', 'Z'];
    const s = withAdapters(names, { maxLorasPerBatch: 3, maxPlaceWaitSteps: 2 });
    s.submit(seq('a0', { lora: 'A', maxNewTokens: 30 }));
    s.submit(seq('b0', { lora: 'B', maxNewTokens: 30 }));
    s.submit(seq('c0', { lora: 'C', maxNewTokens: 30 }));
    runAll(s, { maxSteps: 1 });
    for (const n of ['X', 'Y', 'Z']) s.submit(seq(n.toLowerCase(), { lora: n, maxNewTokens: 25 }));
    const { steps, out } = runAll(s);
    const at = stepsOf(steps);
    for (const id of ['a0', 'b0', 'c0', 'x', 'y', 'z']) {
      expect(gaps(at.get(id)!), id).toBeLessThanOrEqual(1);
      expect(out.get(id)!.finish?.type, id).toBe('length');
    }
    // Pauses happened, and never two adapters' requests out at the same time.
    const paused = ['a0', 'b0', 'c0'].filter((id) => gaps(at.get(id)!) === 1);
    expect(paused.length).toBeGreaterThanOrEqual(1);
    const outSpan = (id: string): [number, number] => {
      const k = at.get(id)!;
      const i = k.findIndex((v, j) => j > 0 && v !== k[j - 1]! + 1);
      return [k[i - 1]!, k[i]!];
    };
    for (let i = 0; i < paused.length; i++) {
      for (let j = i + 1; j < paused.length; j++) {
        const [p0, p1] = outSpan(paused[i]!);
        const [q0, q1] = outSpan(paused[j]!);
        expect(p1 <= q0 || q1 <= p0, `${paused[i]} and ${paused[j]} were out together`).toBe(true);
      }
    }
  });
});

describe('--max-place-wait-steps 2 on the engine', () => {
  const NAMES = ['p0', 'p1', 'p2'];
  let world: World;
  let engine: LocalTroupeEngine;
  beforeAll(async () => {
    world = makeWorld('place-wait');
    engine = await startEngine(world, [
      '--lora-paths',
      ...NAMES.map((n, i) => `${n}=${world.adapter(n, { seed: 800 + i })}`),
      '--max-loras-per-batch',
      '2',
      '--max-place-wait-steps',
      '2',
    ]);
  });
  afterAll(async () => {
    await engine?.close();
    world?.cleanup();
  });

  // Token ids rather than text: the request reaches the scheduler without a tokenizer round trip.
  const greedy = (lora: string, maxNewTokens: number) =>
    engine.generate({ inputIds: [11, 12, 13, 14, 15], lora, sampling: { maxNewTokens, temperature: 0, ignoreEos: true } });

  it('gives a request that waited a place, and the paused requests their own outputs, recomputed', async () => {
    const alone = new Map<string, number[]>();
    for (const [n, len] of [
      ['p0', 64],
      ['p1', 48],
      ['p2', 4],
    ] as const)
      alone.set(n, (await greedy(n, len)).outputIds);
    // p0 and p1 hold both places with long outputs; p2 comes once both are running.
    const finished: string[] = [];
    const run = (name: string, len: number) =>
      greedy(name, len).then((o) => {
        finished.push(name);
        return o;
      });
    const firstTokens: Array<Promise<void>> = [];
    const streams = ['p0', 'p1'].map((name, i) => {
      let started!: () => void;
      firstTokens.push(new Promise<void>((r) => (started = r)));
      return (async () => {
        let ids: number[] = [];
        for await (const c of engine.stream({
          inputIds: [11, 12, 13, 14, 15],
          lora: name,
          sampling: { maxNewTokens: [64, 48][i]!, temperature: 0, ignoreEos: true },
        })) {
          started();
          ids = c.outputIds;
        }
        finished.push(name);
        return ids;
      })();
    });
    await Promise.all(firstTokens);
    const o2 = await run('p2', 4);
    const [o0, o1] = await Promise.all(streams);
    // Without the bound p2 would wait for p1's 48 tokens; it got a place from one of them instead.
    expect(finished[0]).toBe('p2');
    expect(o0).toEqual(alone.get('p0'));
    expect(o1).toEqual(alone.get('p1'));
    expect(o2.outputIds).toEqual(alone.get('p2'));
  });
});

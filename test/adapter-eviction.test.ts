// Eviction on the real engine with two pool slots: five adapters requested round-robin by ten
// concurrent clients all get the outputs they get alone, and lru and fifo evict exactly the
// adapters their policy names, as read from the published transitions. Requests are few and
// short so a busy two-core machine runs each test in seconds; two slots for five adapters
// evict all the same.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { AdapterTransition } from '../src/scheduler/index.js';
import type { LocalTroupeEngine } from '../src/troupe.js';
import { makeWorld, startEngine, type World } from './adapter-fixtures.js';

const ADAPTERS = ['r0', 'r1', 'r2', 'r3', 'r4'];
const CLIENTS = 10;
const REQUESTS_PER_CLIENT = 2;
const NEW_TOKENS = 4;

let world: World;
beforeAll(() => {
  world = makeWorld('eviction');
  ADAPTERS.forEach((name, i) => world.adapter(name, { rank: 4 + 4 * (i % 3), seed: 500 + i }));
});
afterAll(() => world?.cleanup());

const greedy = (engine: LocalTroupeEngine, text: string, lora: string | null, maxNewTokens = NEW_TOKENS): Promise<number[]> =>
  engine.generate({ text, lora, sampling: { maxNewTokens, temperature: 0, ignoreEos: true } }).then((o) => o.outputIds);

const evictions = (ts: AdapterTransition[]): string[] =>
  ts.filter((t) => t.from === 'gpuResident.unpinned' && t.to === 'cpuLoaded').map((t) => t.adapter);

describe.each(['lru', 'fifo'] as const)('--max-loras-per-batch 2, --lora-eviction-policy %s', (policy) => {
  let engine: LocalTroupeEngine;
  const transitions: AdapterTransition[] = [];
  beforeAll(async () => {
    engine = await startEngine(world, [
      '--lora-paths',
      ...ADAPTERS.map((n) => `${n}=${world.adapter(n)}`),
      '--max-loras-per-batch',
      '2',
      '--lora-eviction-policy',
      policy,
    ]);
    engine.onAdapterTransition((ts) => transitions.push(...ts));
  });
  afterAll(() => engine?.close());

  it('evicts the adapter the policy names', async () => {
    transitions.length = 0;
    // r0 and r1 fill the two slots (r0 first); r0 is then used again, so r1 is the least
    // recently used while r0 is the first loaded. Every request runs alone.
    for (const lora of ['r0', 'r1', 'r0', 'r2', 'r3', 'r0']) await greedy(engine, 'order', lora, 1);
    const expected = policy === 'lru' ? ['r1', 'r0', 'r2'] : ['r0', 'r1', 'r2'];
    expect(evictions(transitions)).toEqual(expected);
    const reasons = transitions.filter((t) => t.to === 'cpuLoaded' && t.from === 'gpuResident.unpinned').map((t) => t.reason);
    for (const r of reasons) expect(r).toContain(`(${policy})`);
  });

  it(`${CLIENTS} concurrent clients over ${ADAPTERS.length} adapters get the outputs each request gets alone`, async () => {
    // Clients c and c + 5 ask the same questions of the same adapters, so ten requests alone
    // give the expected outputs of all twenty; each step still mixes prompts and adapters.
    const jobs = Array.from({ length: CLIENTS }, (_, c) =>
      Array.from({ length: REQUESTS_PER_CLIENT }, (_, k) => ({ text: `question ${k}`, lora: ADAPTERS[(c + k) % ADAPTERS.length]! })),
    );
    const alone = new Map<string, number[]>();
    for (const job of jobs.flat()) {
      const key = `${job.lora}|${job.text}`;
      if (!alone.has(key)) alone.set(key, await greedy(engine, job.text, job.lora));
    }
    expect(alone.size).toBe(10);

    transitions.length = 0;
    const together = await Promise.all(
      jobs.map(async (list) => {
        const out: Array<{ key: string; ids: number[] }> = [];
        for (const job of list) out.push({ key: `${job.lora}|${job.text}`, ids: await greedy(engine, job.text, job.lora) });
        return out;
      }),
    );
    for (const { key, ids } of together.flat()) expect(ids, key).toEqual(alone.get(key));

    // Replay the published transitions: never more than two adapters hold or receive a slot,
    // and each eviction takes one that held a slot.
    const inSlot = new Set((await engine.adapters()).filter((a) => a.slot !== null).map((a) => a.name));
    for (const t of [...transitions].reverse()) {
      if (t.to === 'h2dInFlight') inSlot.delete(t.adapter);
      if (t.from === 'gpuResident.unpinned' && t.to === 'cpuLoaded') inSlot.add(t.adapter);
    }
    let most = inSlot.size;
    for (const t of transitions) {
      if (t.to === 'h2dInFlight') inSlot.add(t.adapter);
      if (t.from === 'gpuResident.unpinned' && t.to === 'cpuLoaded') {
        expect(inSlot.has(t.adapter)).toBe(true);
        inSlot.delete(t.adapter);
      }
      most = Math.max(most, inSlot.size);
    }
    expect(most).toBeLessThanOrEqual(2);
    expect(evictions(transitions).length).toBeGreaterThan(0);
    expect((await engine.adapters()).every((a) => a.error === null)).toBe(true);
  });
});

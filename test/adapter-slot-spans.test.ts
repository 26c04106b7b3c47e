// Adapters of ranks 8 to 32 sharing a CPU engine's pool cut into slots of rank 8: with two places
// of rank 32 (eight slots), five adapters come and go through runs of one, two and four slots, and
// every request gets the outputs it gets from a pool where all five stay resident.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { LocalTroupeEngine } from '../src/troupe.js';
import { makeWorld, startEngine, type World } from './adapter-fixtures.js';

const RANKS: Record<string, number> = { s8a: 8, s8b: 8, s16a: 16, s16b: 12, s32: 32 };
const NEW_TOKENS = 3;

let world: World;
beforeAll(() => {
  world = makeWorld('spans');
  Object.entries(RANKS).forEach(([name, rank], i) => world.adapter(name, { rank, seed: 700 + i }));
});
afterAll(() => world?.cleanup());

const greedy = (engine: LocalTroupeEngine, text: string, lora: string): Promise<number[]> =>
  engine.generate({ text, lora, sampling: { maxNewTokens: NEW_TOKENS, temperature: 0, ignoreEos: true } }).then((o) => o.outputIds);

const serve = (places: number): Promise<LocalTroupeEngine> =>
  startEngine(world, [
    '--lora-paths',
    ...Object.keys(RANKS).map((n) => `${n}=${world.adapter(n)}`),
    '--max-lora-rank',
    '32',
    '--max-loras-per-batch',
    '2',
    '--max-gpu-loras',
    String(places),
  ]);

describe('a pool cut into slots of rank 8', () => {
  const jobs = Object.keys(RANKS).flatMap((lora, i) => [0, 1].map((k) => ({ lora, text: `span ${i} ${k}` })));
  const wanted = new Map<string, number[]>();

  beforeAll(async () => {
    // Five places of rank 32: every adapter keeps its slots.
    const roomy = await serve(5);
    try {
      for (const job of jobs) wanted.set(`${job.lora}|${job.text}`, await greedy(roomy, job.text, job.lora));
    } finally {
      await roomy.close();
    }
  });

  it('runs every adapter at its span and gives each request the outputs of a pool that holds them all', async () => {
    const engine = await serve(2);
    try {
      const seen = new Map<string, { slot: number; span: number }>();
      const note = async (): Promise<void> => {
        const state = await engine.adapterDetails();
        const taken = new Set<number>();
        for (const a of state) {
          if (a.slot === null) continue;
          seen.set(a.name, { slot: a.slot, span: a.slotSpan });
          for (let k = a.slot; k < a.slot + a.slotSpan; k++) {
            expect(taken.has(k), `slot ${k}`).toBe(false);
            taken.add(k);
          }
          expect(Math.max(...taken)).toBeLessThan(8);
        }
      };
      // One at a time, in an order that makes the larger adapters evict runs of smaller ones.
      for (const job of jobs) {
        expect(await greedy(engine, job.text, job.lora), `${job.lora}|${job.text}`).toEqual(wanted.get(`${job.lora}|${job.text}`));
        await note();
      }
      expect(Object.fromEntries([...seen].map(([name, at]) => [name, at.span]))).toEqual({ s8a: 1, s8b: 1, s16a: 2, s16b: 2, s32: 4 });
      for (const [name, at] of seen) expect(at.slot % at.span, name).toBe(0);
      // Then all at once, two adapters a batch.
      const together = await Promise.all(jobs.map((job) => greedy(engine, job.text, job.lora)));
      together.forEach((ids, i) => expect(ids, `${jobs[i]!.lora}|${jobs[i]!.text}`).toEqual(wanted.get(`${jobs[i]!.lora}|${jobs[i]!.text}`)));
      await note();
      expect((await engine.adapters()).every((a) => a.error === null)).toBe(true);
    } finally {
      await engine.close();
    }
  });
});

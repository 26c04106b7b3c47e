// Overlap scheduling: the next step is scheduled and sent while the engine runs the current
// one, its decode inputs filled in by the executor from the current step's result. Whatever the
// steps look like, every request must get exactly what it gets with one step at a time: the
// same tokens, logprobs and finish reasons, through greedy and seeded sampling, penalties (whose
// history includes the fed token), stop tokens and stop strings that end a sequence while its
// next row is already on its way, chunked prefill, adapters, and preemption for KV room.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { GenerateInput, GenerateOutput } from '../src/api.js';
import { DEMO_MODEL, makeDemo } from '../src/model/demo.js';
import type { LocalTroupeEngine } from '../src/troupe.js';
import { demoEngine } from './engine-fixtures.js';

let dir = '';
let serial: LocalTroupeEngine;
let overlap: LocalTroupeEngine;

// Small enough that the workload below preempts requests for KV room.
const start = (extra: string[]): Promise<LocalTroupeEngine> =>
  demoEngine(dir, ['--max-total-tokens', '256', '--chunked-prefill-size', '32', ...extra]);

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'troupe-overlap-'));
  makeDemo(dir);
  [serial, overlap] = await Promise.all([start(['--disable-overlap-schedule']), start([])]);
}, 120_000);

afterAll(async () => {
  await Promise.all([serial?.close(), overlap?.close()]);
  if (dir) rmSync(dir, { recursive: true, force: true });
});

/** Prompt ids from a seeded LCG, inside the vocabulary. */
function promptIds(seed: number, length: number): number[] {
  let x = seed;
  return Array.from({ length }, () => 1 + ((x = (x * 1103515245 + 12345) % 2147483648) % (DEMO_MODEL.vocab_size - 1)));
}

/** Twelve requests over the base model and both adapters; `stops` gives stop token ids or strings by request. */
function workload(stops: Map<number, Partial<GenerateInput['sampling']>> = new Map()): GenerateInput[] {
  return Array.from({ length: 12 }, (_, i) => {
    const kind = i % 4;
    const sampling =
      kind === 0
        ? { temperature: 0, maxNewTokens: 6 + i, ignoreEos: true }
        : kind === 1
          ? { temperature: 0.9, topP: 0.95, seed: 1000 + i, maxNewTokens: 20, ignoreEos: true }
          : kind === 2
            ? // Greedy, with penalties strong enough that the last token's absence from the history would show.
              { temperature: 0, frequencyPenalty: 2, presencePenalty: 2, repetitionPenalty: 2, maxNewTokens: 16, ignoreEos: true }
            : { temperature: 0, maxNewTokens: 24, ignoreEos: true };
    return {
      inputIds: promptIds(i + 1, 5 + ((7 * i) % 40)),
      lora: [null, 'a', 'b'][i % 3]!,
      returnLogprob: true,
      sampling: { ...sampling, ...stops.get(i) },
    };
  });
}

const essence = (o: GenerateOutput) => ({
  ids: o.outputIds,
  finish: o.finishReason,
  logprobs: o.outputTokenLogprobs?.map((l) => l[0]),
});

async function metric(engine: LocalTroupeEngine, name: string, label: string): Promise<number> {
  const text = await engine.metrics.registry.metrics();
  const line = text.split('\n').find((l) => l.startsWith(label === '' ? `${name} ` : `${name}{${label}}`));
  return line === undefined ? 0 : Number(line.split(' ').pop());
}

describe('overlap scheduling', () => {
  it('gives every request what one step at a time gives it', async () => {
    // Stops that end requests mid-way: a token each greedy request reaches, and a stop string
    // taken from a seeded request's text.
    const plain = await Promise.all(workload().map((r) => serial.generate(r)));
    const stops = new Map<number, Partial<GenerateInput['sampling']>>();
    for (const i of [3, 7, 11]) stops.set(i, { stopTokenIds: [plain[i]!.outputIds[4 + (i % 5)]!] });
    const text = plain[5]!.text;
    stops.set(5, { stop: [text.slice(Math.floor(text.length / 2), Math.floor(text.length / 2) + 2)] });

    const aheadBefore = await metric(overlap, 'troupe_steps_total', 'scheduled="ahead"');
    const expected = await Promise.all(workload(stops).map((r) => serial.generate(r)));
    const got = await Promise.all(workload(stops).map((r) => overlap.generate(r)));
    expect(got.map(essence)).toEqual(expected.map(essence));

    // The stops did end requests early, so rows past a sequence's end were discarded.
    for (const i of [3, 7, 11]) expect(got[i]!.finishReason.type).toBe('stop');
    expect(got[5]!.finishReason).toMatchObject({ type: 'stop' });
    // The paths this test is about were taken.
    expect(await metric(overlap, 'troupe_steps_total', 'scheduled="ahead"')).toBeGreaterThan(aheadBefore);
    expect(await metric(overlap, 'troupe_requests_preempted_total', 'reason="kv_cache"')).toBeGreaterThan(0);
    expect(await metric(serial, 'troupe_steps_total', 'scheduled="ahead"')).toBe(0);
    expect(await metric(serial, 'troupe_steps_total', 'scheduled="after"')).toBeGreaterThan(0);
    // The executor times its steps; their sum is what the engine was busy for.
    expect(await metric(overlap, 'troupe_engine_step_seconds_total', '')).toBeGreaterThan(0);
    // Decode steps are among them, and every step sent ahead had the idle time before it timed.
    const decodeSteps = await metric(overlap, 'troupe_engine_decode_steps_total', '');
    expect(decodeSteps).toBeGreaterThan(0);
    expect(await metric(overlap, 'troupe_engine_decode_step_seconds_total', '')).toBeGreaterThan(0);
    // The histogram holds the same steps, each in a bucket.
    expect(await metric(overlap, 'troupe_engine_decode_step_duration_seconds_count', '')).toBe(decodeSteps);
    expect(await metric(overlap, 'troupe_engine_decode_step_duration_seconds_bucket', 'le="+Inf"')).toBe(decodeSteps);
    expect(await metric(overlap, 'troupe_engine_decode_step_seconds_total', '')).toBeLessThanOrEqual(
      await metric(overlap, 'troupe_engine_step_seconds_total', ''),
    );
    expect(await metric(overlap, 'troupe_engine_waits_total', '')).toBe(await metric(overlap, 'troupe_steps_total', 'scheduled="ahead"'));
    expect(await metric(serial, 'troupe_engine_waits_total', '')).toBe(0);
  }, 120_000);

  it('aborts a request mid-stream while its next step is in flight, and serves the others', async () => {
    const long: GenerateInput = { inputIds: promptIds(99, 12), rid: 'long', sampling: { temperature: 0, maxNewTokens: 200, ignoreEos: true } };
    const other: GenerateInput = { inputIds: promptIds(98, 9), lora: 'b', sampling: { temperature: 0, maxNewTokens: 30, ignoreEos: true } };
    const alone = await serial.generate(other);
    let chunks = 0;
    let finish: unknown = null;
    const streamed = (async () => {
      for await (const c of overlap.stream(long)) {
        if (++chunks === 5) overlap.abort('long');
        finish = c.finishReason;
      }
    })();
    const beside = await overlap.generate(other);
    await streamed;
    expect(finish).toMatchObject({ type: 'abort' });
    expect(beside.outputIds).toEqual(alone.outputIds);
    // Every block comes back once nothing runs.
    let stats = await overlap.stats();
    while (stats.running + stats.waiting > 0) stats = await overlap.stats();
    expect(stats.freeBlocks).toBe(stats.totalBlocks);
  }, 120_000);
});

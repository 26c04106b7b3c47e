// The scheduler's side of the engine's sequence slots: each running sequence holds a slot, sends
// its values and blocks (and a penalized sequence its prompt and generated tokens) in the first
// step after taking it, and afterwards names only the slot and the blocks it gains. A model of the engine's table here stores what
// the steps send and appends each sampled token to a penalized slot, as native/sequence_table.cc
// does; through overlap scheduling, preemption for KV room and an abort, every live row must
// find its own request's values, exactly the tokens that request has, and blocks that cover its
// context and that no other live row holds.
import { describe, expect, it } from 'vitest';
import { feedInputs } from '../src/actors/feed.js';
import type { StepBatch, StepResult } from '../src/engine/types.js';
import { Scheduler } from '../src/scheduler/index.js';
import { fakeResult, options, sampling, seq } from './scheduler-harness.js';

interface Entry {
  temperature: number;
  repetitionPenalty: number;
  seed: number;
  promptLen: number;
  tokens: number[] | null;
  blocks: number[];
}

/** What the engine keeps: the batch's update is stored before its rows read their slots. */
class TableModel {
  readonly slots = new Map<number, Entry>();
  readonly filled: number[] = [];

  /** The entries the rows read (copies, as they were when the step sampled). */
  run(batch: StepBatch, result: StepResult): Entry[] {
    const u = batch.seqUpdate;
    if (u) {
      for (let k = 0; k < u.slots.length; k++) {
        const penalized = u.repetitionPenalty[k] !== 1;
        this.slots.set(u.slots[k]!, {
          temperature: u.temperature[k]!,
          repetitionPenalty: u.repetitionPenalty[k]!,
          seed: u.seeds[k]!,
          promptLen: u.penaltyPromptLens[k]!,
          tokens: penalized ? Array.from(u.penaltyTokens.subarray(u.penaltyStarts[k]!, u.penaltyStarts[k + 1]!)) : null,
          blocks: [],
        });
        this.filled.push(u.slots[k]!);
      }
    }
    const starts = batch.blockAppendStarts!;
    const rows = Array.from(batch.seqSlots!, (slot, i) => {
      const e = this.slots.get(slot);
      if (e === undefined) throw new Error(`slot ${slot} holds nothing`);
      e.blocks.push(...batch.blockAppends!.subarray(starts[i]!, starts[i + 1]!));
      return { ...e, tokens: e.tokens && [...e.tokens], blocks: [...e.blocks] };
    });
    batch.seqSlots!.forEach((slot, i) => {
      const e = this.slots.get(slot)!;
      if (e.tokens !== null && batch.sample[i] && result.tokens[i]! >= 0) e.tokens.push(result.tokens[i]!);
    });
    return rows;
  }
}

describe('sampling slots in the scheduler', () => {
  it('give every live row its own values and history through overlap, preemption and an abort', () => {
    // 12 blocks of 4 tokens cannot hold these six requests at once: some are preempted and recomputed.
    const s = new Scheduler(options({ numBlocks: 12, maxRunningRequests: 8 }));
    const reqs = Array.from({ length: 6 }, (_, i) => ({
      id: `r${i}`,
      prompt: Array.from({ length: 5 + i }, (_, k) => 10 + 7 * i + k),
      temperature: i / 10,
      repetitionPenalty: i % 2 ? 1.3 : 1,
      seed: 100 + i,
    }));
    for (const r of reqs) {
      s.submit(
        seq(r.id, {
          promptIds: r.prompt,
          seed: r.seed,
          sampling: sampling({ maxNewTokens: 10, temperature: r.temperature, repetitionPenalty: r.repetitionPenalty, ignoreEos: true }),
        }),
      );
    }
    const byId = new Map(reqs.map((r) => [r.id, r]));
    const generated = new Map(reqs.map((r) => [r.id, [] as number[]]));
    const ended = new Set<string>();
    const table = new TableModel();
    let checked = 0;
    let flight = s.schedule();
    for (let k = 0; flight !== null && k < 200; k++) {
      const ahead = s.scheduleAhead();
      const result = fakeResult(flight.batch, flight.seqIds);
      const rows = table.run(flight.batch, result);
      const owner = new Map<number, string>();
      flight.seqIds.forEach((id, i) => {
        if (ended.has(id)) return; // a row the step in flight made stale
        // Its blocks cover its context, and no other live row's blocks are among them.
        expect(rows[i]!.blocks.length, id).toBe(Math.ceil(flight!.batch.contextLens[i]! / 4));
        for (const b of rows[i]!.blocks) {
          expect(owner.get(b), `block ${b} of ${id}`).toBeUndefined();
          owner.set(b, id);
        }
        const r = byId.get(id)!;
        const e = rows[i]!;
        expect([e.temperature, e.seed], id).toEqual([Math.fround(r.temperature), r.seed]);
        if (r.repetitionPenalty !== 1) {
          expect(e.tokens, id).toEqual([...r.prompt, ...generated.get(id)!]);
          expect(e.promptLen, id).toBe(r.prompt.length);
        } else expect(e.tokens, id).toBeNull();
        checked++;
      });
      for (const ev of s.complete(result)) {
        if (ev.token >= 0) generated.get(ev.id)!.push(ev.token);
        if (ev.finish) ended.add(ev.id);
      }
      if (k === 6) {
        s.abort('r2');
        ended.add('r2');
      }
      if (ahead) feedInputs(ahead.batch, result.tokens);
      flight = ahead ?? s.schedule();
    }
    expect(flight).toBeNull();
    expect(ended.size).toBe(6);
    expect(s.load().preempted.cache).toBeGreaterThan(0);
    expect(checked).toBeGreaterThan(40);
    // Slots are reused: never more of them than requests ran at once, and re-filled after preemption.
    expect(Math.max(...table.slots.keys())).toBeLessThan(8);
    expect(table.filled.length).toBeGreaterThan(6);
  });
});

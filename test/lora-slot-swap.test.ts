// swapLoraSlots: two pool slots exchange their adapters (one may be empty) inside the engine, so
// the scheduler can move an adapter a batch wants into a low slot without copying it again from
// host memory. Runs on the CPU backend; test/gpu/adapter-load.test.ts runs the same on CUDA.
import { describe, expect, it } from 'vitest';
import { swapSlots } from '../src/actors/ranks.js';
import { SMALL_MODEL, addon, drive, loadSlot, makeBatch, prompt, smallWorld, type DriveRequest } from './engine-fixtures.js';

const VOCAB = SMALL_MODEL.vocab_size;
const world = smallWorld('slot-swap', 61, [71, 72]);
const { ckpt, adapters } = world;
const engine = (slots = 3): number => world.engine({ loraSlots: slots, maxLoraRank: 8 });
/** Two requests, on the slots given (adapter 0's and adapter 1's), and one of the base model. */
const requests = (slotOf0: number, slotOf1: number): DriveRequest[] => [
  { prompt: prompt(9, 1), slot: slotOf0, blocks: [0, 1, 2, 3], decodes: 2 },
  { prompt: prompt(7, 2), slot: slotOf1, blocks: [4, 5, 6, 7], decodes: 2 },
  { prompt: prompt(5, 3), blocks: [8, 9, 10, 11], decodes: 2 },
];

const reference = engine();
adapters.forEach((dir, i) => loadSlot(reference, i, dir, ckpt));
const want = drive(reference, requests(0, 1), VOCAB);

describe('swapLoraSlots', () => {
  it('moves two adapters, and one into an empty slot, with the results they gave where they were', async () => {
    const h = engine();
    adapters.forEach((dir, i) => loadSlot(h, i, dir, ckpt));
    await addon.swapLoraSlots(h, 0, 1);
    expect(drive(h, requests(1, 0), VOCAB)).toEqual(want);
    // Slot 2 was empty: adapter 1 (now in slot 0) goes there and slot 0 is left empty.
    await addon.swapLoraSlots(h, 2, 0);
    expect(drive(h, requests(1, 2), VOCAB)).toEqual(want);
    const onEmpty = makeBatch([{ tokens: prompt(3, 4), cached: 0, blocks: [12], slot: 0 }]);
    expect(() => addon.step(h, onEmpty)).toThrow(/LoRA slot 0 holds no adapter/);
    // The adapters differ, so the moves above were seen.
    expect(drive(h, requests(2, 1), VOCAB)).not.toEqual(want);
  });

  it('refuses a slot outside the pool, one slot twice, and a missing argument, naming the problem', async () => {
    const h = engine();
    await expect(addon.swapLoraSlots(h, 0, 3)).rejects.toThrow('swapLoraSlots: slot 3 is outside [0, 3)');
    await expect(addon.swapLoraSlots(h, 1, 1)).rejects.toThrow('swapLoraSlots: both slots are 1');
    expect(() => (addon.swapLoraSlots as unknown as (h: number, a: number) => unknown)(h, 0)).toThrow(
      'swapLoraSlots(handle, a, b): expected 3 arguments',
    );
    expect(() => addon.swapLoraSlots(h, 0.5, 1)).toThrow('swapLoraSlots: slot must be an integer');
  });

  it('across ranks: every rank exchanges the slots', async () => {
    const ranks = [engine(), engine()];
    for (const h of ranks) adapters.forEach((dir, i) => loadSlot(h, i, dir, ckpt));
    await swapSlots(addon, ranks, 0, 1);
    for (const h of ranks) expect(drive(h, requests(1, 0), VOCAB)).toEqual(want);
  });

  it('across ranks: a rank that refuses leaves both slots empty on every rank, so the ranks agree', async () => {
    const whole = engine();
    const small = engine(1);
    adapters.forEach((dir, i) => loadSlot(whole, i, dir, ckpt));
    await expect(swapSlots(addon, [whole, small], 0, 1)).rejects.toThrow('swapLoraSlots: slot 1 is outside [0, 1)');
    for (const slot of [0, 1]) {
      const batch = makeBatch([{ tokens: prompt(3, 5), cached: 0, blocks: [0], slot }]);
      expect(() => addon.step(whole, batch)).toThrow(`LoRA slot ${slot} holds no adapter`);
    }
  });
});

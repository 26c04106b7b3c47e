// Filling a LoRA pool slot beside steps, on the CPU backend, with the slot table's test hooks
// instead of timing: a fill held after it has claimed slot 1 does not stop steps of the base model
// and of slot 0 (they return with the right logits), and a step that uses slot 1 waits for that
// fill and then sees the new adapter.
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';
import { afterAll, describe, expect, it, onTestFinished } from 'vitest';
import { ADDON_RELATIVE_PATH } from '../src/engine/native.js';
import { readAdapterHost } from '../src/model/adapter.js';
import { makeRandomAdapter, makeRandomCheckpoint } from '../src/model/demo.js';
import { packageRoot } from '../src/paths.js';
import { SMALL_MODEL, addon, createEngine, loadSlot, makeBatch, openCheckpoint, prompt, stepOnWorker, tempDir } from './engine-fixtures.js';

const tmp = tempDir('overlap');
makeRandomCheckpoint(join(tmp.dir, 'base'), SMALL_MODEL, 21, 'BF16');
const ckpt = openCheckpoint(join(tmp.dir, 'base'));
const adapters = ['a', 'b'].map((name, i) => {
  const dir = join(tmp.dir, name);
  makeRandomAdapter(
    dir,
    { rank: 8, alpha: 16, targetModules: ['q_proj', 'v_proj', 'down_proj'], seed: 30 + i, dtype: 'BF16', bStd: 0.2 },
    SMALL_MODEL,
  );
  return dir;
});
const handles: number[] = [];
afterAll(() => {
  for (const h of handles) addon.destroyEngine(h);
  tmp.cleanup();
});

function engine(): number {
  const h = createEngine(ckpt, { loraSlots: 2, maxLoraRank: 8 });
  handles.push(h);
  return h;
}

const seq = (i: number, slot: number): Parameters<typeof makeBatch>[0][number] => ({
  tokens: prompt(6, 50 + i),
  cached: 0,
  blocks: [i * 2, i * 2 + 1],
  slot,
});
const otherSlots = makeBatch([seq(0, -1), seq(1, 0), seq(2, -1)], { returnLogits: true });
const heldSlot = makeBatch([seq(3, 1), seq(4, -1)], { returnLogits: true });

describe('filling a slot beside steps (CPU backend)', () => {
  it('runs steps that do not use the slot during its fill, and holds one that does until the fill ends', async () => {
    // The reference: slot 0 = a, slot 1 = b, loaded before any step.
    const ref = engine();
    loadSlot(ref, 0, adapters[0]!, ckpt);
    loadSlot(ref, 1, adapters[1]!, ckpt);
    const wantOther = addon.step(ref, otherSlots);
    const wantHeld = addon.step(ref, heldSlot);

    const h = engine();
    const { host } = await readAdapterHost(addon, adapters[0]!, ckpt.config, { pageLocked: false });
    const b = await readAdapterHost(addon, adapters[1]!, ckpt.config, { pageLocked: false });
    await addon.fillLoraSlot(h, 0, host.handle);
    addon.holdLoraSlotWrites(h, 1);
    onTestFinished(() => addon.releaseLoraSlotWrites(h, 1)); // also when an expectation fails
    let filled = false;
    const fill = addon.fillLoraSlot(h, 1, b.host.handle).then(() => {
      filled = true;
    });
    await addon.waitForLoraSlot(h, 1, 'write-held');

    // Steps run on worker threads, so a step that waited for the fill would time this test out
    // rather than block the thread that can release it.
    for (let i = 0; i < 3; i++) {
      const got = await stepOnWorker(h, otherSlots).result;
      expect(got.logits).toEqual(wantOther.logits);
      expect(got.tokens).toEqual(wantOther.tokens);
    }
    expect(filled).toBe(false);

    const held = stepOnWorker(h, heldSlot);
    await addon.waitForLoraSlot(h, 1, 'step-waiting');
    expect(held.done()).toBe(false);
    expect(filled).toBe(false);
    addon.releaseLoraSlotWrites(h, 1);
    await fill;
    const got = await held.result;
    // It ran on the adapter the fill brought, not on an empty or half-written slot.
    expect(got.logits).toEqual(wantHeld.logits);
    expect(got.tokens).toEqual(wantHeld.tokens);
    addon.destroyHostAdapter(host.handle);
    addon.destroyHostAdapter(b.host.handle);
  });

  it('holds a clear of a slot the same way: steps on other slots go on, and the slot is empty after', async () => {
    const h = engine();
    loadSlot(h, 0, adapters[0]!, ckpt);
    loadSlot(h, 1, adapters[1]!, ckpt);
    const want = addon.step(h, otherSlots);
    addon.holdLoraSlotWrites(h, 1);
    onTestFinished(() => addon.releaseLoraSlotWrites(h, 1));
    // clearLoraSlot returns when the clear is done, so it runs on a worker while this thread steps.
    const code = `
      const { parentPort, workerData } = require('node:worker_threads');
      const addon = require(workerData.file);
      addon.clearLoraSlot(workerData.handle, 1);
      parentPort.postMessage('cleared');
    `;
    const worker = new Worker(code, { eval: true, workerData: { file: join(packageRoot(), ADDON_RELATIVE_PATH), handle: h } });
    const cleared = new Promise((resolve, reject) => {
      worker.once('message', resolve);
      worker.once('error', reject);
    });
    await addon.waitForLoraSlot(h, 1, 'write-held');
    expect((await stepOnWorker(h, otherSlots).result).logits).toEqual(want.logits);
    addon.releaseLoraSlotWrites(h, 1);
    await cleared;
    await worker.terminate();
    expect(() => addon.step(h, heldSlot)).toThrow(/slot 1 holds no adapter/);
  });

  it('names a slot outside the pool in the hooks', () => {
    const h = engine();
    expect(() => addon.holdLoraSlotWrites(h, 2)).toThrow(/holdLoraSlotWrites: slot 2 is outside \[0, 2\)/);
    expect(() => addon.waitForLoraSlot(h, -1, 'write-held')).toThrow(/slot -1 is outside \[0, 2\)/);
  });
});

// The native reader (readAdapter) splits a file into pieces that several threads read and check,
// and reuses the buffers of freed host copies. Here the tensors of a small adapter are spread over
// a 20 MB file (bytes between them all 0xFF, NaN in every dtype, never values), in an order
// unlike the tensor list's, so a read spans many pieces: every value must land where the JS
// reader puts it, in fresh and in reused buffers; a NaN at either end of any tensor, or in the
// last one, must be found; when several pieces hold one, the one lowest in the file is named,
// as a single reader going through the file in order would; and a buffer a fill still copies
// from must not be handed to another read.
import { closeSync, openSync, readFileSync, readSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it, onTestFinished } from 'vitest';
import type { AdapterFile, AdapterTensor, HostAdapter } from '../src/engine/types.js';
import { loadAdapterWeights, readAdapterHost, readAdapterLayout } from '../src/model/adapter.js';
import { SMALL_MODEL, addon, drive, prompt, smallWorld, type DriveRequest } from './engine-fixtures.js';

const VOCAB = SMALL_MODEL.vocab_size;
// Makes the first piece of the file several times longer to read than the next one, so while one
// thread reads it, another reads the next piece and finishes (and fails) first.
const LONG_GAP = 12_000_000;
const world = smallWorld('adapter-pieces', 41, [51, 52]);
const { ckpt, adapters } = world;
/**
 * The adapter's tensors copied into `file` in reverse order, 600-900 KB apart at offsets that are
 * 4 more than a multiple of 64, and LONG_GAP more after the first; the reader's spec for it,
 * in the tensor list's order.
 */
function spread(dir: string, file: string): AdapterFile {
  const { file: src } = readAdapterLayout(dir, ckpt.config);
  const data = readFileSync(src.file);
  const offsets = new Map<number, number>();
  let at = 4096 + 4;
  for (let i = src.tensors.length - 1; i >= 0; i--) {
    offsets.set(i, at);
    at += src.tensors[i]!.nbytes + 600_000 + ((i * 37_003) % 300_000) + (offsets.size === 1 ? LONG_GAP : 0);
    at = Math.ceil(at / 64) * 64 + 4;
  }
  const out = Buffer.alloc(at, 0xff);
  src.tensors.forEach((t, i) => data.copy(out, offsets.get(i)!, t.offset, t.offset + t.nbytes));
  writeFileSync(file, out);
  return { ...src, file, tensors: src.tensors.map((t, i) => ({ ...t, offset: offsets.get(i)! })) };
}
const files = adapters.map((dir, i) => spread(dir, join(world.dir, `spread-${i}.bin`)));
const layout = files[0]!;
const inFileOrder = [...layout.tensors].sort((a, b) => a.offset - b.offset);

const engine = (): number => world.engine({ loraSlots: 2, maxLoraRank: 8 });
const REQS: DriveRequest[] = [
  { prompt: prompt(9, 1), slot: 0, blocks: [0, 1, 2, 3], decodes: 2 },
  { prompt: prompt(7, 2), slot: 1, blocks: [4, 5, 6, 7], decodes: 2 },
];
// Slot i holds adapter i as the JS reader reads it from the adapter's own file.
const reference = engine();
adapters.forEach((dir, i) => addon.loadLoraSlot(reference, i, loadAdapterWeights(dir, ckpt.config).weights));
const want = drive(reference, REQS, VOCAB);

/** Fills slots 0 and 1 of a new engine from the host copies and runs REQS on it. */
async function driveHosts(hosts: HostAdapter[]): Promise<ReturnType<typeof drive>> {
  const h = engine();
  for (const [i, host] of hosts.entries()) await addon.fillLoraSlot(h, i, host.handle);
  return drive(h, REQS, VOCAB);
}

/** Writes bf16 NaN over element `index` of each tensor named; returns what undoes it. */
function poison(places: { tensor: string; index: number }[]): () => void {
  const fd = openSync(layout.file, 'r+');
  const undo: [Buffer, number][] = [];
  for (const { tensor, index } of places) {
    const at = layout.tensors.find((t) => t.name === tensor)!.offset + 2 * index;
    const was = Buffer.alloc(2);
    readSync(fd, was, 0, 2, at);
    undo.unshift([was, at]);
    writeSync(fd, Buffer.from([0xc0, 0x7f]), 0, 2, at);
  }
  closeSync(fd);
  return () => {
    const fd = openSync(layout.file, 'r+');
    for (const [was, at] of undo) writeSync(fd, was, 0, 2, at);
    closeSync(fd);
  };
}

async function refusal(): Promise<string> {
  const err = (await addon.readAdapter(layout, { pageLocked: false }).then(
    (host) => {
      addon.destroyHostAdapter(host.handle);
      return new Error('read without an error');
    },
    (e: unknown) => e,
  )) as Error & { invalidAdapter?: boolean };
  expect(err.invalidAdapter).toBe(true);
  return err.message;
}
const nanAt = (tensor: string, index: number): string =>
  `${layout.file}: tensor "${tensor}": holds NaN at element ${index}; the weights must be finite`;
const count = (t: AdapterTensor): number => t.shape[0] * t.shape[1];

describe('reading a file in pieces', () => {
  it('puts every value where the JS reader does, in fresh buffers and in reused ones', async () => {
    expect(readFileSync(layout.file).length).toBeGreaterThan(16 << 20);
    // Both at once (the reads share the helper threads), then again after freeing both, when
    // each takes a buffer the other may have had.
    for (let round = 0; round < 3; round++) {
      const hosts = await Promise.all(files.map((f) => addon.readAdapter(f, { pageLocked: false })));
      expect(hosts.map((h) => h.bytes)).toEqual(files.map((f) => f.tensors.reduce((n, t) => n + t.nbytes, 0)));
      expect(await driveHosts(hosts)).toEqual(want);
      for (const h of hosts) addon.destroyHostAdapter(h.handle);
    }
  });

  it('finds a NaN at either end of every tensor, the last tensor in the file included', async () => {
    for (const t of inFileOrder) {
      for (const index of [0, count(t) - 1]) {
        const undo = poison([{ tensor: t.name, index }]);
        try {
          expect(await refusal()).toBe(nanAt(t.name, index));
        } finally {
          undo();
        }
      }
    }
  });

  it('names the bad tensor lowest in the file when several pieces hold one', async () => {
    // Each tensor's last value with the next tensor's first (a cut between pieces falls between
    // some such pair), the pair around the long gap a few times over, and the first tensor's
    // first value with the last tensor's last.
    const pairs: [AdapterTensor, AdapterTensor][] = inFileOrder.slice(0, -1).map((t, k) => [t, inFileOrder[k + 1]!]);
    for (let i = 0; i < 5; i++) pairs.push([inFileOrder[0]!, inFileOrder[1]!]);
    for (const [early, late] of pairs) {
      const undo = poison([
        { tensor: late.name, index: 0 },
        { tensor: early.name, index: count(early) - 1 },
      ]);
      try {
        expect(await refusal()).toBe(nanAt(early.name, count(early) - 1));
      } finally {
        undo();
      }
    }
    const [first, last] = [inFileOrder[0]!, inFileOrder[inFileOrder.length - 1]!];
    const undo = poison([
      { tensor: last.name, index: count(last) - 1 },
      { tensor: first.name, index: 0 },
    ]);
    try {
      expect(await refusal()).toBe(nanAt(first.name, 0));
    } finally {
      undo();
    }
  });

  it('never hands a buffer that a fill still copies from to another read', async () => {
    const h = engine();
    const first = await readAdapterHost(addon, adapters[0]!, ckpt.config, { pageLocked: false });
    addon.holdLoraSlotWrites(h, 0);
    onTestFinished(() => addon.releaseLoraSlotWrites(h, 0)); // also when an expectation fails
    const fill = addon.fillLoraSlot(h, 0, first.host.handle);
    await addon.waitForLoraSlot(h, 0, 'write-held');
    // Freed while the fill holds it: the buffer is not free yet, so this read, the same size,
    // must fill another one.
    addon.destroyHostAdapter(first.host.handle);
    const second = await readAdapterHost(addon, adapters[1]!, ckpt.config, { pageLocked: false });
    addon.releaseLoraSlotWrites(h, 0);
    await fill;
    await addon.fillLoraSlot(h, 1, second.host.handle);
    addon.destroyHostAdapter(second.host.handle);
    expect(drive(h, REQS, VOCAB)).toEqual(want);
  });
});

// The native adapter reader (readAdapter) and fills from its host copies (fillLoraSlot): f32,
// f16 and bf16 files give a slot exactly what the float32 values read in JS give it (the CPU
// pool holds float32; widening f16 and bf16 is exact) and the merged model's logits; NaN and
// Inf are refused in every dtype naming the file, tensor and element; the host copy is freed on
// request, not by the garbage collector.
import { closeSync, openSync, statSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { LORA_MODULES, type DType } from '../src/engine/types.js';
import { TroupeError } from '../src/errors.js';
import { loadAdapterWeights, readAdapterHost, readAdapterLayout } from '../src/model/adapter.js';
import { makeRandomAdapter, makeRandomCheckpoint } from '../src/model/demo.js';
import { mergeAdapter } from '../src/model/merge.js';
import { readSafetensorsHeader } from '../src/model/safetensors.js';
import { SMALL_MODEL, addon, createEngine, drive, makeBatch, maxAbs, maxAbsDiff, openCheckpoint, prompt, tempDir } from './engine-fixtures.js';

const VOCAB = SMALL_MODEL.vocab_size;
const DTYPES: DType[] = ['F32', 'F16', 'BF16'];
const tmp = tempDir('adapter-host');
makeRandomCheckpoint(join(tmp.dir, 'base'), SMALL_MODEL, 41, 'BF16');
const ckpt = openCheckpoint(join(tmp.dir, 'base'));
const adapterDir = (dtype: DType): string => join(tmp.dir, `all-${dtype}`);
for (const dtype of DTYPES) {
  makeRandomAdapter(adapterDir(dtype), { rank: 8, alpha: 16, targetModules: [...LORA_MODULES], seed: 42, dtype, bStd: 0.2 }, SMALL_MODEL);
}
const handles: number[] = [];
afterAll(() => {
  for (const h of handles) addon.destroyEngine(h);
  tmp.cleanup();
});
function engine(over: Parameters<typeof createEngine>[1] = {}, model = ckpt): number {
  const h = createEngine(model, { loraSlots: 2, maxLoraRank: 8, ...over });
  handles.push(h);
  return h;
}

const REQS = [
  { prompt: prompt(9, 1), slot: 0, blocks: [0, 1, 2, 3], decodes: 2 },
  { prompt: prompt(5, 2), slot: -1, blocks: [4, 5, 6, 7], decodes: 2 },
];

describe('readAdapter and fillLoraSlot', () => {
  it.each(DTYPES)("fill a slot from a %s file with the values the JS reader gives, and the merged model's logits", async (dtype) => {
    const { info, host } = await readAdapterHost(addon, adapterDir(dtype), ckpt.config, { pageLocked: true });
    const layout = readAdapterLayout(adapterDir(dtype), ckpt.config);
    expect(info.rank).toBe(8);
    // The values in the file's dtype, nothing widened; no GPU here, so ordinary memory.
    expect(host.bytes).toBe(layout.file.tensors.reduce((n, t) => n + t.nbytes, 0));
    expect(host.pageLocked).toBe(false);

    const native = engine();
    await addon.fillLoraSlot(native, 0, host.handle);
    addon.destroyHostAdapter(host.handle);
    const js = engine();
    addon.loadLoraSlot(js, 0, loadAdapterWeights(adapterDir(dtype), ckpt.config).weights);
    const got = drive(native, REQS, VOCAB);
    expect(got).toEqual(drive(js, REQS, VOCAB));

    mergeAdapter(join(tmp.dir, 'base'), adapterDir(dtype), join(tmp.dir, `merged-${dtype}`));
    const merged = drive(engine({ loraSlots: 0 }, openCheckpoint(join(tmp.dir, `merged-${dtype}`))), [{ ...REQS[0]!, slot: -1 }], VOCAB)[0]!;
    const plain = drive(engine({ loraSlots: 0 }), [{ ...REQS[0]!, slot: -1 }], VOCAB)[0]!;
    merged.logits.forEach((want, k) => {
      // As in engine.test.ts: float32 rounding of a few sums per layer, far below what the adapter moves.
      expect(maxAbsDiff(got[0]!.logits[k]!, want)).toBeLessThanOrEqual(1e-4 * maxAbs(want));
      expect(maxAbsDiff(plain.logits[k]!, want)).toBeGreaterThan(1e-2 * maxAbs(want));
    });
  });

  it('reads many adapters at once', async () => {
    const reads = await Promise.all([...DTYPES, ...DTYPES].map((d) => readAdapterHost(addon, adapterDir(d), ckpt.config, { pageLocked: false })));
    expect(new Set(reads.map((r) => r.host.handle)).size).toBe(6);
    for (const r of reads) addon.destroyHostAdapter(r.host.handle);
  });

  it('frees a host copy when asked, and names a handle that is gone', async () => {
    const { host } = await readAdapterHost(addon, adapterDir('BF16'), ckpt.config, { pageLocked: false });
    addon.destroyHostAdapter(host.handle);
    expect(() => addon.destroyHostAdapter(host.handle)).toThrow(/destroyHostAdapter: no host adapter with handle \d+ \(destroyed\?\)/);
    expect(() => addon.fillLoraSlot(engine(), 0, host.handle)).toThrow(/fillLoraSlot: no host adapter with handle/);
  });

  it('refuses a slice that does not fit the slot, leaving the slot as it was', async () => {
    const h = engine();
    const { host } = await readAdapterHost(addon, adapterDir('F16'), ckpt.config, { pageLocked: false });
    const slices = LORA_MODULES.map((module) => ({
      module,
      inStart: 0,
      inCount: module === 'down_proj' ? 80 : 64,
      outStart: 0,
      outCount: module === 'q_proj' ? 32 : 16,
    }));
    await expect(addon.fillLoraSlot(h, 0, host.handle, slices)).rejects.toThrow(/slot 0: layer 0 q_proj: B has 256 values, expected 64 x rank 8/);
    expect(() => addon.step(h, makeBatch([{ tokens: [5], cached: 0, blocks: [0], slot: 0 }]))).toThrow(/slot 0 holds no adapter/);
    addon.destroyHostAdapter(host.handle);
  });
});

/** Writes `bits` (little-endian, the dtype's width) over element `index` of tensor `name`. */
function poison(dir: string, name: string, index: number, bits: number): void {
  const file = join(dir, 'adapter_model.safetensors');
  const e = readSafetensorsHeader(file).tensors.get(name)!;
  const width = e.dtype === 'F32' ? 4 : 2;
  const buf = Buffer.alloc(width);
  if (width === 4) buf.writeUInt32LE(bits);
  else buf.writeUInt16LE(bits);
  const fd = openSync(file, 'r+');
  writeSync(fd, buf, 0, width, e.offset + index * width);
  closeSync(fd);
}

describe('NaN and Inf', () => {
  const NAN = { F32: 0x7fc00000, F16: 0x7e00, BF16: 0x7fc0 };
  const INF = { F32: 0x7f800000, F16: 0x7c00, BF16: 0x7f80 };
  const NEG_INF = { F32: 0xff800000, F16: 0xfc00, BF16: 0xff80 };
  const cases = DTYPES.flatMap(
    (dtype) =>
      [
        [dtype, 'NaN', NAN[dtype], 'layers.1.mlp.down_proj.lora_B', 37],
        [dtype, 'Infinity', INF[dtype], 'layers.0.self_attn.q_proj.lora_A', 0],
        [dtype, '-Infinity', NEG_INF[dtype], 'layers.1.self_attn.o_proj.lora_A', 8 * 64 - 1],
      ] as const,
  );

  it.each(cases)('refuses %s weights holding %s, naming the file, tensor and element', async (dtype, what, bits, tensor, index) => {
    const dir = join(tmp.dir, `poisoned-${dtype}-${what}`);
    makeRandomAdapter(dir, { rank: 8, alpha: 16, targetModules: [...LORA_MODULES], seed: 42, dtype }, SMALL_MODEL);
    const name = `base_model.model.model.${tensor}.weight`;
    poison(dir, name, index, bits);
    const file = join(dir, 'adapter_model.safetensors');
    const message = `${file}: tensor "${name}": holds ${what} at element ${index}; the weights must be finite`;
    const err = await readAdapterHost(addon, dir, ckpt.config, { pageLocked: false }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(TroupeError);
    expect((err as TroupeError).status).toBe(400);
    expect((err as Error).message).toBe(message);
    // The JS reader says the same.
    expect(() => loadAdapterWeights(dir, ckpt.config)).toThrow(message);
  });

  it('refuses a tensor past the end of the file, marking the file as the problem', async () => {
    const { file } = readAdapterLayout(adapterDir('F32'), ckpt.config);
    const size = statSync(file.file).size;
    const last = file.tensors.reduce((a, t) => (t.offset > a.offset ? t : a));
    const moved = { ...file, tensors: file.tensors.map((t) => (t === last ? { ...t, offset: size - t.nbytes + 4 } : t)) };
    const err = (await addon.readAdapter(moved, { pageLocked: false }).catch((e: unknown) => e)) as Error & { invalidAdapter?: boolean };
    expect(err.message).toBe(`${file.file}: tensor "${last.name}": ends at byte ${size + 4} of a ${size}-byte file (truncated?)`);
    expect(err.invalidAdapter).toBe(true);
  });
});

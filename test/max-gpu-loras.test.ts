// --max-gpu-loras: troupe's own flag for a GPU adapter pool larger than one batch. Its rules
// against --max-loras-per-batch and --max-loaded-loras, and on the real engine: adapters that
// leave a batch stay on the GPU (moving between slots inside it) and come back with no copy,
// with the same outputs.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { compactsSlots, planEngine } from '../src/actors/plan.js';
import { parseArgs } from '../src/config/parse.js';
import { validateFlags } from '../src/config/validate.js';
import type { AdapterTransition } from '../src/scheduler/index.js';
import type { LocalTroupeEngine } from '../src/troupe.js';
import { makeWorld, startEngine, type World } from './adapter-fixtures.js';

const validate = (...argv: string[]) => validateFlags(parseArgs(['--model-path', '/m', '--lora-paths', 'a=/a', ...argv]).flags).options;
const config = { maxPositionEmbeddings: 1024 } as Parameters<typeof planEngine>[1];
const slots = (...argv: string[]): number =>
  planEngine(validate(...argv), config, 'cpu', [{ rank: 8, targetModules: ['q_proj'] }] as Parameters<typeof planEngine>[3], () => {}).engine
    .loraSlots;

describe('--max-gpu-loras', () => {
  it('defaults to --max-loras-per-batch, the pool SGLang has', () => {
    expect(validate().maxGpuLoras).toBeNull();
    expect(slots()).toBe(8);
    expect(slots('--max-loras-per-batch', '3')).toBe(3);
    expect(slots('--max-loras-per-batch', '3', '--max-gpu-loras', '12')).toBe(12);
  });

  it('must be at least --max-loras-per-batch and at most --max-loaded-loras', () => {
    expect(() => validate('--max-loras-per-batch', '4', '--max-gpu-loras', '3')).toThrow(
      '--max-gpu-loras (3) must be at least --max-loras-per-batch (4)',
    );
    expect(() => validate('--max-loras-per-batch', '2', '--max-loaded-loras', '4', '--max-gpu-loras', '5')).toThrow(
      '--max-gpu-loras (5) must be at most --max-loaded-loras (4)',
    );
    expect(validate('--max-loras-per-batch', '2', '--max-loaded-loras', '4', '--max-gpu-loras', '4').maxGpuLoras).toBe(4);
  });
});

describe('moving adapters to low slots', () => {
  it('is on where the kernels read every slot up to the highest a step uses, and TROUPE_LORA_COMPACT decides otherwise', () => {
    expect(compactsSlots('fused', undefined)).toBe(true);
    for (const kernel of ['cpu', 'mma-overlap', 'none']) expect(compactsSlots(kernel, undefined)).toBe(false);
    expect(compactsSlots('cpu', '1')).toBe(true);
    expect(compactsSlots('fused', '0')).toBe(false);
    expect(() => compactsSlots('fused', 'yes')).toThrow('TROUPE_LORA_COMPACT must be 0 or 1, got "yes"');
  });
});

describe('--max-loras-per-batch 2 --max-gpu-loras 3 on the engine, adapters moved to low slots', () => {
  const NAMES = ['g0', 'g1', 'g2'];
  let world: World;
  let engine: LocalTroupeEngine;
  const transitions: AdapterTransition[] = [];
  beforeAll(async () => {
    // The CPU engine gains nothing from low slots; moving is asked for so that the exchange runs
    // through the loader and the engine as it does on a GPU.
    process.env.TROUPE_LORA_COMPACT = '1';
    world = makeWorld('gpu-loras');
    engine = await startEngine(world, [
      '--lora-paths',
      ...NAMES.map((n, i) => `${n}=${world.adapter(n, { seed: 700 + i })}`),
      '--max-loras-per-batch',
      '2',
      '--max-gpu-loras',
      '3',
    ]);
    engine.onAdapterTransition((ts) => transitions.push(...ts));
  });
  afterAll(async () => {
    delete process.env.TROUPE_LORA_COMPACT;
    await engine?.close();
    world?.cleanup();
  });

  const greedy = (lora: string): Promise<number[]> =>
    engine.generate({ text: 'slots', lora, sampling: { maxNewTokens: 3, temperature: 0, ignoreEos: true } }).then((o) => o.outputIds);

  it('keeps three adapters on the GPU: one used again after the others costs no copy', async () => {
    expect(engine.engineInfo.loraSlots).toBe(3);
    expect(engine.poolSlots).toBe(3);
    const first = await greedy('g0');
    await greedy('g1');
    await greedy('g2');
    expect(await greedy('g0')).toEqual(first);
    const copies = transitions.filter((t) => t.to === 'h2dInFlight').map((t) => t.adapter);
    expect(copies.sort()).toEqual(NAMES);
    // Adapters only moved between slots inside the engine: each new one took slot 0, the one
    // there moving up, and g0 came back to slot 0 by an exchange with g2, with its first outputs.
    expect(new Set(transitions.filter((t) => t.from === 'gpuResident.unpinned').map((t) => t.to))).toEqual(new Set(['moving']));
    const adapters = await engine.adapters();
    expect(adapters.map((a) => [a.name, a.state])).toEqual(NAMES.map((n) => [n, 'gpuResident.unpinned']));
    expect(adapters.find((a) => a.name === 'g0')!.slot).toBe(0);
  });
});

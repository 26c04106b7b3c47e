import { describe, expect, it } from 'vitest';

import { parseVariants, withEnv } from '../bench/engine-variants.js';
import { benchLoraModules, loraEngineOptions, tuneAtFirstCapture } from '../bench/gpu-steps.js';

describe('engine variants for A/B benchmarks', () => {
  it('reads the default, variants split by semicolons and settings by spaces', () => {
    expect(parseVariants(undefined)).toEqual([{ label: 'default', env: {} }]);
    expect(parseVariants('default; TROUPE_LORA_IN_GEMM=0  TROUPE_CUDA_GEMV=0')).toEqual([
      { label: 'default', env: {} },
      { label: 'TROUPE_LORA_IN_GEMM=0  TROUPE_CUDA_GEMV=0', env: { TROUPE_LORA_IN_GEMM: '0', TROUPE_CUDA_GEMV: '0' } },
    ]);
    expect(parseVariants('TROUPE_LORA_IN_GEMM=o,down;TROUPE_LORA_IN_GEMM=')).toEqual([
      { label: 'TROUPE_LORA_IN_GEMM=o,down', env: { TROUPE_LORA_IN_GEMM: 'o,down' } },
      { label: 'TROUPE_LORA_IN_GEMM=', env: { TROUPE_LORA_IN_GEMM: '' } },
    ]);
  });

  it('names what is wrong', () => {
    expect(() => parseVariants('default;;X=1')).toThrow(/an empty variant/);
    expect(() => parseVariants('TROUPE_X')).toThrow(/"TROUPE_X" is not NAME=VALUE/);
    expect(() => parseVariants('lower=1')).toThrow(/not NAME=VALUE/);
    expect(() => parseVariants('A=1 A=2')).toThrow(/A is set twice/);
    expect(() => parseVariants('default;default')).toThrow(/named twice/);
  });

  it('sets the environment only while the engine is made', () => {
    process.env.TROUPE_VARIANT_KEEP = 'before';
    delete process.env.TROUPE_VARIANT_NEW;
    const seen = withEnv({ TROUPE_VARIANT_KEEP: 'during', TROUPE_VARIANT_NEW: '1' }, () => [
      process.env.TROUPE_VARIANT_KEEP,
      process.env.TROUPE_VARIANT_NEW,
    ]);
    expect(seen).toEqual(['during', '1']);
    expect(process.env.TROUPE_VARIANT_KEEP).toBe('before');
    expect('TROUPE_VARIANT_NEW' in process.env).toBe(false);
    expect(() =>
      withEnv({ TROUPE_VARIANT_KEEP: 'x' }, () => {
        throw new Error('engine refused');
      }),
    ).toThrow('engine refused');
    expect(process.env.TROUPE_VARIANT_KEEP).toBe('before');
    delete process.env.TROUPE_VARIANT_KEEP;
  });
});

describe("the LoRA benchmarks' pool modules (LORA_MODULES)", () => {
  it('holds all seven unless told, or the modules named', () => {
    expect(benchLoraModules(undefined)).toEqual(['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj']);
    expect(benchLoraModules('o_proj, gate_proj,up_proj')).toEqual(['o_proj', 'gate_proj', 'up_proj']);
    expect(loraEngineOptions({ BLOCK: 16, kvBlocks: 8 }, { rank: 16, modules: ['down_proj'] }).loraModules).toEqual(['down_proj']);
  });

  it('names a module it does not know', () => {
    expect(() => benchLoraModules('o_proj,o')).toThrow(/LORA_MODULES: unknown module o \(one of q_proj/);
  });
});

describe("the step benchmarks' cuBLAS tuning (TROUPE_CUDA_GEMM_TUNE_AFTER)", () => {
  it('tunes at the first capture unless the environment says otherwise', () => {
    const before = process.env.TROUPE_CUDA_GEMM_TUNE_AFTER;
    try {
      delete process.env.TROUPE_CUDA_GEMM_TUNE_AFTER;
      tuneAtFirstCapture();
      expect(process.env.TROUPE_CUDA_GEMM_TUNE_AFTER).toBe('0');
      process.env.TROUPE_CUDA_GEMM_TUNE_AFTER = '256';
      tuneAtFirstCapture();
      expect(process.env.TROUPE_CUDA_GEMM_TUNE_AFTER).toBe('256');
    } finally {
      if (before === undefined) delete process.env.TROUPE_CUDA_GEMM_TUNE_AFTER;
      else process.env.TROUPE_CUDA_GEMM_TUNE_AFTER = before;
    }
  });
});

import { describe, expect, it } from 'vitest';

import { LLAMA_8B_CONFIG as LLAMA_8B } from '../bench/llama-8b-config.js';
import { adapterBytes, baseStepBytes, loraRoofline } from '../bench/lora-roofline.js';
import { tensorShapes } from '../src/model/checkpoint.js';
import { parseModelConfig } from '../src/model/config.js';

describe("the adapters' bytes beside a LoRA benchmark's overheads", () => {
  it("counts a decode step's bf16 weights without the embedding table, and the rows' cache", () => {
    const config = parseModelConfig(LLAMA_8B, 'config.json');
    const tensors = tensorShapes(config).map(([name, shape]) => ({ name, shape }));
    // Llama-3.1-8B: 8,030,261,248 parameters, 525,336,576 of them the embedding table; a token's
    // keys and values are 2 x 32 layers x 8 heads x 128 x 2 bytes.
    expect(baseStepBytes(config, tensors, 0, 512)).toBe((8_030_261_248 - 525_336_576) * 2);
    expect(baseStepBytes(config, tensors, 32, 512) - baseStepBytes(config, tensors, 0, 512)).toBe(32 * 512 * 131_072);
  });

  it('counts the embedding table where the head is the same matrix', () => {
    const config = parseModelConfig(LLAMA_8B, 'config.json');
    const untied = [
      { name: 'model.embed_tokens.weight', shape: [10, 4] },
      { name: 'model.norm.weight', shape: [4] },
      { name: 'lm_head.weight', shape: [10, 4] },
    ];
    expect(baseStepBytes(config, untied, 0, 1)).toBe((4 + 40) * 2);
    expect(baseStepBytes(config, untied.slice(0, 2), 0, 1)).toBe((40 + 4) * 2);
  });

  it("sums an adapter's factors in bf16", () => {
    const weights = [
      { layer: 0, module: 'q_proj', a: new Float32Array(8), b: new Float32Array(4) },
      { layer: 1, module: 'q_proj', a: new Float32Array(2), b: new Float32Array(6) },
    ];
    expect(adapterBytes({ rank: 2, scaling: 1, weights })).toBe(40);
  });

  it('gives the overhead at the base bandwidth, and the floor at copy bandwidth when measured', () => {
    const base = { baseBytes: 16e9, loraBytes: 0.8e9 };
    expect(loraRoofline(base)).toEqual({ loraBytes: 0.8e9, overheadAtBaseBandwidth: 0.05 });
    // 0.8 GB at 4 TB/s is 0.2 ms, 4% of a 5 ms step.
    const r = loraRoofline({ ...base, copyBytesPerS: 4e12, baseMs: 5 });
    expect(r.floorOverhead).toBeCloseTo(0.04, 12);
    expect(() => loraRoofline({ baseBytes: 0, loraBytes: 1 })).toThrow(/base bytes 0/);
    expect(() => loraRoofline({ baseBytes: 1, loraBytes: Number.NaN })).toThrow(/adapter bytes NaN/);
  });
});

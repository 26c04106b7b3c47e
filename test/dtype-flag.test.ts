// --dtype, taken from SGLang command lines: auto, or what the chosen backend computes in
// (bfloat16 on CUDA, float32 on the CPU). Another value would be silently ignored, so it is
// refused at start with the flag, the value and what to pass instead.
import { describe, expect, it } from 'vitest';
import { checkDtype } from '../src/actors/plan.js';
import { parseArgs } from '../src/config/parse.js';
import { validateFlags } from '../src/config/validate.js';
import { createEngine } from '../src/troupe.js';
import { TroupeError } from '../src/errors.js';
import { trainedDemoDir } from '../src/paths.js';

const dtypeOf = (...argv: string[]) => validateFlags(parseArgs(['--model-path', '/m', ...argv]).flags).options.dtype;

describe('--dtype', () => {
  it('defaults to auto and takes SGLang spellings', () => {
    expect(dtypeOf()).toBe('auto');
    for (const d of ['bfloat16', 'half', 'float16', 'float', 'float32']) expect(dtypeOf('--dtype', d)).toBe(d);
    expect(() => dtypeOf('--dtype', 'fp8')).toThrow(/--dtype/);
  });

  it('accepts what each backend computes in', () => {
    for (const d of ['auto', 'bfloat16'] as const) expect(() => checkDtype(d, 'cuda')).not.toThrow();
    for (const d of ['auto', 'float32', 'float'] as const) expect(() => checkDtype(d, 'cpu')).not.toThrow();
  });

  it('refuses another with a 400 that names the value and the backend', () => {
    expect(() => checkDtype('float16', 'cuda')).toThrow(
      '--dtype float16: the cuda backend computes in bfloat16, not float16; pass --dtype auto or bfloat16',
    );
    expect(() => checkDtype('half', 'cuda')).toThrow(/--dtype half: the cuda backend computes in bfloat16/);
    expect(() => checkDtype('bfloat16', 'cpu')).toThrow(
      "--dtype bfloat16: the cpu backend computes in float32, not bfloat16 (the cuda backend's); pass --dtype auto or float32",
    );
    let error: unknown;
    try {
      checkDtype('float16', 'cpu');
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(TroupeError);
    expect((error as TroupeError).status).toBe(400);
  });

  it('stops the start of an engine on the CPU before anything is built', async () => {
    await expect(createEngine({ modelPath: trainedDemoDir(), device: 'cpu', dtype: 'bfloat16', logLevel: 'error' })).rejects.toThrow(
      /--dtype bfloat16: the cpu backend/,
    );
  });
});

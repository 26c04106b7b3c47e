import { cpSync, readFileSync, renameSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadAdapterWeights, readAdapterInfo } from '../src/model/adapter.js';
import { parseModelConfig } from '../src/model/config.js';
import { makeRandomAdapter } from '../src/model/demo.js';
import { readSafetensorsHeader, readTensorBytes, toFloat32, type TensorToWrite } from '../src/model/safetensors.js';
import { LORA_MODULES } from '../src/engine/types.js';
import { TroupeError } from '../src/errors.js';
import { TINY, rewrite, tempDir } from './model-fixtures.js';

const tmp = tempDir('troupe-adapter-');
const config = parseModelConfig(TINY, 'config.json');
const qv = join(tmp.path, 'qv');
const all = join(tmp.path, 'all');
let n = 0;

beforeAll(() => {
  makeRandomAdapter(qv, { rank: 4, alpha: 8, targetModules: ['v_proj', 'q_proj'], seed: 1 }, TINY);
  makeRandomAdapter(all, { rank: 8, alpha: 16, targetModules: [...LORA_MODULES], seed: 2, dtype: 'BF16', useRslora: true }, TINY);
});
afterAll(() => tmp.cleanup());

function copy(from = qv): string {
  const dir = join(tmp.path, `c${n++}`);
  cpSync(from, dir, { recursive: true });
  return dir;
}

function editConfig(dir: string, patch: Record<string, unknown>): void {
  const file = join(dir, 'adapter_config.json');
  writeFileSync(file, JSON.stringify({ ...JSON.parse(readFileSync(file, 'utf8')), ...patch }));
}

function errorOf(fn: () => unknown): TroupeError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(TroupeError);
    expect((err as TroupeError).status).toBe(400);
    return err as TroupeError;
  }
  throw new Error('expected an error');
}

const weightsFile = (dir: string) => join(dir, 'adapter_model.safetensors');

describe('readAdapterInfo', () => {
  it('reads rank, alpha and scaling alpha / r', () => {
    expect(readAdapterInfo(qv)).toEqual({ path: qv, rank: 4, alpha: 8, scaling: 2, useRslora: false, targetModules: ['q_proj', 'v_proj'] });
  });

  it('scales rsLoRA adapters by alpha / sqrt(r)', () => {
    const info = readAdapterInfo(all);
    expect(info.useRslora).toBe(true);
    expect(info.scaling).toBeCloseTo(16 / Math.sqrt(8), 12);
    expect(info.targetModules).toEqual([...LORA_MODULES]);
  });

  it('understands "all-linear", qualified names and regex target_modules', () => {
    const dir = copy();
    editConfig(dir, { target_modules: 'all-linear' });
    expect(readAdapterInfo(dir).targetModules).toEqual([...LORA_MODULES]);
    editConfig(dir, { target_modules: ['self_attn.o_proj', 'down_proj'] });
    expect(readAdapterInfo(dir).targetModules).toEqual(['o_proj', 'down_proj']);
    editConfig(dir, { target_modules: '.*\\.(q_proj|up_proj)' });
    expect(readAdapterInfo(dir).targetModules).toEqual(['q_proj', 'up_proj']);
    editConfig(dir, { target_modules: '.*\\.(nothing)' });
    expect(errorOf(() => readAdapterInfo(dir)).message).toMatch(/target_modules: the pattern matches none of the linear layers q_proj, /);
  });

  it("matches a target_modules pattern as re.fullmatch over every layer's module names", () => {
    const dir = copy();
    const modules = (target: unknown): unknown => {
      editConfig(dir, { target_modules: target });
      return readAdapterInfo(dir).targetModules;
    };
    expect(modules('model\\.layers\\.(1[0-9]|2[0-9])\\.self_attn\\.(q|v)_proj')).toEqual(['q_proj', 'v_proj']);
    expect(modules('base_model\\.model\\.model\\.layers\\.\\d+\\.mlp\\.(gate|up)_proj')).toEqual(['gate_proj', 'up_proj']);
    expect(modules('.*self_attn.*')).toEqual(['q_proj', 'k_proj', 'v_proj', 'o_proj']);
    expect(modules('.*[^o]_proj')).toEqual(['q_proj', 'k_proj', 'v_proj', 'gate_proj', 'up_proj', 'down_proj']);
    // Full match: a bare module name is not a match for the qualified names.
    expect(errorOf(() => modules('q_proj')).message).toMatch(/target_modules: the pattern matches none of/);
    expect(errorOf(() => modules('.*')).message).toMatch(/target_modules: selects embed_tokens; LoRA on embed_tokens is not supported$/);
    expect(errorOf(() => modules('.*(lm_head|q_proj)')).message).toMatch(/target_modules: selects lm_head; LoRA on lm_head is not supported$/);
  });

  it('matches a hostile target_modules pattern in bounded time, failing only that load', () => {
    const dir = copy();
    editConfig(dir, { target_modules: '(.+)+Z' });
    expect(errorOf(() => readAdapterInfo(dir)).message).toMatch(
      /adapter_config\.json: target_modules: the pattern matches none of the linear layers/,
    );
    editConfig(dir, { target_modules: '(.+)+_proj' });
    expect(readAdapterInfo(dir).targetModules).toEqual([...LORA_MODULES]);
    editConfig(dir, { target_modules: '((.{100}){100}){100}' });
    expect(errorOf(() => readAdapterInfo(dir)).message).toMatch(/target_modules: the regular expression cannot be used: the pattern is too large/);
    editConfig(dir, { target_modules: 'x'.repeat(5000) });
    expect(errorOf(() => readAdapterInfo(dir)).message).toMatch(/the pattern is 5000 characters long; at most 1000 are supported/);
    // The adapter next to it still loads.
    expect(readAdapterInfo(qv).targetModules).toEqual(['q_proj', 'v_proj']);
  });

  it('names a construct of the pattern it does not support', () => {
    const dir = copy();
    editConfig(dir, { target_modules: '^(?!.*vision).*\\.(q_proj|v_proj)' });
    expect(errorOf(() => readAdapterInfo(dir)).message).toMatch(
      /adapter_config\.json: target_modules: the regular expression cannot be used: lookahead assertions \(\?!\.\.\.\) are not supported \(at position 1\)$/,
    );
  });

  it('matches listed target_modules exactly or as a dotted suffix, as PEFT does', () => {
    const dir = copy();
    const modules = (target: unknown): unknown => {
      editConfig(dir, { target_modules: target });
      return readAdapterInfo(dir).targetModules;
    };
    expect(modules(['layers.3.self_attn.k_proj', 'model.layers.0.mlp.up_proj', 'base_model.model.model.layers.1.mlp.down_proj'])).toEqual([
      'k_proj',
      'up_proj',
      'down_proj',
    ]);
    expect(modules(['v_proj', 'mlp.gate_proj'])).toEqual(['v_proj', 'gate_proj']);
    expect(errorOf(() => modules(['q_proj', 'mlp.q_proj'])).message).toMatch(/target_modules\[1\]: names none of the linear layers q_proj, /);
    expect(errorOf(() => modules(['_proj'])).message).toMatch(/target_modules\[0\]: names none of/);
    expect(errorOf(() => modules(['(.+)+'])).message).toMatch(/target_modules\[0\]: names none of/);
  });

  it('never quotes what an adapter file holds in its errors', () => {
    const secret = join(tmp.path, 'passwd');
    writeFileSync(secret, 'root:x:0:0:root:/root:/bin/bash\n');
    const messages: string[] = [];
    const refused = (dir: string, want: RegExp): void => {
      const msg = errorOf(() => loadAdapterWeights(dir, config)).message;
      messages.push(msg);
      expect(msg).toMatch(want);
    };
    for (const file of ['adapter_config.json', 'added_tokens.json', 'adapter_model.safetensors']) {
      const dir = copy();
      rmSync(join(dir, file), { force: true });
      symlinkSync(secret, join(dir, file));
      refused(
        dir,
        file === 'adapter_model.safetensors'
          ? /adapter_model\.safetensors: header length \d+ exceeds/
          : new RegExp(`${file.replace('.', '\\.')}: is not valid JSON \\(at position 0\\)$`),
      );
    }
    const value = 'root:x:0:0:root:/root:/bin/bash';
    for (const [patch, want] of [
      [{ peft_type: value }, /peft_type: only "LORA" is supported, got a different string$/],
      [{ bias: value }, /bias: only "none" is supported, got a different string$/],
      [{ modules_to_save: [value] }, /modules_to_save: adapters that save whole modules are not supported$/],
      [{ r: value }, /r: must be a positive integer, got a string$/],
      [{ lora_alpha: { value } }, /lora_alpha: must be a positive number, got an object$/],
      [{ use_rslora: value }, /use_rslora: must be true or false, got a string$/],
      [
        { target_modules: `${value}(` },
        /target_modules: the regular expression cannot be used: missing \), unterminated subpattern \(at position 31\)$/,
      ],
      [{ target_modules: value }, /target_modules: the pattern matches none of/],
      [{ target_modules: [value] }, /target_modules\[0\]: names none of/],
      [{ target_modules: [3, value] }, /target_modules: must be a non-empty list of module names or "all-linear", got a list of 2 items$/],
    ] as const) {
      const dir = copy();
      editConfig(dir, patch);
      refused(dir, want);
    }
    expect(messages.join('\n')).not.toContain('root:');
  });

  it.each([
    [{ use_dora: true }, /use_dora: DoRA adapters are not supported/],
    [{ modules_to_save: ['lm_head'] }, /modules_to_save: adapters that save whole modules are not supported/],
    [{ bias: 'lora_only' }, /bias: only "none" is supported/],
    [{ target_modules: ['q_proj', 'dense'] }, /target_modules\[1\]: names none of the linear layers/],
    [{ target_modules: ['q_proj', 'embed_tokens'] }, /target_modules\[1\]: selects embed_tokens; LoRA on embed_tokens is not supported/],
    [{ target_modules: ['lm_head'] }, /target_modules\[0\]: selects lm_head; LoRA on lm_head is not supported/],
    [{ target_modules: [] }, /target_modules: must be a non-empty list/],
    [{ r: 0 }, /adapter_config\.json: r: must be a positive integer, got 0/],
    [{ lora_alpha: 'x' }, /lora_alpha: must be a positive number/],
    [{ peft_type: 'IA3' }, /peft_type: only "LORA" is supported/],
    [{ rank_pattern: { q_proj: 8 } }, /rank_pattern: per-module ranks are not supported/],
    [{ alpha_pattern: { q_proj: 8 } }, /alpha_pattern: per-module alphas are not supported/],
    [{ trainable_token_indices: [5] }, /trainable_token_indices: adapters with added or trained tokens/],
  ])('rejects %j', (patch, message) => {
    const dir = copy();
    editConfig(dir, patch);
    expect(errorOf(() => readAdapterInfo(dir)).message).toMatch(message);
  });

  it('accepts layers_to_transform and empty patterns', () => {
    const dir = copy();
    editConfig(dir, { layers_to_transform: [0], rank_pattern: {}, modules_to_save: [] });
    expect(readAdapterInfo(dir).rank).toBe(4);
  });

  it('names missing or bad files', () => {
    expect(errorOf(() => readAdapterInfo(join(tmp.path, 'missing'))).message).toMatch(/adapter path .*missing is not a directory/);
    const dir = copy();
    writeFileSync(join(dir, 'added_tokens.json'), '{"<new>": 40}');
    expect(errorOf(() => readAdapterInfo(dir)).message).toMatch(/added_tokens\.json: adapters with added tokens are not supported/);
    rmSync(join(dir, 'added_tokens.json'));
    writeFileSync(join(dir, 'adapter_config.json'), 'not json');
    expect(errorOf(() => readAdapterInfo(dir)).message).toMatch(/adapter_config\.json: is not valid JSON \(at position 1\)$/);
    rmSync(join(dir, 'adapter_config.json'));
    expect(errorOf(() => readAdapterInfo(dir)).message).toMatch(/adapter_config\.json: missing/);
  });
});

describe('loadAdapterWeights', () => {
  it('returns every layer and module, A as rank x in and B as out x rank, with the file values', () => {
    const { info, weights } = loadAdapterWeights(qv, config);
    expect(weights.rank).toBe(4);
    expect(weights.scaling).toBe(2);
    expect(info.targetModules).toEqual(['q_proj', 'v_proj']);
    expect(weights.weights.map((w) => `${w.layer}.${w.module}`)).toEqual(['0.q_proj', '0.v_proj', '1.q_proj', '1.v_proj']);
    const v1 = weights.weights[3]!;
    expect(v1.a.length).toBe(4 * 16);
    expect(v1.b.length).toBe(8 * 4);
    const entry = readSafetensorsHeader(weightsFile(qv)).tensors.get('base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight')!;
    expect([...v1.b]).toEqual([...toFloat32(readTensorBytes(entry), 'F32')]);
    expect(v1.b.some((x) => x !== 0)).toBe(true);
  });

  it('converts bf16 adapters and sizes each module from the model config', () => {
    const { weights } = loadAdapterWeights(all, config);
    expect(weights.weights).toHaveLength(2 * 7);
    const dims = Object.fromEntries(weights.weights.filter((w) => w.layer === 0).map((w) => [w.module, [w.a.length / 8, w.b.length / 8]]));
    expect(dims).toEqual({
      q_proj: [16, 16],
      k_proj: [16, 8],
      v_proj: [16, 8],
      o_proj: [16, 16],
      gate_proj: [16, 24],
      up_proj: [16, 24],
      down_proj: [24, 16],
    });
  });

  it('accepts the ".default" tensor names and modules missing from some layers', () => {
    const dir = copy();
    rewrite(weightsFile(dir), (ts) =>
      ts.filter((t) => !t.name.includes('layers.1.self_attn.q_proj')).map((t) => ({ ...t, name: t.name.replace('.weight', '.default.weight') })),
    );
    const { weights } = loadAdapterWeights(dir, config);
    expect(weights.weights.map((w) => `${w.layer}.${w.module}`)).toEqual(['0.q_proj', '0.v_proj', '1.v_proj']);
  });

  it('refuses pickled weights and missing weights', () => {
    const dir = copy();
    renameSync(weightsFile(dir), join(dir, 'adapter_model.bin'));
    expect(errorOf(() => loadAdapterWeights(dir, config)).message).toMatch(
      /adapter_model\.bin: pickled adapter_model\.bin is not supported; convert it to safetensors/,
    );
    rmSync(join(dir, 'adapter_model.bin'));
    expect(errorOf(() => loadAdapterWeights(dir, config)).message).toMatch(/adapter_model\.safetensors: missing/);
  });

  const A0 = 'base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight';
  const B0 = 'base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight';
  it.each([
    [
      'a mis-shaped lora_A',
      (ts: TensorToWrite[]) => ts.map((t) => (t.name === A0 ? { ...t, shape: [16, 4] } : t)),
      /tensor ".*q_proj\.lora_A\.weight": shape \[16, 4\] does not match \[4, 16\]/,
    ],
    [
      'a lora_B of the wrong rank',
      (ts: TensorToWrite[]) => ts.map((t) => (t.name === B0 ? { ...t, shape: [8, 8], data: new Uint8Array(256) } : t)),
      /lora_B\.weight": shape \[8, 8\] does not match \[16, 4\]/,
    ],
    [
      'an unknown tensor',
      (ts: TensorToWrite[]) => [
        ...ts,
        { name: 'base_model.model.model.layers.0.self_attn.q_proj.magnitude', dtype: 'F32', shape: [1], data: new Uint8Array(4) },
      ],
      /tensor ".*q_proj\.magnitude": unknown tensor/,
    ],
    [
      'an unknown module',
      (ts: TensorToWrite[]) => [
        ...ts,
        { name: 'base_model.model.model.layers.0.mlp.q_proj.lora_A.weight', dtype: 'F32', shape: [1], data: new Uint8Array(4) },
      ],
      /"mlp\.q_proj" is not one of the linear layers/,
    ],
    [
      'LoRA on lm_head',
      (ts: TensorToWrite[]) => [...ts, { name: 'base_model.model.lm_head.lora_A.weight', dtype: 'F32', shape: [1], data: new Uint8Array(4) }],
      /lm_head\.lora_A\.weight": LoRA or saved weights on embed_tokens\/lm_head are not supported/,
    ],
    [
      'a layer past the model',
      (ts: TensorToWrite[]) => ts.map((t) => ({ ...t, name: t.name.replace('layers.1.', 'layers.7.') })),
      /layer 7 does not exist; the model has 2 layers/,
    ],
    [
      'a module outside target_modules',
      (ts: TensorToWrite[]) => ts.map((t) => ({ ...t, name: t.name.replace('v_proj', 'k_proj') })),
      /k_proj is not in target_modules/,
    ],
    ['lora_A without lora_B', (ts: TensorToWrite[]) => ts.filter((t) => t.name !== B0), /q_proj\.lora_A\.weight": has no matching lora_B tensor/],
    [
      'an integer dtype',
      (ts: TensorToWrite[]) => ts.map((t) => (t.name === A0 ? { ...t, dtype: 'I32' } : t)),
      /lora_A\.weight": dtype I32 is not supported/,
    ],
    ['no tensors at all', () => [], /holds no LoRA weights/],
  ])('names %s', (_what, edit, message) => {
    const dir = copy();
    rewrite(weightsFile(dir), edit);
    const msg = errorOf(() => loadAdapterWeights(dir, config)).message;
    expect(msg).toMatch(message);
    expect(msg).toContain(weightsFile(dir));
  });

  it('checks shapes against the model, not just the adapter', () => {
    const other = parseModelConfig({ ...TINY, hidden_size: 32 }, 'config.json');
    expect(errorOf(() => loadAdapterWeights(qv, other)).message).toMatch(/shape \[4, 16\] does not match \[4, 32\]/);
  });
});

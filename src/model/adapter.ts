// Reads PEFT LoRA adapters (adapter_config.json + adapter_model.safetensors). Only what the
// LoRA pool can run exactly is accepted: plain LoRA on the seven linear layers with one rank
// and one scaling. Everything else (DoRA, biases, extra saved modules, new tokens, pickled
// weights) is refused by name, because running it as plain LoRA would give wrong outputs.
// Errors describe what a field holds without quoting it: the path may lead to any file.
import { readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import {
  LORA_MODULES,
  type AdapterFile,
  type AdapterTensor,
  type AdapterWeights,
  type DType,
  type HostAdapter,
  type LoraModule,
  type ModelConfig,
  type NativeAddon,
} from '../engine/types.js';
import { badRequest } from '../errors.js';
import { isDirectory, isFile, readHeader, readJsonFile } from './json-file.js';
import { describeValue } from './json-text.js';
import { PythonRegex, RegexError } from './python-regex.js';
import { tensorLabel, toFloat32 } from './safetensors.js';

export interface AdapterInfo {
  path: string;
  rank: number;
  alpha: number;
  scaling: number;
  useRslora: boolean;
  targetModules: LoraModule[];
}

/** Where each module sits inside a decoder layer, as in Hugging Face names. */
export const MODULE_PATH: Record<LoraModule, string> = {
  q_proj: 'self_attn.q_proj',
  k_proj: 'self_attn.k_proj',
  v_proj: 'self_attn.v_proj',
  o_proj: 'self_attn.o_proj',
  gate_proj: 'mlp.gate_proj',
  up_proj: 'mlp.up_proj',
  down_proj: 'mlp.down_proj',
};

const isModule = (s: string): s is LoraModule => (LORA_MODULES as readonly string[]).includes(s);
const isEmpty = (v: unknown): boolean =>
  v === undefined || v === null || (Array.isArray(v) && v.length === 0) || (typeof v === 'object' && Object.keys(v as object).length === 0);

export function readAdapterInfo(path: string): AdapterInfo {
  const dir = resolve(path);
  if (!isDirectory(dir)) throw badRequest(`adapter path ${dir} is not a directory`);
  const file = join(dir, 'adapter_config.json');
  if (!isFile(file)) throw badRequest(`${file}: missing; a PEFT LoRA adapter directory needs adapter_config.json`);
  const json = readJsonFile(file);
  const fail = (field: string, detail: string): never => {
    throw badRequest(`${file}: ${field}: ${detail}`);
  };
  if (json === null || typeof json !== 'object' || Array.isArray(json)) fail('(root)', 'not a JSON object');
  const c = json as Record<string, unknown>;

  if (c.peft_type !== undefined && c.peft_type !== 'LORA') fail('peft_type', `only "LORA" is supported, got ${other(c.peft_type)}`);
  if (c.use_dora === true) fail('use_dora', 'DoRA adapters are not supported');
  if (!isEmpty(c.modules_to_save)) fail('modules_to_save', 'adapters that save whole modules are not supported');
  if (c.bias !== undefined && c.bias !== null && c.bias !== 'none') fail('bias', `only "none" is supported, got ${other(c.bias)}`);
  if (!isEmpty(c.trainable_token_indices)) fail('trainable_token_indices', 'adapters with added or trained tokens are not supported');
  // Per-module ranks or alphas would need a scaling per module; the pool has one per adapter.
  if (!isEmpty(c.rank_pattern)) fail('rank_pattern', 'per-module ranks are not supported');
  if (!isEmpty(c.alpha_pattern)) fail('alpha_pattern', 'per-module alphas are not supported');

  const r = c.r;
  if (typeof r !== 'number' || !Number.isSafeInteger(r) || r <= 0) fail('r', `must be a positive integer, got ${describeValue(r)}`);
  const rank = r as number;
  const a = c.lora_alpha;
  if (typeof a !== 'number' || !Number.isFinite(a) || a <= 0) fail('lora_alpha', `must be a positive number, got ${describeValue(a)}`);
  const alpha = a as number;
  const rs = c.use_rslora;
  if (rs !== undefined && rs !== null && typeof rs !== 'boolean') fail('use_rslora', `must be true or false, got ${describeValue(rs)}`);
  const useRslora = rs === true;
  const scaling = useRslora ? alpha / Math.sqrt(rank) : alpha / rank;

  const added = join(dir, 'added_tokens.json');
  if (isFile(added) && !isEmpty(readJsonFile(added))) throw badRequest(`${added}: adapters with added tokens are not supported`);
  return { path: dir, rank, alpha, scaling, useRslora, targetModules: parseTargetModules(c.target_modules, fail) };
}

/** For a field that must be one given string: what it holds instead, without quoting it. */
const other = (v: unknown): string => (typeof v === 'string' ? 'a different string' : describeValue(v));

// PEFT matches target_modules against the names of the base model's modules
// (model.named_modules(): model.layers.N.self_attn.q_proj, ...); names as they appear under the
// PEFT wrapper are accepted too. N is any layer index, matched exactly (see fullmatchAnyIndex).
const LAYER_PREFIXES = ['model.layers.', 'base_model.model.model.layers.'];
// Modules PEFT could also put LoRA on, which the pool cannot run.
const REFUSED_MODULES: Array<[string, string[]]> = [
  ['embed_tokens', ['model.embed_tokens', 'base_model.model.model.embed_tokens']],
  ['lm_head', ['lm_head', 'base_model.model.lm_head']],
];
const MAX_LIST_ENTRY = 200;

/** The modules a PEFT target_modules value selects, by PEFT's rules, in bounded time. */
function parseTargetModules(raw: unknown, fail: (field: string, detail: string) => never): LoraModule[] {
  if (raw === 'all-linear') return [...LORA_MODULES];
  if (typeof raw === 'string') {
    // PEFT: re.fullmatch(target_modules, name) for every module name.
    const hits = selectModules(compilePattern(raw, 'target_modules', fail), 'target_modules', fail);
    if (hits.size === 0) fail('target_modules', `the pattern matches none of the linear layers ${LORA_MODULES.join(', ')}`);
    return LORA_MODULES.filter((m) => hits.has(m));
  }
  if (!Array.isArray(raw) || raw.length === 0 || !raw.every((m) => typeof m === 'string')) {
    return fail('target_modules', `must be a non-empty list of module names or "all-linear", got ${describeValue(raw)}`);
  }
  // PEFT: a listed name selects a module whose name it equals or is a dotted suffix of.
  const found = new Set<LoraModule>();
  (raw as string[]).forEach((name, i) => {
    const field = `target_modules[${i}]`;
    if (name.length > MAX_LIST_ENTRY) fail(field, `is ${name.length} characters long; a module name has at most ${MAX_LIST_ENTRY}`);
    const suffix = `(?:.*\\.)?${name.replace(/[^A-Za-z0-9_]/gu, (c) => `\\${c}`)}`;
    const hits = selectModules(compilePattern(suffix, field, fail), field, fail);
    if (hits.size === 0) fail(field, `names none of the linear layers ${LORA_MODULES.join(', ')}`);
    for (const m of hits) found.add(m);
  });
  return LORA_MODULES.filter((m) => found.has(m));
}

function compilePattern(pattern: string, field: string, fail: (field: string, detail: string) => never): PythonRegex {
  try {
    return PythonRegex.compile(pattern);
  } catch (err) {
    if (err instanceof RegexError) return fail(field, `the regular expression cannot be used: ${err.message}`);
    throw err;
  }
}

function selectModules(re: PythonRegex, field: string, fail: (field: string, detail: string) => never): Set<LoraModule> {
  for (const [module, names] of REFUSED_MODULES) {
    if (names.some((n) => re.fullmatch(n))) fail(field, `selects ${module}; LoRA on ${module} is not supported`);
  }
  return new Set(LORA_MODULES.filter((m) => LAYER_PREFIXES.some((p) => re.fullmatchAnyIndex(p, `.${MODULE_PATH[m]}`))));
}

const TENSOR_NAME = /^(?:base_model\.model\.)?model\.layers\.(\d+)\.(self_attn|mlp)\.([a-z_]+)\.lora_(A|B)(?:\.default)?\.weight$/;

/** Input and output width of each target module's base weight. */
export function moduleDims(c: ModelConfig, m: LoraModule): { in: number; out: number } {
  const q = c.numHeads * c.headDim;
  const kv = c.numKvHeads * c.headDim;
  switch (m) {
    case 'q_proj':
      return { in: c.hiddenSize, out: q };
    case 'k_proj':
    case 'v_proj':
      return { in: c.hiddenSize, out: kv };
    case 'o_proj':
      return { in: q, out: c.hiddenSize };
    case 'gate_proj':
    case 'up_proj':
      return { in: c.hiddenSize, out: c.intermediateSize };
    case 'down_proj':
      return { in: c.intermediateSize, out: c.hiddenSize };
  }
}

/** An adapter's weights file and its tensors, checked against the model without reading a value. */
export interface AdapterLayout {
  info: AdapterInfo;
  file: AdapterFile;
}

/**
 * Reads adapter_config.json and the header of adapter_model.safetensors and checks every
 * tensor's name, module, layer, dtype and shape against the model and the config, and that each
 * lora_A has its lora_B. The values are read by loadAdapterWeights (JS) or the native reader.
 */
export function readAdapterLayout(path: string, config: ModelConfig): AdapterLayout {
  const info = readAdapterInfo(path);
  const file = join(info.path, 'adapter_model.safetensors');
  if (!isFile(file)) {
    if (isFile(join(info.path, 'adapter_model.bin'))) {
      throw badRequest(`${join(info.path, 'adapter_model.bin')}: pickled adapter_model.bin is not supported; convert it to safetensors`);
    }
    throw badRequest(`${file}: missing; the adapter has no weights`);
  }
  const header = readHeader(file);
  const fail = (tensor: string, detail: string): never => {
    throw badRequest(`${file}: ${tensorLabel(tensor)}: ${detail}`);
  };
  const pairs = new Map<string, { a?: AdapterTensor; b?: AdapterTensor }>();
  for (const [name, e] of header.tensors) {
    if (/(^|\.)(embed_tokens|lm_head)(\.|$)/.test(name)) fail(name, 'LoRA or saved weights on embed_tokens/lm_head are not supported');
    const m = TENSOR_NAME.exec(name);
    if (m === null) fail(name, 'unknown tensor; expected base_model.model.model.layers.N.{self_attn,mlp}.<module>.lora_{A,B}.weight');
    const [, layerStr, group, mod, ab] = m as RegExpExecArray;
    if (!isModule(mod!) || MODULE_PATH[mod].split('.')[0] !== group)
      fail(name, `"${group}.${mod}" is not one of the linear layers ${LORA_MODULES.join(', ')}`);
    const module = mod as LoraModule;
    const layer = Number(layerStr);
    if (layer >= config.numLayers) fail(name, `layer ${layer} does not exist; the model has ${config.numLayers} layers`);
    if (!info.targetModules.includes(module)) fail(name, `${module} is not in target_modules of adapter_config.json`);
    if (e.dtype !== 'F32' && e.dtype !== 'F16' && e.dtype !== 'BF16') fail(name, `dtype ${e.dtype} is not supported; use F32, F16 or BF16`);
    const dims = moduleDims(config, module);
    const want: [number, number] = ab === 'A' ? [info.rank, dims.in] : [dims.out, info.rank];
    if (e.shape.length !== 2 || e.shape[0] !== want[0] || e.shape[1] !== want[1]) {
      fail(name, `shape [${e.shape.join(', ')}] does not match [${want.join(', ')}] (lora_${ab} of ${module} with r=${info.rank} for this model)`);
    }
    const key = `${layer}.${module}`;
    const pair = pairs.get(key) ?? {};
    const slot = ab === 'A' ? 'a' : 'b';
    if (pair[slot] !== undefined) fail(name, `duplicates ${tensorLabel(pair[slot].name)}`);
    pair[slot] = { name, layer, module, factor: ab as 'A' | 'B', offset: e.offset, nbytes: e.nbytes, dtype: e.dtype as DType, shape: want };
    pairs.set(key, pair);
  }
  const tensors: AdapterTensor[] = [];
  for (const p of pairs.values()) {
    if (p.a === undefined || p.b === undefined) fail((p.a ?? p.b)!.name, `has no matching lora_${p.a === undefined ? 'A' : 'B'} tensor`);
    tensors.push(p.a!, p.b!);
  }
  if (tensors.length === 0) throw badRequest(`${file}: holds no LoRA weights`);
  tensors.sort((x, y) => x.layer - y.layer || LORA_MODULES.indexOf(x.module) - LORA_MODULES.indexOf(y.module) || x.factor.localeCompare(y.factor));
  return { info, file: { file, rank: info.rank, scaling: info.scaling, tensors } };
}

/**
 * The adapter's values as float32 in JS memory, read and checked value by value: for merging
 * into a checkpoint (merge.ts) and as the reference the native reader is tested against. The
 * loader uses readAdapterHost.
 */
export function loadAdapterWeights(path: string, config: ModelConfig): { info: AdapterInfo; weights: AdapterWeights } {
  const { info, file } = readAdapterLayout(path, config);
  const data = readFileSync(file.file);
  const values = (t: AdapterTensor): Float32Array => {
    const v = toFloat32(data.subarray(t.offset, t.offset + t.nbytes), t.dtype, t.name);
    // One NaN or Inf would poison every token of every request in the adapter's batches.
    const bad = v.findIndex((x) => !Number.isFinite(x));
    if (bad >= 0) throw badRequest(`${file.file}: ${tensorLabel(t.name)}: holds ${v[bad]} at element ${bad}; the weights must be finite`);
    return v;
  };
  const weights: AdapterWeights['weights'] = [];
  for (let i = 0; i < file.tensors.length; i += 2) {
    const a = file.tensors[i]!;
    weights.push({ layer: a.layer, module: a.module, a: values(a), b: values(file.tensors[i + 1]!) });
  }
  return { info, weights: { rank: info.rank, scaling: info.scaling, weights } };
}

/**
 * Reads the adapter's values into native host memory (page-locked when `pageLocked` and a GPU
 * is there), checking them for NaN/Inf in native code: the loader's CPU copy. The caller frees
 * it with native.destroyHostAdapter.
 */
export async function readAdapterHost(
  native: NativeAddon,
  path: string,
  config: ModelConfig,
  options: { pageLocked: boolean },
): Promise<{ info: AdapterInfo; host: HostAdapter }> {
  const { info, file } = readAdapterLayout(path, config);
  try {
    return { info, host: await native.readAdapter(file, options) };
  } catch (err) {
    if ((err as { invalidAdapter?: boolean }).invalidAdapter === true) throw badRequest((err as Error).message);
    throw err;
  }
}

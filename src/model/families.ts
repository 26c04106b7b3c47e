// The decoder families troupe serves and what sets them apart. All of them are Llama's layer
// (pre-norm RMSNorm, rotary attention with grouped-query heads, a SwiGLU MLP), so one forward in
// the native code runs them all, told what differs by three flags of ModelConfig: biases on
// q/k/v (Qwen2), an RMSNorm on each q and k head before RoPE (Qwen3), and a sliding attention
// window (Mistral). This file maps a config.json onto those flags, following each family's
// transformers class, and refuses what the flags cannot express, naming the field.
import type { ModelFamily } from '../engine/types.js';
import { describeValue, quoteIdentifier } from './json-text.js';

type Fail = (field: string, detail: string) => never;

interface Family {
  /** The transformers class; `architectures` must list it. */
  architecture: string;
  qkvBias: boolean;
  qkNorm: boolean;
  /** Flags the family's class reads that, when true, add biases the engine does not run. */
  refusedBiases: string[];
  /**
   * Where config.json puts a sliding window: nowhere; on every layer when sliding_window is set
   * (Mistral); or, when use_sliding_window is true, on the layers from max_window_layers on (Qwen).
   */
  window: 'none' | 'every-layer' | 'from-max-window-layers';
}

export const FAMILIES: Readonly<Record<ModelFamily, Family>> = {
  llama: { architecture: 'LlamaForCausalLM', qkvBias: false, qkNorm: false, refusedBiases: ['attention_bias', 'mlp_bias'], window: 'none' },
  mistral: { architecture: 'MistralForCausalLM', qkvBias: false, qkNorm: false, refusedBiases: [], window: 'every-layer' },
  // Qwen2's q/k/v biases are unconditional; o_proj and the MLP never have one.
  qwen2: { architecture: 'Qwen2ForCausalLM', qkvBias: true, qkNorm: false, refusedBiases: [], window: 'from-max-window-layers' },
  // Qwen3's attention_bias would put a bias on o_proj too.
  qwen3: { architecture: 'Qwen3ForCausalLM', qkvBias: false, qkNorm: true, refusedBiases: ['attention_bias'], window: 'from-max-window-layers' },
};

const NAMES = Object.keys(FAMILIES) as ModelFamily[];
const isFamily = (v: unknown): v is ModelFamily => typeof v === 'string' && (NAMES as string[]).includes(v);
const LIST = `${NAMES.slice(0, -1).join(', ')} and ${NAMES[NAMES.length - 1]!}`;

// Config fields of mixture-of-experts models: a dense forward would ignore the experts.
const MOE_FIELDS = ['num_experts', 'num_local_experts', 'n_routed_experts'];
// transformers' defaults when config.json leaves these out.
const MISTRAL_DEFAULT_WINDOW = 4096;
const QWEN_DEFAULT_WINDOW = 4096;
const QWEN_DEFAULT_MAX_WINDOW_LAYERS = 28;

export interface FamilyFlags {
  family: ModelFamily;
  architecture: string;
  qkvBias: boolean;
  qkNorm: boolean;
}

/** The family a config.json describes (model_type, else architectures), with its fixed flags. */
export function resolveFamily(c: Record<string, unknown>, fail: Fail): FamilyFlags {
  const archs = c.architectures;
  if (archs !== undefined && archs !== null && (!Array.isArray(archs) || !archs.every((a) => typeof a === 'string'))) {
    fail('architectures', 'must be a list of strings');
  }
  const listed = (archs ?? []) as string[];
  let family: ModelFamily;
  if (c.model_type !== undefined && c.model_type !== null) {
    if (!isFamily(c.model_type)) fail('model_type', `${quoteIdentifier(c.model_type)} is not supported; troupe serves ${LIST}`);
    family = c.model_type as ModelFamily;
    const want = FAMILIES[family].architecture;
    if (archs !== undefined && archs !== null && !listed.includes(want)) {
      fail('architectures', `does not list ${want}, the architecture of model_type "${family}"`);
    }
  } else {
    const found = NAMES.find((f) => listed.includes(FAMILIES[f].architecture));
    if (found === undefined) {
      fail(
        'architectures',
        archs === undefined || archs === null
          ? 'missing, and so is model_type'
          : `lists none of ${NAMES.map((f) => FAMILIES[f].architecture).join(', ')} (and model_type is missing)`,
      );
    }
    family = found!;
  }
  const f = FAMILIES[family];
  for (const flag of f.refusedBiases) {
    if (c[flag] === true) fail(flag, `true is not supported for ${family} (the engine runs no such biases)`);
  }
  for (const field of MOE_FIELDS) {
    const v = c[field];
    if (typeof v === 'number' && v > 0) fail(field, `${v}: mixture-of-experts layers are not supported`);
  }
  return { family, architecture: f.architecture, qkvBias: f.qkvBias, qkNorm: f.qkNorm };
}

/**
 * The sliding window every layer uses (0 for none), from the family's window fields and
 * layer_types. A window on some layers only is refused: the engine runs one attention for all.
 */
export function slidingWindowOf(c: Record<string, unknown>, family: ModelFamily, numLayers: number, fail: Fail): number {
  const kind = FAMILIES[family].window;
  let window: unknown = null;
  let field = 'sliding_window';
  let sliding = (_layer: number): boolean => false;
  if (kind === 'every-layer') {
    window = c.sliding_window === undefined ? MISTRAL_DEFAULT_WINDOW : c.sliding_window;
    sliding = () => window !== null;
  } else if (kind === 'from-max-window-layers') {
    const use = c.use_sliding_window;
    if (use !== undefined && use !== null && typeof use !== 'boolean') fail('use_sliding_window', `must be true or false, got ${describeValue(use)}`);
    if (use === true) {
      window = c.sliding_window === undefined ? QWEN_DEFAULT_WINDOW : c.sliding_window;
      const m = c.max_window_layers ?? QWEN_DEFAULT_MAX_WINDOW_LAYERS;
      if (typeof m !== 'number' || !Number.isSafeInteger(m) || m < 0)
        fail('max_window_layers', `must be a non-negative integer, got ${describeValue(m)}`);
      sliding = (layer) => window !== null && layer >= (m as number);
      field = 'max_window_layers';
    }
  }
  let layout = Array.from({ length: numLayers }, (_, i) => sliding(i));
  const types = c.layer_types;
  if (types !== undefined && types !== null) {
    if (!Array.isArray(types) || types.length !== numLayers || !types.every((t) => t === 'full_attention' || t === 'sliding_attention')) {
      fail('layer_types', `must list "full_attention" or "sliding_attention" for each of the ${numLayers} layers`);
    }
    const given = (types as string[]).map((t) => t === 'sliding_attention');
    // Qwen's class takes layer_types as given; the others ignore it, so it must agree.
    if (kind !== 'from-max-window-layers' && given.some((s, i) => s !== layout[i])) {
      fail('layer_types', `disagrees with sliding_window (${describeValue(window)}), which ${family} applies to every layer`);
    }
    layout = given;
    field = 'layer_types';
  }
  const count = layout.filter(Boolean).length;
  if (count === 0) return 0;
  if (window === null) fail('layer_types', 'names sliding_attention layers, but no sliding window is set (sliding_window, use_sliding_window)');
  if (typeof window !== 'number' || !Number.isSafeInteger(window) || window <= 0) {
    fail('sliding_window', `must be a positive integer, got ${describeValue(window)}`);
  }
  if (count < numLayers) {
    fail(
      field,
      `puts the sliding window on ${count} of the ${numLayers} layers; only a window on every layer (Mistral's layout) or on none is supported`,
    );
  }
  return window as number;
}

// Which adapter an OpenAI request runs on, for /v1/completions and /v1/chat/completions alike.
// The `model` field is read as SGLang reads it (entrypoints/openai/serving_base.py,
// _parse_model_parameter and _resolve_lora_path): split at the first ":" into the served model
// name and the adapter, both trimmed, so " demo : a " is adapter a and "demo:" or "demo:  " the
// base model; a bare adapter name works too. An adapter in `model` wins over lora_path, which
// otherwise names the adapter of every prompt, or of each prompt as a list. Any other bare
// name is a 404.
import type { TroupeEngine } from '../../api.js';
import { badRequest } from '../../errors.js';
import { loraNamesIn, parseLoraPaths } from '../per-prompt.js';
import { asString, type JsonObject } from '../validate.js';
import { at, modelNotFound } from './errors.js';

export interface ModelChoice {
  /** The model string as given, echoed back in every reply. */
  model: string;
  /** The adapter (null for the base model) of each of a request's `prompts` prompts. */
  lorasFor(prompts: number): Array<string | null>;
}

export async function resolveModel(body: JsonObject, servedModelName: string, engine: TroupeEngine): Promise<ModelChoice> {
  const model = at('model', () => {
    if (body.model === undefined || body.model === null)
      throw badRequest(`model is required; use "${servedModelName}" or "${servedModelName}:<adapter>"`);
    return asString(body.model, 'model');
  });
  const colon = model.indexOf(':');
  const base = (colon < 0 ? model : model.slice(0, colon)).trim();
  const named = colon < 0 ? null : model.slice(colon + 1).trim() || null;
  // lora_path is checked for its shape even when model wins, as SGLang's schema checks it.
  loraNamesIn(body.lora_path);

  // Adapters are not looked up here: the engine loads again one that left the loaded set, and
  // refuses one never loaded with SGLang's words, as SGLang's tokenizer manager does. Only a
  // bare model name other than the served one needs the engine: it may name an adapter.
  let fromModel: string | null;
  if (base === servedModelName) fromModel = named;
  else if (colon < 0 && (await engine.adapters([base])).length > 0) fromModel = base;
  else {
    const loaded = (await engine.adapters()).filter((a) => a.loaded).map((a) => a.name);
    throw modelNotFound(`The model '${model}' does not exist; served: ${[servedModelName, ...loaded].join(', ')}`);
  }

  if (fromModel !== null) {
    const lora = fromModel;
    return { model, lorasFor: (prompts) => Array.from({ length: prompts }, () => lora) };
  }
  return { model, lorasFor: (prompts) => parseLoraPaths(body.lora_path ?? null, prompts, Array.isArray(body.lora_path)) };
}

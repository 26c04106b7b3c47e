// Which adapter an OpenAI request runs on, for /v1/completions and /v1/chat/completions alike.
// The `model` field is read as SGLang reads it (entrypoints/openai/serving_base.py,
// _parse_model_parameter and _resolve_lora_path): split at the first ":" into the served model
// name and the adapter, both trimmed, so " demo : a " is adapter a and "demo:" or "demo:  " the
// base model; a bare adapter name works too. An adapter in `model` wins over lora_path, which
// otherwise names the adapter of every prompt, or of each prompt as a list.
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
    if (body.model === undefined || body.model === null) throw badRequest(`model is required; use "${servedModelName}" or "${servedModelName}:<adapter>"`);
    return asString(body.model, 'model');
  });
  const colon = model.indexOf(':');
  const base = (colon < 0 ? model : model.slice(0, colon)).trim();
  const named = colon < 0 ? null : model.slice(colon + 1).trim() || null;
  // lora_path is checked for its shape even when model wins, as SGLang's schema checks it.
  const listed = loraNamesIn(body.lora_path);
  // Only the adapters the request names are looked up; the whole list only when an error names the choices.
  const asked = [...new Set([...(colon < 0 ? [base] : []), ...(named === null ? [] : [named]), ...listed])];
  const known = new Set((await engine.adapters(asked)).map((a) => a.name));
  const served = async (): Promise<string> =>
    [servedModelName, ...(await engine.adapters()).map((a) => `${servedModelName}:${a.name}`)].join(', ');
  const notLoaded = async (name: string, param: string): Promise<Error> =>
    modelNotFound(`LoRA adapter ${JSON.stringify(name)} is not loaded; served: ${await served()}`, param);

  let fromModel: string | null;
  if (base === servedModelName) fromModel = named;
  else if (colon < 0 && known.has(base)) fromModel = base;
  else throw modelNotFound(`the model ${JSON.stringify(model)} does not exist; served: ${await served()}`);

  if (fromModel !== null) {
    if (!known.has(fromModel)) throw await notLoaded(fromModel, 'model');
    const lora = fromModel;
    return { model, lorasFor: (prompts) => Array.from({ length: prompts }, () => lora) };
  }
  const missing = listed.find((name) => !known.has(name));
  if (missing !== undefined) throw await notLoaded(missing, 'lora_path');
  return { model, lorasFor: (prompts) => parseLoraPaths(body.lora_path ?? null, prompts, Array.isArray(body.lora_path)) };
}

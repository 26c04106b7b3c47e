// Fields that SGLang takes either as one value for every prompt of a request or as a list with
// one value per prompt, lora_path the best known of them: /generate reads all its per-prompt
// fields this way, and the OpenAI routes read lora_path the same way.
import { badRequest } from '../errors.js';
import { at } from './openai/errors.js';
import { expected } from './validate.js';

/**
 * One value per prompt: absent or null gives `dflt()` for every prompt, a single value applies
 * to every prompt, and a list gives one value per prompt and must be as long as the request
 * has prompts. `batch` says whether list items are named `key[i]` in messages.
 */
export function perPrompt<T>(
  key: string,
  v: unknown,
  prompts: number,
  batch: boolean,
  parseOne: (v: unknown, field: string) => T,
  dflt: () => T,
): T[] {
  if (v === undefined || v === null) return Array.from({ length: prompts }, dflt);
  if (Array.isArray(v)) {
    if (v.length !== prompts) {
      throw badRequest(
        `${key} is a list of ${v.length} but the request has ${prompts} prompt${prompts === 1 ? '' : 's'}; ` +
          `give one value for all prompts or a list of exactly ${prompts}`,
      );
    }
    return v.map((x, i) => parseOne(x, batch ? `${key}[${i}]` : key));
  }
  const one = parseOne(v, key);
  return Array.from({ length: prompts }, () => one);
}

/** One lora_path value: an adapter name, or null for the base model. */
export function parseLoraName(v: unknown, field: string): string | null {
  if (v === null) return null;
  if (typeof v !== 'string' || v === '') expected(field, 'an adapter name or null for the base model', v);
  return v;
}

/**
 * SGLang's lora_path, on /generate and the OpenAI routes alike: absent or null is the base
 * model, a name is that adapter for every prompt, a list names one per prompt (null for the
 * base model). A mistake is a 400 naming lora_path (OpenAI's param too).
 */
export function parseLoraPaths(v: unknown, prompts: number, batch: boolean): Array<string | null> {
  return at('lora_path', () => perPrompt('lora_path', v, prompts, batch, parseLoraName, () => null));
}

/** The adapter names a lora_path value mentions, whatever the number of prompts. */
export function loraNamesIn(v: unknown): string[] {
  const list = Array.isArray(v) ? v : [v];
  return list
    .map((x, i) => at('lora_path', () => parseLoraName(x ?? null, Array.isArray(v) ? `lora_path[${i}]` : 'lora_path')))
    .filter((x): x is string => x !== null);
}

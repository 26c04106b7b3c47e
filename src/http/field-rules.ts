// What a route does with each field of SGLang's request types that it does not read itself:
// accept it (a label or hint that changes no output here), or accept only its default (a
// feature troupe lacks), so a client relying on that feature hears about it with a 400 naming
// the field instead of silently getting different output.
import { badRequest } from '../errors.js';
import { at } from './openai/errors.js';
import { expected, isObject, type JsonObject } from './validate.js';

export type FieldRule =
  /** The route's parser reads it. */
  | { kind: 'read' }
  /** Accepted and checked for type (as SGLang's schema does), with no effect here; `why` says so. */
  | { kind: 'accepted'; check: (v: unknown, field: string) => void; why: string }
  /** Accepted at its default only; `why` names the missing feature. */
  | { kind: 'default-only'; isDefault: (v: unknown) => boolean; dflt: string; why: string };

export const read: FieldRule = { kind: 'read' };

export function accepted(check: (v: unknown, field: string) => void, why: string): FieldRule {
  return { kind: 'accepted', check, why };
}

export function defaultOnly(isDefault: (v: unknown) => boolean, dflt: string, why: string): FieldRule {
  return { kind: 'default-only', isDefault, dflt, why };
}

// ---- defaults and types, as JSON spells them (null is every field's "use the default") ----------

/** One value or a list of them (a per-prompt field) where every value is the default. */
const each =
  (ok: (v: unknown) => boolean) =>
  (v: unknown): boolean =>
    Array.isArray(v) ? v.every(ok) : ok(v);
export const isNull = (v: unknown): boolean => v === null;
export const nullOrFalse = each((v) => v === null || v === false);
export const nullOrZero = each((v) => v === null || v === 0);
export const nullOrEmpty = each((v) => v === null || (Array.isArray(v) && v.length === 0) || (isObject(v) && Object.keys(v).length === 0));
export const nullEach = each(isNull);
/** SGLang's has_valid_data inverted: no item anywhere in nested lists. */
export const noData = (v: unknown): boolean => v === null || (Array.isArray(v) && v.every(noData));

export const aString = (v: unknown, f: string): void => {
  if (typeof v !== 'string') expected(f, 'a string', v);
};
export const aBool = (v: unknown, f: string): void => {
  if (typeof v !== 'boolean') expected(f, 'true or false', v);
};
export const aNumber = (v: unknown, f: string): void => {
  if (typeof v !== 'number') expected(f, 'a number', v);
};
export const anObject = (v: unknown, f: string): void => {
  if (!isObject(v)) expected(f, 'an object', v);
};
/** A string, or a list of strings (one per prompt). */
export const strings = (v: unknown, f: string): void => {
  if (Array.isArray(v)) v.forEach((x, i) => aString(x, `${f}[${i}]`));
  else aString(v, f);
};

/** What to do with a field that has no rule: ignore it, or refuse it as an unknown `what` in `where`. */
export type UnknownFields = 'ignore' | { what: string; where: string };

/**
 * Applies `rules` to the fields of `obj` (named by `name(key)`). Fields without a rule are
 * refused when `unknown` says so, listing what is accepted, and otherwise ignored, as SGLang's
 * schema ignores unknown top-level fields.
 */
export function applyFieldRules(obj: JsonObject, rules: ReadonlyMap<string, FieldRule>, name: (key: string) => string, unknown: UnknownFields): void {
  for (const key of Object.keys(obj)) {
    const rule = rules.get(key);
    const v = obj[key];
    if (rule === undefined) {
      if (unknown === 'ignore') continue;
      throw badRequest(`unknown ${unknown.what} ${JSON.stringify(key)} in ${unknown.where}; accepted: ${[...rules.keys()].join(', ')}`);
    }
    if (v === null || rule.kind === 'read') continue;
    const field = name(key);
    if (rule.kind === 'accepted') at(field, () => rule.check(v, field));
    else if (!rule.isDefault(v)) {
      at(field, () => {
        throw badRequest(`${field} is not supported by this server (${rule.why}); leave it out or send ${rule.dflt}`);
      });
    }
  }
}

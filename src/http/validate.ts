// Small checks shared by the request parsers. Every failure is a 400 that names the field
// and says what was expected and what arrived, so a client can fix its request at once.
import { badRequest, expected } from '../errors.js';

export { expected } from '../errors.js';
export { asInt, asNumber } from '../api.js';

export type JsonObject = Record<string, unknown>;

export function isObject(v: unknown): v is JsonObject {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

export function rejectUnknownKeys(obj: JsonObject, known: ReadonlySet<string>, where: string): void {
  for (const key of Object.keys(obj)) {
    if (!known.has(key)) {
      throw badRequest(`unknown ${where} ${JSON.stringify(key)}; accepted: ${[...known].join(', ')}`);
    }
  }
}

export function asBool(v: unknown, field: string): boolean {
  if (typeof v !== 'boolean') expected(field, 'true or false', v);
  return v;
}

export function asString(v: unknown, field: string): string {
  if (typeof v !== 'string') expected(field, 'a string', v);
  return v;
}

export function asNonEmptyString(v: unknown, field: string): string {
  const s = asString(v, field);
  if (s.length === 0) throw badRequest(`${field} must not be empty`);
  return s;
}

/** Parses a request body as a JSON object; malformed JSON and non-objects are 400s. */
export async function readJsonObject(req: Request): Promise<JsonObject> {
  const raw = await req.text();
  if (raw.trim() === '') throw badRequest('request body is empty; expected a JSON object');
  let body: unknown;
  try {
    body = JSON.parse(raw);
  } catch (e) {
    throw badRequest(`malformed JSON in request body: ${e instanceof Error ? e.message : String(e)}`);
  }
  if (!isObject(body)) expected('request body', 'a JSON object', body);
  return body;
}

// Small checks shared by the request parsers. Every failure is a 400 that names the field
// and says what was expected and what arrived, so a client can fix its request at once.
import { badRequest } from '../errors.js';

export type JsonObject = Record<string, unknown>;

/** A short description of a JSON value for error messages. */
export function describe(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'a list';
  if (typeof v === 'string') return `the string ${JSON.stringify(v.length > 40 ? v.slice(0, 40) + '...' : v)}`;
  if (typeof v === 'number') return `the number ${v}`;
  if (typeof v === 'boolean') return `${v}`;
  if (typeof v === 'object') return 'an object';
  return typeof v;
}

export function isObject(v: unknown): v is JsonObject {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

export function expected(field: string, what: string, got: unknown): never {
  throw badRequest(`${field} must be ${what}, got ${describe(got)}`);
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

export function asInt(v: unknown, field: string, min?: number): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v)) expected(field, 'an integer', v);
  if (min !== undefined && v < min) throw badRequest(`${field} must be >= ${min}, got ${v}`);
  return v;
}

export function asNumber(v: unknown, field: string): number {
  if (typeof v !== 'number' || !Number.isFinite(v)) expected(field, 'a number', v);
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

// One error type for everything a client or operator can get wrong. It carries its HTTP
// status and OpenAI-style type/code, so any layer can throw it and the HTTP layer answers
// {"error": {"message", "type", "code"}} without guessing.

export type ErrorKind =
  | 'invalid_request'
  | 'unauthorized'
  | 'forbidden'
  | 'not_found'
  | 'conflict'
  | 'payload_too_large'
  | 'unsupported_media_type'
  | 'unavailable'
  | 'internal';

const STATUS: Record<ErrorKind, number> = {
  invalid_request: 400,
  unauthorized: 401,
  forbidden: 403,
  not_found: 404,
  conflict: 409,
  payload_too_large: 413,
  unsupported_media_type: 415,
  unavailable: 503,
  internal: 500,
};

const TYPE: Record<ErrorKind, string> = {
  invalid_request: 'invalid_request_error',
  // OpenAI answers a wrong or missing API key with this type too.
  unauthorized: 'invalid_request_error',
  forbidden: 'invalid_request_error',
  not_found: 'invalid_request_error',
  conflict: 'invalid_request_error',
  payload_too_large: 'invalid_request_error',
  unsupported_media_type: 'invalid_request_error',
  unavailable: 'server_error',
  internal: 'server_error',
};

export class TroupeError extends Error {
  readonly status: number;
  readonly type: string;
  constructor(
    readonly kind: ErrorKind,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'TroupeError';
    this.status = STATUS[kind];
    this.type = TYPE[kind];
  }

  toJSON(): { error: { message: string; type: string; code: number } } {
    return { error: { message: this.message, type: this.type, code: this.status } };
  }
}

export const badRequest = (message: string): TroupeError => new TroupeError('invalid_request', message);
export const notFound = (message: string): TroupeError => new TroupeError('not_found', message);

/** A short description of a value for error messages: what arrived, without echoing all of it. */
export function describeValue(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'a list';
  if (typeof v === 'string') return `the string ${JSON.stringify(v.length > 40 ? v.slice(0, 40) + '...' : v)}`;
  if (typeof v === 'number') return `the number ${Object.is(v, -0) ? '-0' : v}`;
  if (typeof v === 'boolean') return `${v}`;
  if (typeof v === 'object') return 'an object';
  return typeof v;
}

/** The 400 for a value of the wrong type or range: names the field, what it takes and what came. */
export function expected(field: string, what: string, got: unknown): never {
  throw badRequest(`${field} must be ${what}, got ${describeValue(got)}`);
}

/** Errors cross worker threads as plain objects; this rebuilds a TroupeError on the other side. */
export interface WireError {
  kind: ErrorKind;
  message: string;
}

export function toWire(err: unknown): WireError {
  if (err instanceof TroupeError) return { kind: err.kind, message: err.message };
  return { kind: 'internal', message: err instanceof Error ? err.message : String(err) };
}

export function fromWire(w: WireError): TroupeError {
  return new TroupeError(w.kind, w.message);
}

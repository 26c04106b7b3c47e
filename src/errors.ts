// One error type for everything a client or operator can get wrong. It carries its HTTP
// status and OpenAI-style type/code, so any layer can throw it and the HTTP layer answers
// {"error": {"message", "type", "code"}} without guessing.

export type ErrorKind = 'invalid_request' | 'not_found' | 'conflict' | 'unavailable' | 'internal';

const STATUS: Record<ErrorKind, number> = {
  invalid_request: 400,
  not_found: 404,
  conflict: 409,
  unavailable: 503,
  internal: 500,
};

const TYPE: Record<ErrorKind, string> = {
  invalid_request: 'invalid_request_error',
  not_found: 'invalid_request_error',
  conflict: 'invalid_request_error',
  unavailable: 'server_error',
  internal: 'server_error',
};

export class TroupeError extends Error {
  readonly status: number;
  readonly type: string;
  constructor(readonly kind: ErrorKind, message: string, options?: { cause?: unknown }) {
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

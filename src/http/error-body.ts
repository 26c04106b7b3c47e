// Every error the server answers with has one shape: {"error": {"message", "type", "code"}},
// with the status the error carries (TroupeError knows its own) and 500 for anything else.
import { HTTPException } from 'hono/http-exception';
import { TroupeError } from '../errors.js';

export interface ErrorBody {
  error: { message: string; type: string; code: number };
}

export function errorBody(err: unknown): { status: number; body: ErrorBody } {
  if (err instanceof TroupeError) return { status: err.status, body: err.toJSON() };
  if (err instanceof HTTPException) {
    const type = err.status >= 500 ? 'server_error' : 'invalid_request_error';
    return { status: err.status, body: { error: { message: err.message, type, code: err.status } } };
  }
  const message = err instanceof Error ? err.message : String(err);
  return { status: 500, body: { error: { message: message || 'internal error', type: 'server_error', code: 500 } } };
}

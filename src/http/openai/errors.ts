// OpenAI's error shape, {"error": {"message", "type", "param", "code"}}: the official clients
// read param to tell which request field was wrong, so validation failures carry it.
import type { Context } from 'hono';
import { TroupeError } from '../../errors.js';
import { errorBody } from '../error-body.js';

export interface OpenAiErrorBody {
  error: { message: string; type: string; param: string | null; code: number };
}

/** A TroupeError that knows which request field it is about. */
export class ParamError extends TroupeError {
  constructor(
    err: TroupeError,
    readonly param: string,
  ) {
    super(err.kind, err.message, { cause: err });
  }
}

/** Runs a field's parser; a client error it throws is tagged with the field. */
export function at<T>(param: string, parse: () => T): T {
  try {
    return parse();
  } catch (err) {
    if (err instanceof TroupeError && !(err instanceof ParamError) && err.status < 500) throw new ParamError(err, param);
    throw err;
  }
}

/** An unknown model or adapter: 404, as OpenAI answers for a model that does not exist. */
export function modelNotFound(message: string, param = 'model'): ParamError {
  return new ParamError(new TroupeError('not_found', message), param);
}

/**
 * The engine's refusals of a prompt (too long for the context or the KV cache, empty, ids outside
 * the vocabulary) speak of "the input" or "the prompt"; they are tagged with the request's prompt field.
 */
export function tagPromptError(err: unknown, param: string): unknown {
  if (err instanceof TroupeError && !(err instanceof ParamError) && err.status === 400 && /\b(input|prompt)/.test(err.message)) {
    return new ParamError(err, param);
  }
  return err;
}

export function openAiErrorBody(err: unknown): { status: number; body: OpenAiErrorBody } {
  const { status, body } = errorBody(err);
  const param = err instanceof ParamError ? err.param : null;
  return { status, body: { error: { ...body.error, param } } };
}

export function openAiError(c: Context, err: unknown): Response {
  const { status, body } = openAiErrorBody(err);
  return c.json(body, status as 400);
}

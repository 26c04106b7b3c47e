// SGLang's request-control routes (entrypoints/http_server.py): POST /abort_request ends a
// running or waiting request by its rid, or every request with abort_all, and GET or POST
// /flush_cache empties the prefix cache (scheduler/prefix-cache.ts). Both answer as SGLang does: an empty 200 for an
// abort (an rid no request has is not an error), a line of text for a flush.
import type { Hono } from 'hono';
import type { TroupeEngine } from '../api.js';
import type { Log } from '../log.js';
import { applyFieldRules, accepted, aString, read, type FieldRule } from './field-rules.js';
import { asBool, asString, readJsonObject } from './validate.js';

/** AbortReq's fields (managers/io_struct.py); the rest are set between SGLang's processes. */
const ABORT_FIELDS: ReadonlyMap<string, FieldRule> = new Map<string, FieldRule>([
  ['rid', read],
  ['abort_all', read],
  ['abort_message', read],
  ['finished_reason', accepted(() => {}, "set by SGLang's scheduler")],
  ['weight_versions', accepted(() => {}, "set by SGLang's scheduler")],
  ['http_worker_ipc', accepted(aString, 'set between SGLang processes')],
]);

/** SGLang's reply to /flush_cache, word for word: clients and scripts print it. */
export const FLUSH_CACHE_REPLY =
  'Cache flushed.\nPlease check backend logs for more details. ' +
  '(When there are running or waiting requests, the operation will not be performed.)\n';

export function registerControlRoutes(app: Hono, engine: TroupeEngine, log: Log): void {
  app.post('/abort_request', async (c) => {
    const body = await readJsonObject(c.req.raw);
    applyFieldRules(body, ABORT_FIELDS, (k) => k, 'ignore');
    const rid = body.rid === undefined || body.rid === null ? '' : asString(body.rid, 'rid');
    const all = body.abort_all === undefined || body.abort_all === null ? false : asBool(body.abort_all, 'abort_all');
    const message =
      body.abort_message === undefined || body.abort_message === null
        ? 'the request was aborted by /abort_request'
        : asString(body.abort_message, 'abort_message');
    if (all) {
      const n = engine.abortAll(message);
      log('info', `/abort_request ended all ${n} running or waiting requests`);
    } else if (rid === '') {
      // SGLang ignores this too: an empty rid would otherwise match every request.
      log('warning', '/abort_request without rid or abort_all ignored');
    } else if (engine.abort(rid, message)) {
      log('info', `/abort_request ended request ${JSON.stringify(rid)}`);
    } else {
      log('debug', `/abort_request: no running or waiting request has rid ${JSON.stringify(rid)}`);
    }
    return c.body(null, 200);
  });

  // Unlike SGLang, a flush with requests running is done too: they keep the blocks they hold,
  // which are simply no longer kept for others. So the answer is always SGLang's for a success.
  app.on(['GET', 'POST'], '/flush_cache', async (c) => {
    await engine.flushCache();
    log('info', '/flush_cache: the prefix cache is empty');
    return c.text(FLUSH_CACHE_REPLY, 200);
  });
}

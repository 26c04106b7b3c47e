// The HTTP app: SGLang's native API over a TroupeEngine. Built with app.request() in mind, so
// tests drive it without sockets; server.ts puts it on a port.
import { Hono } from 'hono';
import type { TroupeEngine } from '../api.js';
import type { Log } from '../log.js';
import { registerAdapterRoutes } from './adapters.js';
import { registerAdapterDebugRoutes } from './debug/adapters.js';
import { registerMetricsRoute } from './metrics.js';
import { errorBody } from './error-body.js';
import { registerGenerate } from './generate.js';
import { registerHealthRoutes } from './health.js';
import { registerOpenAiRoutes, type OpenAiOptions } from './openai/index.js';

export interface AppOptions extends OpenAiOptions {
  servedModelName: string;
  log?: Log;
}

export function createApp(engine: TroupeEngine, opts: AppOptions): Hono {
  const log: Log = opts.log ?? (() => {});
  const app = new Hono();

  app.use(async (c, next) => {
    const start = performance.now();
    await next();
    const ms = (performance.now() - start).toFixed(1);
    log('debug', `${c.req.method} ${c.req.path} ${c.res.status} ${ms}ms`);
  });

  registerGenerate(app, engine, log);
  registerAdapterRoutes(app, engine, log);
  registerHealthRoutes(app, engine, log, opts.servedModelName);
  registerOpenAiRoutes(app, engine, log, opts);
  registerAdapterDebugRoutes(app, engine);
  registerMetricsRoute(app, engine);

  app.notFound((c) => {
    const message = `no route for ${c.req.method} ${c.req.path}`;
    return c.json({ error: { message, type: 'invalid_request_error', code: 404 } }, 404);
  });

  app.onError((err, c) => {
    const { status, body } = errorBody(err);
    if (status >= 500) log('error', `${c.req.method} ${c.req.path} failed: ${err.stack ?? err.message}`);
    return c.json(body, status as 500);
  });

  return app;
}

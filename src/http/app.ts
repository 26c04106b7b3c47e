// The HTTP app: SGLang's native API over a TroupeEngine. Built with app.request() in mind, so
// tests drive it without sockets; server.ts puts it on a port.
import { Hono } from 'hono';
import type { TroupeEngine } from '../api.js';
import type { ServeOptions } from '../config/options.js';
import { parseArgs } from '../config/parse.js';
import { validateFlags } from '../config/validate.js';
import type { Log } from '../log.js';
import { registerAdapterRoutes } from './adapters.js';
import { registerControlRoutes } from './control.js';
import { registerAdapterDebugRoutes } from './debug/adapters.js';
import { registerMetricsRoute } from './metrics.js';
import { errorBody } from './error-body.js';
import { registerGenerate } from './generate.js';
import { apiKeyGuard, hostGuard, jsonBodyGuard, sizeGuard } from './guards.js';
import { registerHealthRoutes } from './health.js';
import { registerOpenAiRoutes, type OpenAiOptions } from './openai/index.js';
import { registerServerInfo } from './server-info.js';

/**
 * The server flags the HTTP layer enforces; any left out take their `troupe serve` defaults.
 * host is the address the app is served on: with no allowedHosts, a loopback one accepts only
 * loopback Host names, so an app served elsewhere should say where.
 */
export type AppFlags = Pick<ServeOptions, 'host' | 'apiKey' | 'allowedHosts' | 'maxRequestBytes' | 'maxTopLogprobsNum'>;

/**
 * What the app serves with. The rest of the server's options (those `troupe serve` passes) are
 * reported by /get_server_info; any left out take their defaults there.
 */
export interface AppOptions extends Omit<OpenAiOptions, 'maxTopLogprobsNum'>, Partial<Omit<ServeOptions, 'servedModelName'>> {
  servedModelName: string;
  log?: Log;
}

export function createApp(engine: TroupeEngine, opts: AppOptions): Hono {
  const log: Log = opts.log ?? (() => {});
  const defaults = validateFlags(parseArgs([]).flags).options;
  // Only the server's options, each as given or else its default: opts holds the app's own too.
  const given = Object.fromEntries(
    Object.keys(defaults).flatMap((k) => {
      const v = opts[k as keyof AppOptions];
      return v === undefined ? [] : [[k, v]];
    }),
  ) as Partial<ServeOptions>;
  const options: ServeOptions = { ...defaults, ...given, servedModelName: opts.servedModelName };
  const flags: AppFlags = {
    host: options.host,
    apiKey: options.apiKey,
    allowedHosts: options.allowedHosts,
    maxRequestBytes: options.maxRequestBytes,
    maxTopLogprobsNum: options.maxTopLogprobsNum,
  };
  const app = new Hono();

  app.use(async (c, next) => {
    const start = performance.now();
    await next();
    const ms = (performance.now() - start).toFixed(1);
    log('debug', `${c.req.method} ${c.req.path} ${c.res.status} ${ms}ms`);
  });
  // A foreign Host is refused even with the right key, and the key is checked before anything
  // about the body, so an unauthenticated client learns nothing about what the routes accept.
  const hosts = hostGuard(flags.host, flags.allowedHosts);
  if (hosts) app.use(hosts);
  if (flags.apiKey !== null) app.use(apiKeyGuard(flags.apiKey));
  app.use(jsonBodyGuard);
  app.use(sizeGuard(flags.maxRequestBytes));

  registerGenerate(app, engine, log, flags);
  registerAdapterRoutes(app, engine, log);
  registerHealthRoutes(app, engine, log, opts.servedModelName);
  registerControlRoutes(app, engine, log);
  registerServerInfo(app, engine, options);
  registerOpenAiRoutes(app, engine, log, { ...opts, maxTopLogprobsNum: flags.maxTopLogprobsNum });
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

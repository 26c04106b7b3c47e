// GET /metrics: the engine's Prometheus metrics in the text exposition format. GET
// /metrics/gateway: only the series inference gateways' endpoint pickers read (queue, running
// requests, KV cache, adapters), which stays small however many adapters have come and gone.
import type { Context, Hono } from 'hono';
import type { Registry } from 'prom-client';
import type { TroupeEngine } from '../api.js';

type Registries = { registry?: Registry; gatewayRegistry?: Registry };

function registriesOf(engine: TroupeEngine): Registries {
  return (engine as { metrics?: Registries }).metrics ?? {};
}

async function serve(c: Context, registry: Registry | undefined): Promise<Response> {
  if (!registry) {
    return c.json({ error: { message: 'this engine does not report metrics', type: 'invalid_request_error', code: 404 } }, 404);
  }
  return c.body(await registry.metrics(), 200, { 'content-type': registry.contentType });
}

export function registerMetricsRoute(app: Hono, engine: TroupeEngine): void {
  app.get('/metrics', (c) => serve(c, registriesOf(engine).registry));
  app.get('/metrics/gateway', (c) => serve(c, registriesOf(engine).gatewayRegistry));
}

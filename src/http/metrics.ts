// GET /metrics: the engine's Prometheus metrics in the text exposition format.
import type { Hono } from 'hono';
import type { Registry } from 'prom-client';
import type { TroupeEngine } from '../api.js';

function registryOf(engine: TroupeEngine): Registry | null {
  const metrics = (engine as { metrics?: { registry?: Registry } }).metrics;
  return metrics?.registry ?? null;
}

export function registerMetricsRoute(app: Hono, engine: TroupeEngine): void {
  app.get('/metrics', async (c) => {
    const registry = registryOf(engine);
    if (!registry) {
      return c.json({ error: { message: 'this engine does not report metrics', type: 'invalid_request_error', code: 404 } }, 404);
    }
    return c.body(await registry.metrics(), 200, { 'content-type': registry.contentType });
  });
}

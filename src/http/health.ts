// Liveness and model endpoints, as SGLang serves them. Both health probes answer 503 as soon as
// the engine reports that it cannot serve (an actor died, or the server is draining), so an
// orchestrator restarts it or a load balancer stops sending work.
import type { Context, Hono } from 'hono';
import type { TroupeEngine } from '../api.js';
import type { Log } from '../log.js';
import { errorBody } from './error-body.js';
import { parseSamplingParams } from './generate-request.js';

// SGLang's limit for /health_generate; a server that cannot produce one token in this time is unhealthy.
const HEALTH_GENERATE_TIMEOUT_MS = 20_000;

/** Engines that know when they cannot serve (createEngine's does); any other is taken as able to. */
function unhealthyOf(engine: TroupeEngine): () => Error | null {
  const e = engine as TroupeEngine & { unhealthy?: () => Error | null };
  return typeof e.unhealthy === 'function' ? () => e.unhealthy!() : () => null;
}

function unavailable(c: Context, err: unknown): Response {
  const { body } = errorBody(err);
  body.error.code = 503;
  body.error.type = 'server_error';
  return c.json(body, 503);
}

export function registerHealthRoutes(app: Hono, engine: TroupeEngine, log: Log, servedModelName: string): void {
  const unhealthy = unhealthyOf(engine);

  app.get('/health', (c) => {
    const bad = unhealthy();
    return bad ? unavailable(c, bad) : c.body(null, 200);
  });

  app.get('/health_generate', async (c) => {
    const bad = unhealthy();
    if (bad) return unavailable(c, bad);
    const signal = AbortSignal.any([c.req.raw.signal, AbortSignal.timeout(HEALTH_GENERATE_TIMEOUT_MS)]);
    const sampling = parseSamplingParams({ max_new_tokens: 1, temperature: 0 }, 'sampling_params').options;
    try {
      // Token 0 exists in every vocabulary, which keeps the check independent of the tokenizer.
      // Kept out of the metrics, as SGLang keeps its health checks (log_metrics: false).
      await engine.generate({ inputIds: [0], sampling, lora: null, returnLogprob: false, topLogprobsNum: 0, logMetrics: false, signal });
    } catch (err) {
      log('warning', `health_generate failed: ${errorBody(err).body.error.message}`);
      return unavailable(c, err);
    }
    return c.body(null, 200);
  });

  app.get('/get_model_info', (c) => {
    const info = engine.modelInfo();
    return c.json({
      model_path: info.modelPath,
      tokenizer_path: info.tokenizerPath,
      is_generation: true,
      served_model_name: servedModelName,
      max_total_tokens: info.maxTotalTokens,
      device: info.device,
      tp_size: info.tpSize,
      tp_collective: info.collective,
      lora_kernel: info.loraKernel,
    });
  });
}

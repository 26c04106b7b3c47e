// POST /generate, SGLang's native generation endpoint: one prompt gives one item, a batch (or
// n > 1 samples) a list; with "stream": true the items go out as server-sent events ending in
// [DONE]. SGLang takes PUT as well.
import type { Hono } from 'hono';
import type { TroupeEngine } from '../api.js';
import type { Log } from '../log.js';
import { errorBody } from './error-body.js';
import { parseGenerateRequest, type GenerateLimits, type ParsedGenerate } from './generate-request.js';
import { toWireItem } from './generate-response.js';
import { Call, collectJobs, streamJobs, type StreamShape } from './jobs.js';
import { readJsonObject } from './validate.js';

export function registerGenerate(app: Hono, engine: TroupeEngine, log: Log, limits: GenerateLimits): void {
  app.on(['POST', 'PUT'], '/generate', async (c) => {
    const parsed = parseGenerateRequest(await readJsonObject(c.req.raw), limits);
    const call = new Call(c.req.raw);
    try {
      const jobs = parsed.items.map((item) => item.request);
      if (parsed.stream) return await streamJobs(c, engine, jobs, call, log, streamShape(parsed));
      const outputs = await collectJobs(engine, jobs, call);
      const items = outputs.map((out, i) => toWireItem(out, parsed.items[i]!));
      return c.json(parsed.batch ? items : items[0]);
    } finally {
      call.detach();
    }
  });
}

/** SGLang's stream: cumulative items, tagged with their index in a batch. */
function streamShape(parsed: ParsedGenerate): StreamShape {
  // Completion tokens at each item's last event; stream_interval counts from there.
  const sent = parsed.items.map(() => -1);
  return {
    route: 'generate',
    render: (i, chunk) => {
      const item = parsed.items[i]!;
      const since = chunk.completionTokens - sent[i]!;
      // The first update and the last always go out, as SGLang sends them.
      if (chunk.finishReason === null && sent[i]! >= 0 && since < item.streamInterval) return [];
      sent[i] = chunk.completionTokens;
      const wire = toWireItem(chunk, item);
      if (parsed.batch) wire.index = i;
      return [wire];
    },
    errorEvent: (err) => errorBody(err).body,
  };
}

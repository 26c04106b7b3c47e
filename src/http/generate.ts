// POST /generate, SGLang's native generation endpoint: one prompt gives one item, a batch gives
// a list; with "stream": true the items go out as server-sent events ending in [DONE].
import type { Context, Hono } from 'hono';
import { streamSSE } from 'hono/streaming';
import type { GenerateChunk, TroupeEngine } from '../api.js';
import type { Log } from '../log.js';
import { errorBody } from './error-body.js';
import { parseGenerateRequest, type GenerateLimits, type ParsedGenerate } from './generate-request.js';
import { toWireItem } from './generate-response.js';
import { readJsonObject } from './validate.js';

export function registerGenerate(app: Hono, engine: TroupeEngine, log: Log, limits: GenerateLimits): void {
  app.post('/generate', async (c) => {
    const parsed = parseGenerateRequest(await readJsonObject(c.req.raw), limits);
    // One controller for the whole call: a client that goes away, or one prompt of a batch
    // failing, stops the engine work for every prompt and frees their KV blocks.
    const controller = new AbortController();
    const clientSignal = c.req.raw.signal;
    const onClientGone = (): void => controller.abort(new Error('client disconnected'));
    if (clientSignal.aborted) onClientGone();
    else clientSignal.addEventListener('abort', onClientGone, { once: true });

    if (parsed.stream) return streamGenerate(c, engine, parsed, controller, log);

    let outputs;
    try {
      outputs = await Promise.all(
        parsed.items.map((item) => engine.generate({ ...item.request, signal: controller.signal })),
      );
    } catch (err) {
      controller.abort(err);
      throw err;
    } finally {
      clientSignal.removeEventListener('abort', onClientGone);
    }
    const items = outputs.map((out, i) => toWireItem(out, parsed.items[i]!));
    return c.json(parsed.batch ? items : items[0]);
  });
}

async function streamGenerate(
  c: Context, engine: TroupeEngine, parsed: ParsedGenerate, controller: AbortController, log: Log,
): Promise<Response> {
  const { signal } = controller;
  const iterators: AsyncIterator<GenerateChunk>[] = [];
  const done = parsed.items.map(() => false);
  const release = (): void => {
    iterators.forEach((it, i) => {
      if (!done[i]) it.return?.().catch(() => {});
    });
  };

  // The first chunk of every prompt is awaited before answering, so errors the engine finds
  // up front (an unknown adapter, a prompt that is too long) still get a proper 4xx status.
  let firsts: IteratorResult<GenerateChunk>[];
  try {
    for (const item of parsed.items) {
      iterators.push(engine.stream({ ...item.request, signal })[Symbol.asyncIterator]());
    }
    firsts = await Promise.all(iterators.map((it) => it.next()));
  } catch (err) {
    controller.abort(err);
    release();
    throw err;
  }

  return streamSSE(c, async (sse) => {
    sse.onAbort(() => controller.abort(new Error('client disconnected')));
    const send = (data: unknown): Promise<unknown> => sse.write(`data: ${JSON.stringify(data)}\n\n`);
    try {
      await Promise.all(iterators.map(async (it, i) => {
        const item = parsed.items[i]!;
        let r = firsts[i]!;
        while (!r.done) {
          if (signal.aborted) return;
          const wire = toWireItem(r.value, item);
          if (parsed.batch) wire.index = i;
          await send(wire);
          r = await it.next();
        }
        done[i] = true;
      }));
    } catch (err) {
      controller.abort(err);
      if (!sse.aborted) {
        log('warning', `generate stream failed: ${err instanceof Error ? err.message : String(err)}`);
        await send(errorBody(err).body);
      }
    } finally {
      release();
    }
    if (!sse.aborted) await sse.write('data: [DONE]\n\n');
  });
}

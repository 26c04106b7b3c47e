// Runs the engine requests ("jobs") of one HTTP call, for /generate and the OpenAI routes alike:
// all at once, collected or streamed as server-sent events. One AbortController covers the
// call: a client that goes away, or one job failing, stops every job and frees its KV blocks.
import { setMaxListeners } from 'node:events';
import type { Context } from 'hono';
import { streamSSE } from 'hono/streaming';
import type { GenerateChunk, GenerateInput, GenerateOutput, TroupeEngine } from '../api.js';
import type { Log } from '../log.js';

/** The engine work of one HTTP call, tied to the client's connection until detach(). */
export class Call {
  readonly controller = new AbortController();
  private readonly clientSignal: AbortSignal;
  private readonly onGone = (): void => this.controller.abort(new Error('client disconnected'));

  constructor(req: Request) {
    // Every job (a prompt, or one of its n samples) listens to the call's signal until it ends, so
    // a batch has as many listeners as jobs: more than ten is no leak, and Node's warning of one
    // would only mislead whoever reads the server's log.
    setMaxListeners(Infinity, this.controller.signal);
    this.clientSignal = req.signal;
    if (this.clientSignal.aborted) this.onGone();
    else this.clientSignal.addEventListener('abort', this.onGone, { once: true });
  }

  get signal(): AbortSignal {
    return this.controller.signal;
  }

  /** Stops every job of the call. */
  abort(reason: unknown): void {
    this.controller.abort(reason);
  }

  /** Unties the call from the connection; a stream watches its own (see streamJobs). */
  detach(): void {
    this.clientSignal.removeEventListener('abort', this.onGone);
  }
}

/** Runs every job to its end. `mapError` turns an engine error into the one the route throws. */
export async function collectJobs(
  engine: TroupeEngine,
  jobs: readonly GenerateInput[],
  call: Call,
  mapError: (err: unknown) => unknown = (e) => e,
): Promise<GenerateOutput[]> {
  try {
    return await Promise.all(jobs.map((job) => engine.generate({ ...job, signal: call.signal })));
  } catch (err) {
    call.abort(err);
    throw mapError(err);
  }
}

export interface StreamShape {
  /** Names the route in the warning logged when a stream fails. */
  route: string;
  /**
   * The payloads sent for one engine chunk of job `index`. It is called in order per job, so
   * it may keep per-job state (what was sent so far).
   */
  render(index: number, chunk: GenerateChunk): unknown[] | Promise<unknown[]>;
  /** The event that reports an error after the stream began (it is followed by [DONE]). */
  errorEvent(err: unknown): unknown;
  /** Turns an engine error found before the stream began into the one the route throws. */
  mapError?(err: unknown): unknown;
  /** Payloads sent after every job ended well, before [DONE]; given each job's last chunk. */
  tail?(lasts: GenerateChunk[]): unknown[];
}

/**
 * Streams every job as `data: <json>` events ending with `data: [DONE]`. The first chunk of each
 * job is awaited before the 200 goes out, so errors the engine finds up front (an unknown
 * adapter, a prompt that is too long) keep their 4xx status. A client that disconnects stops
 * every job; an error later on is sent as one event, after which the stream ends as usual.
 */
export async function streamJobs(
  c: Context,
  engine: TroupeEngine,
  jobs: readonly GenerateInput[],
  call: Call,
  log: Log,
  shape: StreamShape,
): Promise<Response> {
  const { signal } = call;
  const iterators: AsyncIterator<GenerateChunk>[] = [];
  const done = jobs.map(() => false);
  const release = (): void => {
    iterators.forEach((it, i) => {
      if (!done[i]) it.return?.().catch(() => {});
    });
  };
  let firsts: IteratorResult<GenerateChunk>[];
  try {
    for (const job of jobs) iterators.push(engine.stream({ ...job, signal })[Symbol.asyncIterator]());
    firsts = await Promise.all(iterators.map((it) => it.next()));
  } catch (err) {
    call.abort(err);
    release();
    throw shape.mapError ? shape.mapError(err) : err;
  }

  return streamSSE(c, async (sse) => {
    sse.onAbort(() => call.abort(new Error('client disconnected')));
    const send = (data: unknown): Promise<unknown> => sse.write(`data: ${JSON.stringify(data)}\n\n`);
    const last: Array<GenerateChunk | null> = jobs.map(() => null);
    let failed = false;
    try {
      await Promise.all(
        iterators.map(async (it, i) => {
          let r = firsts[i]!;
          while (!r.done) {
            if (signal.aborted) return;
            last[i] = r.value;
            for (const payload of await shape.render(i, r.value)) await send(payload);
            r = await it.next();
          }
          done[i] = true;
        }),
      );
    } catch (err) {
      failed = true;
      call.abort(err);
      if (!sse.aborted) {
        log('warning', `${shape.route} stream failed: ${err instanceof Error ? err.message : String(err)}`);
        await send(shape.errorEvent(err));
      }
    } finally {
      release();
    }
    if (sse.aborted) return;
    if (!failed && shape.tail && last.every((x) => x !== null)) {
      for (const payload of shape.tail(last as GenerateChunk[])) await send(payload);
    }
    await sse.write('data: [DONE]\n\n');
  });
}

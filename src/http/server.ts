// Puts an app on a port with @hono/node-server. The app can be swapped while the socket stays
// bound: `troupe serve` listens before it loads the model, answering 503 until the engine is
// ready. Closing can give the responses being written a moment to reach their clients.
import type { AddressInfo } from 'node:net';
import type { Server } from 'node:http';
import { serve } from '@hono/node-server';
import { Hono } from 'hono';
import { TroupeError } from '../errors.js';

export interface RunningServer {
  /** The bound port (the real one when 0 was asked for). */
  port: number;
  /** Serves `app` from now on; requests already being answered stay with the app they reached. */
  use(app: Hono): void;
  /**
   * Stops listening. Responses still being written get up to `graceMs` (0 by default) to
   * finish; then every connection is dropped, streams included, so shutdown never waits on a
   * client for longer than that.
   */
  close(graceMs?: number): Promise<void>;
}

/** Answers every route with 503 while the model loads, so health probes see "not ready yet". */
export function loadingApp(): Hono {
  const app = new Hono();
  app.all('*', (c) => c.json(new TroupeError('unavailable', 'the server is loading the model').toJSON(), 503));
  return app;
}

export function startServer(app: Hono, host: string, port: number): Promise<RunningServer> {
  let current = app;
  let active = 0;
  let onIdle: (() => void) | null = null;
  return new Promise((resolve, reject) => {
    const server = serve({ fetch: (req, env) => current.fetch(req, env), hostname: host, port }) as Server;
    server.on('request', (_req, res) => {
      active++;
      res.once('close', () => {
        if (--active === 0) onIdle?.();
      });
    });
    const onError = (err: NodeJS.ErrnoException): void => {
      const why = err.code === 'EADDRINUSE' ? 'the port is already in use' : err.message;
      // A TroupeError, so the command line prints this one line rather than a stack.
      reject(new TroupeError('unavailable', `cannot listen on ${host}:${port}: ${why}`, { cause: err }));
    };
    server.once('error', onError);
    server.once('listening', () => {
      server.off('error', onError);
      const bound = (server.address() as AddressInfo).port;
      resolve({
        port: bound,
        use: (next) => {
          current = next;
        },
        close: (graceMs = 0) =>
          new Promise<void>((res, rej) => {
            server.close((err) => (err ? rej(err) : res()));
            server.closeIdleConnections();
            const drop = (): void => {
              clearTimeout(timer);
              onIdle = null;
              server.closeAllConnections();
            };
            const timer = setTimeout(drop, graceMs);
            if (graceMs <= 0 || active === 0) drop();
            else onIdle = drop;
          }),
      });
    });
  });
}

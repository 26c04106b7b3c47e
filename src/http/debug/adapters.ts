// The adapter statechart visualizer: GET /debug/adapters (the page), /debug/adapters/state
// (every adapter's status as JSON) and /debug/adapters/events (the same, live, as server-sent
// events). Everything the page needs is inline, so it works with no network beyond this server.
// The scheduler owns the adapters' machines: the table is asked of it, only while a page (or a
// client) looks, and the engine keeps no copy of it.
import type { Context, Hono } from 'hono';
import { streamSSE } from 'hono/streaming';
import type { TroupeEngine } from '../../api.js';
import type { AdapterDetail, AdapterTransition } from '../../scheduler/index.js';
import { adapterChartJson } from '../../../statecharts/adapter.machine.js';
import { renderAdapterPage } from './adapters-page.js';

/** What an engine offers the visualizer; the embedded Engine has it, test doubles may not. */
export interface AdapterMonitor {
  readonly poolSlots: number;
  adapterDetails(): Promise<AdapterDetail[]>;
  onAdapterTransition(listener: (transitions: AdapterTransition[]) => void): () => void;
}

export interface AdapterStateBody {
  poolSlots: number;
  slotsUsed: number;
  adapters: AdapterDetail[];
}

/** Refcounts change without a transition; a connected page polls for them this often. */
const REFRESH_MS = 1000;

function monitorOf(engine: TroupeEngine): AdapterMonitor | null {
  const m = engine as Partial<AdapterMonitor>;
  return typeof m.adapterDetails === 'function' && typeof m.onAdapterTransition === 'function' && typeof m.poolSlots === 'number'
    ? (m as AdapterMonitor)
    : null;
}

function body(monitor: AdapterMonitor, adapters: AdapterDetail[]): AdapterStateBody {
  return { poolSlots: monitor.poolSlots, slotsUsed: adapters.reduce((n, a) => n + (a.slot === null ? 0 : a.slotSpan), 0), adapters };
}

export function registerAdapterDebugRoutes(app: Hono, engine: TroupeEngine): void {
  const unsupported = (c: Context): Response =>
    c.json({ error: { message: 'this engine does not report adapter states', type: 'invalid_request_error', code: 404 } }, 404);
  let page: string | null = null;

  app.get('/debug/adapters', (c) => {
    const monitor = monitorOf(engine);
    if (!monitor) return unsupported(c);
    page ??= renderAdapterPage(adapterChartJson());
    return c.html(page);
  });

  app.get('/debug/adapters/state', async (c) => {
    const monitor = monitorOf(engine);
    if (!monitor) return unsupported(c);
    return c.json(body(monitor, await monitor.adapterDetails()));
  });

  app.get('/debug/adapters/events', (c) => {
    const monitor = monitorOf(engine);
    if (!monitor) return unsupported(c);
    return streamSSE(c, async (sse) => {
      let last = '';
      let queue = Promise.resolve();
      // Writes are chained so events keep their order even when one write is slow.
      const send = (event: string, data: unknown): void => {
        const text = JSON.stringify(data);
        queue = queue.then(() => sse.writeSSE({ event, data: text })).catch(() => {});
      };
      const snapshot = (adapters: AdapterDetail[]): void => {
        const text = JSON.stringify(adapters);
        if (text === last) return;
        last = text;
        send('snapshot', body(monitor, adapters));
      };
      // Transitions that arrive while the table is being fetched go out with the next table, so
      // each event's table is at least as new as its transitions and fetches never pile up.
      let heard: AdapterTransition[] = [];
      let fetching = false;
      const publish = async (): Promise<void> => {
        fetching = true;
        try {
          while (heard.length > 0) {
            const transitions = heard;
            heard = [];
            const adapters = await monitor.adapterDetails();
            last = JSON.stringify(adapters);
            send('transition', { transitions, ...body(monitor, adapters) });
          }
        } catch {
          // The engine closed; the stream ends with the loop below.
        } finally {
          fetching = false;
        }
      };
      const off = monitor.onAdapterTransition((transitions) => {
        heard.push(...transitions);
        if (!fetching) void publish();
      });
      const closed = new Promise<void>((resolve) => sse.onAbort(resolve));
      try {
        snapshot(await monitor.adapterDetails());
        for (;;) {
          const tick = new Promise<'tick'>((r) => setTimeout(() => r('tick'), REFRESH_MS).unref());
          if ((await Promise.race([closed, tick])) !== 'tick') break;
          snapshot(await monitor.adapterDetails());
        }
      } catch {
        // The engine closed or the client left; either way the stream ends.
      } finally {
        off();
      }
    });
  });
}

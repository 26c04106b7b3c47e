// The visualizer page in a real browser: GET /debug/adapters must draw every state of the
// adapter chart, and loads, requests and unloads made over HTTP must show up on the page live
// (through its event stream) as changes of that adapter's row and of the diagram.
// playwright-core brings no browser: it drives a system Chromium, and without one the suite is
// skipped with a message saying so.
import { join } from 'node:path';
import { chromium, type Browser, type Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { findChromium } from '../scripts/find-chromium.js';
import { adapterChartJson } from '../statecharts/adapter.machine.js';
import { startDemoServer, type DemoServer } from './demo-server.js';

const executablePath = findChromium();
const missing = executablePath ? null : 'no Chromium browser found (install chromium or set CHROMIUM_PATH)';
if (missing) console.warn(`adapter-visualizer: skipped: ${missing}`);

/** How long the page may take to show a change made over HTTP. */
const SHOWN_WITHIN_MS = 15_000;

describe.skipIf(missing !== null)(`the visualizer page in Chromium${missing ? ` (skipped: ${missing})` : ''}`, () => {
  let server: DemoServer;
  let browser: Browser;
  let page: Page;
  const pageErrors: string[] = [];

  beforeAll(async () => {
    server = await startDemoServer();
    browser = await chromium.launch({ executablePath: executablePath!, args: ['--no-sandbox'] });
    page = await browser.newPage();
    page.on('pageerror', (err) => pageErrors.push(err.message));
    await page.goto(`${server.base}/debug/adapters`);
    await page.waitForFunction(() => document.getElementById('status')?.textContent === 'live', null, { timeout: SHOWN_WITHIN_MS });
  });
  afterAll(async () => {
    await browser?.close();
    await server?.close();
  });

  const post = async (path: string, body: unknown): Promise<Response> => {
    const res = await fetch(server.base + path, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
    expect(res.status, `${path} ${JSON.stringify(body)}`).toBe(200);
    return res;
  };
  /** The text of an adapter's state cell, or null while the page has no row for it. */
  const stateCell = (name: string): Promise<string | null> =>
    page.evaluate((n) => document.querySelector(`tr[data-adapter="${n}"] td.state`)?.textContent ?? null, name);
  const waitForStateCell = (name: string, text: string | null): Promise<unknown> =>
    page
      .waitForFunction(([n, t]) => (document.querySelector(`tr[data-adapter="${n}"] td.state`)?.textContent ?? null) === t, [name, text] as const, {
        timeout: SHOWN_WITHIN_MS,
      })
      .catch(async (err: Error) => {
        throw new Error(`the page did not show ${name} as ${text} within ${SHOWN_WITHIN_MS} ms (it shows ${await stateCell(name)}): ${err.message}`);
      });

  it('draws a box for every state of the chart and an edge for every transition', async () => {
    const chart = adapterChartJson();
    const drawn = await page.$$eval('#diagram g[data-state]', (gs) => gs.map((g) => g.getAttribute('data-state')));
    expect(drawn.sort()).toEqual(chart.states.map((s) => s.id).sort());
    const labels = await page.$$eval('#diagram g[data-state] > text.label', (ts) => ts.map((t) => t.textContent));
    expect(labels).toEqual(
      expect.arrayContaining(['registered', 'loading', 'cpuLoaded', 'h2dInFlight', 'unpinned', 'pinned', 'unloading', 'failed', 'unloaded']),
    );
    expect(await page.locator('#diagram g.edge').count()).toBe(chart.transitions.length);
    // Every box is laid out with a real size, inside the drawing.
    const sizes = await page.$$eval('#diagram g[data-state] > rect', (rs) =>
      rs.map((r) => (r as SVGRectElement).getBBox()).map((b) => [b.width, b.height]),
    );
    for (const [w, h] of sizes) expect(w! > 0 && h! > 0).toBe(true);
    expect(pageErrors).toEqual([]);
  });

  it('lists the served adapters as /debug/adapters/state reports them', async () => {
    const state = (await (await fetch(`${server.base}/debug/adapters/state`)).json()) as { adapters: Array<{ name: string; state: string }> };
    expect(state.adapters.map((a) => a.name)).toEqual(['demo-a', 'demo-b']);
    for (const a of state.adapters) await waitForStateCell(a.name, a.state);
    expect(await page.locator('#pool').textContent()).toMatch(/\/ 6 pool slots used, 2 adapters/);
  });

  it('shows a new adapter being loaded, used by a request and unloaded', async () => {
    // Every state the page's row for the adapter goes through, as the page shows it.
    await page.evaluate(() => {
      const seen: string[] = [];
      (window as unknown as { seen: string[] }).seen = seen;
      const record = (): void => {
        const text = document.querySelector('tr[data-adapter="visual"] td.state')?.textContent ?? '(none)';
        if (seen[seen.length - 1] !== text) seen.push(text);
      };
      record();
      new MutationObserver(record).observe(document.getElementById('rows')!, { childList: true, subtree: true, characterData: true });
    });
    expect(await stateCell('visual')).toBeNull();

    await post('/load_lora_adapter', { lora_name: 'visual', lora_path: join(server.dir, 'adapters', 'demo-b') });
    await waitForStateCell('visual', 'cpuLoaded');
    expect(await page.locator('tr[data-adapter="visual"]').getAttribute('data-refcount')).toBe('0');

    await post('/generate', { text: 'Hello', lora_path: 'visual', sampling_params: { max_new_tokens: 4, temperature: 0 } });
    await waitForStateCell('visual', 'gpuResident.unpinned');
    // The diagram marks the state the adapter is in and names it there.
    const unpinned = page.locator('#diagram g[data-state="live.residency.gpuResident.unpinned"]');
    expect(await unpinned.getAttribute('class')).toMatch(/\bactive\b/);
    expect((await unpinned.getAttribute('data-adapters'))!.split(',')).toContain('visual');
    expect(await unpinned.locator('text.chips').textContent()).toContain('visual');

    await post('/unload_lora_adapter', { lora_name: 'visual' });
    await waitForStateCell('visual', null);
    await page.waitForFunction(() => /visual: unloading \u2192 unloaded/.test(document.getElementById('log')?.textContent ?? ''), null, {
      timeout: SHOWN_WITHIN_MS,
    });
    expect(await unpinned.getAttribute('data-adapters')).not.toMatch(/\bvisual\b/);

    const seen = await page.evaluate(() => (window as unknown as { seen: string[] }).seen);
    expect(seen[0]).toBe('(none)');
    expect(seen[seen.length - 1]).toBe('(none)');
    // Intermediate states may come in one event; the ones waited for above must be in order.
    const at = (s: string): number => seen.indexOf(s);
    expect(at('cpuLoaded')).toBeGreaterThan(0);
    expect(at('gpuResident.unpinned')).toBeGreaterThan(at('cpuLoaded'));
    expect(pageErrors).toEqual([]);
  });
});

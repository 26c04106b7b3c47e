// Saves a screenshot of the adapter visualizer (GET /debug/adapters) to docs/adapter-visualizer.png,
// or to the path given as the first argument. It serves the demo model in-process from dist/
// (run `npm run build` first), drives adapters into most of the chart's states, and captures the
// page in headless Chromium through playwright-core. CHROMIUM_PATH picks the browser.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { chromium } from 'playwright-core';
import { parseArgs } from '../dist/src/config/parse.js';
import { validateFlags } from '../dist/src/config/validate.js';
import { createApp } from '../dist/src/http/app.js';
import { startServer } from '../dist/src/http/server.js';
import { DEMO_MODEL, makeDemo, makeRandomAdapter } from '../dist/src/model/demo.js';
import { createEngine } from '../dist/src/troupe.js';
import { findChromium } from './find-chromium.js';

const out = resolve(process.argv[2] ?? new URL('../docs/adapter-visualizer.png', import.meta.url).pathname);
const executablePath = findChromium();
if (!executablePath) {
  console.error('no Chromium found: install it (apt-get install chromium) or set CHROMIUM_PATH');
  process.exit(1);
}

const dir = mkdtempSync(join(tmpdir(), 'troupe-screenshot-'));
makeDemo(dir);
const extra = (name, seed, targetModules = ['q_proj', 'v_proj']) => {
  const path = join(dir, 'extra', name);
  makeRandomAdapter(path, { rank: 8, alpha: 16, targetModules, seed }, DEMO_MODEL);
  return path;
};

// Four pool slots and room for four CPU copies: enough adapters that some wait on disk.
const argv = [
  '--model-path',
  dir,
  '--device',
  'cpu',
  '--max-total-tokens',
  '8192',
  '--context-length',
  '4096',
  '--lora-paths',
  `demo-a=${join(dir, 'adapters', 'demo-a')}`,
  `demo-b=${join(dir, 'adapters', 'demo-b')}`,
  '--max-loras-per-batch',
  '4',
  '--max-loaded-loras',
  '4',
  '--max-lora-rank',
  '16',
  '--lora-target-modules',
  'all',
];
const engine = await createEngine({ ...validateFlags(parseArgs(argv).flags).options, log: () => {} });
const server = await startServer(createApp(engine, { servedModelName: 'demo' }), '127.0.0.1', 0);
const base = `http://127.0.0.1:${server.port}`;
const post = (path, body) => fetch(base + path, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
const generate = (lora, maxNewTokens = 4) =>
  post('/generate', {
    text: 'List 3 countries and their capitals.',
    lora_path: lora,
    sampling_params: { max_new_tokens: maxNewTokens, temperature: 0, ignore_eos: true },
  });

const browser = await chromium.launch({ executablePath, args: ['--no-sandbox'] });
let streaming = null;
try {
  await post('/load_lora_adapter', { lora_name: 'house-style', lora_path: extra('house-style', 11), pinned: true });
  await generate('demo-a');
  await generate('demo-b');
  await post('/load_lora_adapter', { lora_name: 'sql', lora_path: extra('sql', 12) });
  await generate('sql');
  // CPU memory is full now, so these two stay on disk (registered).
  await post('/load_lora_adapter', { lora_name: 'legal', lora_path: extra('legal', 13) });
  const brokenPath = extra('broken', 14);
  await post('/load_lora_adapter', { lora_name: 'broken', lora_path: brokenPath });
  // Its weights vanish before a request needs them: reading them fails and it ends in failed.
  rmSync(join(brokenPath, 'adapter_model.safetensors'));
  await generate('broken');

  // A long request keeps demo-b busy, so unloading it waits (admission: unloading).
  const abort = new AbortController();
  streaming = fetch(base + '/generate', {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({
      text: 'Once upon a time',
      lora_path: 'demo-b',
      stream: true,
      sampling_params: { max_new_tokens: 3000, ignore_eos: true },
    }),
    signal: abort.signal,
  })
    .then(async (res) => {
      for await (const _ of res.body ?? []) {
        /* drain */
      }
    })
    .catch(() => {});
  streaming.abort = abort;

  const page = await browser.newPage({ viewport: { width: 1280, height: 900 }, deviceScaleFactor: 1 });
  await page.goto(base + '/debug/adapters');
  await page.waitForSelector('tr[data-adapter="demo-b"][data-refcount="1"]', { timeout: 20_000 });
  void post('/unload_lora_adapter', { lora_name: 'demo-b' });
  await page.waitForSelector('tr[data-adapter="demo-b"][data-state="unloading"]', { timeout: 20_000 });
  await page.click('tr[data-adapter="sql"]');
  await page.screenshot({ path: out, fullPage: true });
  console.log(`wrote ${out}`);
} finally {
  streaming?.abort.abort();
  await browser.close();
  await server.close();
  await engine.close();
  rmSync(dir, { recursive: true, force: true });
}

// Soak: minutes of mixed HTTP traffic against `troupe serve` (the demo model on the CPU, with
// copies of its adapters under other names) while other names are loaded and unloaded over
// and over. Clients use /generate and the OpenAI routes, streaming and not, across the base
// model, four stable adapters and the churned ones, and send malformed requests too; watchers
// scrape /metrics and the adapter state and follow the adapter event stream. The server's RSS
// is read from /proc/<pid>/status while it runs.
//
//   node bench/soak.js [--duration 180] [--clients 6] [--sample-every 5] [--out FILE|-]
//
// Every request is counted by kind as ok (the answer it should get), refused (a 4xx it should
// get: a malformed request, or an adapter that is not loaded at that moment) or failed
// (anything else). Writes bench/results/<date>-cpu-soak.json (or the JSON to stdout with
// --out -); progress goes to stderr.
import { spawn } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';

const root = new URL('..', import.meta.url).pathname;
const { values: args } = parseArgs({
  options: {
    duration: { type: 'string', default: '180' },
    clients: { type: 'string', default: '6' },
    'sample-every': { type: 'string', default: '5' },
    out: { type: 'string' },
  },
});
const num = (name, value, min) => {
  const n = Number(value);
  if (!Number.isFinite(n) || n < min) throw new Error(`--${name} must be a number >= ${min}, got ${value}`);
  return n;
};
const DURATION_S = num('duration', args.duration, 10);
const CLIENTS = Math.floor(num('clients', args.clients, 1));
const SAMPLE_S = num('sample-every', args['sample-every'], 0.5);
const NEW_TOKENS = 8;
const progress = (msg) => process.stderr.write(`soak: ${msg}\n`);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// ---- the server: the demo model, two stable copies of its adapters, three names to churn ----
const demo = join(root, 'demo-model');
if (!existsSync(join(demo, 'config.json'))) {
  const { makeDemo } = await import(join(root, 'dist/src/model/demo.js'));
  makeDemo(demo);
}
const work = mkdtempSync(join(tmpdir(), 'troupe-soak-'));
const copy = (from, name) => {
  const to = join(work, name);
  cpSync(join(demo, 'adapters', from), to, { recursive: true });
  return to;
};
const STABLE = {
  'demo-a': join(demo, 'adapters/demo-a'),
  'demo-b': join(demo, 'adapters/demo-b'),
  'copy-a': copy('demo-a', 'copy-a'),
  'copy-b': copy('demo-b', 'copy-b'),
};
// Each churned name is reloaded from alternating weights, so a name does not stand for one adapter.
const CHURN_PATHS = [copy('demo-a', 'churn-from-a'), copy('demo-b', 'churn-from-b')];
const CHURNED = ['churn-0', 'churn-1', 'churn-2'];
/** Fewer than the names, so loads evict from the loaded set and requests bring names back. */
const MAX_LOADED = 5;
const ADAPTERS = [null, ...Object.keys(STABLE), ...CHURNED];

const port = await new Promise((resolve, reject) => {
  const probe = createServer().listen(0, '127.0.0.1', () => {
    const { port: p } = probe.address();
    probe.close(() => resolve(p));
  });
  probe.on('error', reject);
});
const serverArgs = [
  'serve',
  '--model-path',
  demo,
  '--served-model-name',
  'demo',
  '--host',
  '127.0.0.1',
  '--port',
  String(port),
  '--device',
  'cpu',
  '--lora-paths',
  ...Object.entries(STABLE).map(([n, p]) => `${n}=${p}`),
  // Fewer slots and CPU copies than adapters, so requests evict from both.
  '--max-loras-per-batch',
  '3',
  '--max-loaded-loras',
  String(MAX_LOADED),
  '--log-level',
  'info',
];
const logFile = join(work, 'server.log');
const server = spawn(process.execPath, [join(root, 'bin/troupe.js'), ...serverArgs], { stdio: ['ignore', 'ignore', openSync(logFile, 'w')] });
const exited = new Promise((resolve) => server.once('exit', (code, signal) => resolve({ code, signal })));
const base = `http://127.0.0.1:${port}`;
for (const started = Date.now(); ; await sleep(250)) {
  if (server.exitCode !== null) throw new Error(`the server exited with ${server.exitCode}:\n${readFileSync(logFile, 'utf8')}`);
  if (Date.now() - started > 120_000) throw new Error(`the server did not answer /health within 120 s:\n${readFileSync(logFile, 'utf8')}`);
  if (
    await fetch(`${base}/health`).then(
      (r) => r.ok,
      () => false,
    )
  )
    break;
}
progress(`server pid ${server.pid} on ${base}; ${DURATION_S} s of traffic from ${CLIENTS} clients`);

// ---- counting ----
const counts = {};
const failures = [];
const latencies = {};
function count(kind, outcome, ms, detail) {
  counts[kind] ??= { ok: 0, refused: 0, failed: 0 };
  counts[kind][outcome]++;
  (latencies[kind] ??= []).push(ms);
  if (outcome === 'failed' && failures.length < 50) failures.push(`${kind}: ${detail}`);
}
/** Generation requests answered for a churned name: the churned adapters do serve traffic. */
let okOnChurned = 0;
/** Runs one request; `check` returns null when the answer is right, else what is wrong. */
async function run(kind, refusable, request, check, lora = null) {
  const t = performance.now();
  let outcome = 'ok';
  let detail = '';
  try {
    const res = await request();
    const body = await res.text();
    if (res.status >= 400 && res.status < 500 && refusable(res.status, body)) outcome = 'refused';
    else {
      const wrong = res.status === 200 ? check(body, res) : `status ${res.status}`;
      if (wrong !== null) [outcome, detail] = ['failed', `${wrong}: ${body.slice(0, 300)}`];
    }
  } catch (err) {
    [outcome, detail] = ['failed', err.message];
  }
  count(kind, outcome, performance.now() - t, detail);
  if (outcome === 'ok' && CHURNED.includes(lora)) okOnChurned++;
}
const post = (path, body) => () =>
  fetch(`${base}${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: typeof body === 'string' ? body : JSON.stringify(body),
  });
const get = (path) => () => fetch(`${base}${path}`);

/**
 * A churned adapter may be missing at any moment (before its first load too); a stable one,
 * never: past --max-loaded-loras it may leave the loaded set, but a request naming it brings it back.
 */
const notLoaded = (lora) => (status, body) =>
  lora !== null && CHURNED.includes(lora) && /not loaded|never been loaded|being unloaded|does not exist/.test(body);
/** Server-sent events: JSON payloads ending in [DONE], none of them an error. */
function events(body) {
  const data = body
    .split('\n\n')
    .filter((b) => b.startsWith('data: '))
    .map((b) => b.slice(6));
  if (data.at(-1) !== '[DONE]') return { wrong: 'the stream does not end in [DONE]' };
  const items = data.slice(0, -1).map((d) => JSON.parse(d));
  if (items.some((i) => i.error)) return { wrong: 'the stream carries an error' };
  return { items };
}

// ---- the request kinds ----
const prompt = (c, i) => `soak client ${c} request ${i}: tell me about the number ${(c * 7919 + i) % 1000}`;
const sampling = { max_new_tokens: NEW_TOKENS, temperature: 0, ignore_eos: true };
const model = (lora) => (lora === null ? 'demo' : `demo:${lora}`);
const openAi = { max_tokens: NEW_TOKENS, temperature: 0, ignore_eos: true };
const KINDS = {
  generate: (c, i, lora) =>
    run(
      'generate',
      notLoaded(lora),
      post('/generate', { text: prompt(c, i), lora_path: lora, sampling_params: sampling }),
      (b) => {
        const o = JSON.parse(b);
        return typeof o.text === 'string' && o.meta_info?.completion_tokens === NEW_TOKENS ? null : 'not a full completion';
      },
      lora,
    ),
  generate_stream: (c, i, lora) =>
    run(
      'generate_stream',
      notLoaded(lora),
      post('/generate', { text: prompt(c, i), lora_path: lora, sampling_params: sampling, stream: true }),
      (b) => {
        const { wrong, items } = events(b);
        return wrong ?? (items.at(-1)?.meta_info?.completion_tokens === NEW_TOKENS ? null : 'the last chunk is not a full completion');
      },
      lora,
    ),
  completions: (c, i, lora) =>
    run(
      'completions',
      notLoaded(lora),
      post('/v1/completions', { model: model(lora), prompt: prompt(c, i), ...openAi }),
      (b) => {
        const o = JSON.parse(b);
        return typeof o.choices?.[0]?.text === 'string' && o.usage?.completion_tokens === NEW_TOKENS ? null : 'not a full completion';
      },
      lora,
    ),
  completions_stream: (c, i, lora) =>
    run(
      'completions_stream',
      notLoaded(lora),
      post('/v1/completions', { model: model(lora), prompt: prompt(c, i), ...openAi, stream: true }),
      (b) => {
        const { wrong, items } = events(b);
        return wrong ?? (items.some((x) => x.choices?.[0]?.finish_reason === 'length') ? null : 'no chunk finishes with length');
      },
      lora,
    ),
  chat: (c, i, lora) =>
    run(
      'chat',
      notLoaded(lora),
      post('/v1/chat/completions', { model: model(lora), messages: [{ role: 'user', content: prompt(c, i) }], ...openAi }),
      (b) => {
        const o = JSON.parse(b);
        return typeof o.choices?.[0]?.message?.content === 'string' && o.usage?.completion_tokens === NEW_TOKENS ? null : 'not a full completion';
      },
      lora,
    ),
  chat_stream: (c, i, lora) =>
    run(
      'chat_stream',
      notLoaded(lora),
      post('/v1/chat/completions', { model: model(lora), messages: [{ role: 'user', content: prompt(c, i) }], ...openAi, stream: true }),
      (b) => {
        const { wrong, items } = events(b);
        return wrong ?? (items.some((x) => x.choices?.[0]?.finish_reason === 'length') ? null : 'no chunk finishes with length');
      },
      lora,
    ),
  // Requests the server must refuse with a 4xx and go on.
  bad: (c, i) => {
    const BAD = [
      post('/generate', '{"text": "unterminated'),
      post('/generate', { text: 'x', sampling_params: { max_new_tokens: -1 } }),
      // Unknown top-level fields are ignored, as SGLang's schema ignores them; sampling parameters are checked.
      post('/generate', { text: 'x', sampling_params: { no_such_param: 1 } }),
      post('/generate', { text: 'x', lora_path: 'never-loaded' }),
      post('/v1/completions', { model: 'demo:never-loaded', prompt: 'x' }),
      post('/v1/chat/completions', { model: 'demo', messages: 'not a list' }),
      post('/v1/completions', { model: 'demo', prompt: 'x', max_tokens: 'many' }),
      post('/load_lora_adapter', { lora_name: 'broken', lora_path: join(work, 'no-such-dir') }),
      post('/unload_lora_adapter', { lora_name: 'never-loaded' }),
      get('/no/such/route'),
    ];
    return run(
      'bad',
      (status) => status >= 400 && status < 500,
      BAD[(c + i) % BAD.length],
      () => 'a malformed request was accepted',
    );
  },
};
const ROTATION = ['generate', 'completions_stream', 'chat', 'generate_stream', 'completions', 'chat_stream', 'bad'];

let stop = false;
const clients = Array.from({ length: CLIENTS }, async (_, c) => {
  for (let i = 0; !stop; i++) {
    const kind = ROTATION[(c + i) % ROTATION.length];
    await KINDS[kind](c, i, ADAPTERS[(c * 3 + i) % ADAPTERS.length]);
  }
});
// One loop per churned name: load it (from alternating weights), let traffic use it, unload it.
const churners = CHURNED.map(async (name, j) => {
  for (let cycle = 0; !stop; cycle++) {
    const path = CHURN_PATHS[(cycle + j) % CHURN_PATHS.length];
    // A request may have loaded it again (from its previous path) since the last unload.
    const loaded = (b) => JSON.parse(b).success === true || /because it is already loaded/.test(JSON.parse(b).error_message);
    await run(
      'load',
      (status, b) => status === 400 && loaded(b),
      post('/load_lora_adapter', { lora_name: name, lora_path: path }),
      (b) => (loaded(b) ? null : 'not loaded'),
    );
    await sleep(200 + ((cycle * 137 + j * 61) % 800));
    // Loads of other names may have evicted it from the loaded set (--max-loaded-loras, least
    // recently used first); its unload is then refused, as SGLang refuses it.
    await run(
      'unload',
      (status, b) => status === 400 && /is not loaded: it left the loaded set/.test(b),
      post('/unload_lora_adapter', { lora_name: name }),
      (b) => (JSON.parse(b).success === true ? null : 'not unloaded'),
    );
    await sleep((cycle * 53) % 100);
  }
});
// What an operator watches: /metrics, the adapter state, and the adapter event stream (reconnecting).
const watchers = [
  (async () => {
    for (let i = 0; !stop; i++) {
      await run(
        'metrics',
        () => false,
        get('/metrics'),
        (b) => (b.includes('troupe_adapter_requests_total') ? null : 'no request counters'),
      );
      await run(
        'adapter_state',
        () => false,
        get('/debug/adapters/state'),
        (b) => (Array.isArray(JSON.parse(b).adapters) ? null : 'no adapter list'),
      );
      await run(
        'models',
        () => false,
        get('/v1/models'),
        // The served model, then the loaded set: at most --max-loaded-loras adapters.
        (b) => {
          const ids = (JSON.parse(b).data ?? []).map((m) => m.id);
          return ids[0] === 'demo' && ids.length >= 1 && ids.length <= 1 + MAX_LOADED
            ? null
            : `not the served model and at most ${MAX_LOADED} adapters`;
        },
      );
      await sleep(1000);
    }
  })(),
  (async () => {
    while (!stop) {
      const t = performance.now();
      const ac = new AbortController();
      try {
        const res = await fetch(`${base}/debug/adapters/events`, { signal: ac.signal });
        const reader = res.body.getReader();
        let text = '';
        const until = Date.now() + 5000;
        while (Date.now() < until && !stop) {
          const r = await Promise.race([reader.read(), sleep(until - Date.now()).then(() => null)]);
          if (r === null || r.done) break;
          text += new TextDecoder().decode(r.value);
        }
        ac.abort();
        count(
          'adapter_events',
          /event: (snapshot|transition)\ndata: \{/.test(text) ? 'ok' : 'failed',
          performance.now() - t,
          'no snapshot or transition event in 5 s',
        );
      } catch (err) {
        count('adapter_events', 'failed', performance.now() - t, err.message);
      }
    }
  })(),
];

// ---- RSS of the server ----
const rssMiB = () => {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${server.pid}/status`, 'utf8'));
  return m ? Math.round((Number(m[1]) / 1024) * 100) / 100 : NaN;
};
const samples = [];
const t0 = performance.now();
const total = () => Object.values(counts).reduce((a, c) => a + c.ok + c.refused + c.failed, 0);
while (performance.now() - t0 < DURATION_S * 1000 && server.exitCode === null) {
  samples.push({ seconds: Math.round(performance.now() - t0) / 1000, rssMiB: rssMiB(), requests: total() });
  if (samples.length % Math.max(1, Math.round(30 / SAMPLE_S)) === 1) {
    const s = samples.at(-1);
    progress(`${s.seconds.toFixed(0)} s: RSS ${s.rssMiB} MiB, ${s.requests} requests`);
  }
  await sleep(SAMPLE_S * 1000);
}
if (server.exitCode === null) samples.push({ seconds: Math.round(performance.now() - t0) / 1000, rssMiB: rssMiB(), requests: total() });
stop = true;
await Promise.all([...clients, ...churners, ...watchers]);
const crashed = server.exitCode !== null;
server.kill('SIGTERM');
const exit = await Promise.race([
  exited,
  sleep(30_000).then(() => (server.kill('SIGKILL'), { code: null, signal: 'SIGKILL (no exit 30 s after SIGTERM)' })),
]);
// Warnings are expected (the malformed requests); errors are not.
const serverErrors = readFileSync(logFile, 'utf8')
  .split('\n')
  .filter((l) => /\] ERROR /.test(l))
  .slice(-20);
rmSync(work, { recursive: true, force: true });

// ---- growth: lowest RSS of the last fifth after the warm-up minus that of the first fifth ----
// Each thread's heap grows to its working size over the first minutes of traffic.
const WARMUP_S = Math.min(120, DURATION_S / 4);
const after = samples.filter((s) => s.seconds >= WARMUP_S);
const k = Math.max(1, Math.floor(after.length / 5));
const low = (w) => Math.min(...w.map((s) => s.rssMiB));
const mid = (w) => w.reduce((a, s) => a + s.seconds, 0) / w.length;
const [first, last] = [after.slice(0, k), after.slice(-k)];
const growthMiB = Math.round((low(last) - low(first)) * 100) / 100;
const percentile = (xs, p) => {
  const s = [...xs].sort((a, b) => a - b);
  return Math.round(s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))] ?? NaN);
};

const result = {
  date: new Date().toISOString(),
  cpu: `${cpus()[0]?.model ?? 'unknown'} x ${cpus().length}`,
  node: process.version,
  server: `troupe ${serverArgs.join(' ').replaceAll(work, '<tmp>').replaceAll(root, '')}`,
  durationSeconds: DURATION_S,
  clients: CLIENTS,
  newTokensPerRequest: NEW_TOKENS,
  requests: Object.fromEntries(
    Object.entries(counts).map(([kind, c]) => [kind, { ...c, p50Ms: percentile(latencies[kind], 50), p95Ms: percentile(latencies[kind], 95) }]),
  ),
  generationOkOnChurnedNames: okOnChurned,
  failures,
  serverCrashed: crashed,
  serverExit: exit,
  serverErrors,
  rss: {
    warmupSeconds: WARMUP_S,
    fromMiB: low(first),
    toMiB: low(last),
    growthMiB,
    mibPerMinute: Math.round(((growthMiB * 60) / Math.max(1, mid(last) - mid(first))) * 1000) / 1000,
    maxMiB: Math.max(...samples.map((s) => s.rssMiB)),
    rangeAfterWarmupMiB: Math.round((Math.max(...after.map((s) => s.rssMiB)) - low(after)) * 100) / 100,
  },
  samples,
};
const json = JSON.stringify(result, null, 2) + '\n';
if (args.out === '-') process.stdout.write(json);
else {
  const file = args.out ?? join(root, `bench/results/${result.date.slice(0, 10)}-cpu-soak.json`);
  mkdirSync(join(root, 'bench/results'), { recursive: true });
  writeFileSync(file, json);
  progress(`written to ${file}`);
}
for (const [kind, c] of Object.entries(result.requests))
  progress(`${kind.padEnd(18)} ok ${c.ok}, refused ${c.refused}, failed ${c.failed}, p50 ${c.p50Ms} ms`);
progress(
  `RSS after ${WARMUP_S} s: ${result.rss.fromMiB} -> ${result.rss.toMiB} MiB (${result.rss.mibPerMinute} MiB/min), max ${result.rss.maxMiB} MiB; server exit ${JSON.stringify(exit)}`,
);
const failed = Object.values(counts).reduce((a, c) => a + c.failed, 0);
if (failed > 0 || crashed) process.exitCode = 1;

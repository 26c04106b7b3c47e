// The HTTP side of the serving benchmark: one streaming /generate request timed token by token,
// Prometheus text from /metrics, and the statistics reported. node:http rather than fetch:
// fetch's default agent gives up on a response whose headers take more than 300 s, and an
// overloaded server's queue may legitimately hold a request that long.
import http from 'node:http';

const agent = new http.Agent({ keepAlive: true, maxSockets: Infinity });

/** GET or POST with a JSON or text answer: {status, body}. */
export function request(base, path, { method = 'GET', body, timeoutMs = 30_000 } = {}) {
  return new Promise((resolve, reject) => {
    const data = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
    const req = http.request(
      new URL(path, base),
      {
        method,
        agent,
        timeout: timeoutMs,
        headers: data ? { 'content-type': 'application/json', 'content-length': data.length } : {},
      },
      (res) => {
        const chunks = [];
        res.on('data', (c) => chunks.push(c));
        res.on('end', () => resolve({ status: res.statusCode, body: Buffer.concat(chunks).toString('utf8') }));
        res.on('error', reject);
      },
    );
    req.on('timeout', () => req.destroy(new Error(`${method} ${path}: no answer in ${timeoutMs} ms`)));
    req.on('error', reject);
    req.end(data);
  });
}

/**
 * Sends one streaming /generate request and times it. Returns {ok, error?, ttft, e2e, itls,
 * outputTokens, promptTokens}, times in seconds. TTFT is the time to the first event that
 * carries an output token; an event that brings k new tokens after a gap of dt adds k
 * inter-token latencies of dt / k (the stream may coalesce tokens of a step). Never rejects:
 * every failure is a result with ok false. `signal` cuts the request (it then counts as failed).
 */
export function streamGenerate(base, body, signal) {
  const sent = performance.now();
  const result = { ok: false, ttft: null, e2e: null, itls: [], outputTokens: 0, promptTokens: 0 };
  return new Promise((resolve) => {
    let settled = false;
    let lastTime = sent;
    let done = false;
    const finish = (error) => {
      if (settled) return;
      settled = true;
      signal?.removeEventListener('abort', onAbort);
      result.e2e = (performance.now() - sent) / 1000;
      if (error) result.error = error;
      else result.ok = true;
      resolve(result);
    };
    const onEvent = (data) => {
      if (data === '[DONE]') {
        done = true;
        return;
      }
      let msg;
      try {
        msg = JSON.parse(data);
      } catch {
        return finish(`unparsable event: ${data.slice(0, 200)}`);
      }
      if (msg.error) return finish(`error event: ${msg.error.message ?? JSON.stringify(msg.error)}`);
      const meta = msg.meta_info ?? {};
      const n = meta.completion_tokens ?? 0;
      const now = performance.now();
      if (n > result.outputTokens) {
        if (result.ttft === null) result.ttft = (now - sent) / 1000;
        else for (let k = result.outputTokens; k < n; k++) result.itls.push((now - lastTime) / 1000 / (n - result.outputTokens));
        result.outputTokens = n;
        lastTime = now;
      }
      result.promptTokens = meta.prompt_tokens ?? result.promptTokens;
      if (meta.finish_reason?.type === 'abort') finish(`aborted: ${meta.finish_reason.message ?? ''}`);
    };
    const payload = Buffer.from(JSON.stringify(body));
    const req = http.request(
      new URL('/generate', base),
      {
        method: 'POST',
        agent,
        headers: { 'content-type': 'application/json', 'content-length': payload.length, accept: 'text/event-stream' },
      },
      (res) => {
        res.setEncoding('utf8');
        let buf = '';
        if (res.statusCode !== 200) {
          res.on('data', (c) => (buf += c));
          res.on('end', () => finish(`HTTP ${res.statusCode}: ${buf.slice(0, 300)}`));
          return;
        }
        res.on('data', (chunk) => {
          buf += chunk;
          let cut;
          while ((cut = buf.indexOf('\n\n')) >= 0) {
            const event = buf.slice(0, cut);
            buf = buf.slice(cut + 2);
            for (const line of event.split('\n')) if (line.startsWith('data:')) onEvent(line.slice(5).trimStart());
          }
        });
        res.on('end', () => finish(done ? undefined : 'stream ended without [DONE]'));
        res.on('error', (err) => finish(`stream: ${err.message}`));
      },
    );
    const onAbort = () => {
      req.destroy();
      finish('cut by the benchmark (did not finish in time)');
    };
    if (signal?.aborted) return onAbort();
    signal?.addEventListener('abort', onAbort, { once: true });
    req.on('error', (err) => finish(`request: ${err.message}`));
    req.end(payload);
  });
}

/** Prometheus text as a list of {name, labels, value}. */
export function parseMetrics(text) {
  const out = [];
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)/.exec(line);
    if (!m) continue;
    const labels = {};
    for (const l of (m[2] ?? '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]] = l[2].replace(/\\(.)/g, (_, c) => (c === 'n' ? '\n' : c));
    out.push({ name: m[1], labels, value: Number(m[3]) });
  }
  return out;
}

/** The series of GET /metrics. */
export async function scrape(base) {
  const res = await request(base, '/metrics');
  if (res.status !== 200) throw new Error(`GET /metrics answered ${res.status}`);
  return parseMetrics(res.body);
}

/** Sums of a series over all its label sets, grouped by one label (or in total when by is null). */
export function sumBy(series, name, by) {
  const sums = {};
  for (const s of series) {
    if (s.name !== name) continue;
    const key = by ? (s.labels[by] ?? '') : 'total';
    sums[key] = (sums[key] ?? 0) + s.value;
  }
  return sums;
}

/**
 * What the server's engine did while the streams ran, from /metrics: its steps, the share of the
 * time it spent in them, and per step the time in the engine and the time between steps (the
 * host's share: what serving through HTTP adds).
 */
export function engineShare(before, after, wallMs) {
  const delta = (name, by) => {
    const a = sumBy(after, name, by);
    const b = sumBy(before, name, by);
    return Object.fromEntries(Object.keys(a).map((k) => [k, a[k] - (b[k] ?? 0)]));
  };
  const steps = delta('troupe_steps_total', 'scheduled');
  const count = (steps.ahead ?? 0) + (steps.after ?? 0);
  const engineMs = (delta('troupe_engine_step_seconds_total', null).total ?? 0) * 1000;
  const total = (name) => delta(name, null).total ?? 0;
  const decodeSteps = total('troupe_engine_decode_steps_total');
  const waits = total('troupe_engine_waits_total');
  return {
    wallMs,
    steps: count,
    aheadSteps: steps.ahead ?? 0,
    busy: engineMs / wallMs,
    stepMs: engineMs / count,
    // Over the streams' whole time, so it also holds the wait for the first step and after the last.
    gapMs: (wallMs - engineMs) / count,
    decodeSteps,
    decodeStepMs: decodeSteps > 0 ? (total('troupe_engine_decode_step_seconds_total') * 1000) / decodeSteps : null,
    // The idle time before each step sent ahead: the host's share per step in the steady state.
    waitMs: waits > 0 ? (total('troupe_engine_wait_seconds_total') * 1000) / waits : null,
    decodeStepBuckets: stepBuckets(delta('troupe_engine_decode_step_duration_seconds_bucket', 'le')),
    // One past the highest LoRA pool slot of a decode step's batch, on average: the slots its LoRA
    // GEMMs read (before rounding up to a power of two).
    decodeStepLoraSlots: decodeSteps > 0 ? total('troupe_engine_decode_step_lora_slots_sum') / decodeSteps : null,
  };
}

/**
 * The decode steps' histogram between two scrapes ({le: count} from the buckets' deltas): how
 * many steps took longer than 20 ms, and the bucket bound in ms that holds 50%, 90%, 99% and all
 * of them (null without decode steps). A mean step pulled up by a few slow ones (a new batch
 * size's first graph) shows here as a short tail over a steady median.
 */
export function stepBuckets(byLe) {
  const bounds = Object.keys(byLe)
    .map((le) => ({ le, bound: le === '+Inf' ? Infinity : Number(le), count: byLe[le] }))
    .sort((a, b) => a.bound - b.bound);
  const all = bounds.at(-1)?.count ?? 0;
  if (all === 0) return null;
  const upTo = (q) => {
    const b = bounds.find((x) => x.count >= q * all);
    return b === undefined || b.bound === Infinity ? null : b.bound * 1000;
  };
  const within20 = bounds.filter((x) => x.bound <= 0.02).at(-1)?.count ?? 0;
  return { steps: all, over20Ms: all - within20, p50UpToMs: upTo(0.5), p90UpToMs: upTo(0.9), p99UpToMs: upTo(0.99), allUpToMs: upTo(1) };
}

/** What the adapter counters of /metrics moved by between two scrapes. */
export function adapterActivity(before, after) {
  const diff = (name, by) => {
    const a = sumBy(after, name, by);
    const b = sumBy(before, name, by);
    return Object.fromEntries(Object.keys(a).map((k) => [k, +(a[k] - (b[k] ?? 0)).toFixed(6)]));
  };
  return {
    loads: diff('troupe_adapter_loads_total', 'stage'),
    loadSeconds: diff('troupe_adapter_load_seconds_sum', 'stage'),
    evictions: diff('troupe_adapter_evictions_total', 'from'),
    loadFailures: diff('troupe_adapter_load_failures_total', null).total ?? 0,
    requests: diff('troupe_adapter_requests_total', 'outcome'),
  };
}

/** Linear-interpolated percentile (numpy's default) of unsorted values; null when there are none. */
export function percentile(values, p) {
  if (values.length === 0) return null;
  const s = Float64Array.from(values).sort();
  const pos = (p / 100) * (s.length - 1);
  const lo = Math.floor(pos);
  const hi = Math.min(lo + 1, s.length - 1);
  return s[lo] + (s[hi] - s[lo]) * (pos - lo);
}

const round = (x, d = 4) => (x === null ? null : +x.toFixed(d));

/**
 * The reported figures of a run. `elapsed` is from the first request sent to the last one
 * finished. A request meets the SLO when it succeeds and its TTFT is at most `slo` seconds.
 */
export function summarize(records, elapsed, slo) {
  const ok = records.filter((r) => r.ok);
  const ttfts = ok.map((r) => r.ttft).filter((t) => t !== null);
  const itls = ok.flatMap((r) => r.itls);
  const outTokens = ok.reduce((s, r) => s + r.outputTokens, 0);
  const met = ok.filter((r) => r.ttft !== null && r.ttft <= slo).length;
  return {
    requests: records.length,
    succeeded: ok.length,
    failed: records.length - ok.length,
    elapsedSeconds: round(elapsed, 3),
    requestThroughput: round(ok.length / elapsed),
    outputTokenThroughput: round(outTokens / elapsed, 2),
    ttft: {
      p50: round(percentile(ttfts, 50)),
      p90: round(percentile(ttfts, 90)),
      p99: round(percentile(ttfts, 99)),
      mean: round(ttfts.length ? ttfts.reduce((a, b) => a + b, 0) / ttfts.length : null),
    },
    itl: { p50: round(percentile(itls, 50), 5), p99: round(percentile(itls, 99), 5) },
    e2e: {
      p50: round(
        percentile(
          ok.map((r) => r.e2e),
          50,
        ),
        3,
      ),
      p99: round(
        percentile(
          ok.map((r) => r.e2e),
          99,
        ),
        3,
      ),
    },
    sloSeconds: slo,
    sloAttainment: records.length ? round(met / records.length) : null,
  };
}

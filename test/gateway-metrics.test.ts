// The model server protocol of the Gateway API Inference Extension on /metrics: queue, running
// requests, KV-cache usage and the LoRA adapter info gauge, under troupe's names and the names
// the endpoint picker reads for vLLM and SGLang, scraped from a real server while requests run
// and wait for their adapters.
import { join } from 'node:path';
import { Registry } from 'prom-client';
import { describe, expect, it, onTestFinished } from 'vitest';
import { createApp } from '../src/http/app.js';
import { EngineMetrics } from '../src/metrics/collector.js';
import { GATEWAY_METRIC_NAMES, PREFIX_METRIC_NAMES, registerGatewayMetrics } from '../src/metrics/gateway.js';
import { DECODE_STEP_BUCKETS, LORA_SLOT_BUCKETS } from '../src/scheduler/engine-time.js';
import type { SchedulerLoad } from '../src/scheduler/index.js';
import { useDemoServer } from './demo-server.js';
import { EchoEngine } from './http-echo-engine.js';

interface Sample {
  labels: Record<string, string>;
  value: number;
}

/** Prometheus text format: every sample by metric name. */
function parseMetrics(text: string): Map<string, Sample[]> {
  const out = new Map<string, Sample[]>();
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!m) throw new Error(`not a sample line: ${line}`);
    const labels: Record<string, string> = {};
    for (const l of (m[2] ?? '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]!] = JSON.parse(`"${l[2]}"`) as string;
    out.set(m[1]!, [...(out.get(m[1]!) ?? []), { labels, value: Number(m[3]) }]);
  }
  return out;
}

/** The one sample of `name`; fails when there is none or several. */
function only(metrics: Map<string, Sample[]>, name: string): Sample {
  const samples = metrics.get(name) ?? [];
  expect(samples, name).toHaveLength(1);
  return samples[0]!;
}

/** Each name of a figure, with the value all of them must share. */
function figure(metrics: Map<string, Sample[]>, names: readonly string[]): number {
  const values = names.map((n) => only(metrics, n).value);
  expect(new Set(values).size, `${names.join(', ')} disagree: ${values.join(', ')}`).toBe(1);
  return values[0]!;
}

describe('gateway metrics on a real server', () => {
  // The demo server runs with --max-loras-per-batch 3: three pool slots, three adapters per batch.
  const server = useDemoServer();

  const scrape = async (): Promise<Map<string, Sample[]>> => {
    const res = await fetch(`${server().base}/metrics`);
    expect(res.status).toBe(200);
    return parseMetrics(await res.text());
  };
  /**
   * Scrapes until `ready` holds: the server's own report is the event waited for. A series that
   * is missing fails at once (`only` throws); a value that never comes fails after a minute.
   */
  const scrapeUntil = async (what: string, ready: (m: Map<string, Sample[]>) => boolean): Promise<Map<string, Sample[]>> => {
    const deadline = Date.now() + 60_000;
    for (;;) {
      const m = await scrape();
      if (ready(m)) return m;
      if (Date.now() > deadline) throw new Error(`/metrics never showed ${what}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  };
  const post = (path: string, body: unknown): Promise<Response> =>
    fetch(`${server().base}${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });

  /**
   * A streamed request that runs until aborted; resolves once its first tokens arrived (it is
   * running) with the whole stream's text to come (wrapped: an async function would adopt it).
   */
  const runLong = async (lora: string | null, rid: string): Promise<{ text: Promise<string> }> => {
    const res = await post('/generate', {
      text: 'Once upon a time',
      lora_path: lora,
      rid,
      stream: true,
      // Three of these fit the demo server's 8192-token KV cache, so none is ever preempted.
      sampling_params: { max_new_tokens: 2500, ignore_eos: true },
    });
    expect(res.status).toBe(200);
    const reader = res.body!.getReader();
    const decoder = new TextDecoder();
    let text = decoder.decode((await reader.read()).value, { stream: true });
    const rest = async (): Promise<string> => {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return text;
        text += decoder.decode(value, { stream: true });
      }
    };
    return { text: rest() };
  };

  it('reports waiting and running requests, KV usage and where adapters stand, under every name', async () => {
    const { base, dir } = server();
    // Whatever fails, no request is left running for the server's close to cut.
    const pending: Array<Promise<unknown>> = [];
    onTestFinished(async () => {
      await post('/abort_request', { abort_all: true });
      await Promise.allSettled(pending);
    });
    for (const name of ['a2', 'a3']) {
      const res = await post('/load_lora_adapter', { lora_name: name, lora_path: join(dir, 'adapters', 'demo-a') });
      expect(res.status).toBe(200);
    }
    // The base model, demo-a and demo-b fill the batch's three adapters...
    const long = await Promise.all([runLong(null, 'long-base'), runLong('demo-a', 'long-a'), runLong('demo-b', 'long-b')]);
    pending.push(...long.map((l) => l.text));
    // ...so a2's and a3's requests wait. Both take slots all the same: the pool of 3 adapters of
    // rank 16 is cut into 6 slots of rank 8, of which demo-b takes 2 and every other adapter 1.
    const waiting = ['a2', 'a3'].map((lora) => post('/generate', { text: 'Hello', lora_path: lora, sampling_params: { max_new_tokens: 4 } }));
    pending.push(...waiting);
    const loraInfo = (m: Map<string, Sample[]>): Record<string, string> => only(m, 'vllm:lora_requests_info').labels;
    const m = await scrapeUntil('two waiting requests and a2 and a3 in slots', (s) => {
      const resident = loraInfo(s).running_lora_adapters!.split(',');
      return only(s, 'troupe_requests_waiting').value === 2 && resident.includes('a2') && resident.includes('a3');
    });

    expect(figure(m, GATEWAY_METRIC_NAMES.waiting)).toBe(2);
    expect(figure(m, GATEWAY_METRIC_NAMES.running)).toBe(3);
    const kv = figure(m, GATEWAY_METRIC_NAMES.kvUsage);
    const info = (await (await fetch(`${base}/get_server_info`)).json()) as { internal_states: Array<{ kv_cache_total_blocks: number }> };
    const blocks = info.internal_states[0]!.kv_cache_total_blocks;
    expect(blocks).toBe(8192 / 16);
    // A fraction of whole blocks, at least one per running request.
    expect(Number.isInteger(kv * blocks)).toBe(true);
    expect(kv * blocks).toBeGreaterThanOrEqual(3);
    expect(kv).toBeLessThan(1);
    for (const name of ['vllm:num_requests_waiting', 'sglang:num_queue_reqs', 'vllm:kv_cache_usage_perc', 'sglang:token_usage']) {
      expect(only(m, name).labels).toEqual({ model_name: expect.any(String) });
    }
    expect(only(m, 'vllm:cache_config_info')).toEqual({ labels: { block_size: '16', num_gpu_blocks: String(blocks) }, value: 1 });
    expect(only(m, 'sglang:cache_config_info')).toEqual({ labels: { page_size: '16', num_pages: String(blocks) }, value: 1 });

    for (const name of GATEWAY_METRIC_NAMES.loraInfo) {
      const sample = only(m, name);
      expect(sample.labels).toEqual({
        max_lora: '3', // --max-loras-per-batch
        running_lora_adapters: 'a2,a3,demo-a,demo-b',
        waiting_lora_adapters: 'a2,a3',
      });
      // The scrape time in seconds, as vLLM's set_to_current_time gives it.
      expect(Math.abs(sample.value - Date.now() / 1000)).toBeLessThan(300);
    }

    // /metrics/gateway serves these series and nothing else.
    const lean = parseMetrics(await (await fetch(`${base}/metrics/gateway`)).text());
    expect([...lean.keys()].sort()).toEqual([...Object.values(GATEWAY_METRIC_NAMES).flat()].sort());
    expect(m.has('troupe_adapter_loads_total')).toBe(true);

    const abort = await post('/abort_request', { abort_all: true });
    expect(abort.status).toBe(200);
    for (const text of await Promise.all(long.map((l) => l.text))) expect(text).toContain('"type":"abort"');
    for (const res of await Promise.all(waiting))
      expect(((await res.json()) as { meta_info: { finish_reason: { type: string } } }).meta_info.finish_reason.type).toBe('abort');
    const idle = await scrapeUntil('no running request', (s) => only(s, 'troupe_requests_running').value === 0);
    expect(figure(idle, GATEWAY_METRIC_NAMES.waiting)).toBe(0);
    expect(figure(idle, GATEWAY_METRIC_NAMES.kvUsage)).toBe(0);
    expect(loraInfo(idle).waiting_lora_adapters).toBe('');
    // Adapters keep their slots when idle: all four fit.
    expect(loraInfo(idle).running_lora_adapters).toBe('a2,a3,demo-a,demo-b');
  }, 120_000);
});

describe('gateway metrics of any engine', () => {
  const load = (over: Partial<SchedulerLoad> = {}): SchedulerLoad => ({
    waiting: 0,
    running: 0,
    freeBlocks: 10,
    totalBlocks: 10,
    residentAdapters: [],
    waitingAdapters: [],
    preempted: { cache: 0, place: 0 },
    steps: { total: 0, ahead: 0 },
    engine: {
      seconds: 0,
      decodeSteps: 0,
      decodeSeconds: 0,
      decodeStepBuckets: DECODE_STEP_BUCKETS.map(() => 0),
      decodeStepSlots: LORA_SLOT_BUCKETS.map(() => 0),
      decodeSlotsSum: 0,
      waits: 0,
      waitSeconds: 0,
    },
    cachedBlocks: 0,
    prefixCache: { queriedTokens: 0, hitTokens: 0 },
    ...over,
  });

  it('asks the scheduler once per scrape, however many gauges read it', async () => {
    const registry = new Registry();
    let calls = 0;
    registerGatewayMetrics([registry], {
      modelName: 'm',
      blockSize: 16,
      numBlocks: 10,
      maxLoras: 4,
      load: async () => (calls++, load({ waiting: calls, freeBlocks: 5 })),
    });
    const first = parseMetrics(await registry.metrics());
    expect(calls).toBe(1);
    expect(figure(first, GATEWAY_METRIC_NAMES.waiting)).toBe(1);
    expect(figure(first, GATEWAY_METRIC_NAMES.kvUsage)).toBe(0.5);
    const second = parseMetrics(await registry.metrics());
    expect(calls).toBe(2);
    expect(figure(second, GATEWAY_METRIC_NAMES.waiting)).toBe(2);
  });

  it("counts preempted requests by reason from the scheduler's totals, on /metrics only", async () => {
    const registry = new Registry();
    const gatewayOnly = new Registry();
    let current = load({ preempted: { cache: 2, place: 0 } });
    registerGatewayMetrics([registry, gatewayOnly], { modelName: 'm', blockSize: 16, numBlocks: 10, maxLoras: 4, load: async () => current });
    const byReason = (m: Map<string, Sample[]>) =>
      Object.fromEntries((m.get('troupe_requests_preempted_total') ?? []).map((x) => [x.labels.reason, x.value]));
    expect(byReason(parseMetrics(await registry.metrics()))).toEqual({ kv_cache: 2, place: 0 });
    current = load({ preempted: { cache: 2, place: 3 } });
    expect(byReason(parseMetrics(await registry.metrics()))).toEqual({ kv_cache: 2, place: 3 });
    expect(parseMetrics(await gatewayOnly.metrics()).has('troupe_requests_preempted_total')).toBe(false);
  });

  it("counts the prompt tokens looked up in the prefix cache and found there, with SGLang's hit rate, on /metrics only", async () => {
    const registry = new Registry();
    const gatewayOnly = new Registry();
    let current = load();
    registerGatewayMetrics([registry, gatewayOnly], { modelName: 'm', blockSize: 16, numBlocks: 10, maxLoras: 4, load: async () => current });
    const read = async () => {
      const m = parseMetrics(await registry.metrics());
      return [
        ...PREFIX_METRIC_NAMES.queries.map((n) => only(m, n).value),
        ...PREFIX_METRIC_NAMES.hits.map((n) => only(m, n).value),
        only(m, PREFIX_METRIC_NAMES.hitRate).value,
        only(m, PREFIX_METRIC_NAMES.blocks).value,
      ];
    };
    expect(await read()).toEqual([0, 0, 0, 0, 0, 0]);
    current = load({ prefixCache: { queriedTokens: 400, hitTokens: 100 }, cachedBlocks: 7 });
    expect(await read()).toEqual([400, 400, 100, 100, 0.25, 7]);
    const m = parseMetrics(await registry.metrics());
    expect(only(m, 'vllm:prefix_cache_hits_total').labels).toEqual({ model_name: 'm' });
    expect(parseMetrics(await gatewayOnly.metrics()).has(PREFIX_METRIC_NAMES.hitRate)).toBe(false);
  });

  it("shows the decode steps' times and LoRA slots reached as Prometheus histograms, on /metrics only", async () => {
    const registry = new Registry();
    const gatewayOnly = new Registry();
    // Three steps: 5 ms, 6 ms and one of 400 ms (a new batch size's first graph).
    const buckets = DECODE_STEP_BUCKETS.map((bound) => [0.005, 0.006, 0.4].filter((t) => t <= bound).length);
    // Their batches reached no slot, slot 0 and slot 5 (6 slots).
    const slots = LORA_SLOT_BUCKETS.map((bound) => [0, 1, 6].filter((n) => n <= bound).length);
    const engine = {
      seconds: 1,
      decodeSteps: 3,
      decodeSeconds: 0.411,
      decodeStepBuckets: buckets,
      decodeStepSlots: slots,
      decodeSlotsSum: 7,
      waits: 0,
      waitSeconds: 0,
    };
    registerGatewayMetrics([registry, gatewayOnly], {
      modelName: 'm',
      blockSize: 16,
      numBlocks: 10,
      maxLoras: 4,
      load: async () => load({ engine }),
    });
    const text = await registry.metrics();
    expect(text).toContain('# TYPE troupe_engine_decode_step_duration_seconds histogram');
    const m = parseMetrics(text);
    const le = Object.fromEntries((m.get('troupe_engine_decode_step_duration_seconds_bucket') ?? []).map((x) => [x.labels.le, x.value]));
    expect(le).toMatchObject({ '0.004': 0, '0.005': 1, '0.006': 2, '0.007': 2, '0.25': 2, '0.5': 3, '1': 3, '+Inf': 3 });
    expect(Object.keys(le)).toHaveLength(DECODE_STEP_BUCKETS.length + 1);
    expect(only(m, 'troupe_engine_decode_step_duration_seconds_sum').value).toBe(0.411);
    expect(only(m, 'troupe_engine_decode_step_duration_seconds_count').value).toBe(3);
    expect(parseMetrics(await gatewayOnly.metrics()).has('troupe_engine_decode_step_duration_seconds_bucket')).toBe(false);
    const bySlots = Object.fromEntries((m.get('troupe_engine_decode_step_lora_slots_bucket') ?? []).map((x) => [x.labels.le, x.value]));
    expect(bySlots).toEqual({ '0': 1, '1': 2, '2': 2, '4': 2, '8': 3, '16': 3, '32': 3, '64': 3, '128': 3, '+Inf': 3 });
    expect(only(m, 'troupe_engine_decode_step_lora_slots_sum').value).toBe(7);
    expect(only(m, 'troupe_engine_decode_step_lora_slots_count').value).toBe(3);
  });

  it('keeps one adapter info series, the current one, with the scrape time as its value', async () => {
    const registry = new Registry();
    let now = 1_000_000;
    let current = load({ residentAdapters: ['x'], waitingAdapters: ['y', 'z'] });
    registerGatewayMetrics([registry], { modelName: 'm', blockSize: 16, numBlocks: 10, maxLoras: 4, load: async () => current, now: () => now });
    const first = parseMetrics(await registry.metrics());
    expect(only(first, 'vllm:lora_requests_info')).toEqual({
      labels: { max_lora: '4', running_lora_adapters: 'x', waiting_lora_adapters: 'y,z' },
      value: 1000,
    });
    now = 2_000_000;
    current = load({ residentAdapters: ['x', 'y'] });
    const second = parseMetrics(await registry.metrics());
    expect(only(second, 'troupe_lora_requests_info')).toEqual({
      labels: { max_lora: '4', running_lora_adapters: 'x,y', waiting_lora_adapters: '' },
      value: 2000,
    });
  });

  it('serves /metrics/gateway without the API key, as /metrics, for pickers that send none', async () => {
    const metrics = new EngineMetrics(4, () => ({ slots: 4, slotsUsed: 0, cpuAdapters: 0, byState: {} }), {
      modelName: 'm',
      blockSize: 16,
      numBlocks: 10,
      maxLoras: 4,
      load: async () => load({ waiting: 3 }),
    });
    const app = createApp(Object.assign(new EchoEngine(), { metrics }), { servedModelName: 'demo', apiKey: 'k' });
    const lean = await app.request('/metrics/gateway');
    expect(lean.status).toBe(200);
    const m = parseMetrics(await lean.text());
    expect(figure(m, GATEWAY_METRIC_NAMES.waiting)).toBe(3);
    expect(m.has('troupe_adapter_loads_total')).toBe(false);
    expect((await app.request('/metrics')).status).toBe(200);
    expect((await app.request('/get_server_info')).status).toBe(401);
  });

  it('counts and times moves between pool slots as their own load stage', async () => {
    const metrics = new EngineMetrics(4, () => ({ slots: 4, slotsUsed: 2, cpuAdapters: 2, byState: {} }));
    const at = (adapter: string, from: string, to: string, time: number) => ({ adapter, from, to, reason: '', time });
    metrics.transitions([
      at('a', 'cpuLoaded', 'h2dInFlight', 1000),
      at('a', 'h2dInFlight', 'gpuResident.unpinned', 1009),
      at('a', 'gpuResident.unpinned', 'moving', 2000),
      at('b', 'gpuResident.pinned', 'moving', 2000),
      at('a', 'moving', 'gpuResident.unpinned', 2000.5),
      at('b', 'moving', 'gpuResident.pinned', 2000.5),
    ]);
    const m = parseMetrics(await metrics.registry.metrics());
    const value = (name: string, adapter: string, stage: string): number | undefined =>
      m.get(name)?.find((x) => x.labels.adapter === adapter && x.labels.stage === stage)?.value;
    expect(value('troupe_adapter_loads_total', 'a', 'cpu_to_gpu')).toBe(1);
    expect(value('troupe_adapter_loads_total', 'a', 'slot_move')).toBe(1);
    expect(value('troupe_adapter_loads_total', 'b', 'slot_move')).toBe(1);
    expect(value('troupe_adapter_load_seconds_sum', 'a', 'slot_move')).toBeCloseTo(0.0005, 6);
    expect(value('troupe_adapter_load_seconds_sum', 'a', 'cpu_to_gpu')).toBeCloseTo(0.009, 6);
  });

  it('leaves the adapter info out when LoRA is off, as vLLM does', async () => {
    const registry = new Registry();
    registerGatewayMetrics([registry], { modelName: 'm', blockSize: 16, numBlocks: 10, maxLoras: null, load: async () => load() });
    const m = parseMetrics(await registry.metrics());
    for (const name of GATEWAY_METRIC_NAMES.loraInfo) expect(m.has(name)).toBe(false);
    expect(figure(m, GATEWAY_METRIC_NAMES.running)).toBe(0);
  });
});

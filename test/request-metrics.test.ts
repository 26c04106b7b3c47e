// Request latency histograms (queue, first token, per token, between tokens, end to end) and token totals in /metrics, under troupe's names and SGLang's and
// vLLM's: what each kind of ending observes (EngineMetrics fed by hand), then the same series
// moving as requests run through a real server on the demo model.
import { describe, expect, it } from 'vitest';
import { parseMetrics } from '../bench/serve-client.js';
import { EngineMetrics } from '../src/metrics/collector.js';
import { REQUEST_METRIC_NAMES } from '../src/metrics/requests.js';
import { useDemoServer } from './demo-server.js';

interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

/** The value of `name` with exactly `labels` (le included for buckets), or undefined. */
function value(samples: Sample[], name: string, labels: Record<string, string> = {}): number | undefined {
  const want = JSON.stringify(Object.entries(labels).sort());
  return samples.find((s) => s.name === name && JSON.stringify(Object.entries(s.labels).sort()) === want)?.value;
}

function metrics(modelName: string | null): EngineMetrics {
  const counters = () => ({ slots: 4, slotsUsed: 0, cpuAdapters: 0, byState: {} });
  if (modelName === null) return new EngineMetrics(4, counters);
  return new EngineMetrics(4, counters, {
    modelName,
    blockSize: 16,
    numBlocks: 10,
    maxLoras: 4,
    load: async () => {
      throw new Error('no scheduler here');
    },
  });
}

/** The request series alone: the scheduler snapshot the others read is not there. */
async function scrape(m: EngineMetrics): Promise<Sample[]> {
  const names = Object.values(REQUEST_METRIC_NAMES).flat();
  const texts = await Promise.all(names.filter((n) => m.registry.getSingleMetric(n)).map((n) => m.registry.getSingleMetricAsString(n)));
  return parseMetrics(texts.join('\n')) as Sample[];
}

describe('request latency metrics', () => {
  it('observes a normal end under every name: end to end, per output token after the first, tokens', async () => {
    const m = metrics('m');
    m.firstToken(0.1, 0.04);
    m.nextToken(0.02);
    m.nextToken(0.03);
    m.request({ lora: 'a', outcome: 'ok', promptTokens: 7, completionTokens: 5, e2eSeconds: 0.5, ttftSeconds: 0.1 });
    const s = await scrape(m);
    const own = (name: string, labels = {}) => value(s, name, labels);
    const [e2e, vllmE2e, sglangE2e] = REQUEST_METRIC_NAMES.e2e;
    const [tpot, vllmTpot, sglangTpot] = REQUEST_METRIC_NAMES.tpot;
    const [ttft, vllmTtft, sglangTtft] = REQUEST_METRIC_NAMES.ttft;
    expect(own(`${e2e}_sum`)).toBeCloseTo(0.5, 9);
    expect(own(`${e2e}_count`)).toBe(1);
    // (0.5 - 0.1) / (5 - 1): 0.1 s a token, in the 0.1 bucket and not the one below.
    expect(own(`${tpot}_sum`)).toBeCloseTo(0.1, 9);
    expect(own(`${tpot}_bucket`, { le: '0.1' })).toBe(1);
    expect(own(`${tpot}_bucket`, { le: '0.075' })).toBe(0);
    expect(own(`${ttft}_count`)).toBe(1);
    for (const name of [vllmE2e, sglangE2e]) expect(own(`${name}_sum`, { model_name: 'm' })).toBeCloseTo(0.5, 9);
    for (const name of [vllmTpot, sglangTpot]) expect(own(`${name}_count`, { model_name: 'm' })).toBe(1);
    for (const name of [vllmTtft, sglangTtft]) expect(own(`${name}_sum`, { model_name: 'm' })).toBeCloseTo(0.1, 9);
    // The gaps between tokens, one observation each.
    for (const [i, name] of REQUEST_METRIC_NAMES.itl.entries()) {
      const labels = i === 0 ? {} : { model_name: 'm' };
      expect(own(`${name}_count`, labels)).toBe(2);
      expect(own(`${name}_sum`, labels)).toBeCloseTo(0.05, 9);
      expect(own(`${name}_bucket`, { ...labels, le: '0.02' })).toBe(1);
    }
    const [queue, vllmQueue, sglangQueue] = REQUEST_METRIC_NAMES.queue;
    expect(own(`${queue}_sum`)).toBeCloseTo(0.04, 9);
    expect(own(`${queue}_bucket`, { le: '0.04' })).toBe(1);
    expect(own(`${queue}_bucket`, { le: '0.02' })).toBe(0);
    for (const name of [vllmQueue, sglangQueue]) expect(own(`${name}_count`, { model_name: 'm' })).toBe(1);
    for (const name of REQUEST_METRIC_NAMES.promptTokens) expect(own(name, { model_name: 'm' })).toBe(7);
    for (const name of REQUEST_METRIC_NAMES.generationTokens) expect(own(name, { model_name: 'm' })).toBe(5);
  });

  it('counts the tokens of aborted requests but not their times, and nothing of failed ones', async () => {
    const m = metrics('m');
    m.request({ lora: null, outcome: 'aborted', promptTokens: 3, completionTokens: 2, e2eSeconds: 9, ttftSeconds: 1 });
    m.request({ lora: null, outcome: 'error', promptTokens: 0, completionTokens: 0 });
    // One token: an end to end time, but no time per token after the first.
    m.request({ lora: null, outcome: 'ok', promptTokens: 4, completionTokens: 1, e2eSeconds: 0.2, ttftSeconds: 0.2 });
    const s = await scrape(m);
    expect(value(s, `${REQUEST_METRIC_NAMES.e2e[0]}_count`)).toBe(1);
    expect(value(s, `${REQUEST_METRIC_NAMES.e2e[0]}_sum`)).toBeCloseTo(0.2, 9);
    expect(value(s, `${REQUEST_METRIC_NAMES.tpot[0]}_count`)).toBe(0);
    expect(value(s, REQUEST_METRIC_NAMES.promptTokens[1], { model_name: 'm' })).toBe(7);
    expect(value(s, REQUEST_METRIC_NAMES.generationTokens[1], { model_name: 'm' })).toBe(3);
  });

  it("publishes troupe's names alone where the engine has no served model name", async () => {
    const m = metrics(null);
    m.firstToken(0.01);
    const names = new Set((await scrape(m)).map((s) => s.name));
    expect(names.has(`${REQUEST_METRIC_NAMES.ttft[0]}_count`)).toBe(true);
    expect([...names].filter((n) => n.startsWith('vllm:') || n.startsWith('sglang:'))).toEqual([]);
  });
});

describe('request latency metrics through HTTP', () => {
  const demo = useDemoServer();
  const read = async (): Promise<Sample[]> => parseMetrics(await (await fetch(`${demo().base}/metrics`)).text()) as Sample[];
  /** A series summed over its label sets (the vendor names carry model_name). */
  const total = (s: Sample[], name: string): number => s.filter((x) => x.name === name).reduce((a, x) => a + x.value, 0);
  const generate = (body: object) =>
    fetch(`${demo().base}/generate`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });

  it('moves with each request that ends, streamed or not, and not with log_metrics false', async () => {
    const before = await read();
    const sampling = { max_new_tokens: 4, temperature: 0, ignore_eos: true };
    expect((await generate({ text: 'The king said', sampling_params: sampling, lora_path: 'demo-a' })).status).toBe(200);
    const streamed = await generate({ text: 'The king said', sampling_params: sampling, stream: true });
    expect(streamed.status).toBe(200);
    await streamed.text();
    expect((await generate({ text: 'The king said', sampling_params: sampling, log_metrics: false })).status).toBe(200);
    const after = await read();
    const grew = (name: string) => total(after, name) - total(before, name);
    for (const names of [REQUEST_METRIC_NAMES.e2e, REQUEST_METRIC_NAMES.ttft, REQUEST_METRIC_NAMES.tpot, REQUEST_METRIC_NAMES.queue])
      for (const name of names) expect(grew(`${name}_count`), name).toBe(2);
    // Three gaps in each request's four tokens.
    for (const name of REQUEST_METRIC_NAMES.itl) expect(grew(`${name}_count`), name).toBe(6);
    for (const name of REQUEST_METRIC_NAMES.generationTokens) expect(grew(name), name).toBe(8);
    // Each request's first token comes before its last, and after its wait for a step.
    expect(grew(`${REQUEST_METRIC_NAMES.e2e[0]}_sum`)).toBeGreaterThan(grew(`${REQUEST_METRIC_NAMES.ttft[0]}_sum`));
    expect(grew(`${REQUEST_METRIC_NAMES.ttft[0]}_sum`)).toBeGreaterThan(grew(`${REQUEST_METRIC_NAMES.queue[0]}_sum`));
    const labelled = after.filter((s) => s.name === `${REQUEST_METRIC_NAMES.e2e[2]}_count`);
    expect(labelled).toHaveLength(1);
    expect(labelled[0]!.labels.model_name).toBeTruthy();
  }, 60_000);
});

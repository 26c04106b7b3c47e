// Request latencies as Prometheus histograms (queue time, time to first token, time per output
// token, the gaps between tokens, end to end) and the token totals, under troupe's names and,
// where the engine has a served model name, under the names SGLang's and vLLM's dashboards read,
// labelled with model_name as theirs are. Each figure is one histogram, observed once; the other
// names republish its series when scraped, so a token costs one observation, not three. No
// adapter label: thousands of adapter names times twenty buckets would swamp a scrape; the
// per-adapter request and token counters are collector.ts's.
import { Counter, Histogram, type Registry } from 'prom-client';
import { ENGINES } from './gateway.js';
import { registerScrapedHistogram } from './scraped-histogram.js';

/** The names each figure is published under: troupe's, then vLLM's, then SGLang's. */
export const REQUEST_METRIC_NAMES = {
  queue: ['troupe_request_queue_time_seconds', 'vllm:request_queue_time_seconds', 'sglang:queue_time_seconds'],
  ttft: ['troupe_request_time_to_first_token_seconds', 'vllm:time_to_first_token_seconds', 'sglang:time_to_first_token_seconds'],
  tpot: ['troupe_request_time_per_output_token_seconds', 'vllm:request_time_per_output_token_seconds', 'sglang:time_per_output_token_seconds'],
  itl: ['troupe_request_inter_token_latency_seconds', 'vllm:inter_token_latency_seconds', 'sglang:inter_token_latency_seconds'],
  e2e: ['troupe_request_e2e_latency_seconds', 'vllm:e2e_request_latency_seconds', 'sglang:e2e_request_latency_seconds'],
  // troupe's own token totals are per adapter (troupe_adapter_*_tokens_total).
  promptTokens: ['vllm:prompt_tokens_total', 'sglang:prompt_tokens_total'],
  generationTokens: ['vllm:generation_tokens_total', 'sglang:generation_tokens_total'],
} as const;

// SGLang's and vLLM's bounds, with finer ones below 10 ms a token: a GPU decode step of a batch
// takes 4-8 ms, so their coarsest per-token bucket would hold every request of a healthy server.
const WAIT_BUCKETS = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40, 80];
const TOKEN_BUCKETS = [0.002, 0.004, 0.006, 0.008, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1, 2.5];
const E2E_BUCKETS = [0.1, 0.3, 0.5, 0.8, 1, 1.5, 2, 2.5, 5, 10, 15, 20, 30, 40, 50, 60, 120, 240, 480];

/** How a request that ended normally (stop, length or a stop string) went. */
export interface RequestLatency {
  promptTokens: number;
  completionTokens: number;
  /** From the request's arrival (before tokenization) to its last token. */
  e2eSeconds: number;
  /** From its arrival to its first token; null when it made none. */
  ttftSeconds: number | null;
}

/** `source`'s series under `name`, each with `model_name` added, read from it at every scrape. */
function republish(registers: Registry[], source: Histogram, name: string, help: string, modelName: string): void {
  registerScrapedHistogram(registers, name, help, async () => {
    const data = await source.get();
    return data.values.map((v) => ({
      ...v,
      metricName: (v.metricName ?? name).replace(data.name, name),
      labels: { ...v.labels, model_name: modelName },
    }));
  });
}

type Figure = 'queue' | 'ttft' | 'tpot' | 'itl' | 'e2e';

const FIGURES: Record<Figure, { help: string; buckets: number[] }> = {
  queue: {
    help: 'Time a request waited in the scheduler, from its submission (after tokenization) to the first step built with it: for room in the batch or the KV cache, or for its adapter to load. Observed with its first token.',
    buckets: WAIT_BUCKETS,
  },
  ttft: {
    help: "Time from a request's arrival (before tokenization) to its first generated token, observed as that token arrives.",
    buckets: WAIT_BUCKETS,
  },
  tpot: {
    help: 'Time per output token after the first, one observation per request that ended normally with two tokens or more: (end to end - time to first token) / (tokens - 1).',
    buckets: TOKEN_BUCKETS,
  },
  itl: {
    help: "Time between a request's consecutive generated tokens as they arrive, one observation per token after the first.",
    buckets: TOKEN_BUCKETS,
  },
  e2e: {
    help: "Time from a request's arrival to its last token, of each request that ended normally (not aborted, not failed).",
    buckets: E2E_BUCKETS,
  },
};

export class RequestMetrics {
  private readonly h = {} as Record<Figure, Histogram>;
  private readonly promptTokens: Array<(n: number) => void>;
  private readonly generationTokens: Array<(n: number) => void>;

  /** `modelName` null: troupe's names only. */
  constructor(registers: Registry[], modelName: string | null) {
    for (const [figure, { help, buckets }] of Object.entries(FIGURES) as Array<[Figure, (typeof FIGURES)[Figure]]>) {
      const names = REQUEST_METRIC_NAMES[figure];
      const own = new Histogram({ name: names[0], help, buckets, registers });
      if (modelName !== null)
        names
          .slice(1)
          .forEach((name, i) => republish(registers, own, name, `${help} Same as ${names[0]}, under ${ENGINES[i + 1]}'s name.`, modelName));
      this.h[figure] = own;
    }
    const counter = (names: readonly string[], help: string): Array<(n: number) => void> =>
      modelName === null
        ? []
        : names.map((name) => {
            const c = new Counter<'model_name'>({ name, help, labelNames: ['model_name'], registers });
            const labels = { model_name: modelName };
            return (n) => c.inc(labels, n);
          });
    this.promptTokens = counter(
      REQUEST_METRIC_NAMES.promptTokens,
      'Prompt tokens of finished requests (ended or aborted): troupe_adapter_prompt_tokens_total summed over adapters.',
    );
    this.generationTokens = counter(
      REQUEST_METRIC_NAMES.generationTokens,
      'Generated tokens of finished requests (ended or aborted): troupe_adapter_generated_tokens_total summed over adapters.',
    );
  }

  /** A request's first token, `seconds` after it arrived, having waited `queueSeconds` in the scheduler (null: not known). */
  firstToken(seconds: number, queueSeconds: number | null): void {
    this.h.ttft.observe(seconds);
    if (queueSeconds !== null) this.h.queue.observe(queueSeconds);
  }

  /** A later token, `seconds` after the request's one before it. */
  nextToken(seconds: number): void {
    this.h.itl.observe(seconds);
  }

  /** A request that ended, normally or aborted; only normal ends count toward the latencies. */
  finished(r: RequestLatency, normal: boolean): void {
    for (const inc of this.promptTokens) inc(r.promptTokens);
    for (const inc of this.generationTokens) inc(r.completionTokens);
    if (!normal) return;
    this.h.e2e.observe(r.e2eSeconds);
    if (r.ttftSeconds !== null && r.completionTokens >= 2) {
      this.h.tpot.observe(Math.max(0, r.e2eSeconds - r.ttftSeconds) / (r.completionTokens - 1));
    }
  }
}

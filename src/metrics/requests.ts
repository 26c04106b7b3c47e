// Request latencies as Prometheus histograms (time to first token, time per output token, end to
// end) and the token totals, under troupe's names and, where the engine has a served model name,
// under the names SGLang's and vLLM's Grafana dashboards read, labelled with model_name as
// theirs are. No adapter label: thousands of adapter names times twenty buckets would swamp a
// scrape; the per-adapter request and token counters are collector.ts's.
import { Counter, Histogram, type Registry } from 'prom-client';

/** The names each figure is published under: troupe's, then vLLM's, then SGLang's. */
export const REQUEST_METRIC_NAMES = {
  ttft: ['troupe_request_time_to_first_token_seconds', 'vllm:time_to_first_token_seconds', 'sglang:time_to_first_token_seconds'],
  tpot: ['troupe_request_time_per_output_token_seconds', 'vllm:time_per_output_token_seconds', 'sglang:time_per_output_token_seconds'],
  e2e: ['troupe_request_e2e_latency_seconds', 'vllm:e2e_request_latency_seconds', 'sglang:e2e_request_latency_seconds'],
  // troupe's own token totals are per adapter (troupe_adapter_*_tokens_total).
  promptTokens: ['vllm:prompt_tokens_total', 'sglang:prompt_tokens_total'],
  generationTokens: ['vllm:generation_tokens_total', 'sglang:generation_tokens_total'],
} as const;

// SGLang's and vLLM's bounds, with finer ones below 10 ms per token: a GPU decode step of a batch
// takes 4-8 ms, so their coarsest per-token bucket would hold every request of a healthy server.
const TTFT_BUCKETS = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40, 80];
const TPOT_BUCKETS = [0.002, 0.004, 0.006, 0.008, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1, 2.5];
const E2E_BUCKETS = [0.1, 0.3, 0.5, 0.8, 1, 1.5, 2, 2.5, 5, 10, 15, 20, 30, 40, 50, 60, 120, 240, 480];

const ENGINES = ['troupe', 'vLLM', 'SGLang'] as const;

/** How a request that ended normally (stop, length or a stop string) went. */
export interface RequestLatency {
  promptTokens: number;
  completionTokens: number;
  /** From the request's arrival (before tokenization) to its last token. */
  e2eSeconds: number;
  /** From its arrival to its first token; null when it made none. */
  ttftSeconds: number | null;
}

/** One figure under each of its names: the same value goes to every one. */
type Sink = (value: number) => void;

export class RequestMetrics {
  private readonly ttft: Sink[];
  private readonly tpot: Sink[];
  private readonly e2e: Sink[];
  private readonly promptTokens: Sink[];
  private readonly generationTokens: Sink[];

  /** `modelName` null: troupe's names only. */
  constructor(registers: Registry[], modelName: string | null) {
    const labels = { model_name: modelName ?? '' };
    const histogram = (names: readonly string[], help: string, buckets: number[]): Sink[] =>
      names.slice(0, modelName === null ? 1 : names.length).map((name, i) => {
        // troupe's own series carry no labels; vLLM's and SGLang's carry model_name, as theirs do.
        const own = i === 0;
        const h = new Histogram<'model_name'>({
          name,
          help: own ? help : `${help} Same as ${names[0]}, under ${ENGINES[i]}'s name.`,
          labelNames: own ? [] : ['model_name'],
          buckets,
          registers,
        });
        return own ? (v) => h.observe(v) : (v) => h.observe(labels, v);
      });
    const counter = (names: readonly string[], help: string): Sink[] =>
      modelName === null
        ? []
        : names.map((name) => {
            const c = new Counter<'model_name'>({ name, help, labelNames: ['model_name'], registers });
            return (v) => c.inc(labels, v);
          });
    this.ttft = histogram(
      REQUEST_METRIC_NAMES.ttft,
      "Time from a request's arrival (before tokenization) to its first generated token, observed as that token arrives.",
      TTFT_BUCKETS,
    );
    this.tpot = histogram(
      REQUEST_METRIC_NAMES.tpot,
      'Time per output token after the first, of each request that ended normally with two tokens or more: (end to end - time to first token) / (tokens - 1).',
      TPOT_BUCKETS,
    );
    this.e2e = histogram(
      REQUEST_METRIC_NAMES.e2e,
      "Time from a request's arrival to its last token, of each request that ended normally (not aborted, not failed).",
      E2E_BUCKETS,
    );
    this.promptTokens = counter(
      REQUEST_METRIC_NAMES.promptTokens,
      'Prompt tokens of finished requests (ended or aborted): troupe_adapter_prompt_tokens_total summed over adapters.',
    );
    this.generationTokens = counter(
      REQUEST_METRIC_NAMES.generationTokens,
      'Generated tokens of finished requests (ended or aborted): troupe_adapter_generated_tokens_total summed over adapters.',
    );
  }

  firstToken(seconds: number): void {
    for (const f of this.ttft) f(seconds);
  }

  /** A request that ended, normally or aborted; only normal ends count toward the latencies. */
  finished(r: RequestLatency, normal: boolean): void {
    for (const f of this.promptTokens) f(r.promptTokens);
    for (const f of this.generationTokens) f(r.completionTokens);
    if (!normal) return;
    for (const f of this.e2e) f(r.e2eSeconds);
    if (r.ttftSeconds !== null && r.completionTokens >= 2) {
      const perToken = Math.max(0, r.e2eSeconds - r.ttftSeconds) / (r.completionTokens - 1);
      for (const f of this.tpot) f(perToken);
    }
  }
}

// The serving-load gauges that an inference gateway's endpoint picker scrapes to choose a
// replica: the Gateway API Inference Extension's model server protocol
// (docs/proposals/003-model-server-protocol) asks for the waiting requests, the running
// requests, the KV-cache usage and, for adapter affinity, a LoRA info gauge shaped as vLLM's
// vllm:lora_requests_info.
//
// Each figure is published under troupe's own name and under the names the picker reads by
// default for its model-server types: vLLM's (the type of every pod without an engine-type
// label, and the only built-in type whose mapping reads adapter info) and SGLang's (a pod
// labelled as SGLang gets queue, running and KV usage, but no adapter affinity). All of one
// scrape come from one scheduler snapshot, so they agree with each other. They go into the
// engine's registry (/metrics) and a registry of their own (/metrics/gateway): the picker scrapes
// every 50 ms, and /metrics grows by some 3 KB per adapter name ever loaded.
//
// running_lora_adapters lists the adapters in a GPU pool slot, the protocol's "loaded in GPU
// memory and ready to serve" (vLLM lists those of running requests, which a slot always holds
// here): a replica that holds an adapter serves it without a copy whether or not a request uses
// it now, which is what adapter affinity is for. max_lora is then the pool's slots
// (--max-gpu-loras, which is --max-loras-per-batch unless given), so running plus waiting
// adapters below it means room for one more without evicting.
import { Counter, Gauge, type Registry } from 'prom-client';
import type { SchedulerLoad } from '../scheduler/index.js';
import { DECODE_STEP_BUCKETS, LORA_SLOT_BUCKETS, type EngineTimes } from '../scheduler/engine-time.js';
import { registerScrapedHistogram } from './scraped-histogram.js';

export interface GatewayMetricsSource {
  /** Served model name, the model_name label of the vLLM and SGLang gauges. */
  modelName: string;
  /** Tokens per KV block (--page-size) and the blocks of the KV cache. */
  blockSize: number;
  numBlocks: number;
  /** Adapters the GPU pool holds at once (its slots); null when LoRA is off, which leaves the adapter info out as vLLM does. */
  maxLoras: number | null;
  /** Asked once per scrape. */
  load(): Promise<SchedulerLoad>;
  /** Epoch milliseconds; the adapter info's value is the scrape time in seconds. */
  now?: () => number;
}

/** The names each figure is published under: troupe's, then vLLM's, then SGLang's. */
export const GATEWAY_METRIC_NAMES = {
  waiting: ['troupe_requests_waiting', 'vllm:num_requests_waiting', 'sglang:num_queue_reqs'],
  running: ['troupe_requests_running', 'vllm:num_requests_running', 'sglang:num_running_reqs'],
  kvUsage: ['troupe_kv_cache_usage_ratio', 'vllm:kv_cache_usage_perc', 'sglang:token_usage'],
  loraInfo: ['troupe_lora_requests_info', 'vllm:lora_requests_info'],
  cacheInfo: ['vllm:cache_config_info', 'sglang:cache_config_info'],
} as const;
/** The prefix cache's figures (on /metrics only): troupe's names, then vLLM's; SGLang's hit rate. */
export const PREFIX_METRIC_NAMES = {
  queries: ['troupe_prefix_cache_queries_tokens_total', 'vllm:prefix_cache_queries_total'],
  hits: ['troupe_prefix_cache_hits_tokens_total', 'vllm:prefix_cache_hits_total'],
  hitRate: 'sglang:cache_hit_rate',
  blocks: 'troupe_prefix_cache_blocks',
} as const;
/** Whose names those are, in that order. */
export const ENGINES = ['troupe', 'vLLM', 'SGLang'] as const;

/** One call shared by every gauge of a scrape: prom-client collects them all in the same tick. */
function sharedWhileInFlight<T>(fetch: () => Promise<T>): () => Promise<T> {
  let pending: Promise<T> | null = null;
  return () => (pending ??= fetch().finally(() => (pending = null)));
}

export function registerGatewayMetrics(registers: Registry[], source: GatewayMetricsSource): void {
  const snapshot = sharedWhileInFlight(() => source.load());
  const now = source.now ?? Date.now;

  const figure = (names: readonly string[], help: string, value: (l: SchedulerLoad) => number): void => {
    names.forEach((name, i) => {
      // troupe's own series carry no labels; vLLM's and SGLang's carry model_name, as theirs do.
      const own = i === 0;
      new Gauge({
        name,
        help: own ? help : `${help} Same as ${names[0]}, under ${ENGINES[i]}'s name.`,
        labelNames: own ? [] : ['model_name'],
        registers,
        async collect() {
          const v = value(await snapshot());
          if (own) this.set(v);
          else this.set({ model_name: source.modelName }, v);
        },
      });
    });
  };
  figure(
    GATEWAY_METRIC_NAMES.waiting,
    'Requests waiting to join the batch (for KV cache room, a place in the batch or their adapter).',
    (l) => l.waiting,
  );
  figure(GATEWAY_METRIC_NAMES.running, 'Requests in the running batch.', (l) => l.running);
  figure(GATEWAY_METRIC_NAMES.kvUsage, 'Fraction of KV cache blocks in use, from 0 to 1.', (l) =>
    l.totalBlocks > 0 ? (l.totalBlocks - l.freeBlocks) / l.totalBlocks : 0,
  );

  // Not gateway figures, but read from the same snapshot: on /metrics only. The scheduler keeps
  // the totals; each counter shows them as they are, one series per label value.
  const totals = (name: string, help: string, label: string, read: (l: SchedulerLoad) => Record<string, number>): void => {
    new Counter({
      name,
      help,
      labelNames: [label],
      registers: registers.slice(0, 1),
      async collect() {
        const values = read(await snapshot());
        this.reset();
        for (const [value, total] of Object.entries(values)) this.inc({ [label]: value }, total);
      },
    });
  };
  totals(
    'troupe_requests_preempted_total',
    'Running requests sent back to wait, their KV cache freed and recomputed later: reason="kv_cache" to make room in the cache, reason="place" to give their place in the batch to a request that waited --max-place-wait-steps.',
    'reason',
    (l) => ({ kv_cache: l.preempted.cache, place: l.preempted.place }),
  );
  totals(
    'troupe_steps_total',
    'Engine steps: scheduled="ahead" for those scheduled and sent while the step before was still running (overlap scheduling), "after" for those scheduled once it had ended.',
    'scheduled',
    (l) => ({ ahead: l.steps.ahead, after: l.steps.total - l.steps.ahead }),
  );

  // Unlabelled totals the scheduler keeps, shown as they are.
  const total = (name: string, help: string, read: (l: SchedulerLoad) => number): void => {
    new Counter({
      name,
      help,
      registers: registers.slice(0, 1),
      async collect() {
        const value = read(await snapshot());
        this.reset();
        this.inc(value);
      },
    });
  };
  total(
    'troupe_engine_step_seconds_total',
    "Time the engine spent running steps. Against the wall clock it shows how busy the engine is; what the engine waits for between steps is the host's share.",
    (l) => l.engine.seconds,
  );
  total('troupe_engine_decode_steps_total', 'Engine steps in which every row decoded one token (no prompt tokens).', (l) => l.engine.decodeSteps);
  total(
    'troupe_engine_decode_step_seconds_total',
    'Time the engine spent in those decode steps: divided by their count, the step time to hold inter-token latency against.',
    (l) => l.engine.decodeSeconds,
  );
  // Histograms of the decode steps. prom-client's Histogram counts observations itself; the
  // scheduler already keeps the counts, so these metrics hand them over as they are.
  const histogram = (name: string, help: string, bounds: readonly number[], read: (e: EngineTimes) => { buckets: number[]; sum: number }) =>
    registerScrapedHistogram(registers.slice(0, 1), name, help, async () => {
      const { engine } = await snapshot();
      const { buckets, sum } = read(engine);
      const bucket = (le: string, value: number) => ({ metricName: `${name}_bucket`, labels: { le }, value });
      return [
        ...bounds.map((bound, i) => bucket(String(bound), buckets[i] ?? 0)),
        bucket('+Inf', engine.decodeSteps),
        { metricName: `${name}_sum`, labels: {}, value: sum },
        { metricName: `${name}_count`, labels: {}, value: engine.decodeSteps },
      ];
    });
  histogram(
    'troupe_engine_decode_step_duration_seconds',
    "Decode steps' times in the engine: the buckets show the steps held by one-time costs (a batch size's first CUDA graph, cuBLAS's timing of its shapes) apart from the steady state.",
    DECODE_STEP_BUCKETS,
    (e) => ({ buckets: e.decodeStepBuckets, sum: e.decodeSeconds }),
  );
  histogram(
    'troupe_engine_decode_step_lora_slots',
    "One past the highest LoRA pool slot each decode step's batch used (0: the base model alone). The CUDA engine's LoRA GEMMs read every slot up to there, rounded up to a power of two, so a step over one adapter in a high slot costs what one over that many adapters would.",
    LORA_SLOT_BUCKETS,
    (e) => ({ buckets: e.decodeStepSlots, sum: e.decodeSlotsSum }),
  );
  total(
    'troupe_engine_waits_total',
    'Steps sent while the step before was still running (overlap scheduling), each with a wait for it measured.',
    (l) => l.engine.waits,
  );
  total(
    'troupe_engine_wait_seconds_total',
    "Time the engine stood idle before those steps, from the end of the step before: the host's share per step (the result's reply, the next step's message and its inputs) when the scheduler is ahead.",
    (l) => l.engine.waitSeconds,
  );

  // The prefix cache: prompt tokens looked up and found, as vLLM counts them, and their ratio,
  // SGLang's figure. From the start, in the snapshot's totals.
  const prefixTotals = [
    [
      PREFIX_METRIC_NAMES.queries,
      'Prompt tokens of the requests admitted so far, looked up in the prefix cache.',
      (l: SchedulerLoad) => l.prefixCache.queriedTokens,
    ],
    [PREFIX_METRIC_NAMES.hits, 'Of those, the tokens read from the prefix cache instead of computed.', (l: SchedulerLoad) => l.prefixCache.hitTokens],
  ] as const;
  for (const [[own, vllm], help, read] of prefixTotals) {
    total(own, help, read);
    new Counter({
      name: vllm,
      help: `${help} Same as ${own}, under vLLM's name.`,
      labelNames: ['model_name'],
      registers: registers.slice(0, 1),
      async collect() {
        const value = read(await snapshot());
        this.reset();
        this.inc({ model_name: source.modelName }, value);
      },
    });
  }
  new Gauge({
    name: PREFIX_METRIC_NAMES.blocks,
    help: 'KV cache blocks the prefix cache keeps for later requests, held by running requests or idle (idle ones count as free).',
    registers: registers.slice(0, 1),
    async collect() {
      this.set((await snapshot()).cachedBlocks);
    },
  });
  new Gauge({
    name: PREFIX_METRIC_NAMES.hitRate,
    help: "Fraction of the admitted requests' prompt tokens read from the prefix cache since the start (0 before any).",
    labelNames: ['model_name'],
    registers: registers.slice(0, 1),
    async collect() {
      const { queriedTokens, hitTokens } = (await snapshot()).prefixCache;
      this.set({ model_name: source.modelName }, queriedTokens > 0 ? hitTokens / queriedTokens : 0);
    },
  });

  // Info gauges: the labels carry the figures. Both pickers' cache scorers read them.
  new Gauge({
    name: GATEWAY_METRIC_NAMES.cacheInfo[0],
    help: 'KV cache shape: block_size (tokens per block) and num_gpu_blocks, as vLLM labels them; the value is 1.',
    labelNames: ['block_size', 'num_gpu_blocks'],
    registers,
  }).set({ block_size: String(source.blockSize), num_gpu_blocks: String(source.numBlocks) }, 1);
  new Gauge({
    name: GATEWAY_METRIC_NAMES.cacheInfo[1],
    help: 'KV cache shape: page_size (tokens per page) and num_pages, as SGLang labels them; the value is 1.',
    labelNames: ['page_size', 'num_pages'],
    registers,
  }).set({ page_size: String(source.blockSize), num_pages: String(source.numBlocks) }, 1);

  if (source.maxLoras === null) return;
  const maxLora = String(source.maxLoras);
  for (const name of GATEWAY_METRIC_NAMES.loraInfo) {
    new Gauge({
      name,
      help:
        'LoRA adapters, in labels as vLLM gives them: running_lora_adapters (in a GPU pool slot, ready to run), ' +
        'waiting_lora_adapters (named by waiting requests), max_lora (GPU pool slots); the value is the scrape time in seconds.',
      labelNames: ['max_lora', 'running_lora_adapters', 'waiting_lora_adapters'],
      registers,
      async collect() {
        const l = await snapshot();
        // One series, the current one: vLLM leaves a series behind per combination and the
        // picker takes the newest by its value; a single series reads the same and never grows.
        this.reset();
        this.set(
          { max_lora: maxLora, running_lora_adapters: l.residentAdapters.join(','), waiting_lora_adapters: l.waitingAdapters.join(',') },
          now() / 1000,
        );
      },
    });
  }
}

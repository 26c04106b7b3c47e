// Prometheus metrics of one engine, fed by the engine facade: finished requests per adapter,
// their latencies (requests.ts), and adapter transitions (loads, moves between slots, evictions,
// load times) as the scheduler publishes them.
// Each engine has its own registry so several engines in one process do not collide.
import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { AdapterCounters, AdapterTransition } from '../scheduler/index.js';
import { registerGatewayMetrics, type GatewayMetricsSource } from './gateway.js';
import { RequestMetrics } from './requests.js';

/** The `adapter` label of requests for the base model. */
export const BASE_LABEL = '(base)';

export interface FinishedRequest {
  lora: string | null;
  outcome: 'ok' | 'aborted' | 'error';
  promptTokens: number;
  completionTokens: number;
  /** From its arrival to its end, and to its first token (null: none); absent for errors. */
  e2eSeconds?: number;
  ttftSeconds?: number | null;
}

/** The load stage that ends when an adapter enters a pool slot, by the state it leaves. */
const TO_GPU_STAGES: Record<string, string> = { h2dInFlight: 'cpu_to_gpu', moving: 'slot_move' };

export class EngineMetrics {
  readonly registry = new Registry();
  /** Only what inference gateways' endpoint pickers read (see gateway.ts); also in `registry`. */
  readonly gatewayRegistry = new Registry();
  private readonly requests: Counter<'adapter' | 'outcome'>;
  private readonly promptTokens: Counter<'adapter'>;
  private readonly generatedTokens: Counter<'adapter'>;
  private readonly loads: Counter<'adapter' | 'stage'>;
  private readonly failures: Counter<'adapter'>;
  private readonly evictions: Counter<'adapter' | 'from'>;
  private readonly loadSeconds: Histogram<'adapter' | 'stage'>;
  private readonly latency: RequestMetrics;
  /** When each adapter's current read or copy began, to time it when it lands. */
  private readonly started = new Map<string, number>();

  /**
   * `counters` are the scheduler's latest (sent with its transitions); no adapter table is kept.
   * `gateway` adds the queue, KV-cache and adapter gauges that endpoint pickers read.
   */
  constructor(poolSlots: number, counters: () => AdapterCounters, gateway?: GatewayMetricsSource) {
    const registers = [this.registry];
    this.requests = new Counter({
      name: 'troupe_adapter_requests_total',
      help: 'Finished generation requests per adapter ((base) = no adapter) and outcome (ok, aborted, error).',
      labelNames: ['adapter', 'outcome'],
      registers,
    });
    this.promptTokens = new Counter({
      name: 'troupe_adapter_prompt_tokens_total',
      help: 'Prompt tokens of finished requests per adapter.',
      labelNames: ['adapter'],
      registers,
    });
    this.generatedTokens = new Counter({
      name: 'troupe_adapter_generated_tokens_total',
      help: 'Generated tokens of finished requests per adapter.',
      labelNames: ['adapter'],
      registers,
    });
    this.loads = new Counter({
      name: 'troupe_adapter_loads_total',
      help: 'Completed adapter loads per stage: disk_to_cpu (read and checked), cpu_to_gpu (copied into a pool slot) and slot_move (moved from one pool slot to another inside the GPU).',
      labelNames: ['adapter', 'stage'],
      registers,
    });
    this.failures = new Counter({
      name: 'troupe_adapter_load_failures_total',
      help: 'Adapter loads that failed.',
      labelNames: ['adapter'],
      registers,
    });
    this.evictions = new Counter({
      name: 'troupe_adapter_evictions_total',
      help: 'Evictions per adapter: from="gpu" gave up its pool slot, from="cpu" left CPU memory (--max-loaded-loras).',
      labelNames: ['adapter', 'from'],
      registers,
    });
    this.loadSeconds = new Histogram({
      name: 'troupe_adapter_load_seconds',
      help: 'Time of each adapter load stage: disk_to_cpu, cpu_to_gpu and slot_move.',
      labelNames: ['adapter', 'stage'],
      buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers,
    });
    new Gauge({
      name: 'troupe_lora_pool_slots',
      help: 'LoRA pool slots (--max-gpu-loras adapters of --max-lora-rank; an adapter takes the slots its rank needs).',
      registers,
    }).set(poolSlots);
    new Gauge({
      name: 'troupe_lora_pool_slots_used',
      help: 'Pool slots holding an adapter or receiving one.',
      registers,
      collect() {
        this.set(counters().slotsUsed);
      },
    });
    new Gauge({
      name: 'troupe_lora_cpu_adapters',
      help: 'Adapters whose weights are in CPU memory.',
      registers,
      collect() {
        this.set(counters().cpuAdapters);
      },
    });
    new Gauge({
      name: 'troupe_lora_adapters',
      help: 'Registered adapters per state of the adapter statechart.',
      labelNames: ['state'],
      registers,
      collect() {
        this.reset();
        for (const [state, n] of Object.entries(counters().byState)) this.set({ state }, n);
      },
    });
    if (gateway) registerGatewayMetrics([this.registry, this.gatewayRegistry], gateway);
    this.latency = new RequestMetrics(registers, gateway?.modelName ?? null);
  }

  /** A request's first generated token, `seconds` after it arrived, having waited `queueSeconds` in the scheduler (null: not known). */
  firstToken(seconds: number, queueSeconds: number | null = null): void {
    this.latency.firstToken(seconds, queueSeconds);
  }

  /** A request's later token, `seconds` after the one before it. */
  nextToken(seconds: number): void {
    this.latency.nextToken(seconds);
  }

  request(r: FinishedRequest): void {
    const adapter = r.lora ?? BASE_LABEL;
    this.requests.inc({ adapter, outcome: r.outcome });
    if (r.outcome === 'error') return;
    this.promptTokens.inc({ adapter }, r.promptTokens);
    this.generatedTokens.inc({ adapter }, r.completionTokens);
    if (r.e2eSeconds !== undefined) {
      const latency = {
        promptTokens: r.promptTokens,
        completionTokens: r.completionTokens,
        e2eSeconds: r.e2eSeconds,
        ttftSeconds: r.ttftSeconds ?? null,
      };
      this.latency.finished(latency, r.outcome === 'ok');
    }
  }

  transitions(ts: readonly AdapterTransition[]): void {
    for (const t of ts) {
      const { adapter } = t;
      if (t.to === 'loading' || t.to === 'h2dInFlight' || t.to === 'moving') this.started.set(adapter, t.time);
      const stage = t.to.startsWith('gpuResident') ? TO_GPU_STAGES[t.from] : t.from === 'loading' && t.to === 'cpuLoaded' ? 'disk_to_cpu' : undefined;
      if (stage) {
        this.loads.inc({ adapter, stage });
        const since = this.started.get(adapter);
        if (since !== undefined) this.loadSeconds.observe({ adapter, stage }, Math.max(0, t.time - since) / 1000);
      }
      if (t.to === 'failed') this.failures.inc({ adapter });
      if (t.from === 'gpuResident.unpinned' && t.to === 'cpuLoaded') this.evictions.inc({ adapter, from: 'gpu' });
      if (t.from === 'cpuLoaded' && t.to === 'registered') this.evictions.inc({ adapter, from: 'cpu' });
      if (t.to === 'unloaded' || t.to === 'failed') this.started.delete(adapter);
    }
  }
}

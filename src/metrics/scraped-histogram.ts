// A histogram whose series are made at each scrape rather than observed: prom-client's Histogram
// counts its own observations, while these hand over counts kept elsewhere (the scheduler's decode
// steps) or republish another histogram's series under other names (SGLang's and vLLM's).
import type { Metric, MetricValue, Registry } from 'prom-client';

/** Registers histogram `name` in every register, its series read from `values` at every scrape. */
export function registerScrapedHistogram(
  registers: readonly Registry[],
  name: string,
  help: string,
  values: () => Promise<MetricValue<string>[]>,
): void {
  const metric = {
    name,
    help,
    type: 'histogram',
    aggregator: 'sum',
    reset() {},
    async get() {
      return { name, help, type: 'histogram', aggregator: 'sum', values: await values() };
    },
  };
  for (const r of registers) r.registerMetric(metric as unknown as Metric);
}

// The options of bench/serve-lora.js: their table (name, type, default, help), --help, and the
// parsed configuration that the run uses and the results file keeps.
import { readFileSync, readdirSync } from 'node:fs';
import { isAbsolute, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const repo = fileURLToPath(new URL('..', import.meta.url));
// Paths inside the repository are kept relative to it (the server runs there), so results
// files name them the same on every machine; others are made absolute.
export const pathArg = (p) => {
  const rel = relative(repo, resolve(p));
  return rel !== '' && !rel.startsWith('..') && !isAbsolute(rel) ? rel : resolve(p);
};
export const inRepo = (p) => resolve(repo, p);

const OPTIONS = {
  model: ['string', undefined, 'model directory (config.json, weights, tokenizer)'],
  adapters: ['string', undefined, 'directory holding a0000, a0001, ... (bench/make-adapters.js)'],
  'num-adapters': ['string', undefined, 'adapters served and requested: a0000..a(N-1) (default: all present)'],
  'max-loras-per-batch': ['string', '8', 'troupe serve --max-loras-per-batch'],
  'max-loaded-loras': ['string', undefined, 'troupe serve --max-loaded-loras (unlimited when absent)'],
  'enable-lora-overlap-loading': ['boolean', false, 'troupe serve --enable-lora-overlap-loading'],
  'max-lora-rank': ['string', undefined, 'troupe serve --max-lora-rank (inferred from the adapters when absent)'],
  'lora-target-modules': ['string', undefined, 'troupe serve --lora-target-modules, comma-separated (inferred when absent)'],
  device: ['string', 'auto', 'troupe serve --device'],
  host: ['string', '127.0.0.1', 'address the server listens on'],
  port: ['string', undefined, 'its port (a free one when absent)'],
  base: ['string', undefined, 'benchmark a server already running at this URL instead of starting one'],
  rate: ['string', '4', 'mean arrival rate, requests/s'],
  cv: ['string', '1', 'coefficient of variation of the inter-arrival times (1: Poisson)'],
  alpha: ['string', '1', 'power-law exponent of adapter popularity'],
  seed: ['string', '0', 'seed of the whole workload'],
  duration: ['string', undefined, 'seconds of arrivals (default 300 unless --requests is given)'],
  requests: ['string', undefined, 'number of requests (with --duration: whichever ends first)'],
  'input-len': ['string', '8:512', 'prompt length range in tokens, MIN:MAX (uniform)'],
  'output-len': ['string', '8:256', 'output length range in tokens, MIN:MAX (uniform; ignore_eos)'],
  'token-range': ['string', undefined, 'random prompt token ids in LO:HI (default 100:min(vocab_size, 128000))'],
  slo: ['string', '6', 'TTFT service-level objective, seconds'],
  'drain-timeout': ['string', '300', 'seconds after the last arrival before unfinished requests are cut (they count as failed)'],
  'startup-timeout': ['string', '900', 'seconds to wait for /health'],
  capacity: ['boolean', false, 'find the highest rate with >= --capacity-target of requests within the SLO'],
  'capacity-target': ['string', '0.99', 'SLO attainment a capacity probe must reach'],
  'capacity-start': ['string', '1', 'first probe rate, requests/s'],
  'capacity-max': ['string', '256', 'highest rate probed'],
  'capacity-min': ['string', '0.05', 'lowest rate probed'],
  'capacity-bisections': ['string', '4', 'bisection probes after the bracketing ones'],
  'probe-duration': ['string', '60', 'seconds of arrivals per capacity probe'],
  'probe-drain-timeout': ['string', '60', 'drain timeout of a capacity probe'],
  label: ['string', undefined, 'a name for this configuration, kept in the JSON'],
  note: ['string', undefined, 'free text kept in the JSON (what the model is, what else ran on the machine)'],
  out: ['string', undefined, 'JSON result file'],
  'server-log': ['string', undefined, "the server's log (default: next to --out, .server.log)"],
  'progress-interval': ['string', '10', 'seconds between progress lines'],
  'per-request': ['boolean', false, 'keep every request (adapter, lengths, TTFT, e2e) in the JSON'],
  help: ['boolean', false, 'this text'],
};

/** One line per option: name, help and default. */
export const optionLines = (table) =>
  Object.entries(table)
    .map(([k, [t, d, h]]) => `  --${k}${t === 'string' ? ' X' : ''}  ${h}${d !== undefined && d !== false ? ` [${d}]` : ''}`)
    .join('\n');

/** node:util parseArgs over a table of [type, default, help]; positionals are passed through. */
export const parseTable = (table, args) =>
  parseArgs({
    args,
    allowPositionals: true,
    strict: true,
    options: Object.fromEntries(Object.entries(table).map(([k, [type, def]]) => [k, def === undefined ? { type } : { type, default: def }])),
  });

export const usage = () =>
  `usage: node bench/serve-lora.js --model DIR --adapters DIR [options] [-- extra troupe serve flags]\n${optionLines(OPTIONS)}`;

const num = (v, name) => {
  const x = Number(v);
  if (v === undefined || !Number.isFinite(x)) throw new Error(`--${name} takes a number, got ${v}`);
  return x;
};
const range = (v, name) => {
  const m = /^(\d+):(\d+)$/.exec(v ?? '');
  if (!m) throw new Error(`--${name} takes MIN:MAX, got ${v}`);
  return [Number(m[1]), Number(m[2])];
};

/** The run's configuration from its command line, or null for --help. */
export function parseCli(argv) {
  const { values: v, positionals } = parseTable(OPTIONS, argv);
  if (v.help) return null;
  if (!v.model) throw new Error('--model is required');
  if (!v.adapters && !v.base) throw new Error('--adapters is required');
  if (!v.out) throw new Error('--out is required');
  const hf = JSON.parse(readFileSync(join(v.model, 'config.json'), 'utf8'));
  const present = v.adapters ? readdirSync(v.adapters).filter((n) => /^a\d{4,}$/.test(n)).length : 0;
  const opts = {
    label: v.label ?? null,
    note: v.note ?? null,
    model: pathArg(v.model),
    adapters: v.adapters ? pathArg(v.adapters) : null,
    numAdapters: v['num-adapters'] === undefined ? present : num(v['num-adapters'], 'num-adapters'),
    server: {
      maxLorasPerBatch: num(v['max-loras-per-batch'], 'max-loras-per-batch'),
      maxLoadedLoras: v['max-loaded-loras'] === undefined ? null : num(v['max-loaded-loras'], 'max-loaded-loras'),
      enableLoraOverlapLoading: v['enable-lora-overlap-loading'],
      maxLoraRank: v['max-lora-rank'] === undefined ? null : num(v['max-lora-rank'], 'max-lora-rank'),
      loraTargetModules: v['lora-target-modules']?.split(',').filter(Boolean) ?? null,
      device: v.device,
      extraArgs: positionals,
    },
    workload: {
      seed: num(v.seed, 'seed'),
      rate: num(v.rate, 'rate'),
      cv: num(v.cv, 'cv'),
      alpha: num(v.alpha, 'alpha'),
      duration: v.duration !== undefined ? num(v.duration, 'duration') : v.requests !== undefined ? null : 300,
      requests: v.requests === undefined ? null : num(v.requests, 'requests'),
      inputLen: range(v['input-len'], 'input-len'),
      outputLen: range(v['output-len'], 'output-len'),
      tokenRange: v['token-range'] ? range(v['token-range'], 'token-range') : [100, Math.min(hf.vocab_size ?? 128000, 128000)],
    },
    slo: num(v.slo, 'slo'),
    drainTimeout: num(v['drain-timeout'], 'drain-timeout'),
    startupTimeout: num(v['startup-timeout'], 'startup-timeout'),
    capacity: v.capacity
      ? {
          target: num(v['capacity-target'], 'capacity-target'),
          start: num(v['capacity-start'], 'capacity-start'),
          max: num(v['capacity-max'], 'capacity-max'),
          min: num(v['capacity-min'], 'capacity-min'),
          bisections: num(v['capacity-bisections'], 'capacity-bisections'),
          probeDuration: num(v['probe-duration'], 'probe-duration'),
          probeDrainTimeout: num(v['probe-drain-timeout'], 'probe-drain-timeout'),
        }
      : null,
    host: v.host,
    port: v.port === undefined ? null : num(v.port, 'port'),
    base: v.base ?? null,
    out: pathArg(v.out),
    serverLog: pathArg(v['server-log'] ?? v.out.replace(/\.json$/, '') + '.server.log'),
    progressInterval: num(v['progress-interval'], 'progress-interval'),
    perRequest: v['per-request'],
  };
  if (!(opts.numAdapters >= 1)) throw new Error(`no adapters: ${opts.adapters} holds no a0000-style directories (run bench/make-adapters.js)`);
  return opts;
}

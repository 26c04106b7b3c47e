// Markdown table rows for docs/performance.md (the README shows some of their columns) from
// serve-lora results (bench/serve-lora.js JSON):
//   node bench/serve-table.js [FILE.json | DIR ...]     (default: bench/results)
// Fixed-rate runs get one row each; capacity searches a second table.
import { readFileSync, readdirSync, statSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const SHORT = { q_proj: 'q', k_proj: 'k', v_proj: 'v', o_proj: 'o', gate_proj: 'gate', up_proj: 'up', down_proj: 'down' };

/** Every serve-lora result among the given files and directories (directories: their *.json). */
export function readResults(paths) {
  const files = paths.flatMap((p) =>
    statSync(p).isDirectory()
      ? readdirSync(p)
          .filter((f) => f.endsWith('.json'))
          .sort()
          .map((f) => join(p, f))
      : [p],
  );
  const out = [];
  for (const file of files) {
    let r;
    try {
      r = JSON.parse(readFileSync(file, 'utf8'));
    } catch {
      continue;
    }
    if (r?.benchmark === 'serve-lora') out.push({ file, ...r });
  }
  return out;
}

const fmt = (x, d = 2) => (x === null || x === undefined ? '–' : Number(x).toFixed(d));
const ms = (s) => (s === null || s === undefined ? '–' : (s * 1000).toFixed(1));

function adaptersCell(r) {
  const set = r.config.adapterSet;
  const mods = set ? (set.targetModules.length === 7 ? 'all' : set.targetModules.map((m) => SHORT[m] ?? m).join('/')) : '?';
  return `${r.config.numAdapters} × r${set?.rank ?? '?'} ${mods}`;
}

function cacheCell(r) {
  const s = r.config.server;
  return `${s.maxLoadedLoras ?? 'unlimited'}${s.enableLoraOverlapLoading ? ', overlap' : ''}`;
}

// The matrix's order (bench/serve-matrix.js): by adapter set, then from the largest cache down to
// the resident ceiling; runs the matrix does not name come after, by label.
const VARIANTS = ['unlimited', 'cpu64', 'cpu16', 'cpu16-overlap', 'resident8'];
function orderKey(r) {
  const m = /^([a-z]+)-(.*?)(-capacity)?$/.exec(r.label ?? '');
  const v = m ? VARIANTS.indexOf(m[2]) : -1;
  return [m?.[1] ?? '~', v < 0 ? VARIANTS.length : v, r.label ?? r.file];
}
const byMatrixOrder = (a, b) => {
  const x = orderKey(a);
  const y = orderKey(b);
  return x[0] !== y[0] ? (x[0] < y[0] ? -1 : 1) : x[1] !== y[1] ? x[1] - y[1] : x[2] < y[2] ? -1 : x[2] > y[2] ? 1 : 0;
};

const loads = (a) => `${a.loads.disk_to_cpu ?? 0} / ${a.loads.cpu_to_gpu ?? 0}`;
const evictions = (a) => `${a.evictions.cpu ?? 0} / ${a.evictions.gpu ?? 0}`;

/** The rows of fixed-rate runs, header first. */
export function runTable(results) {
  const rows = [
    '| run | adapters | CPU cache | req/s | output tokens/s | TTFT p50 / p90 / p99 (s) | ITL p50 / p99 (ms) | TTFT ≤ SLO | loads disk→CPU / CPU→GPU | evictions CPU / GPU |',
    '| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |',
  ];
  for (const r of results.filter((x) => x.summary).sort(byMatrixOrder)) {
    const s = r.summary;
    const failed = s.failed ? ` (${s.failed} failed)` : '';
    rows.push(
      `| ${r.label ?? r.file} | ${adaptersCell(r)} | ${cacheCell(r)} | ${fmt(s.requestThroughput)} of ${fmt(r.config.workload.rate, 1)} | ${fmt(s.outputTokenThroughput, 0)} | ${fmt(s.ttft.p50)} / ${fmt(s.ttft.p90)} / ${fmt(s.ttft.p99)} | ${ms(s.itl.p50)} / ${ms(s.itl.p99)} | ${fmt(s.sloAttainment * 100, 1)}% (${s.sloSeconds} s)${failed} | ${loads(r.adapterActivity)} | ${evictions(r.adapterActivity)} |`,
    );
  }
  return rows;
}

/** The rows of capacity searches, header first. */
export function capacityTable(results) {
  const rows = [
    '| run | adapters | CPU cache | adapters per batch | capacity (req/s) | served at capacity (req/s, output tokens/s) | probes (req/s: share within SLO) |',
    '| --- | --- | --- | --- | --- | --- | --- |',
  ];
  for (const r of results.filter((x) => x.capacity).sort(byMatrixOrder)) {
    const c = r.capacity;
    const cap =
      c.bound === 'at-least' ? `≥ ${c.rate}` : c.bound === 'below-min' ? `< ${c.probes.at(-1)?.rate}` : `${c.rate} (fails at ${c.lowestFailing})`;
    const probes = c.probes.map((p) => `${p.rate}: ${fmt(p.summary.sloAttainment * 100, 1)}%`).join(', ');
    // What the server actually delivered in the passing probe at the capacity rate.
    const at = c.probes.find((p) => p.pass && p.rate === c.rate)?.summary;
    const served = at ? `${fmt(at.requestThroughput)}, ${fmt(at.outputTokenThroughput, 0)}` : '–';
    rows.push(
      `| ${r.label ?? r.file} | ${adaptersCell(r)} | ${cacheCell(r)} | ${r.config.server.maxLorasPerBatch} | ${cap} | ${served} | ${probes} |`,
    );
  }
  return rows;
}

/** Both tables as markdown, leaving out an empty one. */
export function markdown(results) {
  const parts = [];
  if (results.some((r) => r.summary)) parts.push(runTable(results).join('\n'));
  if (results.some((r) => r.capacity)) parts.push(capacityTable(results).join('\n'));
  return parts.join('\n\n');
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const args = process.argv.slice(2);
  const results = readResults(args.length ? args : [fileURLToPath(new URL('results', import.meta.url))]);
  if (results.length === 0) {
    console.error('serve-table: no serve-lora results found');
    process.exit(1);
  }
  console.log(markdown(results));
}

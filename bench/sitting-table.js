// The README's performance rows of one sitting: every figure of the GPU-speed table measured on one
// machine and one build, one benchmark after another (bench/sitting.js gathers them into one JSON).
// The README's tables are these rows, so a new sitting changes the table by running
//   node bench/sitting-table.js bench/results/DATE-GPU-all-rows.json
// and pasting what it prints; test/readme-performance.test.ts holds the README to them.
import { readFileSync } from 'node:fs';
import { basename } from 'node:path';
import { fileURLToPath } from 'node:url';

const ms2 = (x) => x.toFixed(2);
const times = (x) => `${x.toFixed(2)}x`;
const kTokens = (x) => `${(x / 1000).toFixed(1)}k`;
const percent = (x) => `${x < 0 ? '' : '+'}${(100 * x).toFixed(1)}%`;
const joined = (xs, f) => xs.map(f).join(' / ');

/** The decode batches the table shows, those of them the sitting measured. */
const DECODE_BATCHES = [1, 32, 128];
/** gpu-lora.js's prefill where its file does not say: 8 prompts of 512 tokens (loraWorkload's). */
const LORA_PREFILL = { prompts: 8, tokens: 512 };

/** A field the row needs, or an error that names it and the file. */
function need(value, what, file) {
  if (value === undefined || value === null) throw new Error(`${file}: no ${what}`);
  return value;
}

function decodeRows(r, cite) {
  const d = need(r.gpuDecode, 'gpuDecode', cite.file);
  const byBatch = DECODE_BATCHES.map((b) => d.decode.find((x) => x.batch === b)).filter(Boolean);
  if (byBatch.length === 0) throw new Error(`${cite.file}: gpuDecode has none of batches ${DECODE_BATCHES.join(', ')}`);
  const transformers = byBatch.every((x) => x.transformersMs !== undefined)
    ? `; transformers ${joined(byBatch, (x) => x.transformersMs.toFixed(1))} ms`
    : '';
  const shapes = Object.keys(d.prefill ?? {});
  const prefill = shapes.map((s) => d.prefill[s]);
  const rows = [
    `| decode, batch ${joined(byBatch, (x) => x.batch)}, ${d.context}-token context | ${joined(byBatch, (x) => ms2(x.ms))} ms a step | ${joined(byBatch, (x) => times(x.overRoofline))} the roofline${transformers} | ${cite.plain} |`,
  ];
  if (shapes.length > 0)
    rows.push(
      `| prefill, ${joined(shapes, (s) => s.replace('x', ' x '))} tokens | ${joined(prefill, (p) => kTokens(p.tokensPerS))} tokens/s | ${joined(prefill, (p) => times(p.overTransformers))} transformers | ${cite.plain} |`,
    );
  return rows;
}

/** The runs the table reads: the first kernel's, without a variant, by rank (ascending). */
function loraRuns(l, file) {
  const runs = l.runs.filter((x) => !x.variant && x.loraBackend === 'csgmv');
  const kernel = runs[0]?.loraKernel;
  const ranks = [...new Set(runs.map((x) => x.rank))].sort((a, b) => a - b);
  const most = Math.max(...runs.map((x) => x.adapters));
  const pick = (rank, adapters) =>
    need(
      runs.find((x) => x.rank === rank && x.loraKernel === kernel && x.adapters === adapters),
      `gpuLora run of rank ${rank} over ${adapters} adapters`,
      file,
    );
  if (ranks.length === 0 || !(most > 0)) throw new Error(`${file}: gpuLora has no csgmv runs with adapters`);
  return { ranks, most, base: ranks.map((k) => pick(k, 0)), lora: ranks.map((k) => pick(k, most)) };
}

function loraRows(r, cite) {
  const l = need(r.gpuLora, 'gpuLora', cite.file);
  const { ranks, most, base, lora } = loraRuns(l, cite.file);
  const where = `${cite.plain} (\`gpuLora\`)`;
  const modules = l.modules ? `on ${l.modules}` : 'on all seven modules';
  const peftMs = l.peft?.decodeMs?.[String(most)];
  const speedup = l.speedupOverPeft?.eightAdapters;
  const peers = [];
  if (peftMs !== undefined && speedup !== undefined && most === 8)
    peers.push(`transformers + PEFT ${peftMs.toFixed(0)} ms a step (about ${speedup.toFixed(0)}x slower)`);
  const roof = lora.map((x) => x.roofline ?? {});
  const bytes = [];
  if (roof.every((x) => x.floorOverhead !== undefined)) bytes.push(`at copy bandwidth ${joined(roof, (x) => percent(x.floorOverhead))}`);
  if (roof.every((x) => x.overheadAtBaseBandwidth !== undefined))
    bytes.push(`at the base step's own rate ${joined(roof, (x) => percent(x.overheadAtBaseBandwidth))}`);
  if (bytes.length > 0) peers.push(`the adapters' bytes alone ${bytes.join(', ')}`);
  const prefill = l.prefill ?? LORA_PREFILL;
  return [
    `| decode, batch ${l.rows} over ${most} adapters of rank ${ranks.join(' / ')} ${modules} | ${joined(lora, (x) => ms2(x.decodeMs))} ms a step, ${joined(lora, (x) => percent(x.decodeOverhead))} over the base step of the same run (${joined(base, (x) => ms2(x.decodeMs))} ms) | ${peers.join('; ') || 'the base step of the same run'} | ${where} |`,
    `| prefill, ${prefill.prompts} x ${prefill.tokens} tokens over the same ${most} adapters | ${joined(lora, (x) => kTokens(x.prefillTokensPerS))} tokens/s, ${joined(lora, (x) => percent(x.prefillOverhead))} time | the base prefill of the same run (${joined(base, (x) => kTokens(x.prefillTokensPerS))} tokens/s) | ${where} |`,
  ];
}

function httpRow(r, cite) {
  const runs = [r.serveOverhead, ...(r.repeats ?? [])].filter(Boolean);
  if (runs.length === 0) return [];
  const first = runs[0];
  const named = runs.length > 1 ? '`serveOverhead`, `repeats`' : '`serveOverhead`';
  return [
    `| ${first.streams} streams through HTTP, ${first.context}-token prompts | ${joined(runs, (x) => ms2(x.http.itlP50Ms))} ms between tokens | the step alone ${joined(runs, (x) => ms2(x.stepAloneMs))} ms (${joined(runs, (x) => percent(x.overHttp))}) | ${cite.plain} (${named}) |`,
  ];
}

/**
 * The table rows (markdown, four cells: what, troupe, against, results) of one sitting's JSON,
 * `file` its name under bench/results: decode, prefill, the adapters' decode and prefill, HTTP.
 */
export function sittingRows(result, file) {
  const cite = { file, plain: `\`${file}\`` };
  return [...decodeRows(result, cite), ...loraRows(result, cite), ...httpRow(result, cite)];
}

/** Whether a parsed results file is a sitting's (bench/sitting.js): the decode and adapter parts. */
export function isSitting(result) {
  return Boolean(result && typeof result === 'object' && result.gpuDecode && result.gpuLora);
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const files = process.argv.slice(2);
  if (files.length === 0) throw new Error('usage: node bench/sitting-table.js RESULTS.json ...');
  for (const f of files) {
    for (const row of sittingRows(JSON.parse(readFileSync(f, 'utf8')), basename(f))) console.log(row);
    console.log();
  }
}

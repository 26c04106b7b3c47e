// One sitting's results in one JSON: the files that bench/gpu_peft.py, bench/gpu-lora.js,
// bench/gpu_hf.py, bench/gpu-decode.js and bench/serve-overhead.js wrote into one folder on one
// machine, one after another, gathered under the keys bench/sitting-table.js reads:
//   node bench/sitting.js DIR OUT.json ["what the sitting measured"]
// DIR holds peft.json, lora.json, hf.json, decode.json and overhead-1.json, overhead-2.json, ...
// (the HTTP runs in order: the first is serveOverhead, the rest repeats). A file that is missing
// leaves its key out and is named on stderr, so a sitting cut short still keeps what it measured.
import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { isSitting } from './sitting-table.js';

const PARTS = [
  ['gpuDecode', 'decode.json'],
  ['transformers', 'hf.json'],
  ['peft', 'peft.json'],
  ['gpuLora', 'lora.json'],
];

/** The sitting's JSON from the files in `dir`, and the names of the parts it lacks. */
export function gatherSitting(dir, what) {
  const read = (name) => {
    const file = join(dir, name);
    if (!existsSync(file)) return undefined;
    try {
      return JSON.parse(readFileSync(file, 'utf8'));
    } catch (e) {
      throw new Error(`${file}: not JSON (${e.message})`, { cause: e });
    }
  };
  const missing = [];
  const parts = {};
  for (const [key, name] of PARTS) {
    const value = read(name);
    if (value === undefined) missing.push(name);
    else parts[key] = value;
  }
  // overhead-1.json, overhead-2.json, ... in their numbers' order.
  const overheads = readdirSync(dir)
    .map((f) => /^overhead-(\d+)\.json$/.exec(f))
    .filter(Boolean)
    .sort((a, b) => Number(a[1]) - Number(b[1]))
    .map((m) => read(m[0]));
  if (overheads.length === 0) missing.push('overhead-1.json');
  const [serveOverhead, ...repeats] = overheads;
  const decode = parts.gpuDecode;
  const result = {
    date: decode?.date ?? parts.gpuLora?.date,
    gpu: decode?.gpu,
    device: parts.gpuLora?.device,
    what: what ?? 'Every row of the GPU-speed table in one sitting on one machine and one build.',
    ...parts,
    serveOverhead,
    repeats: repeats.length > 0 ? repeats : undefined,
  };
  return { result, missing };
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const [dir, out, what] = process.argv.slice(2);
  if (!out) throw new Error('usage: node bench/sitting.js DIR OUT.json ["what the sitting measured"]');
  const { result, missing } = gatherSitting(dir, what);
  if (missing.length > 0) console.error(`sitting: ${dir} lacks ${missing.join(', ')}; their parts are left out`);
  writeFileSync(out, JSON.stringify(result, null, 2) + '\n');
  if (!isSitting(result)) console.error('sitting: without decode.json and lora.json there is no table to make from it');
}

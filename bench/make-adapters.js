// Writes many random PEFT LoRA adapters for a model directory, for serving benchmarks:
//   node bench/make-adapters.js --model DIR --out DIR --count 256 --rank 16 --modules all
// Adapters go to OUT/a0000, OUT/a0001, ... (adapter_config.json + adapter_model.safetensors,
// bf16). One that is already there with the same config and file size is kept, so an
// interrupted run resumes where it stopped. Shapes come from the model's config.json.
//
// Gigabytes of weights are written (256 adapters of rank 16 on all seven modules of an 8B
// Llama are 84 MB each), so values are made from random bits directly: each bf16 entry is a
// random sign, a random 7-bit mantissa and a fixed exponent, i.e. uniform in +-[2^e, 2^(e+1))
// with e chosen so the standard deviation is within a factor sqrt(2) of the target. Targets:
// lora_A 1/sqrt(in) and lora_B gain/(scaling sqrt(r)), so scaling * B(Ax) is about `gain`
// times the input's RMS: every adapter changes the model a little and none makes it blow up.
import { existsSync, lstatSync, mkdirSync, readFileSync, readlinkSync, renameSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { fileURLToPath } from 'node:url';

const root = new URL('..', import.meta.url);
const { parseModelConfig } = await import(new URL('dist/src/model/config.js', root).href);
const { MODULE_PATH, moduleDims } = await import(new URL('dist/src/model/adapter.js', root).href);
const { LORA_MODULES } = await import(new URL('dist/src/engine/types.js', root).href);

// E[m^2] of a mantissa m uniform in [1, 2) is 7/3.
const MANTISSA_RMS = Math.sqrt(7 / 3);

/** bf16 exponent bits (already shifted into place) for entries whose standard deviation is about `std`. */
function exponentBits(std) {
  const e = Math.round(Math.log2(std / MANTISSA_RMS));
  if (e < -126 || e > 127) throw new Error(`standard deviation ${std} is outside bf16's normal range`);
  return (e + 127) << 7;
}

/** The adapter name of index i: a0000, a0001, ... (a10000 past a9999). */
export const adapterName = (i) => `a${String(i).padStart(4, '0')}`;

export function parseModules(spec) {
  const list =
    spec === 'all'
      ? [...LORA_MODULES]
      : spec
          .split(',')
          .map((s) => s.trim())
          .filter(Boolean);
  const expanded = list.map((m) => (m.endsWith('_proj') ? m : `${m}_proj`));
  for (const m of expanded) if (!LORA_MODULES.includes(m)) throw new Error(`unknown module ${m}; use ${LORA_MODULES.join(', ')} or all`);
  return LORA_MODULES.filter((m) => expanded.includes(m));
}

/**
 * What every adapter of one (model, rank, modules) set shares: the config JSON, the safetensors
 * header, and where each tensor's bytes go with its exponent bits.
 */
export function planAdapters(hfConfig, { rank, modules, alpha = 2 * rank, gain = 0.02 }) {
  const config = parseModelConfig(hfConfig, 'config.json');
  const scaling = alpha / rank;
  const header = {};
  const fills = [];
  let offset = 0;
  for (let layer = 0; layer < config.numLayers; layer++) {
    for (const m of modules) {
      const dims = moduleDims(config, m);
      const prefix = `base_model.model.model.layers.${layer}.${MODULE_PATH[m]}`;
      for (const [ab, shape, std] of [
        ['A', [rank, dims.in], 1 / Math.sqrt(dims.in)],
        ['B', [dims.out, rank], gain / (scaling * Math.sqrt(rank))],
      ]) {
        const bytes = shape[0] * shape[1] * 2;
        header[`${prefix}.lora_${ab}.weight`] = { dtype: 'BF16', shape, data_offsets: [offset, offset + bytes] };
        fills.push({ offset, count: bytes / 2, exponent: exponentBits(std) });
        offset += bytes;
      }
    }
  }
  let json = JSON.stringify(header);
  json += ' '.repeat((8 - (Buffer.byteLength(json) % 8)) % 8);
  const headerBytes = Buffer.from(json, 'utf8');
  const adapterConfig = {
    base_model_name_or_path: null,
    bias: 'none',
    fan_in_fan_out: false,
    inference_mode: true,
    lora_alpha: alpha,
    lora_dropout: 0.0,
    modules_to_save: null,
    peft_type: 'LORA',
    r: rank,
    target_modules: modules,
    task_type: 'CAUSAL_LM',
    use_dora: false,
    use_rslora: false,
  };
  return {
    configText: `${JSON.stringify(adapterConfig, null, 2)}\n`,
    headerBytes,
    dataBytes: offset,
    fills,
    fileBytes: 8 + headerBytes.length + offset,
  };
}

/** Fills the tensors of `plan` in `data` (a Uint8Array of plan.dataBytes) from a seeded xorshift. */
function fillRandom(plan, data, seed) {
  // xorshift128: four 32-bit words of state, seeded through splitmix-style mixing. It is not
  // the project's Rng on purpose: this loop runs billions of times and must stay in registers.
  let s = (seed * 0x9e3779b9 + 0x7f4a7c15) >>> 0;
  const mix = () => {
    s = (s + 0x9e3779b9) >>> 0;
    let z = s;
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
    return (z ^ (z >>> 16)) >>> 0 || 1;
  };
  let x = mix();
  let y = mix();
  let z = mix();
  let w = mix();
  // Each 32 random bits give two entries: a sign bit and 7 mantissa bits from each half, in one
  // 32-bit store (tensor sizes are rank x an even width in every real model; odd ones take the
  // 16-bit path). The generator is inlined: a closure over the state would run several times slower.
  const even = plan.fills.every((f) => f.count % 2 === 0);
  const u32 = new Uint32Array(data.buffer, data.byteOffset, Math.floor(plan.dataBytes / 4));
  const u16 = new Uint16Array(data.buffer, data.byteOffset, plan.dataBytes / 2);
  for (const f of plan.fills) {
    const e = f.exponent;
    const ee = (e | (e << 16)) >>> 0;
    const words = even ? f.count / 2 : f.count;
    for (let k = 0; k < words; k++) {
      const t = x ^ (x << 11);
      x = y;
      y = z;
      z = w;
      w = (w ^ (w >>> 19) ^ (t ^ (t >>> 8))) >>> 0;
      if (even) u32[f.offset / 4 + k] = (w & 0x807f807f) | ee;
      else u16[f.offset / 2 + k] = (w & 0x807f) | e;
    }
  }
}

function isLink(path) {
  try {
    return lstatSync(path).isSymbolicLink();
  } catch {
    return false;
  }
}

function isPresent(dir, plan) {
  const configFile = join(dir, 'adapter_config.json');
  const weights = join(dir, 'adapter_model.safetensors');
  return (
    existsSync(configFile) && existsSync(weights) && readFileSync(configFile, 'utf8') === plan.configText && statSync(weights).size === plan.fileBytes
  );
}

/**
 * Writes adapters start..start+count-1 of a set under outDir; returns how many were written and
 * how many were already present. The weights file is written under a temporary name and renamed,
 * so an interrupted run never leaves a truncated adapter that looks complete. With `distinct`,
 * only adapters 0..distinct-1 get weights of their own: adapter i past them is a link to adapter
 * i mod distinct, a separate name with the same files, so hundreds of heavy adapters fit a disk
 * and its page cache (the server loads each name as its own adapter).
 */
export function makeAdapters({ hfConfig, outDir, count, start = 0, seed = 0, distinct = Infinity, onProgress, ...spec }) {
  if (!(distinct >= 1)) throw new Error(`distinct must be at least 1, got ${distinct}`);
  const plan = planAdapters(hfConfig, spec);
  const file = Buffer.allocUnsafe(plan.fileBytes);
  file.writeBigUInt64LE(BigInt(plan.headerBytes.length), 0);
  plan.headerBytes.copy(file, 8);
  const data = file.subarray(8 + plan.headerBytes.length);
  let written = 0;
  let skipped = 0;
  let linked = 0;
  for (let i = start; i < start + count; i++) {
    const dir = join(outDir, adapterName(i));
    if (i >= distinct) {
      const target = adapterName(i % distinct);
      if (i % distinct < start || i % distinct >= start + count) makeAdapters({ hfConfig, outDir, count: 1, start: i % distinct, seed, ...spec });
      // A link relative to its folder, so the set can move; one to another target is replaced.
      let current = null;
      try {
        current = readlinkSync(dir);
      } catch {
        // Not a link (absent, or an adapter of its own from a run without `distinct`).
      }
      if (current !== target) {
        rmSync(dir, { recursive: true, force: true });
        symlinkSync(target, dir);
        linked++;
      } else {
        skipped++;
      }
      onProgress?.(i - start + 1, count, plan.fileBytes);
      continue;
    }
    // A link left by a run with fewer distinct adapters: this one gets weights of its own.
    if (isLink(dir)) rmSync(dir);
    if (isPresent(dir, plan)) {
      skipped++;
    } else {
      mkdirSync(dir, { recursive: true });
      // Distinct seeds per adapter, and per set via `seed`.
      fillRandom(plan, data, (seed * 1_000_003 + i) >>> 0);
      const tmp = join(dir, 'adapter_model.safetensors.partial');
      writeFileSync(tmp, file);
      renameSync(tmp, join(dir, 'adapter_model.safetensors'));
      writeFileSync(join(dir, 'adapter_config.json'), plan.configText);
      written++;
    }
    onProgress?.(i - start + 1, count, plan.fileBytes);
  }
  return { written, linked, skipped, bytesPerAdapter: plan.fileBytes };
}

function main() {
  const { values } = parseArgs({
    options: {
      model: { type: 'string' },
      out: { type: 'string' },
      count: { type: 'string' },
      rank: { type: 'string' },
      modules: { type: 'string', default: 'all' },
      alpha: { type: 'string' },
      gain: { type: 'string', default: '0.02' },
      seed: { type: 'string', default: '0' },
      start: { type: 'string', default: '0' },
      distinct: { type: 'string' },
      help: { type: 'boolean' },
    },
  });
  if (values.help || !values.model || !values.out || !values.count || !values.rank) {
    console.log(
      'usage: node bench/make-adapters.js --model MODEL_DIR --out OUT_DIR --count N --rank R [--modules all|q,k,v,o|q_proj,v_proj] [--alpha A (2R)] [--gain G (0.02)] [--seed S] [--start I] [--distinct D (adapters past D link to adapter i mod D)]',
    );
    process.exit(values.help ? 0 : 2);
  }
  const hfConfig = JSON.parse(readFileSync(join(values.model, 'config.json'), 'utf8'));
  const rank = Number(values.rank);
  const count = Number(values.count);
  const modules = parseModules(values.modules);
  const t0 = performance.now();
  let lastPrint = 0;
  const res = makeAdapters({
    hfConfig,
    outDir: resolve(values.out),
    count,
    start: Number(values.start),
    seed: Number(values.seed),
    distinct: values.distinct === undefined ? Infinity : Number(values.distinct),
    rank,
    modules,
    alpha: values.alpha === undefined ? 2 * rank : Number(values.alpha),
    gain: Number(values.gain),
    onProgress(done, total, bytes) {
      const now = performance.now();
      if (done === total || now - lastPrint > 5000) {
        lastPrint = now;
        console.log(`make-adapters: ${done}/${total} (${(bytes / 1e6).toFixed(1)} MB each), ${((now - t0) / 1000).toFixed(1)} s`);
      }
    },
  });
  const s = (performance.now() - t0) / 1000;
  console.log(
    `make-adapters: rank ${rank} on ${modules.join(',')}: wrote ${res.written}, linked ${res.linked}, kept ${res.skipped} already present, in ${s.toFixed(1)} s (${((res.written * res.bytesPerAdapter) / 1e9 / s).toFixed(2)} GB/s) under ${resolve(values.out)}`,
  );
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) main();

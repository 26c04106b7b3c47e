// What the tensor-parallel benchmarks (bench/gpu-tp.js, bench/serve-tp.js) share: which adapters
// to use, the model's shape, and what step times are compared with: the bytes a decode step must
// read from HBM and the GPU's bandwidth (a decode step of up to a few hundred rows is bound by
// reading every weight once, so weights / bandwidth is its floor).
import { readdirSync } from 'node:fs';

const { shardTensor } = await import(new URL('../dist/src/model/tensor-parallel.js', import.meta.url).href);

/**
 * HBM bandwidth by the CUDA device name (the vendors' figures; SXM parts unless named), or the
 * given TB/s. `source` says which number was used, for the results file.
 */
export function hbmBandwidth(deviceName, override) {
  if (override !== undefined) {
    const tbps = Number(override);
    if (!(tbps > 0)) throw new Error(`--hbm-tbps takes TB/s, got ${override}`);
    return { tbps, source: `${tbps} TB/s (given)` };
  }
  const known = [
    [/H200/, 4.8, 'H200'],
    [/H100.*PCIe/, 2.0, 'H100 PCIe'],
    [/H100.*NVL/, 3.9, 'H100 NVL'],
    [/H100/, 3.35, 'H100 SXM'],
  ];
  const hit = known.find(([re]) => re.test(deviceName));
  return hit
    ? { tbps: hit[1], source: `${hit[1]} TB/s (${hit[2]} spec, from "${deviceName}")` }
    : { tbps: null, source: `unknown for "${deviceName}"; pass --hbm-tbps` };
}

/**
 * The most weight bytes any rank reads in a decode step: its share of every tensor (sliced as
 * the engine slices them), except the embedding, of which a step reads only its tokens' rows,
 * unless it is tied and so is also the lm_head.
 */
export function weightBytesPerRank(tensors, config, shards) {
  const read = tensors.filter((t) => t.name !== 'model.embed_tokens.weight' || config.tieWordEmbeddings);
  return Math.max(...shards.map((s) => read.reduce((sum, t) => sum + shardTensor(t, config, s).nbytes, 0)));
}

/** Bytes of K and V (bf16, every layer) one rank keeps per token of context: its KV heads only. */
export const kvBytesPerToken = (config, shard) => config.numLayers * 2 * shard.kvHeads.count * config.headDim * 2;

/** Milliseconds to read `bytes` at `tbps` TB/s, or null without a bandwidth. */
export const readMs = (bytes, tbps) => (tbps ? bytes / (tbps * 1e9) : null);

/** The model's shape for the results file, named when it is a known one. */
export function modelShape(c, tensors) {
  const known = { '4096/14336': ['Llama-3.1-8B', 32], '8192/28672': ['Llama-3.1-70B', 80] }[`${c.hiddenSize}/${c.intermediateSize}`];
  return {
    shape: known ? `${known[0]} shape${c.numLayers === known[1] ? '' : ` with ${c.numLayers} layers`}` : 'custom',
    layers: c.numLayers,
    hidden: c.hiddenSize,
    intermediate: c.intermediateSize,
    heads: c.numHeads,
    kvHeads: c.numKvHeads,
    headDim: c.headDim,
    vocab: c.vocabSize,
    tied: c.tieWordEmbeddings,
    dtype: c.torchDtype,
    parameters: tensors.reduce((s, t) => s + t.shape.reduce((a, b) => a * b, 1), 0),
    weightBytes: tensors.reduce((s, t) => s + t.nbytes, 0),
  };
}

/**
 * `count` adapter directory names under `dir`: the given comma-separated list, else
 * bench/gpu_peft.py's r16-0, r16-1, ... when all are there, else bench/make-adapters.js's
 * a0000, a0001, ...
 */
export function adapterNames(dir, count, given) {
  let names = given?.split(',').filter(Boolean);
  if (!names) {
    const present = readdirSync(dir);
    const peft = Array.from({ length: count }, (_, i) => `r16-${i}`);
    names = peft.every((n) => present.includes(n)) ? peft : present.filter((n) => /^a\d{4,}$/.test(n)).sort();
  }
  if (names.length < count)
    throw new Error(`${dir}: ${count} adapters needed, found ${names.join(', ') || 'none'} (r16-N or a0000-style directories)`);
  return names.slice(0, count);
}

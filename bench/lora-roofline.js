// What a decode step reads from device memory, with and without its adapters, and the least a
// step's adapters could add: their factors streamed at the device's copy bandwidth with nothing
// else on the step's path. bench/gpu-lora.js puts these beside each measured overhead, so that a
// target can be read against what the bytes alone cost.

const BF16 = 2;

/** Elements of a tensor of the given shape. */
const elements = (shape) => shape.reduce((n, d) => n * d, 1);

/**
 * Bytes a decode step of `rows` rows over `context` tokens of cache reads: every bf16 weight but
 * the embedding table (read a row a token; unless the head shares it), and each row's keys and
 * values in every layer.
 */
export function baseStepBytes(config, tensors, rows, context) {
  const tiedHead = !tensors.some((t) => t.name === 'lm_head.weight');
  let weights = 0;
  for (const t of tensors) {
    if (t.name === 'model.embed_tokens.weight' && !tiedHead) continue;
    weights += elements(t.shape) * BF16;
  }
  const kvPerToken = 2 * config.numLayers * config.numKvHeads * config.headDim * BF16;
  return weights + rows * context * kvPerToken;
}

/** Bytes of one adapter's A and B factors as the GPU pool holds them (bf16), over every layer. */
export function adapterBytes(adapter) {
  let n = 0;
  for (const w of adapter.weights) n += (w.a.length + w.b.length) * BF16;
  return n;
}

/**
 * For a step whose rows use adapters of `loraBytes` in all (each adapter read once a step): the
 * overhead they would add if read at the base step's own bandwidth (their bytes over the base's),
 * and, given the copy bandwidth and the base step's time, the floor: their bytes at copy
 * bandwidth over the base step.
 */
export function loraRoofline({ baseBytes, loraBytes, copyBytesPerS, baseMs }) {
  if (!(baseBytes > 0 && loraBytes >= 0)) throw new Error(`loraRoofline: base bytes ${baseBytes} and adapter bytes ${loraBytes}`);
  const out = { loraBytes, overheadAtBaseBandwidth: loraBytes / baseBytes };
  if (copyBytesPerS > 0 && baseMs > 0) out.floorOverhead = loraBytes / copyBytesPerS / (baseMs / 1000);
  return out;
}

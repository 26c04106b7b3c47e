// What the GPU benchmarks share: greedy StepBatch building, seeded random prompts, medians.

/** A greedy StepBatch of `seqs` ({tokens, cached, blocks, slot?}) with block tables maxBlocks wide. */
export function greedyBatch(seqs, maxBlocks) {
  const n = seqs.length;
  const tokens = [], positions = [], seqStarts = [0];
  const blockTables = new Int32Array(n * maxBlocks).fill(-1);
  seqs.forEach((s, i) => {
    s.tokens.forEach((t, j) => { tokens.push(t); positions.push(s.cached + j); });
    seqStarts.push(tokens.length);
    blockTables.set(s.blocks, i * maxBlocks);
  });
  const f = (v) => Float32Array.from(seqs.map(() => v));
  return {
    tokens: Int32Array.from(tokens), positions: Int32Array.from(positions), seqStarts: Int32Array.from(seqStarts),
    contextLens: Int32Array.from(seqs.map((s) => s.cached + s.tokens.length)), blockTables, maxBlocksPerSeq: maxBlocks,
    loraSlots: Int32Array.from(seqs.map((s) => s.slot ?? -1)), sample: Uint8Array.from(seqs.map(() => 1)),
    temperature: f(0), topK: Int32Array.from(seqs.map(() => -1)), topP: f(1), minP: f(0),
    frequencyPenalty: f(0), presencePenalty: f(0), repetitionPenalty: f(1),
    penaltyTokens: new Int32Array(0), penaltyStarts: new Int32Array(n + 1), penaltyPromptLens: new Int32Array(n),
    seeds: new Uint32Array(n), draws: new Uint32Array(n), topLogprobs: 0, returnLogits: false,
  };
}

/** A function returning `len` token ids in [1000, 100000) from a seeded LCG. */
export function randomTokenSource(seed) {
  let x = seed;
  return (len) => Array.from({ length: len }, () => 1000 + ((x = (x * 1103515245 + 12345) % 2147483648) % 99000));
}

export const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

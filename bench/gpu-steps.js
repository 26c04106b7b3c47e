// What the GPU benchmarks share: greedy StepBatch building, seeded random prompts, medians and means.

/**
 * Engines made after this tune cuBLAS's kernels for a step's shapes when its graph is first
 * captured, as a server does for a batch size it has run many times (TROUPE_CUDA_GEMM_TUNE_AFTER):
 * the step benchmarks time each batch size's steady state in a few dozen steps. Unless the
 * environment already says.
 */
export function tuneAtFirstCapture() {
  process.env.TROUPE_CUDA_GEMM_TUNE_AFTER ??= '0';
}

/** A greedy StepBatch of `seqs` ({tokens, cached, blocks, slot?}) with block tables maxBlocks wide. */
export function greedyBatch(seqs, maxBlocks) {
  const n = seqs.length;
  const tokens = [],
    positions = [],
    seqStarts = [0];
  const blockTables = new Int32Array(n * maxBlocks).fill(-1);
  seqs.forEach((s, i) => {
    s.tokens.forEach((t, j) => {
      tokens.push(t);
      positions.push(s.cached + j);
    });
    seqStarts.push(tokens.length);
    blockTables.set(s.blocks, i * maxBlocks);
  });
  const f = (v) => Float32Array.from(seqs.map(() => v));
  return {
    tokens: Int32Array.from(tokens),
    positions: Int32Array.from(positions),
    seqStarts: Int32Array.from(seqStarts),
    contextLens: Int32Array.from(seqs.map((s) => s.cached + s.tokens.length)),
    blockTables,
    maxBlocksPerSeq: maxBlocks,
    loraSlots: Int32Array.from(seqs.map((s) => s.slot ?? -1)),
    sample: Uint8Array.from(seqs.map(() => 1)),
    temperature: f(0),
    topK: Int32Array.from(seqs.map(() => -1)),
    topP: f(1),
    minP: f(0),
    frequencyPenalty: f(0),
    presencePenalty: f(0),
    repetitionPenalty: f(1),
    penaltyTokens: new Int32Array(0),
    penaltyStarts: new Int32Array(n + 1),
    penaltyPromptLens: new Int32Array(n),
    seeds: new Uint32Array(n),
    draws: new Uint32Array(n),
    topLogprobs: 0,
    returnLogits: false,
  };
}

/** A function returning `len` token ids in [1000, 100000) from a seeded LCG. */
export function randomTokenSource(seed) {
  let x = seed;
  return (len) => Array.from({ length: len }, () => 1000 + ((x = (x * 1103515245 + 12345) % 2147483648) % 99000));
}

export const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
export const mean = (xs) => xs.reduce((a, b) => a + b, 0) / xs.length;

/**
 * The decode and prefill workload of bench/gpu-lora.js, bench/gpu-tp.js and
 * bench/serve-overhead.js: `rows` sequences over a `context`-token context (each fed back its
 * last token), and 8 x 512 prompt tokens, with the rows spread round-robin over `distinct`
 * adapter slots (0: all base); token ids below `vocab`, KV blocks of `block` tokens.
 * `step(batch)` runs one step and may return a promise; only it is timed. `rows` is the most
 * rows a decode step may have: every row's context is filled once, and decode(step, distinct, n)
 * times the first n of them, so one engine measures several batch sizes. decode() times `steps`
 * steps after `warmup` untimed ones.
 */
export function loraWorkload({ rows = 32, context = 512, block = 16, vocab = Infinity, steps = 20, warmup = 3 } = {}) {
  const BLOCK = block,
    CONTEXT = context,
    ROWS = rows,
    STEPS = steps,
    WARMUP = warmup;
  const PROMPT = 512,
    PROMPTS = 8;
  // A row's blocks also hold a 512-token prefill prompt when the context is shorter.
  const maxBlocks = Math.ceil(Math.max(CONTEXT + STEPS + 8, PROMPT) / BLOCK);
  const source = randomTokenSource(7);
  const randomTokens = (len) => source(len).map((t) => t % vocab);
  const blocks = (i) => Array.from({ length: maxBlocks }, (_, k) => i * maxBlocks + k);
  // Adapter k's pool slot is k slotStride (a pool cut into slots of a lower rank places each
  // adapter at a multiple of its span: src/engine/lora-slots.ts).
  const slot = (i, distinct) => (distinct === 0 ? -1 : (i % distinct) * workload.slotStride);
  const timed = async (step, seqs) => {
    const b = greedyBatch(seqs, maxBlocks);
    const t0 = performance.now();
    const r = await step(b);
    return { r, ms: performance.now() - t0 };
  };
  const workload = {
    BLOCK,
    /** The slots between two adapters' first ones (1 unless a run sets it). */
    slotStride: 1,
    CONTEXT,
    ROWS,
    /** The prefill's shape, as results files record it. */
    PREFILL: { prompts: PROMPTS, tokens: PROMPT },
    maxBlocks,
    /** KV blocks the workload uses. */
    kvBlocks: (ROWS + 8) * maxBlocks,
    /** Fills every row's context (unadapted), so the decode steps attend over real keys. */
    async fillContext(step) {
      const seqs = Array.from({ length: ROWS }, (_, i) => ({ tokens: randomTokens(CONTEXT - 1), cached: 0, blocks: blocks(i) }));
      for (let i = 0; i < ROWS; i += 8) await step(greedyBatch(seqs.slice(i, i + 8), maxBlocks));
    },
    /** Median ms of STEPS decode steps of `rows` rows after WARMUP of warm-up. */
    async decode(step, distinct, rows = ROWS) {
      if (!(rows >= 1 && rows <= ROWS)) throw new Error(`decode of ${rows} rows: the workload has ${ROWS}`);
      let last = Array.from({ length: rows }, () => 5000);
      const times = [];
      for (let s = 0; s < STEPS + WARMUP; s++) {
        const { r, ms } = await timed(
          step,
          last.map((t, i) => ({ tokens: [t], cached: CONTEXT - 1, blocks: blocks(i), slot: slot(i, distinct) })),
        );
        if (s >= WARMUP) times.push(ms);
        last = Array.from(r.tokens);
      }
      return median(times);
    },
    /** Prefill of 8 x 512 fresh tokens: the median of 3 runs after one of warm-up. */
    async prefill(step, distinct) {
      const times = [];
      for (let rep = 0; rep < 4; rep++) {
        const seqs = Array.from({ length: PROMPTS }, (_, i) => ({
          tokens: randomTokens(PROMPT),
          cached: 0,
          blocks: blocks(ROWS + i).slice(0, Math.ceil(PROMPT / BLOCK)),
          slot: slot(i, distinct),
        }));
        const { ms } = await timed(step, seqs);
        if (rep > 0) times.push(ms);
      }
      const ms = median(times);
      return { ms, tokensPerS: (PROMPTS * PROMPT) / (ms / 1000) };
    },
  };
  return workload;
}

const LORA_MODULES = ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'];

/**
 * The modules a benchmark's adapter pool holds: LORA_MODULES=o_proj (comma-separated) gives the
 * pool those alone, so that a set of adapters on them (bench/make-adapters.js --modules) is timed
 * without the other modules' kernels, which a pool of all seven runs whatever its adapters hold.
 */
export function benchLoraModules(spec = process.env.LORA_MODULES) {
  if (!spec) return LORA_MODULES;
  const list = spec.split(',').map((m) => m.trim());
  for (const m of list) if (!LORA_MODULES.includes(m)) throw new Error(`LORA_MODULES: unknown module ${m} (one of ${LORA_MODULES.join(', ')})`);
  return list;
}

/**
 * The CUDA engine options of the multi-LoRA benchmarks (bench/gpu-lora.js,
 * bench/gpu-lora-profile.js) for workload `w`: 8 slots of `rank` on all seven modules (or
 * LORA_MODULES's).
 */
export function loraEngineOptions(w, { rank, loraBackend = 'csgmv', loraKernel = 'fused', slots = 8, modules = benchLoraModules(), slotRank }) {
  return {
    device: 'cuda',
    blockSize: w.BLOCK,
    kvBlocks: w.kvBlocks,
    memFractionStatic: 0.85,
    loraSlots: slots,
    maxLoraRank: rank,
    loraSlotRank: slotRank,
    loraModules: modules,
    threads: 0,
    cudaGraphMaxBs: 64,
    loraBackend,
    loraChunkSize: 16,
    loraKernel,
  };
}

// How adapters of different ranks share the LoRA pool. The pool is sized for --max-gpu-loras
// adapters of --max-lora-rank; an engine may cut it into slots of a lower rank (the slot rank),
// so that an adapter takes only the slots its rank needs and more small adapters stay resident in
// the same memory. An adapter takes a power of two of consecutive slots, starting at a multiple of
// that power (buddy placement): a run freed by one adapter then fits any adapter of its size or
// less, and a run of the max rank's size is always one whole place of the pool's.

/** The smallest slot rank an engine cuts its pool into. */
export const MIN_LORA_SLOT_RANK = 8;

/** The slot rank the CUDA backend cuts pools of max rank 32 and 64 into. */
export const CUDA_LORA_SLOT_RANK = 16;

/**
 * The slot rank an engine of `device` cuts a pool of `maxRank` into. The CPU backend computes each
 * adapter at its own rank wherever it sits, so any cut works there. The CUDA backend's fused
 * kernels read each adapter's run of slots, and a step runs the kernels of its batch's rank (the
 * slot rank times its longest run), so pools of max rank 32 and 64 are cut into slots of rank 16:
 * on an H100, 8 rank-16 adapters in a pool of max rank 64 took a decode step of 32 rows +9.9% to
 * +10.4% over the base step against +17.7% with slots of rank 64, and 8 rank-64 adapters +18.4% to
 * +19.2% against +18.1% to +18.2% (bench/results/2026-12-05-h100-lora-step-rank.json). Rank 128
 * keeps whole slots (its runs are not measured). A max rank that is not a power of two keeps whole
 * slots too: its halves would not hold a max-rank adapter's run.
 */
export function loraSlotRank(device: 'cpu' | 'cuda', maxRank: number, env = process.env.TROUPE_LORA_SLOT_RANK, cudaRuns = true): number {
  if (env !== undefined && env !== '') {
    // For comparing layouts (the CUDA backend checks that its fused kernels take it). A power of
    // two that divides a power-of-two max rank, so that runs of slots tile the pool's places.
    const rank = Number(env);
    if (!isPowerOfTwo(rank) || !isPowerOfTwo(maxRank) || rank > maxRank) {
      throw new RangeError(
        `TROUPE_LORA_SLOT_RANK must be a power of two up to the max LoRA rank ${maxRank} (itself a power of two), got ${JSON.stringify(env)}`,
      );
    }
    return rank;
  }
  if (device === 'cuda') return cudaRuns && (maxRank === 32 || maxRank === 64) ? CUDA_LORA_SLOT_RANK : maxRank;
  if (maxRank <= MIN_LORA_SLOT_RANK || !isPowerOfTwo(maxRank)) return maxRank;
  return MIN_LORA_SLOT_RANK;
}

/**
 * Whether a CUDA engine's default slot rank may cut its pool (`cudaRuns` of loraSlotRank): the fused
 * LoRA kernel reads runs of slots, the others do not (TROUPE_LORA_KERNEL may name one), and runs of
 * slots are checked against PEFT with the csgmv backend (on one GPU and with --tp-size 2, Llama,
 * Qwen2 and Qwen3), not with sgmv.
 */
export function cudaSlotRuns(loraBackend: 'csgmv' | 'sgmv', kernel = process.env.TROUPE_LORA_KERNEL): boolean {
  return loraBackend === 'csgmv' && (kernel === undefined || kernel === '' || kernel === 'fused');
}

/** Slots of the pool: `places` adapters of `maxRank`, cut into slots of `slotRank`. */
export function loraPoolSlots(places: number, maxRank: number, slotRank: number): number {
  return slotRank > 0 && maxRank > slotRank ? (places * maxRank) / slotRank : places;
}

/** The consecutive slots an adapter of `rank` takes in a pool of `slotRank` (1 for an unknown rank). */
export function loraSlotSpan(rank: number | null, slotRank: number): number {
  if (rank === null || slotRank <= 0 || rank <= slotRank) return 1;
  let span = 1;
  while (span * slotRank < rank) span *= 2;
  return span;
}

function isPowerOfTwo(n: number): boolean {
  return Number.isInteger(n) && n > 0 && (n & (n - 1)) === 0;
}

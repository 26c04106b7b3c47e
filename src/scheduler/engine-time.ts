// Where the engine's time goes, from the results of the steps completed so far: time in steps
// (all of them, and those in which every row decodes one token), and the time it stood idle
// between a step and the next one that was already sent to it. A decode step's time against
// the inter-token latency a client sees splits that latency into the engine's share and the
// host's: the idle time is what the executor and the messages add per step while the
// scheduler is ahead (overlap scheduling), the rest of the difference is the streams' own.

/**
 * Upper bounds in seconds of the decode-step histogram's buckets: from a few milliseconds to a
 * second, so that a step held by a one-time cost (a CUDA graph's capture, cuBLAS's timing of its
 * shapes) stands apart from the steady state, which the mean of the totals hides. A millisecond
 * apart from 2 to 8 ms, where an 8B model's steps on one GPU lie (5.2-5.6 ms at 32 rows on an
 * H200), so that the bounds say which millisecond half of them end in.
 */
export const DECODE_STEP_BUCKETS: readonly number[] = [
  0.002, 0.003, 0.004, 0.005, 0.006, 0.007, 0.008, 0.01, 0.0125, 0.015, 0.02, 0.03, 0.05, 0.1, 0.25, 0.5, 1,
];

/**
 * Upper bounds of the decode steps' LoRA slot histogram: one past the highest pool slot a step's
 * batch uses (0: the base model alone). The CUDA engine's LoRA GEMMs read the pool's slots up to
 * there, rounded up to a power of two, so a step over one adapter in slot 30 costs what one over
 * 32 adapters would.
 */
export const LORA_SLOT_BUCKETS: readonly number[] = [0, 1, 2, 4, 8, 16, 32, 64, 128];

/** Totals since the start, in seconds; /metrics shows them as counters. */
export interface EngineTimes {
  /** Every completed step's time in the engine. */
  seconds: number;
  /** Steps in which every row was one decoded token, and their time in the engine. */
  decodeSteps: number;
  decodeSeconds: number;
  /** Decode steps that took at most each of DECODE_STEP_BUCKETS (cumulative, as a Prometheus histogram's buckets). */
  decodeStepBuckets: number[];
  /** Decode steps that reached at most each of LORA_SLOT_BUCKETS slots (cumulative), and the slots' sum. */
  decodeStepSlots: number[];
  decodeSlotsSum: number;
  /** Steps that were sent while the one before was running, and the time the engine stood idle before each. */
  waits: number;
  waitSeconds: number;
}

/** Observations by the first of `bounds` they fit (one more count for those past the last). */
class BucketCounts {
  private readonly counts: number[];

  constructor(private readonly bounds: readonly number[]) {
    this.counts = new Array<number>(bounds.length + 1).fill(0);
  }

  add(value: number): void {
    const bucket = this.bounds.findIndex((bound) => value <= bound);
    this.counts[bucket < 0 ? this.bounds.length : bucket]!++;
  }

  /** Observations at most each bound, as a Prometheus histogram's buckets count them. */
  cumulative(): number[] {
    let sum = 0;
    return this.bounds.map((_, i) => (sum += this.counts[i]!));
  }
}

export class EngineTime {
  private ms = 0;
  private decodeSteps = 0;
  private decodeMs = 0;
  private readonly decodeByTime = new BucketCounts(DECODE_STEP_BUCKETS);
  private readonly decodeBySlots = new BucketCounts(LORA_SLOT_BUCKETS);
  private decodeSlots = 0;
  private waits = 0;
  private waitMs = 0;

  /**
   * One completed step: `stepMs` and `waitMs` as the executor measured them (absent from an
   * engine that does not time itself), `decode` when each row was one token, `ahead` when it was
   * sent while the step before ran: only then is the idle time before it the host's share
   * rather than the time the server had nothing to do. `slots`: one past the highest pool slot
   * the step's batch used (0 for the base model alone).
   */
  record(stepMs: number | undefined, waitMs: number | undefined, decode: boolean, ahead: boolean, slots = 0): void {
    if (stepMs === undefined) return;
    this.ms += stepMs;
    if (decode) {
      this.decodeSteps++;
      this.decodeMs += stepMs;
      this.decodeByTime.add(stepMs / 1000);
      this.decodeBySlots.add(slots);
      this.decodeSlots += slots;
    }
    if (ahead && waitMs !== undefined) {
      this.waits++;
      this.waitMs += waitMs;
    }
  }

  totals(): EngineTimes {
    return {
      seconds: this.ms / 1000,
      decodeSteps: this.decodeSteps,
      decodeSeconds: this.decodeMs / 1000,
      decodeStepBuckets: this.decodeByTime.cumulative(),
      decodeStepSlots: this.decodeBySlots.cumulative(),
      decodeSlotsSum: this.decodeSlots,
      waits: this.waits,
      waitSeconds: this.waitMs / 1000,
    };
  }
}

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

/** Totals since the start, in seconds; /metrics shows them as counters. */
export interface EngineTimes {
  /** Every completed step's time in the engine. */
  seconds: number;
  /** Steps in which every row was one decoded token, and their time in the engine. */
  decodeSteps: number;
  decodeSeconds: number;
  /** Decode steps that took at most each of DECODE_STEP_BUCKETS (cumulative, as a Prometheus histogram's buckets). */
  decodeStepBuckets: number[];
  /** Steps that were sent while the one before was running, and the time the engine stood idle before each. */
  waits: number;
  waitSeconds: number;
}

export class EngineTime {
  private ms = 0;
  private decodeSteps = 0;
  private decodeMs = 0;
  // Decode steps by the first bucket they fit (one more for those past the last bound).
  private readonly decodeByBucket = new Array<number>(DECODE_STEP_BUCKETS.length + 1).fill(0);
  private waits = 0;
  private waitMs = 0;

  /**
   * One completed step: `stepMs` and `waitMs` as the executor measured them (absent from an
   * engine that does not time itself), `decode` when each row was one token, `ahead` when it was
   * sent while the step before ran: only then is the idle time before it the host's share
   * rather than the time the server had nothing to do.
   */
  record(stepMs: number | undefined, waitMs: number | undefined, decode: boolean, ahead: boolean): void {
    if (stepMs === undefined) return;
    this.ms += stepMs;
    if (decode) {
      this.decodeSteps++;
      this.decodeMs += stepMs;
      const bucket = DECODE_STEP_BUCKETS.findIndex((bound) => stepMs / 1000 <= bound);
      this.decodeByBucket[bucket < 0 ? DECODE_STEP_BUCKETS.length : bucket]!++;
    }
    if (ahead && waitMs !== undefined) {
      this.waits++;
      this.waitMs += waitMs;
    }
  }

  private cumulativeBuckets(): number[] {
    let sum = 0;
    return DECODE_STEP_BUCKETS.map((_, i) => (sum += this.decodeByBucket[i]!));
  }

  totals(): EngineTimes {
    return {
      seconds: this.ms / 1000,
      decodeSteps: this.decodeSteps,
      decodeSeconds: this.decodeMs / 1000,
      decodeStepBuckets: this.cumulativeBuckets(),
      waits: this.waits,
      waitSeconds: this.waitMs / 1000,
    };
  }
}

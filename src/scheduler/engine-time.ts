// Where the engine's time goes, from the results of the steps completed so far: time in steps
// (all of them, and those in which every row decodes one token), and the time it stood idle
// between a step and the next one that was already sent to it. A decode step's time against
// the inter-token latency a client sees splits that latency into the engine's share and the
// host's: the idle time is what the executor and the messages add per step while the
// scheduler is ahead (overlap scheduling), the rest of the difference is the streams' own.

/** Totals since the start, in seconds; /metrics shows them as counters. */
export interface EngineTimes {
  /** Every completed step's time in the engine. */
  seconds: number;
  /** Steps in which every row was one decoded token, and their time in the engine. */
  decodeSteps: number;
  decodeSeconds: number;
  /** Steps that were sent while the one before was running, and the time the engine stood idle before each. */
  waits: number;
  waitSeconds: number;
}

export class EngineTime {
  private ms = 0;
  private decodeSteps = 0;
  private decodeMs = 0;
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
      waits: this.waits,
      waitSeconds: this.waitMs / 1000,
    };
  }
}

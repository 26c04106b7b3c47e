// One request's life on the main thread: the ids, logprobs and text gathered from token
// events, stop-string matching, and the GenerateOutput / GenerateChunk it turns into.
import type { FinishReason, GenerateChunk, GenerateOutput, GenerateRequest, TokenLogprob } from '../api.js';
import type { TokenEvent } from '../scheduler/index.js';
import type { DetokState } from '../tokenizer/pool.js';

export interface RequestSink {
  chunk?(c: GenerateChunk): void;
  /**
   * The first generated token arrived, `seconds` after the request did; `queueSeconds`: how long
   * the request waited in the scheduler before a step first took it (null where not told).
   */
  firstToken?(seconds: number, queueSeconds: number | null): void;
  /** A later generated token arrived, `seconds` after the one before it. */
  nextToken?(seconds: number): void;
  done(o: GenerateOutput): void;
  error(e: Error): void;
}

export class LiveRequest {
  readonly ids: number[] = [];
  private readonly logprobs: number[] = [];
  private readonly topIds: number[][] = [];
  private readonly topLogprobs: number[][] = [];
  text = '';
  detok: DetokState = { prefixOffset: 0, readOffset: 0 };
  promptTokens: number;
  /** Of the prompt's tokens, those read from the prefix cache (as the scheduler's events say). */
  cachedTokens = 0;
  /** Set once the request is answered; later events for it are ignored. */
  finished: FinishReason | null = null;
  /** Seconds from the request's arrival to its first generated token; null until then. */
  ttft: number | null = null;
  /** performance.now() when its latest generated token arrived. */
  private lastTokenAt = 0;
  private readonly maxStop: number;

  constructor(
    readonly id: string,
    readonly req: GenerateRequest,
    promptTokens: number,
    private readonly sink: RequestSink,
    /** When the request arrived (performance.now()), before its prompt was tokenized. */
    private readonly start = performance.now(),
  ) {
    this.promptTokens = promptTokens;
    this.maxStop = Math.max(0, ...req.sampling.stop.map((s) => s.length));
  }

  get skipSpecialTokens(): boolean {
    return this.req.sampling.skipSpecialTokens;
  }

  addTokens(ev: TokenEvent): void {
    this.promptTokens = ev.promptTokens;
    this.cachedTokens = ev.cachedTokens;
    if (ev.token < 0) return;
    const now = performance.now();
    if (this.ttft === null) {
      this.ttft = (now - this.start) / 1000;
      this.sink.firstToken?.(this.ttft, ev.queueSeconds ?? null);
    } else {
      this.sink.nextToken?.((now - this.lastTokenAt) / 1000);
    }
    this.lastTokenAt = now;
    this.ids.push(ev.token);
    if (this.req.returnLogprob) {
      this.logprobs.push(ev.logprob);
      this.topIds.push(ev.topIds);
      this.topLogprobs.push(ev.topLogprobs);
    }
  }

  /** Appends newly decoded text; returns the stop string it completed, if any (the text is cut before it). */
  addText(text: string): string | null {
    if (text.length === 0 || this.maxStop === 0) {
      this.text += text;
      return null;
    }
    // A stop string may straddle the old text and the new piece.
    const from = Math.max(0, this.text.length - this.maxStop + 1);
    this.text += text;
    let at = -1;
    let matched: string | null = null;
    for (const s of this.req.sampling.stop) {
      if (s.length === 0) continue;
      const i = this.text.indexOf(s, from);
      if (i >= 0 && (at < 0 || i < at)) {
        at = i;
        matched = s;
      }
    }
    if (matched !== null) this.text = this.text.slice(0, at);
    return matched;
  }

  emitChunk(): void {
    if (!this.sink.chunk) return;
    // Hold back a tail that may still grow into a stop string, so streamed text never shrinks.
    let keep = this.text.length;
    for (const s of this.req.sampling.stop) {
      for (let n = Math.min(s.length - 1, this.text.length); n > 0; n--) {
        if (this.text.endsWith(s.slice(0, n))) {
          keep = Math.min(keep, this.text.length - n);
          break;
        }
      }
    }
    this.sink.chunk({ ...this.output(null), text: this.text.slice(0, keep) });
  }

  finish(reason: FinishReason): void {
    if (this.finished) return;
    this.finished = reason;
    const out = this.output(reason);
    if (this.sink.chunk) this.sink.chunk(out);
    this.sink.done(out);
  }

  fail(err: Error): void {
    if (this.finished) return;
    this.finished = { type: 'abort', message: err.message };
    this.sink.error(err);
  }

  private output<F extends FinishReason | null>(finishReason: F): Omit<GenerateOutput, 'finishReason'> & { finishReason: F } {
    const out: Omit<GenerateOutput, 'finishReason'> & { finishReason: F } = {
      id: this.id,
      text: this.text,
      outputIds: [...this.ids],
      finishReason,
      promptTokens: this.promptTokens,
      cachedTokens: this.cachedTokens,
      completionTokens: this.ids.length,
      e2eLatency: (performance.now() - this.start) / 1000,
    };
    if (this.req.returnLogprob) {
      out.outputTokenLogprobs = this.ids.map((id, i): TokenLogprob => [this.logprobs[i] ?? 0, id, null]);
      if (this.req.topLogprobsNum > 0) {
        out.outputTopLogprobs = this.topIds.map((ids, i) => ids.map((id, j): TokenLogprob => [this.topLogprobs[i]?.[j] ?? 0, id, null]));
      }
    }
    return out;
  }
}

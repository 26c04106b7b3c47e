// A TroupeEngine double for the HTTP tests: it records every request and answers with output
// derived from what it received, so tests can pin parsing and response shaping.
import type { AdapterSpec, AdapterStatus, GenerateChunk, GenerateOutput, GenerateRequest, ModelInfo, TroupeEngine } from '../src/api.js';
import { TroupeError, badRequest } from '../src/errors.js';

const TOKENS = ['A', 'B', 'C'];

export class EchoEngine implements TroupeEngine {
  readonly requests: GenerateRequest[] = [];
  /** Every abort asked for: [rid, message], or ['*', message] for abortAll. */
  readonly aborts: Array<[string, string | undefined]> = [];
  /** The rids of requests waiting in hang mode; abort(rid) ends them with finish reason abort. */
  private readonly hanging = new Map<string, (message: string) => void>();
  readonly adapterPaths = new Map<string, string>([['demo-a', '/models/demo-a']]);
  /** When set, generate/stream wait for the request's signal instead of finishing. */
  hang = false;
  /** When set, generate rejects (and stream throws after its first chunk) with this error. */
  failWith: Error | null = null;
  /** Resolves once a request is waiting in hang mode. */
  waiting: Promise<void> = Promise.resolve();
  private markWaiting: () => void = () => {};

  armHang(): void {
    this.hang = true;
    this.waiting = new Promise((res) => {
      this.markWaiting = res;
    });
  }

  private check(req: GenerateRequest): void {
    this.requests.push(req);
    if (req.lora !== null && !this.adapterPaths.has(req.lora)) {
      throw badRequest(`Got LoRA adapter that has never been loaded: '${req.lora}'`);
    }
  }

  /** Rejects when the signal aborts; resolves with the abort message when abort(rid) ends the request. */
  private untilAborted(req: GenerateRequest): Promise<string> {
    this.markWaiting();
    return new Promise((resolve, reject) => {
      if (req.rid !== undefined) this.hanging.set(req.rid, resolve);
      req.signal?.addEventListener('abort', () => reject(new TroupeError('invalid_request', 'aborted')));
    });
  }

  private output(req: GenerateRequest, n: number): GenerateOutput {
    const ids = Array.from({ length: n }, (_, i) => 100 + i);
    const prompt = req.text ?? req.inputIds!.join(',');
    const s = req.sampling;
    const finishReason: GenerateOutput['finishReason'] =
      s.stop.length > 0 ? { type: 'stop', matched: s.stop[0]! } : { type: 'length', length: s.maxNewTokens };
    const out: GenerateOutput = {
      id: req.rid ?? 'rid-auto',
      text: `[${req.lora ?? 'base'}] ${prompt} -> ${TOKENS.slice(0, n).join('')}`,
      outputIds: ids,
      finishReason,
      promptTokens: prompt.length,
      cachedTokens: 0,
      completionTokens: n,
      e2eLatency: 0.25,
    };
    if (req.returnLogprob) {
      out.outputTokenLogprobs = ids.map((id) => [-0.5, id, `t${id}`]);
      out.outputTopLogprobs = ids.map((id) =>
        Array.from({ length: req.topLogprobsNum }, (_, k) => [-0.5 - k, id + k, `t${id + k}`] as [number, number, string]),
      );
    }
    return out;
  }

  async generate(req: GenerateRequest): Promise<GenerateOutput> {
    this.check(req);
    if (this.hang) {
      const message = await this.untilAborted(req);
      return { ...this.output(req, 0), finishReason: { type: 'abort', message } };
    }
    if (this.failWith) throw this.failWith;
    return this.output(req, Math.min(TOKENS.length, req.sampling.maxNewTokens));
  }

  async *stream(req: GenerateRequest): AsyncIterable<GenerateChunk> {
    this.check(req);
    const n = Math.min(TOKENS.length, req.sampling.maxNewTokens);
    for (let k = 1; k <= n; k++) {
      const full = this.output(req, k);
      yield { ...full, finishReason: k === n ? full.finishReason : null };
      if (this.failWith) throw this.failWith;
      if (this.hang) {
        const message = await this.untilAborted(req);
        yield { ...this.output(req, k), finishReason: { type: 'abort', message } };
        return;
      }
    }
  }

  abort(rid: string, message?: string): boolean {
    this.aborts.push([rid, message]);
    const end = this.hanging.get(rid);
    this.hanging.delete(rid);
    end?.(message ?? 'aborted');
    return end !== undefined;
  }

  abortAll(message?: string): number {
    this.aborts.push(['*', message]);
    const ends = [...this.hanging.values()];
    this.hanging.clear();
    for (const end of ends) end(message ?? 'aborted');
    return ends.length;
  }

  /** How many times /flush_cache reached the engine. */
  flushes = 0;
  async flushCache(): Promise<void> {
    this.flushes++;
  }

  async loadAdapter(spec: AdapterSpec): Promise<AdapterStatus> {
    if (spec.path.includes('missing')) throw badRequest(`adapter path ${spec.path} has no adapter_config.json`);
    this.adapterPaths.set(spec.name, spec.path);
    return {
      name: spec.name,
      path: spec.path,
      pinned: spec.pinned ?? false,
      loaded: true,
      state: 'ready',
      rank: 8,
      targetModules: ['q_proj'],
      slot: null,
      error: null,
    };
  }

  async unloadAdapter(name: string): Promise<void> {
    if (!this.adapterPaths.delete(name)) throw badRequest(`adapter ${JSON.stringify(name)} is not loaded`);
  }

  async adapters(names?: readonly string[]): Promise<AdapterStatus[]> {
    return [...this.adapterPaths]
      .filter(([name]) => !names || names.includes(name))
      .map(([name, path]) => ({
        name,
        path,
        pinned: false,
        loaded: true,
        state: 'ready',
        rank: 8,
        targetModules: ['q_proj'],
        slot: null,
        error: null,
      }));
  }

  async tokenTexts(ids: number[]): Promise<Array<string | null>> {
    return ids.map((id) => `t${id}`);
  }

  modelInfo(): ModelInfo {
    return {
      modelPath: '/models/demo',
      servedModelName: 'ignored-by-http',
      tokenizerPath: '/models/demo',
      isGeneration: true,
      maxTotalTokens: 4096,
      contextLength: 2048,
      device: 'cpu',
      tpSize: 1,
      collective: 'none',
    };
  }

  async close(): Promise<void> {}
}

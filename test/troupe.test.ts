// The whole engine (actors, native CPU backend, tokenizer pool) on the demo model.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DEFAULT_SAMPLING, type GenerateChunk, type GenerateRequest, type SamplingOptions } from '../src/api.js';
import { parseArgs } from '../src/config/parse.js';
import { validateFlags } from '../src/config/validate.js';
import { TroupeError } from '../src/errors.js';
import { DEMO_MODEL, makeDemo, makeRandomAdapter } from '../src/model/demo.js';
import { createEngine, type LocalTroupeEngine } from '../src/troupe.js';

let dir = '';
let engine: LocalTroupeEngine;

const sampling = (o: Partial<SamplingOptions> = {}): SamplingOptions => ({
  ...DEFAULT_SAMPLING,
  maxNewTokens: 8,
  temperature: 0,
  ignoreEos: true,
  ...o,
});
const request = (o: Partial<GenerateRequest> & { s?: Partial<SamplingOptions> } = {}): GenerateRequest => {
  const { s, ...rest } = o;
  return { text: 'The capital of France is', lora: null, returnLogprob: false, topLogprobsNum: 0, sampling: sampling(s), ...rest };
};

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'troupe-engine-'));
  makeDemo(dir);
  const argv = [
    '--model-path',
    dir,
    '--lora-paths',
    `demo-a=${join(dir, 'adapters', 'demo-a')}`,
    `demo-b=${join(dir, 'adapters', 'demo-b')}`,
    '--max-loras-per-batch',
    '3',
    '--max-total-tokens',
    '4096',
    '--device',
    'cpu',
  ];
  engine = await createEngine(validateFlags(parseArgs(argv).flags).options);
});

afterAll(async () => {
  await engine?.close();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe('createEngine on the demo model', () => {
  it('starts with the --lora-paths adapters loaded and reports the model', async () => {
    const names = (await engine.adapters()).map((a) => [a.name, a.rank, a.error]);
    expect(names).toEqual([
      ['demo-a', 8, null],
      ['demo-b', 16, null],
    ]);
    const info = engine.modelInfo();
    expect(info.device).toBe('cpu');
    expect(info.maxTotalTokens).toBeGreaterThanOrEqual(4096);
    expect(info.modelPath).toBe(dir);
  });

  it('greedy outputs are the same alone and in a mixed batch of base, demo-a and demo-b', async () => {
    const loras = [null, 'demo-a', 'demo-b'];
    const alone = [];
    for (const lora of loras) alone.push(await engine.generate(request({ lora })));
    for (const o of alone) {
      expect(o.outputIds).toHaveLength(8);
      expect(o.finishReason).toEqual({ type: 'length', length: 8 });
      expect(o.completionTokens).toBe(8);
      expect(o.promptTokens).toBeGreaterThan(0);
    }
    expect(alone[1]!.outputIds).not.toEqual(alone[0]!.outputIds);
    const mixed = await Promise.all(loras.map((lora) => engine.generate(request({ lora }))));
    expect(mixed.map((o) => o.outputIds)).toEqual(alone.map((o) => o.outputIds));
    expect(mixed.map((o) => o.text)).toEqual(alone.map((o) => o.text));
  });

  it('streams cumulative chunks that end with the text generate returns', async () => {
    const full = await engine.generate(request({ lora: 'demo-b', s: { maxNewTokens: 10 } }));
    const chunks: GenerateChunk[] = [];
    for await (const c of engine.stream(request({ lora: 'demo-b', s: { maxNewTokens: 10 } }))) chunks.push(c);
    expect(chunks.length).toBeGreaterThan(1);
    for (let i = 1; i < chunks.length; i++) {
      expect(chunks[i]!.text.startsWith(chunks[i - 1]!.text)).toBe(true);
      expect(chunks[i]!.outputIds.slice(0, chunks[i - 1]!.outputIds.length)).toEqual(chunks[i - 1]!.outputIds);
    }
    expect(chunks.slice(0, -1).every((c) => c.finishReason === null)).toBe(true);
    const last = chunks.at(-1)!;
    expect(last.finishReason).toEqual({ type: 'length', length: 10 });
    expect(last.text).toBe(full.text);
    expect(last.outputIds).toEqual(full.outputIds);
  });

  it('a stop string trims the text, finishes with matched and ends the sequence', async () => {
    const full = await engine.generate(request({ s: { maxNewTokens: 16 } }));
    const p = Math.floor(full.text.length / 2);
    const stop = full.text.slice(p, p + 3);
    expect(stop).toHaveLength(3);
    const out = await engine.generate(request({ s: { maxNewTokens: 16, stop: [stop] } }));
    expect(out.finishReason).toEqual({ type: 'stop', matched: stop });
    expect(out.text).toBe(full.text.slice(0, full.text.indexOf(stop)));
    expect(out.completionTokens).toBeLessThan(16);
    expect(out.outputIds).toEqual(full.outputIds.slice(0, out.completionTokens));
    const stats = await engine.stats();
    expect(stats.running + stats.waiting).toBe(0);
  });

  it('returns logprobs of the chosen tokens and the top alternatives when asked', async () => {
    const out = await engine.generate(request({ returnLogprob: true, topLogprobsNum: 3, s: { maxNewTokens: 4 } }));
    expect(out.outputTokenLogprobs).toHaveLength(4);
    expect(out.outputTopLogprobs).toHaveLength(4);
    out.outputTokenLogprobs!.forEach(([lp, id], i) => {
      expect(id).toBe(out.outputIds[i]);
      expect(lp).toBeLessThanOrEqual(0);
      const top = out.outputTopLogprobs![i]!;
      expect(top).toHaveLength(3);
      // Greedy: the chosen token is the most likely one.
      expect(top[0]![1]).toBe(id);
      expect(top[0]![0]).toBeCloseTo(lp, 4);
    });
  });

  it('refuses bad requests with a TroupeError that names the problem', async () => {
    const unknown = await engine.generate(request({ lora: 'no-such-adapter' })).catch((e: unknown) => e);
    expect(unknown).toBeInstanceOf(TroupeError);
    expect((unknown as TroupeError).status).toBe(400);
    expect((unknown as TroupeError).message).toContain('no-such-adapter');
    await expect(engine.generate(request({ text: undefined, inputIds: [] }))).rejects.toThrow(/prompt is empty/);
    await expect(engine.generate(request({ text: undefined, inputIds: [1, 128256] }))).rejects.toThrow(/input_ids\[1\] = 128256/);
    // The engine still serves after refusals.
    expect((await engine.generate(request({ s: { maxNewTokens: 2 } }))).outputIds).toHaveLength(2);
  });

  it('an abort signal finishes the request with abort and frees its KV blocks', async () => {
    const ac = new AbortController();
    const chunks: GenerateChunk[] = [];
    for await (const c of engine.stream(request({ signal: ac.signal, s: { maxNewTokens: 500 } }))) {
      chunks.push(c);
      if (chunks.length === 2) ac.abort();
    }
    const last = chunks.at(-1)!;
    expect(last.finishReason?.type).toBe('abort');
    expect(last.completionTokens).toBeLessThan(500);
    const stats = await engine.stats();
    expect(stats).toMatchObject({ running: 0, waiting: 0 });
    expect(stats.freeBlocks).toBe(stats.totalBlocks);

    const pre = new AbortController();
    pre.abort();
    const out = await engine.generate(request({ signal: pre.signal }));
    expect(out.finishReason.type).toBe('abort');
  });

  it('refuses an adapter the LoRA pool cannot hold, naming the limit', async () => {
    const big = join(dir, 'adapters', 'rank-32');
    makeRandomAdapter(big, { rank: 32, alpha: 32, targetModules: ['q_proj'], seed: 9 }, DEMO_MODEL);
    await expect(engine.loadAdapter({ name: 'big', path: big })).rejects.toThrow(/adapter 'big' has rank 32, above --max-lora-rank 16/);
    expect((await engine.adapters()).map((a) => a.name)).not.toContain('big');
  });

  it('a seed makes sampling repeatable; max_new_tokens 0 finishes at once', async () => {
    const s = { temperature: 1, topP: 0.95, seed: 1234, maxNewTokens: 6 };
    const [a, b] = await Promise.all([engine.generate(request({ s })), engine.generate(request({ lora: 'demo-a', s }))]);
    const again = await engine.generate(request({ s }));
    expect(again.outputIds).toEqual(a.outputIds);
    expect(b.outputIds).toHaveLength(6);
    const none = await engine.generate(request({ s: { maxNewTokens: 0 } }));
    expect(none).toMatchObject({ outputIds: [], text: '', finishReason: { type: 'length', length: 0 } });
  });

  it('loads and unloads adapters at run time; a request for an unloaded adapter loads it again, one never loaded is refused', async () => {
    const status = await engine.loadAdapter({ name: 'extra', path: join(dir, 'adapters', 'demo-a') });
    expect(status).toMatchObject({ name: 'extra', rank: 8, error: null });
    expect((await engine.adapters()).map((a) => a.name)).toContain('extra');
    // Same weights as demo-a, so the same greedy output.
    const [viaExtra, viaA] = await Promise.all([engine.generate(request({ lora: 'extra' })), engine.generate(request({ lora: 'demo-a' }))]);
    expect(viaExtra.outputIds).toEqual(viaA.outputIds);

    await expect(engine.loadAdapter({ name: 'extra', path: join(dir, 'adapters', 'demo-b') })).rejects.toThrow(/already loaded/);
    await expect(engine.loadAdapter({ name: 'ghost', path: join(dir, 'nowhere') })).rejects.toThrow(/nowhere/);
    expect((await engine.adapters()).map((a) => a.name)).not.toContain('ghost');

    await engine.unloadAdapter('extra');
    expect((await engine.adapters()).map((a) => a.name)).not.toContain('extra');
    await expect(engine.unloadAdapter('extra')).rejects.toThrow(/not loaded/);
    // As in SGLang, a name once loaded stays servable: it is loaded again from its path.
    expect((await engine.generate(request({ lora: 'extra' }))).outputIds).toEqual(viaA.outputIds);
    expect((await engine.adapters()).find((a) => a.name === 'extra')).toMatchObject({ loaded: true, path: join(dir, 'adapters', 'demo-a') });
    await engine.unloadAdapter('extra');
    const refused = await engine.generate(request({ lora: 'never' })).catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(TroupeError);
    expect((refused as TroupeError).message).toContain("has never been loaded: 'never'");
  });
});

describe('an actor crash', () => {
  it('fails in-flight requests with an error naming the actor and refuses new ones', async () => {
    const argv = ['--model-path', dir, '--device', 'cpu', '--max-total-tokens', '2048'];
    const e = await createEngine(validateFlags(parseArgs(argv).flags).options);
    try {
      const chunks: GenerateChunk[] = [];
      const stream = e.stream(request({ s: { maxNewTokens: 2000 } }));
      const drained = (async () => {
        for await (const c of stream) {
          chunks.push(c);
          if (chunks.length === 1) {
            const sup = (e as unknown as { supervisor: import('../src/actors/supervisor.js').Supervisor }).supervisor;
            // The scheduler: killing the executor mid-step would end the whole process inside native code.
            void sup.worker('scheduler').terminate();
          }
        }
      })();
      await expect(drained).rejects.toThrow(/the scheduler actor exited/);
      expect(e.unhealthy()?.status).toBe(503);
      await expect(e.generate(request())).rejects.toThrow(/scheduler actor exited/);
    } finally {
      await e.close();
    }
  });
});

describe('close()', () => {
  it('ends in-flight requests with a clear error while a step may be running', async () => {
    const argv = ['--model-path', dir, '--device', 'cpu', '--max-total-tokens', '2048'];
    const e = await createEngine(validateFlags(parseArgs(argv).flags).options);
    let seen = 0;
    const drained = (async () => {
      for await (const _ of e.stream(request({ s: { maxNewTokens: 2000 } }))) {
        if (++seen === 1) void e.close();
      }
    })();
    await expect(drained).rejects.toThrow(/the engine is closed/);
    await e.close();
    await expect(e.generate(request())).rejects.toThrow(/the engine is closed/);
  });
});

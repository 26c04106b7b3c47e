// Hostile requests against the real engine on the demo model: sampling values at the edges of
// float32 and int32, top logprobs beyond the vocabulary, and adapter paths outside
// --lora-allowed-dirs. Each fails (or runs) on its own; requests running beside it are untouched.
import { cpSync, mkdirSync, mkdtempSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TroupeError } from '../src/errors.js';
import { startDemoServer, type DemoServer } from './demo-server.js';

let demo: DemoServer;
let allowed = '';
const PROMPT = 'List 3 countries and their capitals.';

beforeAll(async () => {
  allowed = mkdtempSync(join(tmpdir(), 'troupe-allowed-'));
  // A wide --max-top-logprobs-num lets requests reach the engine's own vocabulary check.
  demo = await startDemoServer(['--max-top-logprobs-num', '1000000', '--lora-allowed-dirs', allowed]);
}, 120_000);

afterAll(async () => {
  await demo?.close();
  rmSync(allowed, { recursive: true, force: true });
});

const post = (path: string, body: unknown): Promise<Response> =>
  fetch(`${demo.base}${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });

async function generateText(sampling: Record<string, unknown>, extra: Record<string, unknown> = {}): Promise<string> {
  const res = await post('/generate', { text: PROMPT, sampling_params: { max_new_tokens: 8, ignore_eos: true, ...sampling }, ...extra });
  const body = await res.json();
  expect(res.status, JSON.stringify(body)).toBe(200);
  return body.text as string;
}

let greedy: Promise<string> | null = null;
/** The greedy output for PROMPT, computed once. */
const greedyText = (): Promise<string> => (greedy ??= generateText({ temperature: 0 }));

/** The data payloads of the complete server-sent events in `buffer`, and what is left of it. */
function takeEvents(buffer: string): { events: Array<Record<string, any>>; rest: string } {
  const parts = buffer.split('\n\n');
  const rest = parts.pop()!;
  const events = parts
    .map((p) => p.slice('data: '.length))
    .filter((d) => d !== '[DONE]')
    .map((d) => JSON.parse(d) as Record<string, any>);
  return { events, rest };
}

/**
 * Runs `other` while a long greedy stream is decoding. The stream started before `other` and is
 * read until it has made a token after `other` ended, so every engine step of `other` had the
 * stream in its batch. The stream's tokens must equal what the same request makes alone.
 */
async function besideAGreedyStream<T>(other: () => Promise<T>): Promise<T> {
  const sampling = { max_new_tokens: 3000, temperature: 0, ignore_eos: true };
  const res = await post('/generate', { text: PROMPT, sampling_params: sampling, stream: true });
  expect(res.status).toBe(200);
  const reader = res.body!.getReader();
  const decoder = new TextDecoder();
  let buffer = '';
  let last: Record<string, any> | null = null;
  const readMore = async (): Promise<void> => {
    const { done, value } = await reader.read();
    expect(done).toBe(false);
    const got = takeEvents(buffer + decoder.decode(value, { stream: true }));
    buffer = got.rest;
    for (const e of got.events) {
      expect(e.error).toBeUndefined();
      last = e;
    }
  };
  while (last === null) await readMore(); // the stream is running
  const result = await other();
  const seen = (last as Record<string, any>).output_ids.length as number;
  while ((last as Record<string, any>).output_ids.length <= seen) await readMore();
  await reader.cancel();
  const ids = (last as Record<string, any>).output_ids as number[];
  const alone = await post('/generate', { text: PROMPT, sampling_params: { ...sampling, max_new_tokens: ids.length } });
  expect((await alone.json()).output_ids).toEqual(ids);
  return result;
}

describe('sampling values at the edges', () => {
  it('runs temperature 1e-45 with top_p 0.9 (and 3e-39) greedily: the output equals temperature 0', async () => {
    const greedy = await greedyText();
    expect(await generateText({ temperature: 1e-45, top_p: 0.9 })).toBe(greedy);
    expect(await generateText({ temperature: 3e-39, top_p: 0.9, top_k: 40 })).toBe(greedy);
    const chat = await post('/v1/completions', { model: 'demo', prompt: PROMPT, max_tokens: 8, ignore_eos: true, temperature: 1e-45, top_p: 0.9 });
    expect((await chat.json()).choices[0].text).toBe(greedy);
  });

  it('accepts temperature 1e300 as SGLang does, and a request decoding beside it is untouched', async () => {
    const res = await besideAGreedyStream(() =>
      post('/generate', {
        text: PROMPT,
        sampling_params: { max_new_tokens: 8, temperature: 1e300, ignore_eos: true, sampling_seed: 7 },
      }),
    );
    expect(res.status).toBe(200);
    const body = await res.json();
    expect(body.meta_info.completion_tokens).toBe(8);
  });

  it('runs top_p and repetition_penalty too small for float32 (5e-324, 1e-45), and a request decoding beside them is untouched', async () => {
    const res = await besideAGreedyStream(() =>
      post('/generate', {
        text: PROMPT,
        sampling_params: { max_new_tokens: 4, temperature: 1, top_p: 5e-324, repetition_penalty: 1e-45, ignore_eos: true },
      }),
    );
    expect(res.status).toBe(200);
    expect((await res.json()).meta_info.completion_tokens).toBe(4);
  });

  it('reads top_k 2^32+1 as no limit, never as 1 (greedy)', async () => {
    const hot = { temperature: 1.5, sampling_seed: 1234 };
    const unlimited = await generateText({ ...hot, top_k: -1 });
    expect(unlimited).not.toBe(await generateText({ ...hot, top_k: 1 }));
    expect(await generateText({ ...hot, top_k: 2 ** 32 + 1 })).toBe(unlimited);
    expect(await generateText({ ...hot, top_k: 2 ** 31 })).toBe(unlimited);
  });

  it('refuses top_logprobs_num 200000 (beyond the vocabulary) with 400 for that request alone', async () => {
    const res = await besideAGreedyStream(() =>
      post('/generate', {
        text: PROMPT,
        return_logprob: true,
        top_logprobs_num: 200000,
        sampling_params: { max_new_tokens: 8 },
      }),
    );
    expect(res.status).toBe(400);
    expect((await res.json()).error.message).toContain('vocabulary');
  });

  it('checks what embedding callers pass with the same rules: a 400 TroupeError for that request alone', async () => {
    const { engine } = demo;
    const greedy = await greedyText();
    const refused = async (p: Promise<unknown>, fragment: string): Promise<void> => {
      const err = await p.then(
        () => null,
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(TroupeError);
      expect((err as TroupeError).status).toBe(400);
      expect((err as TroupeError).message).toContain(fragment);
    };
    await besideAGreedyStream(async () => {
      await refused(engine.generate({ text: PROMPT, sampling: { temperature: Number.NaN } }), 'sampling.temperature');
      await refused(engine.generate({ text: PROMPT, sampling: { topP: 0 } }), 'sampling.topP');
      await refused(engine.generate({ text: PROMPT, returnLogprob: true, topLogprobsNum: 200000 }), 'topLogprobsNum');
      const hot = await engine.generate({ text: PROMPT, sampling: { temperature: 1e300, maxNewTokens: 4, ignoreEos: true } });
      expect(hot.completionTokens).toBe(4);
    });
    const tiny = await engine.generate({ text: PROMPT, sampling: { temperature: 1e-45, topP: 0.9, maxNewTokens: 8, ignoreEos: true } });
    expect(tiny.text).toBe(greedy);
  });
});

describe('--lora-allowed-dirs', () => {
  const load = (name: string, path: string): Promise<Response> => post('/load_lora_adapter', { lora_name: name, lora_path: path });

  async function expectRefused(res: Response, ...fragments: string[]): Promise<void> {
    const body = await res.json();
    expect(res.status).toBe(403);
    expect(body.success).toBe(false);
    expect(body.error_message).toContain('--lora-allowed-dirs');
    for (const f of fragments) expect(body.error_message).toContain(f);
  }

  it('keeps the adapters given at start, which lie outside the directories', async () => {
    expect((await demo.engine.adapters()).map((a) => a.name).sort()).toEqual(['demo-a', 'demo-b']);
  });

  it('loads an adapter from inside an allowed directory', async () => {
    cpSync(join(demo.dir, 'adapters', 'demo-a'), join(allowed, 'copy-a'), { recursive: true });
    const res = await load('inside', join(allowed, 'copy-a'));
    expect(res.status).toBe(200);
    expect((await res.json()).loaded_adapters.inside).toBe(join(allowed, 'copy-a'));
  });

  it('refuses a path outside, one that climbs out with .., and one that does not exist, alike', async () => {
    const outside = join(demo.dir, 'adapters', 'demo-b');
    await expectRefused(await load('outside', outside), outside);
    await expectRefused(await load('climb', join(allowed, '..', basename(demo.dir), 'adapters', 'demo-b')));
    await expectRefused(await load('missing', '/nonexistent/adapter'));
    expect((await demo.engine.adapters()).map((a) => a.name)).not.toContain('outside');
  });

  it('refuses a symbolic link inside that leads outside, for the directory or for a file in it', async () => {
    symlinkSync(join(demo.dir, 'adapters', 'demo-b'), join(allowed, 'link-b'));
    await expectRefused(await load('linked', join(allowed, 'link-b')), 'leads to');
    const mixed = join(allowed, 'mixed');
    mkdirSync(mixed);
    cpSync(join(demo.dir, 'adapters', 'demo-b', 'adapter_config.json'), join(mixed, 'adapter_config.json'));
    symlinkSync(join(demo.dir, 'adapters', 'demo-b', 'adapter_model.safetensors'), join(mixed, 'adapter_model.safetensors'));
    await expectRefused(await load('mixed', mixed), 'adapter_model.safetensors');
  });

  it('refuses embedding callers the same way', async () => {
    const err = await demo.engine.loadAdapter({ name: 'embedded', path: join(demo.dir, 'adapters', 'demo-b') }).then(
      () => null,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(TroupeError);
    expect((err as TroupeError).status).toBe(403);
    expect((err as TroupeError).message).toContain('--lora-allowed-dirs');
  });
});

// Runs the choices of one OpenAI request (n per prompt) on the engine, all at once, and streams
// them as OpenAI's server-sent events. One AbortController covers the call: a client that goes
// away, or one choice failing, stops every choice and frees its KV blocks.
import type { Context } from 'hono';
import { streamSSE } from 'hono/streaming';
import type { FinishReason, GenerateChunk, GenerateInput, GenerateOutput, TroupeEngine } from '../../api.js';
import type { Log } from '../../log.js';
import { openAiErrorBody, tagPromptError } from './errors.js';
import { choiceSeed, type CommonRequest } from './request.js';

export type Prompt = { text: string } | { inputIds: number[] };

export interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
}

/** n choices per prompt; choice index = prompt index * n + j, as OpenAI numbers them. */
export function makeJobs(prompts: Prompt[], common: CommonRequest, returnLogprob: boolean, topLogprobsNum: number): GenerateInput[] {
  return prompts.flatMap((prompt) =>
    Array.from({ length: common.n }, (_, j): GenerateInput => ({
      ...prompt,
      lora: common.lora,
      sampling: { ...common.sampling, seed: choiceSeed(common.sampling.seed, j) },
      returnLogprob,
      topLogprobsNum,
    })),
  );
}

/** OpenAI counts each prompt once however many choices it has. */
export function usageOf(outs: Array<GenerateOutput | GenerateChunk>, n: number): Usage {
  let prompt = 0;
  let completion = 0;
  outs.forEach((o, i) => {
    if (i % n === 0) prompt += o.promptTokens;
    completion += o.completionTokens;
  });
  return { prompt_tokens: prompt, completion_tokens: completion, total_tokens: prompt + completion };
}

export function finishReasonOf(f: FinishReason | null): string | null {
  if (f === null) return null;
  return f.type === 'abort' ? 'abort' : f.type;
}

/** Ties an AbortController to the client's connection; call the result when the work is over. */
export function abortOnDisconnect(c: Context, controller: AbortController): () => void {
  const clientSignal = c.req.raw.signal;
  const onGone = (): void => controller.abort(new Error('client disconnected'));
  if (clientSignal.aborted) onGone();
  else clientSignal.addEventListener('abort', onGone, { once: true });
  return () => clientSignal.removeEventListener('abort', onGone);
}

/** promptParam: the request field that engine errors about the prompt are tagged with. */
export async function generateAll(
  engine: TroupeEngine, jobs: GenerateInput[], controller: AbortController, promptParam: string,
): Promise<GenerateOutput[]> {
  try {
    return await Promise.all(jobs.map((job) => engine.generate({ ...job, signal: controller.signal })));
  } catch (err) {
    controller.abort(err);
    throw tagPromptError(err, promptParam);
  }
}

/**
 * What a route sends for one engine chunk of choice `index`: zero or more SSE payloads. It is
 * called in order per choice, so it may keep per-choice state (what was sent so far).
 */
export type ChunkRenderer = (index: number, chunk: GenerateChunk) => Promise<unknown[]>;

/**
 * Streams every job. The first chunk of each is awaited before the 200 goes out, so errors the
 * engine finds up front (an unknown adapter, a prompt that is too long) keep their 4xx status.
 */
export async function streamAll(
  c: Context, engine: TroupeEngine, jobs: GenerateInput[], controller: AbortController, log: Log,
  render: ChunkRenderer, usageChunk: ((usage: Usage) => unknown) | null, n: number, promptParam: string,
): Promise<Response> {
  const { signal } = controller;
  const iterators: AsyncIterator<GenerateChunk>[] = [];
  const done = jobs.map(() => false);
  const release = (): void => {
    iterators.forEach((it, i) => {
      if (!done[i]) it.return?.().catch(() => {});
    });
  };
  let firsts: IteratorResult<GenerateChunk>[];
  try {
    for (const job of jobs) iterators.push(engine.stream({ ...job, signal })[Symbol.asyncIterator]());
    firsts = await Promise.all(iterators.map((it) => it.next()));
  } catch (err) {
    controller.abort(err);
    release();
    throw tagPromptError(err, promptParam);
  }

  return streamSSE(c, async (sse) => {
    sse.onAbort(() => controller.abort(new Error('client disconnected')));
    const send = (data: unknown): Promise<unknown> => sse.write(`data: ${JSON.stringify(data)}\n\n`);
    const last: Array<GenerateChunk | null> = jobs.map(() => null);
    let failed = false;
    try {
      await Promise.all(iterators.map(async (it, i) => {
        let r = firsts[i]!;
        while (!r.done) {
          if (signal.aborted) return;
          last[i] = r.value;
          for (const payload of await render(i, r.value)) await send(payload);
          r = await it.next();
        }
        done[i] = true;
      }));
    } catch (err) {
      failed = true;
      controller.abort(err);
      if (!sse.aborted) {
        log('warning', `OpenAI stream failed: ${err instanceof Error ? err.message : String(err)}`);
        await send(openAiErrorBody(err).body);
      }
    } finally {
      release();
    }
    if (sse.aborted) return;
    if (!failed && usageChunk && last.every((x) => x !== null)) await send(usageChunk(usageOf(last as GenerateChunk[], n)));
    await sse.write('data: [DONE]\n\n');
  });
}

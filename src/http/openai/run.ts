// The engine requests of one OpenAI call (n choices per prompt) and what OpenAI's replies say
// about them; jobs.ts runs them and fan-out.ts makes the n choices, as for /generate.
import type { FinishReason, GenerateChunk, GenerateInput, GenerateOutput } from '../../api.js';
import { fanOut, type Prompt } from '../fan-out.js';
import type { StreamShape } from '../jobs.js';
import { openAiErrorBody, tagPromptError } from './errors.js';
import type { CommonRequest } from './request.js';

export type { Prompt };

export interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
  /** OpenAI's: of the prompt tokens, those read from the prefix cache. */
  prompt_tokens_details: { cached_tokens: number };
}

/** n choices per prompt; choice index = prompt index * n + j, as OpenAI numbers them. */
export function makeJobs(prompts: Prompt[], common: CommonRequest, returnLogprob: boolean, topLogprobsNum: number): GenerateInput[] {
  const loras = common.lorasFor(prompts.length);
  const items = prompts.map((prompt, i) => ({
    request: { ...prompt, lora: loras[i]!, sampling: common.sampling, returnLogprob, topLogprobsNum } satisfies GenerateInput,
  }));
  return fanOut(items, common.n).map((item) => item.request);
}

/** OpenAI counts each prompt once however many choices it has (its cached tokens as its first choice found them). */
export function usageOf(outs: Array<GenerateOutput | GenerateChunk>, n: number): Usage {
  let prompt = 0;
  let cached = 0;
  let completion = 0;
  outs.forEach((o, i) => {
    if (i % n === 0) {
      prompt += o.promptTokens;
      cached += o.cachedTokens;
    }
    completion += o.completionTokens;
  });
  return {
    prompt_tokens: prompt,
    completion_tokens: completion,
    total_tokens: prompt + completion,
    prompt_tokens_details: { cached_tokens: cached },
  };
}

export function finishReasonOf(f: FinishReason | null): string | null {
  if (f === null) return null;
  return f.type === 'abort' ? 'abort' : f.type;
}

/**
 * An OpenAI stream: `render` makes each choice's chunks, errors have OpenAI's shape, engine
 * errors about the prompt name `promptParam`, and with include_usage a usage chunk comes last.
 */
export function openAiStream(
  promptParam: string,
  render: StreamShape['render'],
  usageChunk: ((usage: Usage) => unknown) | null,
  n: number,
): StreamShape {
  const shape: StreamShape = {
    route: 'OpenAI',
    render,
    errorEvent: (err) => openAiErrorBody(err).body,
    mapError: (err) => tagPromptError(err, promptParam),
  };
  if (usageChunk) shape.tail = (lasts) => [usageChunk(usageOf(lasts, n))];
  return shape;
}

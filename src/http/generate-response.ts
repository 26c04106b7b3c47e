// Shapes engine outputs into SGLang's /generate reply items:
// {text, output_ids, meta_info: {id, finish_reason, prompt_tokens, completion_tokens, ...}}.
import type { FinishReason, GenerateChunk, GenerateOutput, TokenLogprob } from '../api.js';
import type { GenerateItem } from './generate-request.js';

export interface WireMetaInfo {
  id: string;
  finish_reason: FinishReason | null;
  prompt_tokens: number;
  completion_tokens: number;
  cached_tokens: number;
  e2e_latency: number;
  input_token_logprobs?: TokenLogprob[];
  output_token_logprobs?: TokenLogprob[];
  input_top_logprobs?: TokenLogprob[][];
  output_top_logprobs?: TokenLogprob[][];
}

export interface WireItem {
  text: string;
  output_ids: number[];
  meta_info: WireMetaInfo;
  index?: number;
}

export function toWireItem(out: GenerateOutput | GenerateChunk, item: GenerateItem): WireItem {
  const finish = out.finishReason;
  let text = out.text;
  // The engine trims a matched stop string, as SGLang does by default; no_stop_trim puts it back.
  if (item.noStopTrim && finish?.type === 'stop' && typeof finish.matched === 'string' && !text.endsWith(finish.matched)) {
    text += finish.matched;
  }
  const meta: WireMetaInfo = {
    id: out.id,
    finish_reason: finish,
    prompt_tokens: out.promptTokens,
    completion_tokens: out.completionTokens,
    cached_tokens: out.cachedTokens,
    e2e_latency: out.e2eLatency,
  };
  if (item.request.returnLogprob) {
    const keepText = item.returnTextInLogprobs;
    const triple = (t: TokenLogprob): TokenLogprob => [t[0], t[1], keepText ? t[2] : null];
    // Prompt logprobs are not computed yet, so the input lists are always empty.
    meta.input_token_logprobs = [];
    meta.output_token_logprobs = (out.outputTokenLogprobs ?? []).map(triple);
    if (item.request.topLogprobsNum > 0) {
      meta.input_top_logprobs = [];
      meta.output_top_logprobs = (out.outputTopLogprobs ?? []).map((row) => row.map(triple));
    }
  }
  return { text, output_ids: out.outputIds, meta_info: meta };
}

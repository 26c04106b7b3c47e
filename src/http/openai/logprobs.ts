// The engine's logprobs ([logprob, id, text] per token plus the top alternatives) in OpenAI's two
// layouts: chat's {content: [{token, logprob, bytes, top_logprobs}]} and completions'
// {tokens, token_logprobs, top_logprobs, text_offset}.
import type { GenerateChunk, GenerateOutput, TroupeEngine } from '../../api.js';

export interface ChatTokenLogprob {
  token: string;
  logprob: number;
  bytes: number[];
  top_logprobs: Array<{ token: string; logprob: number; bytes: number[] }>;
}

export interface CompletionLogprobs {
  tokens: string[];
  token_logprobs: number[];
  top_logprobs: Array<Record<string, number>> | null;
  text_offset: number[];
}

type Out = GenerateOutput | GenerateChunk;

/** Token texts for the chosen and alternative ids of tokens [from, end). */
async function textsFor(engine: TroupeEngine, out: Out, from: number): Promise<Map<number, string>> {
  const ids = new Set<number>();
  for (const t of (out.outputTokenLogprobs ?? []).slice(from)) ids.add(t[1]);
  for (const row of (out.outputTopLogprobs ?? []).slice(from)) for (const t of row) ids.add(t[1]);
  const list = [...ids];
  const texts = await engine.tokenTexts(list);
  return new Map(list.map((id, i) => [id, texts[i] ?? '']));
}

const utf8 = (s: string): number[] => [...Buffer.from(s, 'utf8')];

/** Chat logprobs of the output tokens from index `from` on. */
export async function chatLogprobs(engine: TroupeEngine, out: Out, from: number, topN: number): Promise<ChatTokenLogprob[]> {
  const texts = await textsFor(engine, out, from);
  const tops = out.outputTopLogprobs ?? [];
  return (out.outputTokenLogprobs ?? []).slice(from).map(([lp, id], k) => {
    const token = texts.get(id) ?? '';
    const top = topN > 0 ? (tops[from + k] ?? []).slice(0, topN) : [];
    return {
      token,
      logprob: lp,
      bytes: utf8(token),
      top_logprobs: top.map(([l, tid]) => {
        const t = texts.get(tid) ?? '';
        return { token: t, logprob: l, bytes: utf8(t) };
      }),
    };
  });
}

/** Completion logprobs of the output tokens from index `from` on; offsets count from textOffset. */
export async function completionLogprobs(
  engine: TroupeEngine,
  out: Out,
  from: number,
  topN: number,
  textOffset: number,
): Promise<CompletionLogprobs> {
  const texts = await textsFor(engine, out, from);
  const chosen = (out.outputTokenLogprobs ?? []).slice(from);
  const tops = out.outputTopLogprobs ?? [];
  const tokens = chosen.map(([, id]) => texts.get(id) ?? '');
  const offsets: number[] = [];
  let at = textOffset;
  for (const t of tokens) {
    offsets.push(at);
    at += t.length;
  }
  return {
    tokens,
    token_logprobs: chosen.map(([lp]) => lp),
    top_logprobs:
      topN > 0 ? chosen.map((_, k) => Object.fromEntries((tops[from + k] ?? []).slice(0, topN).map(([l, id]) => [texts.get(id) ?? '', l]))) : null,
    text_offset: offsets,
  };
}

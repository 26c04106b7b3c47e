// Parallel sampling: n outputs per prompt, for SGLang's sampling_params.n on /generate and
// OpenAI's n alike. Each output is a request of its own on the engine; they are numbered
// prompt by prompt (output i * n + j is sample j of prompt i), the order in which SGLang
// returns them and OpenAI numbers its choices.
import type { GenerateInput } from '../api.js';

/** A prompt as the engine takes it. */
export type Prompt = { text: string } | { inputIds: number[] };

/** The seed of sample j: consecutive seeds, so n seeded samples differ from each other yet repeat. */
export function sampleSeed(seed: number | null, j: number): number | null {
  return seed === null ? null : (seed + j) % 2 ** 32;
}

/**
 * n samples of every item, prompt by prompt. With n > 1 sample j gets the seed sampleSeed(seed, j)
 * and, when the prompt has a request id, the id `<rid>_<j>`, as SGLang names the items of a
 * batch given one rid, so each sample can be aborted on its own.
 */
export function fanOut<T extends { request: GenerateInput }>(items: readonly T[], n: number): T[] {
  if (n === 1) return [...items];
  return items.flatMap((item) =>
    Array.from({ length: n }, (_, j): T => {
      const { request } = item;
      const sampling = { ...request.sampling, seed: sampleSeed(request.sampling?.seed ?? null, j) };
      const sample: GenerateInput = { ...request, sampling };
      if (request.rid !== undefined) sample.rid = `${request.rid}_${j}`;
      return { ...item, request: sample };
    }),
  );
}

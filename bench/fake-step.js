// A step result without a model, for benchmarks that drive the real scheduler: every sequence
// that samples gets token 100 (ignore_eos runs then last to max_new_tokens). Results are kept
// by batch size and reused, since the scheduler copies what it needs out of one.
const results = [];

export function fakeResult(batch) {
  const n = batch.loraSlots.length;
  const r = (results[n] ??= {
    tokens: new Int32Array(n),
    logprobs: new Float32Array(n),
    topIds: new Int32Array(0),
    topLogprobValues: new Float32Array(0),
    logits: null,
    errors: null,
  });
  for (let i = 0; i < n; i++) r.tokens[i] = batch.sample[i] ? 100 : -1;
  return r;
}

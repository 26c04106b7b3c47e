// /generate against SGLang's request types on the echo engine: every field of GenerateReqInput
// (python/sglang/srt/managers/io_struct.py) and SamplingParams
// (python/sglang/srt/sampling/sampling_params.py) is accepted at its default, unknown top-level
// fields are ignored as SGLang's schema ignores them, features troupe lacks are refused by name
// when asked for, and the ones it has (logprob_start_len, log_metrics, stream_interval) arrive.
import { beforeEach, describe, expect, it } from 'vitest';
import { createApp } from '../src/http/app.js';
import { EchoEngine } from './http-echo-engine.js';

let engine: EchoEngine;
let app: ReturnType<typeof createApp>;

beforeEach(() => {
  engine = new EchoEngine();
  app = createApp(engine, { servedModelName: 'demo' });
});

const post = (body: unknown): Promise<Response> =>
  Promise.resolve(app.request('/generate', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) }));

async function refusal(body: unknown): Promise<string> {
  const res = await post(body);
  expect(res.status, JSON.stringify(body)).toBe(400);
  return ((await res.json()) as { error: { message: string } }).error.message;
}

/** GenerateReqInput's fields at their defaults, as SGLang's clients may spell them out. */
const GENERATE_REQ_INPUT_DEFAULTS: Record<string, unknown> = {
  rid: null,
  session_id: null,
  input_embeds: null,
  image_data: null,
  video_data: null,
  audio_data: null,
  mm_hashes: null,
  mm_content_hashes: null,
  use_audio_in_video: false,
  video_config: null,
  sampling_params: null,
  return_logprob: null,
  logprob_start_len: null,
  top_logprobs_num: null,
  token_ids_logprob: null,
  return_sampling_mask: null,
  return_text_in_logprobs: false,
  return_flat_raw_top_logprobs: false,
  return_flat_raw_top_logprobs_b64: false,
  stream: false,
  log_metrics: true,
  return_hidden_states: false,
  return_routed_experts: false,
  routed_experts_start_len: 0,
  return_indexer_topk: false,
  modalities: null,
  session_params: null,
  lora_path: null,
  lora_id: null,
  custom_logit_processor: null,
  positional_embed_overrides: null,
  bootstrap_host: null,
  bootstrap_port: null,
  bootstrap_room: null,
  bootstrap_pair_key: null,
  decode_tp_size: null,
  routed_dp_rank: null,
  data_parallel_rank: null,
  disagg_prefill_dp_rank: null,
  kv_router_hint: null,
  routing_key: null,
  conversation_id: null,
  http_worker_ipc: null,
  background: false,
  require_reasoning: false,
  max_thinking_tokens: null,
  priority: null,
  extra_key: null,
  no_logs: false,
  custom_labels: null,
  return_bytes: false,
  return_entropy: false,
  return_prompt_token_ids: false,
  external_trace_header: null,
  received_time: null,
  need_wait_for_mm_inputs: null,
  num_items_assigned: null,
  encoder_urls: null,
  max_dynamic_patch: null,
  min_dynamic_patch: null,
  image_max_dynamic_patch: null,
  video_max_dynamic_patch: null,
  images_config: null,
  multi_item_delimiter_indices: null,
  cache_salt: null,
};

/** SamplingParams' API fields at their defaults. */
const SAMPLING_PARAMS_DEFAULTS: Record<string, unknown> = {
  max_new_tokens: 128,
  stop: null,
  stop_token_ids: null,
  stop_regex: null,
  temperature: 1.0,
  top_p: 1.0,
  top_k: -1,
  min_p: 0.0,
  frequency_penalty: 0.0,
  presence_penalty: 0.0,
  repetition_penalty: 1.0,
  min_new_tokens: 0,
  n: 1,
  json_schema: null,
  regex: null,
  ebnf: null,
  structural_tag: null,
  ignore_eos: false,
  skip_special_tokens: true,
  spaces_between_special_tokens: true,
  no_stop_trim: false,
  custom_params: null,
  stream_interval: null,
  logit_bias: null,
  sampling_seed: null,
};

describe("SGLang's request fields on /generate", () => {
  it('accepts every GenerateReqInput and SamplingParams field at its default and runs the request as without them', async () => {
    const res = await post({ ...GENERATE_REQ_INPUT_DEFAULTS, text: 'x', sampling_params: SAMPLING_PARAMS_DEFAULTS });
    expect(res.status, await res.clone().text()).toBe(200);
    expect((await post({ text: 'x' })).status).toBe(200);
    const [full, bare] = engine.requests;
    expect({ ...full, signal: null }).toEqual({ ...bare, signal: null });
  });

  // python/sglang/bench_serving.py, async_request_sglang_generate: every request carries these.
  it("takes the fields SGLang's serving benchmark always sends (logprob_start_len -1, lora_path null)", async () => {
    const res = await post({
      text: 'x',
      sampling_params: { temperature: 0.0, max_new_tokens: 2, ignore_eos: true },
      stream: false,
      lora_path: null,
      return_logprob: false,
      logprob_start_len: -1,
    });
    expect(res.status, await res.clone().text()).toBe(200);
    expect(engine.requests[0]).not.toHaveProperty('logprobStartLen');
  });

  it("ignores top-level fields it does not know, as SGLang's schema does, and accepts labels and hints", async () => {
    const res = await post({
      text: 'x',
      some_future_field: { a: 1 },
      ngram_corpus_id: 'c',
      routing_key: 'k',
      session_id: 's',
      extra_key: ['k'],
      cache_salt: 'salt',
      custom_labels: { team: 'a' },
      no_logs: true,
      routed_dp_rank: 0,
    });
    expect(res.status, await res.clone().text()).toBe(200);
    expect(await refusal({ text: 'x', routing_key: 5 })).toContain('routing_key must be a string');
  });

  it("still refuses sampling parameters it does not know, as SGLang's SamplingParams does", async () => {
    const message = await refusal({ text: 'x', sampling_params: { max_tokens: 4 } });
    expect(message).toContain('"max_tokens"');
    expect(message).toContain('stream_interval');
  });

  it('refuses a feature it lacks with a 400 naming the field, only when the field asks for it', async () => {
    const asked: Array<[Record<string, unknown>, string]> = [
      [{ image_data: 'https://example.com/cat.png' }, 'image_data'],
      [{ image_data: [['x']] }, 'image_data'],
      [{ input_embeds: [[0.5]] }, 'input_embeds'],
      [{ token_ids_logprob: [1, 2] }, 'token_ids_logprob'],
      [{ return_hidden_states: true }, 'return_hidden_states'],
      [{ return_routed_experts: true }, 'return_routed_experts'],
      [{ session_params: { id: 's' } }, 'session_params'],
      [{ lora_id: 'x' }, 'lora_id'],
      [{ custom_logit_processor: 'p' }, 'custom_logit_processor'],
      [{ bootstrap_host: 'h' }, 'bootstrap_host'],
      [{ routed_dp_rank: 1 }, 'routed_dp_rank'],
      [{ priority: 1 }, 'priority'],
      [{ max_thinking_tokens: 8 }, 'max_thinking_tokens'],
      [{ return_entropy: true }, 'return_entropy'],
      [{ sampling_params: { min_new_tokens: 1 } }, 'sampling_params.min_new_tokens'],
      [{ sampling_params: { stop_regex: '\\d' } }, 'sampling_params.stop_regex'],
      [{ sampling_params: { json_schema: '{}' } }, 'sampling_params.json_schema'],
      [{ sampling_params: { regex: 'a+' } }, 'sampling_params.regex'],
      [{ sampling_params: { ebnf: 'root ::= "a"' } }, 'sampling_params.ebnf'],
      [{ sampling_params: { logit_bias: { 5: 1 } } }, 'sampling_params.logit_bias'],
      [{ sampling_params: { beam_width: 4 } }, 'sampling_params.beam_width'],
    ];
    for (const [fields, name] of asked) {
      const message = await refusal({ text: 'x', ...fields });
      expect(message).toContain(name);
      expect(message).toContain('not supported');
    }
    expect(engine.requests).toHaveLength(0);
    for (const fields of [
      { image_data: [] },
      { modalities: [] },
      { token_ids_logprob: [] },
      { sampling_params: { logit_bias: {}, beam_width: 1 } },
    ]) {
      expect((await post({ text: 'x', ...fields })).status, JSON.stringify(fields)).toBe(200);
    }
  });
});

describe('fields /generate honours', () => {
  it('passes logprob_start_len to the engine, which decides against the prompt length; -1 is the default', async () => {
    expect((await post({ text: 'x', return_logprob: true, logprob_start_len: 3 })).status).toBe(200);
    expect(engine.requests[0]!.logprobStartLen).toBe(3);
    expect((await post({ text: 'x', return_logprob: true, logprob_start_len: -1 })).status).toBe(200);
    expect(engine.requests[1]).not.toHaveProperty('logprobStartLen');
    expect(await refusal({ text: 'x', logprob_start_len: -2 })).toContain('logprob_start_len must be >= -1');
    expect(await refusal({ text: ['a', 'b'], logprob_start_len: [-1, 'x'] })).toContain('logprob_start_len[1]');
  });

  it('keeps a request with log_metrics false out of the metrics', async () => {
    expect((await post({ text: 'x', log_metrics: false })).status).toBe(200);
    expect(engine.requests[0]!.logMetrics).toBe(false);
    expect(await refusal({ text: 'x', log_metrics: 'no' })).toContain('log_metrics');
  });

  it('streams an update every stream_interval tokens, with the first and the last', async () => {
    const tokensStreamed = async (sampling: Record<string, unknown>): Promise<number[]> => {
      const raw = await (await post({ text: 'x', stream: true, sampling_params: sampling })).text();
      return raw
        .split('\n\n')
        .filter((p) => p.startsWith('data: {'))
        .map((p) => JSON.parse(p.slice(6)).meta_info.completion_tokens);
    };
    expect(await tokensStreamed({})).toEqual([1, 2, 3]);
    expect(await tokensStreamed({ stream_interval: 2 })).toEqual([1, 3]);
    expect(await tokensStreamed({ stream_interval: 5 })).toEqual([1, 3]);
    expect(await refusal({ text: 'x', sampling_params: { stream_interval: 0 } })).toContain('sampling_params.stream_interval');
  });

  it('takes PUT as SGLang does', async () => {
    const res = await app.request('/generate', {
      method: 'PUT',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ text: 'x' }),
    });
    expect(res.status).toBe(200);
    expect((await res.json()).text).toBe('[base] x -> ABC');
  });
});

// Every field of SGLang's GenerateReqInput (python/sglang/srt/managers/io_struct.py) and
// SamplingParams (python/sglang/srt/sampling/sampling_params.py), and what /generate does with
// it: read it, accept it (a label or hint with no effect on the output here), or accept only its
// default because troupe lacks the feature. Unknown top-level fields are ignored, as SGLang's
// schema ignores them; an unknown sampling parameter is refused, as SGLang's SamplingParams
// refuses unknown keywords.
import {
  accepted,
  aBool,
  aNumber,
  anObject,
  aString,
  defaultOnly,
  isNull,
  noData,
  nullEach,
  nullOrEmpty,
  nullOrFalse,
  nullOrZero,
  read,
  strings,
  type FieldRule,
} from './field-rules.js';
import { SAMPLING_FIELD_NAMES } from './sampling.js';

const MULTIMODAL = 'it serves text models only';
const DISAGGREGATION = 'it does not run prefill and decode apart';
const NO_PROMPT_LOGPROBS = 'it returns the logprobs of output tokens only';

/** GenerateReqInput's fields. */
export const GENERATE_FIELDS: ReadonlyMap<string, FieldRule> = new Map<string, FieldRule>([
  ['text', read],
  ['input_ids', read],
  ['sampling_params', read],
  ['rid', read],
  ['lora_path', read],
  ['stream', read],
  ['return_logprob', read],
  ['logprob_start_len', read],
  ['top_logprobs_num', read],
  ['return_text_in_logprobs', read],
  ['log_metrics', read],

  ['session_id', accepted(aString, 'a label; it does not change the prompt')],
  ['routing_key', accepted(aString, 'a label for routers in front of the server')],
  ['conversation_id', accepted(aString, 'a label for tracking')],
  ['http_worker_ipc', accepted(aString, 'set between SGLang processes; troupe has one')],
  ['kv_router_hint', accepted(anObject, 'a hint for a KV-cache storage backend, which troupe has not')],
  ['extra_key', accepted(strings, 'isolates prefix-cache entries; troupe has no prefix cache to share')],
  ['cache_salt', accepted(strings, 'isolates prefix-cache entries; troupe has no prefix cache to share')],
  ['no_logs', accepted(aBool, 'troupe does not log request contents')],
  ['custom_labels', accepted(anObject, 'labels for metrics troupe does not keep per label')],
  ['external_trace_header', accepted(anObject, 'trace context; troupe does not trace')],
  ['received_time', accepted(aNumber, 'a timestamp set between SGLang processes')],

  ['input_embeds', defaultOnly(isNull, 'null', 'it takes text or token ids')],
  ['image_data', defaultOnly(noData, 'null', MULTIMODAL)],
  ['video_data', defaultOnly(noData, 'null', MULTIMODAL)],
  ['audio_data', defaultOnly(noData, 'null', MULTIMODAL)],
  ['mm_hashes', defaultOnly(noData, 'null', MULTIMODAL)],
  ['mm_content_hashes', defaultOnly(noData, 'null', MULTIMODAL)],
  ['use_audio_in_video', defaultOnly(nullOrFalse, 'false', MULTIMODAL)],
  ['video_config', defaultOnly(isNull, 'null', MULTIMODAL)],
  ['modalities', defaultOnly(nullOrEmpty, 'null', MULTIMODAL)],
  ['need_wait_for_mm_inputs', defaultOnly(nullOrFalse, 'null', MULTIMODAL)],
  ['num_items_assigned', defaultOnly(isNull, 'null', MULTIMODAL)],
  ['encoder_urls', defaultOnly(nullOrEmpty, 'null', MULTIMODAL)],
  ['max_dynamic_patch', defaultOnly(isNull, 'null', MULTIMODAL)],
  ['min_dynamic_patch', defaultOnly(isNull, 'null', MULTIMODAL)],
  ['image_max_dynamic_patch', defaultOnly(isNull, 'null', MULTIMODAL)],
  ['video_max_dynamic_patch', defaultOnly(isNull, 'null', MULTIMODAL)],
  ['images_config', defaultOnly(isNull, 'null', MULTIMODAL)],
  ['token_ids_logprob', defaultOnly(nullOrEmpty, 'null', 'it returns the logprobs of sampled and top tokens only')],
  ['return_sampling_mask', defaultOnly(nullOrFalse, 'false', 'its sampler does not report the tokens it kept')],
  ['return_flat_raw_top_logprobs', defaultOnly(nullOrFalse, 'false', NO_PROMPT_LOGPROBS)],
  ['return_flat_raw_top_logprobs_b64', defaultOnly(nullOrFalse, 'false', NO_PROMPT_LOGPROBS)],
  ['return_hidden_states', defaultOnly(nullOrFalse, 'false', 'it does not return hidden states')],
  ['return_routed_experts', defaultOnly(nullOrFalse, 'false', 'it serves dense models only')],
  ['routed_experts_start_len', defaultOnly(nullOrZero, '0', 'it serves dense models only')],
  ['return_indexer_topk', defaultOnly(nullOrFalse, 'false', 'it serves dense models only')],
  ['return_entropy', defaultOnly(nullOrFalse, 'false', 'it does not compute entropies')],
  ['return_prompt_token_ids', defaultOnly(nullOrFalse, 'false', 'it does not return prompt token ids')],
  ['return_bytes', defaultOnly(nullOrFalse, 'false', 'it does not generate images')],
  ['session_params', defaultOnly(isNull, 'null', 'it has no sessions')],
  ['lora_id', defaultOnly(nullEach, 'null', 'the server sets it; name the adapter with lora_path')],
  ['custom_logit_processor', defaultOnly(nullEach, 'null', 'it runs no custom logit processors')],
  ['positional_embed_overrides', defaultOnly(isNull, 'null', 'it takes text or token ids')],
  ['bootstrap_host', defaultOnly(nullEach, 'null', DISAGGREGATION)],
  ['bootstrap_port', defaultOnly(nullEach, 'null', DISAGGREGATION)],
  ['bootstrap_room', defaultOnly(nullEach, 'null', DISAGGREGATION)],
  ['bootstrap_pair_key', defaultOnly(nullEach, 'null', DISAGGREGATION)],
  ['decode_tp_size', defaultOnly(nullEach, 'null', DISAGGREGATION)],
  ['disagg_prefill_dp_rank', defaultOnly(isNull, 'null', DISAGGREGATION)],
  // SGLang ignores rank 0 when there is one data-parallel rank and refuses any other.
  ['routed_dp_rank', defaultOnly(nullOrZero, '0', 'it has one data-parallel rank, 0')],
  ['data_parallel_rank', defaultOnly(nullOrZero, '0', 'it has one data-parallel rank, 0')],
  ['background', defaultOnly(nullOrFalse, 'false', 'it has no background responses')],
  ['require_reasoning', defaultOnly(nullOrFalse, 'false', 'it has no reasoning control')],
  ['max_thinking_tokens', defaultOnly(isNull, 'null', 'it has no reasoning control')],
  ['priority', defaultOnly(isNull, 'null', 'it schedules requests first come, first served')],
  ['multi_item_delimiter_indices', defaultOnly(isNull, 'null', 'it has no multi-item scoring')],
]);

/**
 * SamplingParams' fields: those sampling.ts maps for every route and the rest. `seed` is troupe's
 * alias of sampling_seed; the fields SGLang derives in normalize() are accepted and ignored,
 * as SGLang overwrites them.
 */
export const SAMPLING_PARAMS_FIELDS: ReadonlyMap<string, FieldRule> = new Map<string, FieldRule>([
  ...SAMPLING_FIELD_NAMES.map((k): [string, FieldRule] => [k, read]),
  ['max_new_tokens', read],
  ['sampling_seed', read],
  ['seed', read],
  ['no_stop_trim', read],
  ['n', read],
  ['stream_interval', read],

  ['spaces_between_special_tokens', accepted(aBool, 'Hugging Face fast tokenizers, which troupe runs, ignore it too')],
  ['custom_params', accepted(anObject, 'read only by custom logit processors, which troupe does not run')],
  ['stop_strs', accepted(() => {}, 'SGLang derives it from stop')],
  ['stop_regex_strs', accepted(() => {}, 'SGLang derives it from stop_regex')],
  ['stop_str_max_len', accepted(() => {}, 'SGLang derives it from stop')],
  ['stop_regex_max_len', accepted(() => {}, 'SGLang derives it from stop_regex')],
  ['is_normalized', accepted(() => {}, 'SGLang sets it itself')],

  ['min_new_tokens', defaultOnly(nullOrZero, '0', 'its sampler cannot hold off the end of sequence yet')],
  ['stop_regex', defaultOnly(nullOrEmpty, 'null', 'it matches stop strings, not patterns')],
  ['json_schema', defaultOnly(isNull, 'null', 'it has no constrained decoding')],
  ['regex', defaultOnly(isNull, 'null', 'it has no constrained decoding')],
  ['ebnf', defaultOnly(isNull, 'null', 'it has no constrained decoding')],
  ['structural_tag', defaultOnly(isNull, 'null', 'it has no constrained decoding')],
  ['logit_bias', defaultOnly(nullOrEmpty, '{}', 'its sampler takes no logit bias')],
  // SGLang reads `beam_width or 1`: 0 and 1 both mean no beam search.
  ['beam_width', defaultOnly((v) => v === null || v === 0 || v === 1, '1', 'it has no beam search')],
]);

// Small synthetic checkpoints for the model loader tests, and a way to rewrite their weights.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { readSafetensorsHeader, readTensorBytes, writeSafetensors, type TensorToWrite } from '../src/model/safetensors.js';

/** A two-layer Llama with grouped-query attention; vocab far smaller than the tokenizer's. */
export const TINY = {
  architectures: ['LlamaForCausalLM'],
  model_type: 'llama',
  hidden_size: 16,
  intermediate_size: 24,
  num_hidden_layers: 2,
  num_attention_heads: 4,
  num_key_value_heads: 2,
  vocab_size: 40,
  rms_norm_eps: 1e-5,
  rope_theta: 10000,
  max_position_embeddings: 128,
  bos_token_id: 1,
  eos_token_id: 2,
  tie_word_embeddings: false,
  torch_dtype: 'bfloat16',
};

export function tempDir(prefix: string): { path: string; cleanup: () => void } {
  const path = mkdtempSync(join(tmpdir(), prefix));
  return { path, cleanup: () => rmSync(path, { recursive: true, force: true }) };
}

export function readAll(file: string): TensorToWrite[] {
  return [...readSafetensorsHeader(file).tensors.values()].map((e) => ({ name: e.name, dtype: e.dtype, shape: e.shape, data: readTensorBytes(e) }));
}

/** Rewrites a safetensors file through `edit`, which may change, drop or add tensors. */
export function rewrite(file: string, edit: (tensors: TensorToWrite[]) => TensorToWrite[]): void {
  writeSafetensors(file, edit(readAll(file)));
}

// Opens a Hugging Face checkpoint directory of a supported family: config.json, one model.safetensors or the
// shards listed by model.safetensors.index.json, and the tokenizer files. Every tensor the
// engine needs is checked for presence, shape and dtype up front, so a broken checkpoint
// fails here with the file and tensor named rather than inside the native code.
import { resolve, join } from 'node:path';
import type { DType, ModelConfig, TensorRef } from '../engine/types.js';
import { badRequest } from '../errors.js';
import { parseModelConfig } from './config.js';
import { describeValue, quoteName } from './json-text.js';
import { isDirectory, isFile, readHeader, readJsonFile } from './json-file.js';
import { tensorLabel, type SafetensorsEntry, type SafetensorsHeader } from './safetensors.js';

export interface Checkpoint {
  dir: string;
  config: ModelConfig;
  tensors: TensorRef[];
  tokenizerJson: string;
  tokenizerConfigJson: string;
}

const FLOAT_DTYPES: ReadonlySet<string> = new Set(['F32', 'F16', 'BF16']);

/** Every tensor of a checkpoint with its [rows, cols] (or [n]) shape, in Hugging Face order. */
export function tensorShapes(c: ModelConfig): Array<[string, number[]]> {
  const q = c.numHeads * c.headDim;
  const kv = c.numKvHeads * c.headDim;
  const out: Array<[string, number[]]> = [['model.embed_tokens.weight', [c.vocabSize, c.hiddenSize]]];
  for (let i = 0; i < c.numLayers; i++) {
    const p = `model.layers.${i}.`;
    out.push(
      [`${p}input_layernorm.weight`, [c.hiddenSize]],
      [`${p}self_attn.q_proj.weight`, [q, c.hiddenSize]],
      [`${p}self_attn.k_proj.weight`, [kv, c.hiddenSize]],
      [`${p}self_attn.v_proj.weight`, [kv, c.hiddenSize]],
    );
    if (c.qkvBias) out.push([`${p}self_attn.q_proj.bias`, [q]], [`${p}self_attn.k_proj.bias`, [kv]], [`${p}self_attn.v_proj.bias`, [kv]]);
    if (c.qkNorm) out.push([`${p}self_attn.q_norm.weight`, [c.headDim]], [`${p}self_attn.k_norm.weight`, [c.headDim]]);
    out.push(
      [`${p}self_attn.o_proj.weight`, [c.hiddenSize, q]],
      [`${p}post_attention_layernorm.weight`, [c.hiddenSize]],
      [`${p}mlp.gate_proj.weight`, [c.intermediateSize, c.hiddenSize]],
      [`${p}mlp.up_proj.weight`, [c.intermediateSize, c.hiddenSize]],
      [`${p}mlp.down_proj.weight`, [c.hiddenSize, c.intermediateSize]],
    );
  }
  out.push(['model.norm.weight', [c.hiddenSize]]);
  if (!c.tieWordEmbeddings) out.push(['lm_head.weight', [c.vocabSize, c.hiddenSize]]);
  return out;
}

// Buffers transformers used to save; they carry nothing the engine needs.
const IGNORED = /^model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq$/;

export function openCheckpoint(dir: string): Checkpoint {
  const root = resolve(dir);
  if (!isDirectory(root)) throw badRequest(`model path ${root} is not a directory`);
  const configFile = join(root, 'config.json');
  if (!isFile(configFile)) throw badRequest(`${configFile}: missing; a Hugging Face model directory needs config.json`);
  const config = parseModelConfig(readJsonFile(configFile), configFile);
  addGenerationEos(root, config);

  const entries = readTensorEntries(root);
  const tensors: TensorRef[] = [];
  for (const [name, shape] of tensorShapes(config)) {
    const e = entries.get(name);
    if (e === undefined) throw badRequest(`${root}: tensor "${name}" is missing from the checkpoint`);
    if (!FLOAT_DTYPES.has(e.dtype)) {
      throw badRequest(`${e.file}: tensor "${name}" has dtype ${e.dtype}; only F32, F16 and BF16 are supported`);
    }
    if (e.shape.length !== shape.length || e.shape.some((d, i) => d !== shape[i])) {
      throw badRequest(`${e.file}: tensor "${name}" has shape [${e.shape.join(', ')}] but config.json implies [${shape.join(', ')}]`);
    }
    tensors.push({ name, file: e.file, offset: e.offset, nbytes: e.nbytes, dtype: e.dtype as DType, shape: [...e.shape] });
  }
  const expected = new Set(tensors.map((t) => t.name));
  for (const [name, e] of entries) {
    if (expected.has(name) || IGNORED.test(name)) continue;
    // Tied checkpoints sometimes still carry a copy of lm_head; the embedding is used instead.
    if (name === 'lm_head.weight' && config.tieWordEmbeddings) continue;
    throw badRequest(
      `${e.file}: unexpected ${tensorLabel(name)} (not part of a ${config.numLayers}-layer ${config.family} model${config.qkvBias ? '' : ' without biases'})`,
    );
  }

  const tokenizerJson = join(root, 'tokenizer.json');
  const tokenizerConfigJson = join(root, 'tokenizer_config.json');
  for (const f of [tokenizerJson, tokenizerConfigJson]) {
    if (!isFile(f))
      throw badRequest(`${f}: missing; the model directory needs the Hugging Face fast tokenizer files (tokenizer.json, tokenizer_config.json)`);
  }
  return { dir: root, config, tensors, tokenizerJson, tokenizerConfigJson };
}

/** Llama 3 instruct models list their end-of-turn token only in generation_config.json. */
function addGenerationEos(root: string, config: ModelConfig): void {
  const file = join(root, 'generation_config.json');
  if (!isFile(file)) return;
  const g = readJsonFile(file);
  if (g === null || typeof g !== 'object' || Array.isArray(g)) throw badRequest(`${file}: not a JSON object`);
  const eos = (g as Record<string, unknown>).eos_token_id;
  const ids = Array.isArray(eos) ? eos : eos === undefined || eos === null ? [] : [eos];
  for (const id of ids) {
    if (typeof id !== 'number' || !Number.isSafeInteger(id) || id < 0)
      throw badRequest(`${file}: eos_token_id: must be a token id or a list of them, got ${describeValue(eos)}`);
    if (!config.eosTokenIds.includes(id)) config.eosTokenIds.push(id);
  }
}

function readTensorEntries(root: string): Map<string, SafetensorsEntry> {
  const single = join(root, 'model.safetensors');
  const indexFile = join(root, 'model.safetensors.index.json');
  if (isFile(single)) return readHeader(single).tensors;
  if (!isFile(indexFile)) {
    const pickled = isFile(join(root, 'pytorch_model.bin')) || isFile(join(root, 'pytorch_model.bin.index.json'));
    throw badRequest(
      pickled
        ? `${root}: only pickled pytorch_model.bin weights found; convert them to safetensors`
        : `${root}: no model.safetensors or model.safetensors.index.json`,
    );
  }
  const index = readJsonFile(indexFile);
  const map = index !== null && typeof index === 'object' ? (index as Record<string, unknown>).weight_map : undefined;
  if (map === null || typeof map !== 'object' || Array.isArray(map)) throw badRequest(`${indexFile}: weight_map: missing or not an object`);
  const headers = new Map<string, SafetensorsHeader>();
  const entries = new Map<string, SafetensorsEntry>();
  for (const [name, shard] of Object.entries(map as Record<string, unknown>)) {
    if (typeof shard !== 'string' || shard.includes('/') || shard.includes('\\')) {
      throw badRequest(
        `${indexFile}: weight_map: the shard of ${tensorLabel(name)} is not a file name in the model directory (got ${describeValue(shard)})`,
      );
    }
    let header = headers.get(shard);
    if (header === undefined) {
      const file = join(root, shard);
      if (!isFile(file)) throw badRequest(`${indexFile}: ${quoteName('shard', shard)} (holding ${tensorLabel(name)}) does not exist`);
      header = readHeader(file);
      headers.set(shard, header);
    }
    const e = header.tensors.get(name);
    if (e === undefined)
      throw badRequest(`${header.file}: ${tensorLabel(name)} is listed in model.safetensors.index.json but missing from this shard`);
    entries.set(name, e);
  }
  return entries;
}

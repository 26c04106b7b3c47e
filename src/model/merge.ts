// Folds a LoRA adapter into its base model: each targeted W becomes W + scaling * B A, written
// as a dense float32 checkpoint. Serving the merged model without LoRA must give what serving
// the base model with the adapter gives, which makes it the reference for LoRA correctness.
import { copyFileSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { LoraModule } from '../engine/types.js';
import { loadAdapterWeights } from './adapter.js';
import { openCheckpoint } from './checkpoint.js';
import { isFile, readJsonFile } from './json-file.js';
import { readTensorBytes, toFloat32, writeSafetensors, type TensorToWrite } from './safetensors.js';

const WEIGHT_NAME = /^model\.layers\.(\d+)\.(?:self_attn|mlp)\.([a-z_]+)\.weight$/;

export function mergeAdapter(modelDir: string, adapterDir: string, outDir: string): void {
  const ckpt = openCheckpoint(modelDir);
  const { weights } = loadAdapterWeights(adapterDir, ckpt.config);
  const { rank, scaling } = weights;
  const lora = new Map<string, { a: Float32Array; b: Float32Array }>();
  for (const w of weights.weights) lora.set(`${w.layer}.${w.module}`, w);

  const tensors: TensorToWrite[] = ckpt.tensors.map((t) => {
    const values = toFloat32(readTensorBytes(t), t.dtype, t.name);
    const m = WEIGHT_NAME.exec(t.name);
    const w = m === null ? undefined : lora.get(`${m[1]}.${m[2] as LoraModule}`);
    if (w !== undefined) {
      const [rows, cols] = t.shape as [number, number];
      // W[o, i] += scaling * sum_r B[o, r] A[r, i], accumulated row by row in float64.
      const acc = new Float64Array(cols);
      for (let o = 0; o < rows; o++) {
        acc.fill(0);
        for (let r = 0; r < rank; r++) {
          const bor = w.b[o * rank + r]!;
          if (bor === 0) continue;
          const aRow = r * cols;
          for (let i = 0; i < cols; i++) acc[i]! += bor * w.a[aRow + i]!;
        }
        const row = o * cols;
        for (let i = 0; i < cols; i++) values[row + i] = values[row + i]! + scaling * acc[i]!;
      }
    }
    return { name: t.name, dtype: 'F32', shape: t.shape, data: new Uint8Array(values.buffer, values.byteOffset, values.byteLength) };
  });

  mkdirSync(outDir, { recursive: true });
  const config = readJsonFile(join(ckpt.dir, 'config.json')) as Record<string, unknown>;
  const { dtype: _newName, ...rest } = config;
  writeFileSync(join(outDir, 'config.json'), `${JSON.stringify({ ...rest, torch_dtype: 'float32' }, null, 2)}\n`);
  writeSafetensors(join(outDir, 'model.safetensors'), tensors, { format: 'pt' });
  for (const f of ['tokenizer.json', 'tokenizer_config.json', 'generation_config.json', 'special_tokens_map.json']) {
    if (isFile(join(ckpt.dir, f))) copyFileSync(join(ckpt.dir, f), join(outDir, f));
  }
}

// Shared by the adapter lifecycle tests: a fresh demo model with extra random adapters, engines
// started from `troupe serve` flags, and the HTTP app over them (driven without sockets).
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from '../src/config/parse.js';
import { validateFlags } from '../src/config/validate.js';
import type { LoraModule } from '../src/engine/types.js';
import { createApp } from '../src/http/app.js';
import { DEMO_MODEL, makeDemo, makeRandomAdapter } from '../src/model/demo.js';
import { createEngine, type LocalTroupeEngine } from '../src/troupe.js';

export interface World {
  dir: string;
  demoA: string;
  demoB: string;
  /** Writes (once) a random adapter for the demo model and returns its directory. */
  adapter(name: string, opts?: { rank?: number; modules?: LoraModule[]; seed?: number }): string;
  cleanup(): void;
}

export function makeWorld(prefix: string): World {
  const dir = mkdtempSync(join(tmpdir(), `troupe-${prefix}-`));
  makeDemo(dir);
  const made = new Set<string>();
  let seed = 1000;
  return {
    dir,
    demoA: join(dir, 'adapters', 'demo-a'),
    demoB: join(dir, 'adapters', 'demo-b'),
    adapter(name, opts = {}) {
      const path = join(dir, 'extra', name);
      if (!made.has(name)) {
        makeRandomAdapter(
          path,
          { rank: opts.rank ?? 8, alpha: 16, targetModules: opts.modules ?? ['q_proj', 'v_proj', 'o_proj'], seed: opts.seed ?? seed++ },
          DEMO_MODEL,
        );
        made.add(name);
      }
      return path;
    },
    cleanup: () => rmSync(dir, { recursive: true, force: true }),
  };
}

/** An engine as `troupe serve --model-path <world> ...args` would start it (CPU, small KV cache). */
export function startEngine(world: World, args: string[]): Promise<LocalTroupeEngine> {
  const argv = ['--model-path', world.dir, '--max-total-tokens', '4096', '--context-length', '1024', '--device', 'cpu', ...args];
  return createEngine(validateFlags(parseArgs(argv).flags).options);
}

export type App = ReturnType<typeof createApp>;
export const appFor = (engine: LocalTroupeEngine): App => createApp(engine, { servedModelName: 'demo' });

export async function post(app: App, path: string, body: unknown): Promise<{ status: number; json: any }> {
  const res = await app.request(path, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
  return { status: res.status, json: await res.json() };
}

/** Greedy /generate of one prompt per adapter; returns the output ids of each, asserting 200. */
export async function generateIds(app: App, prompts: string[], loras: Array<string | null>, maxNewTokens = 8): Promise<number[][]> {
  const { status, json } = await post(app, '/generate', {
    text: prompts,
    lora_path: loras,
    sampling_params: { max_new_tokens: maxNewTokens, temperature: 0, ignore_eos: true },
  });
  if (status !== 200) throw new Error(`/generate answered ${status}: ${JSON.stringify(json)}`);
  return (json as Array<{ output_ids: number[] }>).map((o) => o.output_ids);
}

/** Sets one float32 element of a tensor in adapter_model.safetensors. */
export function poisonTensor(adapterDir: string, tensor: string, value: number): void {
  const file = join(adapterDir, 'adapter_model.safetensors');
  const buf = readFileSync(file);
  const headerLen = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + headerLen).toString('utf8')) as Record<string, { dtype: string; data_offsets: [number, number] }>;
  const entry = header[tensor];
  if (!entry || entry.dtype !== 'F32') throw new Error(`no F32 tensor ${tensor} in ${file}`);
  buf.writeFloatLE(value, 8 + headerLen + entry.data_offsets[0] + 4 * 3);
  writeFileSync(file, buf);
}

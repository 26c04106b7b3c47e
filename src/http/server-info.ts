// GET /get_server_info, shaped as SGLang's (entrypoints/http_server.py): the server's arguments
// under SGLang's names (troupe's flags are SGLang's, so each option is its flag in snake_case),
// what the engine sized (max_total_num_tokens), internal_states with one entry per data-parallel
// rank (troupe has one; SGLang's serving benchmark reads internal_states[0]) and the version.
// The API key is never in it.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Hono } from 'hono';
import type { TroupeEngine } from '../api.js';
import type { ServeOptions } from '../config/options.js';
import { packageRoot } from '../paths.js';

let version: string | null = null;

/** troupe's version, from its package.json. */
export function troupeVersion(): string {
  version ??= (JSON.parse(readFileSync(join(packageRoot(), 'package.json'), 'utf8')) as { version: string }).version;
  return version;
}

const SECRET: ReadonlySet<keyof ServeOptions> = new Set(['apiKey']);

const snakeCase = (name: string): string => name.replace(/[A-Z]/g, (m) => `_${m.toLowerCase()}`);

/** The server's arguments as SGLang names them; what the engine resolved wins over what was asked. */
export function serverArgs(options: ServeOptions, engine: TroupeEngine): Record<string, unknown> {
  const args: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(options)) {
    if (!SECRET.has(key as keyof ServeOptions)) args[snakeCase(key)] = value;
  }
  const info = engine.modelInfo();
  args.model_path = info.modelPath;
  args.tokenizer_path = info.tokenizerPath;
  args.device = info.device;
  args.tp_size = info.tpSize;
  if (info.tokenizerWorkers !== undefined) args.tokenizer_worker_num = info.tokenizerWorkers;
  args.lora_paths = options.loraPaths.map((a) => ({ lora_name: a.name, lora_path: a.path, pinned: a.pinned ?? false }));
  return args;
}

/** Engines that report their scheduler's queues (createEngine's does). */
type WithStats = TroupeEngine & { stats?: () => Promise<{ waiting: number; running: number; freeBlocks: number; totalBlocks: number }> };

async function internalState(engine: WithStats): Promise<Record<string, unknown>> {
  const state: Record<string, unknown> = {
    loaded_lora_adapters: (await engine.adapters()).filter((a) => a.loaded).length,
    tp_collective: engine.modelInfo().collective,
  };
  if (typeof engine.stats !== 'function') return state;
  try {
    const s = await engine.stats();
    Object.assign(state, {
      num_running_reqs: s.running,
      num_waiting_reqs: s.waiting,
      kv_cache_free_blocks: s.freeBlocks,
      kv_cache_total_blocks: s.totalBlocks,
    });
  } catch {
    // An engine that cannot answer (it is shutting down) still has its arguments to report.
  }
  return state;
}

export function registerServerInfo(app: Hono, engine: TroupeEngine, options: ServeOptions): void {
  app.get('/get_server_info', async (c) =>
    c.json({
      ...serverArgs(options, engine),
      max_total_num_tokens: engine.modelInfo().maxTotalTokens,
      internal_states: [await internalState(engine)],
      version: troupeVersion(),
    }),
  );
}

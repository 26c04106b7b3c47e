// A real troupe server on a free port over a fresh demo model (engine + Hono app + socket),
// shared by the tests that talk HTTP to the real engine.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll } from 'vitest';
import { generatedDemo } from '../src/cli/demo-model.js';
import { parseArgs } from '../src/config/parse.js';
import { validateFlags } from '../src/config/validate.js';
import { createApp } from '../src/http/app.js';
import { startServer } from '../src/http/server.js';
import { makeDemo } from '../src/model/demo.js';
import { createEngine, type LocalTroupeEngine } from '../src/troupe.js';

export interface DemoServer {
  dir: string;
  base: string;
  engine: LocalTroupeEngine;
  close(): Promise<void>;
}

/**
 * `troupe serve` flags for the generated demo model written (by makeDemo) to dir: the model
 * served as "demo" with demo-a and demo-b, whatever demo model `troupe serve` would pick.
 */
export function generatedDemoArgs(dir: string): string[] {
  return ['--model-path', dir, '--served-model-name', 'demo', '--lora-paths', ...generatedDemo(dir).adapters.map((a) => `${a.name}=${a.path}`)];
}

/** Starts the server; a flag in `extraArgs` replaces the default of that flag. */
export async function startDemoServer(extraArgs: string[] = []): Promise<DemoServer> {
  const dir = mkdtempSync(join(tmpdir(), 'troupe-demo-server-'));
  makeDemo(dir);
  const defaults: string[][] = [
    ['--lora-paths', ...generatedDemo(dir).adapters.map((a) => `${a.name}=${a.path}`)],
    ['--max-loras-per-batch', '3'],
    ['--max-total-tokens', '8192'],
    ['--context-length', '4096'],
    ['--device', 'cpu'],
  ];
  const argv = ['--model-path', dir, ...defaults.filter(([flag]) => !extraArgs.includes(flag!)).flat(), ...extraArgs];
  const { options } = validateFlags(parseArgs(argv).flags);
  const engine = await createEngine(options);
  // The app gets the same flags as the engine, as `troupe serve` gives them.
  const server = await startServer(createApp(engine, { ...options, servedModelName: 'demo' }), '127.0.0.1', 0);
  return {
    dir,
    base: `http://127.0.0.1:${server.port}`,
    engine,
    async close() {
      await server.close();
      await engine.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** One demo server for a whole test file: started before its tests and closed after them. */
export function useDemoServer(extraArgs: string[] = []): () => DemoServer {
  let server: DemoServer | undefined;
  beforeAll(async () => {
    server = await startDemoServer(extraArgs);
  }, 120_000);
  afterAll(async () => {
    await server?.close();
  });
  return () => {
    if (!server) throw new Error('the demo server has not started');
    return server;
  };
}

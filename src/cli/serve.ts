// `troupe serve`: flags -> options -> engine -> HTTP server. Without --model-path the demo
// model is served (and generated first if it is missing), with its two adapters unless
// --lora-paths names others.
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import type { ServeOptions } from '../config/options.js';
import { helpText } from '../config/help.js';
import { parseArgs } from '../config/parse.js';
import { validateFlags } from '../config/validate.js';
import { createLog, type Log } from '../log.js';
import { makeDemo } from '../model/demo.js';
import { demoModelDir } from '../paths.js';

export interface ResolvedServe {
  options: ServeOptions;
  warnings: string[];
  usesDemo: boolean;
}

/** Parses and validates serve flags, filling in the demo model when no --model-path is given. */
export function resolveServeArgs(argv: readonly string[], demoDir = demoModelDir()): ResolvedServe {
  const parsed = parseArgs(argv);
  const usesDemo = !parsed.given.has('model-path');
  if (usesDemo) {
    parsed.flags.set('model-path', demoDir);
    if (!parsed.given.has('served-model-name')) parsed.flags.set('served-model-name', 'demo');
    if (!parsed.given.has('lora-paths')) {
      parsed.flags.set('lora-paths', ['demo-a', 'demo-b'].map((n) => `${n}=${join(demoDir, 'adapters', n)}`));
    }
  }
  const { options, warnings } = validateFlags(parsed.flags);
  return { options, warnings, usesDemo };
}

export async function runServe(argv: readonly string[]): Promise<void> {
  if (argv.includes('--help') || argv.includes('-h')) {
    process.stdout.write(helpText() + '\n');
    return;
  }
  const { options, warnings, usesDemo } = resolveServeArgs(argv);
  const log: Log = createLog(options.logLevel);
  for (const w of warnings) log('warning', w);
  if (usesDemo && !existsSync(join(options.modelPath, 'config.json'))) {
    log('info', `no --model-path: writing the demo model to ${options.modelPath}`);
    makeDemo(options.modelPath);
  }
  // Loaded lazily so `--help` and flag errors never pay for worker start-up.
  const [{ createEngine }, { createApp }, { startServer }] = await Promise.all([
    import('../troupe.js'),
    import('../http/app.js'),
    import('../http/server.js'),
  ]);
  const engine = await createEngine({ ...options, log });
  const servedModelName = options.servedModelName ?? options.modelPath;
  const app = createApp(engine, { ...options, servedModelName, log });
  const server = await startServer(app, options.host, options.port);
  log('info', `serving ${servedModelName} on http://${options.host}:${server.port}`);

  let closing = false;
  const shutdown = (signal: string): void => {
    if (closing) return;
    closing = true;
    log('info', `${signal}: shutting down`);
    void server
      .close()
      .then(() => engine.close())
      .then(() => process.exit(0), (err: unknown) => {
        log('error', `shutdown failed: ${(err as Error).message}`);
        process.exit(1);
      });
  };
  process.on('SIGINT', () => shutdown('SIGINT'));
  process.on('SIGTERM', () => shutdown('SIGTERM'));
}

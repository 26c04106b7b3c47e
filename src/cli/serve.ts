// `troupe serve`: flags -> options -> listening socket -> engine -> HTTP app, then the
// process's life: draining on SIGTERM/SIGINT, exiting when an essential actor dies. Without
// --model-path a demo model is served (demo-model.ts says which; the generated one is written
// first if it is missing), with its adapters unless --lora-paths names others.
import { existsSync } from 'node:fs';
import { constants as osConstants } from 'node:os';
import { join } from 'node:path';
import type { ServeOptions } from '../config/options.js';
import { helpText } from '../config/help.js';
import { parseArgs } from '../config/parse.js';
import { validateFlags } from '../config/validate.js';
import { createLog, type Log } from '../log.js';
import { makeDemo } from '../model/demo.js';
import type { RunningServer } from '../http/server.js';
import type { LocalTroupeEngine } from '../troupe.js';
import { defaultDemo, generatedDemo, type DemoModel } from './demo-model.js';

export interface ResolvedServe {
  options: ServeOptions;
  warnings: string[];
  /** The demo model filled in for a missing --model-path; null when one was given. */
  demo: DemoModel | null;
}

/**
 * Parses and validates serve flags, filling in `demo` when no --model-path is given. The
 * default is the generated demo model, which scripts that measure the engine rely on;
 * `troupe serve` passes defaultDemo().
 */
export function resolveServeArgs(argv: readonly string[], demo: DemoModel = generatedDemo()): ResolvedServe {
  const parsed = parseArgs(argv);
  const usesDemo = !parsed.given.has('model-path');
  if (usesDemo) {
    parsed.flags.set('model-path', demo.dir);
    if (!parsed.given.has('served-model-name')) parsed.flags.set('served-model-name', 'demo');
    if (!parsed.given.has('lora-paths'))
      parsed.flags.set(
        'lora-paths',
        demo.adapters.map((a) => `${a.name}=${a.path}`),
      );
  }
  const { options, warnings } = validateFlags(parsed.flags);
  return { options, warnings, demo: usesDemo ? demo : null };
}

/** What runServe needs from the process; tests pass their own to watch it without dying. */
export interface ServeHooks {
  /** Ends the process (process.exit by default). */
  exit?: (code: number) => void;
  /** Where SIGINT and SIGTERM come from (the process by default). */
  signals?: { on(event: 'SIGINT' | 'SIGTERM', listener: () => void): unknown };
}

/** The running server, once the model is loaded. */
export interface ServeHandle {
  port: number;
  engine: LocalTroupeEngine;
}

// Time the last responses (final errors, a stream's [DONE]) get to reach their clients after
// the engine has ended every request, before the connections are dropped.
const FLUSH_MS = 5000;

export async function runServe(argv: readonly string[], hooks: ServeHooks = {}): Promise<ServeHandle | null> {
  if (argv.includes('--help') || argv.includes('-h')) {
    process.stdout.write(helpText() + '\n');
    return null;
  }
  const { options, warnings, demo } = resolveServeArgs(argv, defaultDemo());
  const log: Log = createLog(options.logLevel);
  for (const w of warnings) log('warning', w);
  // Loaded lazily so `--help` and flag errors never pay for worker start-up.
  const [{ createEngine }, { createApp }, { loadingApp, startServer }] = await Promise.all([
    import('../troupe.js'),
    import('../http/app.js'),
    import('../http/server.js'),
  ]);
  // The port is bound before the model is loaded, and held: a port that cannot be bound ends
  // the command at once, and health probes get 503 while loading instead of a refused
  // connection. (Test-binding first and binding again after loading would leave a gap in
  // which another process could take the port, after the model was loaded for nothing.)
  const server = await startServer(loadingApp(), options.host, options.port);
  log('info', `listening on http://${options.host}:${server.port}; answering 503 until the model is loaded`);
  let engine: LocalTroupeEngine;
  try {
    if (demo?.generated && !existsSync(join(options.modelPath, 'config.json'))) {
      log('info', `no --model-path: writing the demo model to ${options.modelPath}`);
      makeDemo(options.modelPath);
    } else if (demo) {
      log('info', `no --model-path: serving the ${demo.generated ? 'generated' : 'trained'} demo model in ${options.modelPath}`);
    }
    engine = await createEngine({ ...options, log });
  } catch (err) {
    await server.close();
    throw err;
  }
  const servedModelName = options.servedModelName ?? options.modelPath;
  const app = createApp(engine, { ...options, servedModelName, log });
  server.use(app);
  log('info', `serving ${servedModelName} on http://${options.host}:${server.port}`);
  superviseLifecycle(engine, server, options.gracefulShutdownTimeout, log, hooks);
  return { port: server.port, engine };
}

/**
 * SIGTERM or SIGINT drains: new requests get 503, running ones get the grace period, then the
 * server closes and the process exits 0; a second signal exits at once. The death of an actor
 * the engine cannot do without exits non-zero once the failed requests are answered, so an
 * orchestrator starts a fresh server.
 */
function superviseLifecycle(engine: LocalTroupeEngine, server: RunningServer, graceSeconds: number, log: Log, hooks: ServeHooks): void {
  const exit = hooks.exit ?? ((code: number) => process.exit(code));
  const signals = hooks.signals ?? process;
  let stopping = false;
  let fatal = false;
  let engineClosed: Promise<void> | null = null;
  const closeEngine = (): Promise<void> => (engineClosed ??= engine.close());
  const stop = (first: Promise<unknown>): void => {
    stopping = true;
    void first
      .then(() => server.close(FLUSH_MS))
      .then(closeEngine)
      .then(
        () => exit(fatal ? 1 : 0),
        (err: unknown) => {
          log('error', `shutdown failed: ${(err as Error).message}`);
          exit(1);
        },
      );
  };
  const onSignal = (signal: 'SIGINT' | 'SIGTERM'): void => {
    if (stopping) {
      log('warning', `${signal} again: exiting at once`);
      // Not process.exit right away: a thread inside a native step would abort the process.
      // Closing the engine waits for the step that is running (a bounded wait) and ends the rest.
      const code = 128 + osConstants.signals[signal];
      void closeEngine().finally(() => exit(code));
      return;
    }
    log('info', `${signal}: shutting down; running requests get ${graceSeconds} s to finish (a second signal exits at once)`);
    stop(
      engine.drain(graceSeconds * 1000).then((cut) => {
        if (cut > 0) log('warning', `${cut} request(s) did not finish within ${graceSeconds} s and were ended with an error`);
      }),
    );
  };
  engine.onFatal((err) => {
    fatal = true;
    // A drain under way ends anyway (the dead actor failed what was running) and now exits 1.
    if (stopping) return;
    log('error', `exiting with code 1 once the failed requests are answered, so that the server is started again (${err.message})`);
    stop(Promise.resolve());
  });
  signals.on('SIGINT', () => onSignal('SIGINT'));
  signals.on('SIGTERM', () => onSignal('SIGTERM'));
}

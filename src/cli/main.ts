// The `troupe` command: `serve` (the default) and `make-demo`.
import { helpText } from '../config/help.js';
import { demoModelDir } from '../paths.js';
import { runMakeDemo } from './make-demo.js';
import { runServe } from './serve.js';

export async function main(argv: readonly string[]): Promise<number> {
  const [command, ...rest] = argv;
  try {
    switch (command) {
      case 'serve':
        await runServe(rest);
        return 0;
      case 'make-demo':
        runMakeDemo(rest.length > 0 ? rest : [demoModelDir()]);
        return 0;
      case undefined:
      case 'help':
      case '--help':
      case '-h':
        process.stdout.write(helpText() + '\n');
        return 0;
      default:
        if (command.startsWith('--')) {
          await runServe(argv);
          return 0;
        }
        process.stderr.write(`troupe: unknown command "${command}" (use serve or make-demo)\n`);
        return 2;
    }
  } catch (err) {
    // Named errors (bad flags, bad model files) are the operator's to fix: one clear line.
    // A plain Error is unexpected and keeps its stack.
    const named = err instanceof Error && err.name !== 'Error';
    const text = err instanceof Error ? (named ? err.message : (err.stack ?? err.message)) : String(err);
    process.stderr.write(`troupe: error: ${text}\n`);
    return 2;
  }
}

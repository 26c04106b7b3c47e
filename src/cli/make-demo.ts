// `troupe make-demo [dir] [--seed N]`: writes the demo model and its two adapters.
import { statSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { badRequest } from '../errors.js';
import { makeDemo } from '../model/demo.js';

const WRITTEN = [
  'config.json',
  'generation_config.json',
  'model.safetensors',
  'tokenizer.json',
  'tokenizer_config.json',
  ...['demo-a', 'demo-b'].flatMap((a) => [`adapters/${a}/adapter_config.json`, `adapters/${a}/adapter_model.safetensors`]),
];

function formatSize(bytes: number): string {
  if (bytes >= 1 << 20) return `${(bytes / (1 << 20)).toFixed(1)} MiB`;
  if (bytes >= 1 << 10) return `${(bytes / (1 << 10)).toFixed(1)} KiB`;
  return `${bytes} B`;
}

export function runMakeDemo(argv: string[], defaultDir?: string): void {
  let dir: string | undefined;
  let seed = 0;
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === '--seed' || arg.startsWith('--seed=')) {
      const value = arg === '--seed' ? argv[++i] : arg.slice('--seed='.length);
      if (value === undefined || !/^\d+$/.test(value) || !Number.isSafeInteger(Number(value))) {
        throw badRequest(`make-demo: --seed needs a non-negative integer, got ${JSON.stringify(value ?? null)}`);
      }
      seed = Number(value);
    } else if (arg.startsWith('-')) {
      throw badRequest(`make-demo: unknown option ${arg} (usage: troupe make-demo [dir] [--seed N])`);
    } else if (dir === undefined) {
      dir = arg;
    } else {
      throw badRequest(`make-demo: more than one directory given (${dir}, ${arg})`);
    }
  }
  dir ??= defaultDir;
  if (dir === undefined) throw badRequest('make-demo: no directory given (usage: troupe make-demo [dir] [--seed N])');
  const root = resolve(dir);
  makeDemo(root, { seed });
  process.stdout.write(`Wrote the demo model (seed ${seed}) to ${root}:\n`);
  for (const f of WRITTEN) process.stdout.write(`  ${f.padEnd(44)} ${formatSize(statSync(join(root, f)).size)}\n`);
  process.stdout.write(
    `Serve it with:\n  troupe serve --model-path ${root} --enable-lora ` +
      `--lora-paths demo-a=${join(root, 'adapters', 'demo-a')} demo-b=${join(root, 'adapters', 'demo-b')}\n`,
  );
}

// `troupe make-demo [dir] [--seed N]`: writes the generated demo model and its two adapters;
// `troupe make-demo [dir] --trained`: copies the trained demo model (models/demo) and its adapters.
import { cpSync, existsSync, readdirSync, statSync } from 'node:fs';
import { join, relative, resolve } from 'node:path';
import { badRequest } from '../errors.js';
import { makeDemo } from '../model/demo.js';
import { trainedDemoDir } from '../paths.js';
import { generatedDemo, trainedDemo, type DemoModel } from './demo-model.js';

const USAGE = 'usage: troupe make-demo [dir] [--seed N | --trained]';

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

/** Every file under `dir`, relative to it, in name order. */
function filesUnder(dir: string): string[] {
  return readdirSync(dir, { recursive: true, withFileTypes: true })
    .filter((e) => e.isFile())
    .map((e) => relative(dir, join(e.parentPath, e.name)))
    .sort();
}

function report(what: string, root: string, files: string[], demo: DemoModel): void {
  process.stdout.write(`Wrote ${what} to ${root}:\n`);
  for (const f of files) process.stdout.write(`  ${f.padEnd(44)} ${formatSize(statSync(join(root, f)).size)}\n`);
  const loras = demo.adapters.map((a) => `${a.name}=${a.path}`).join(' ');
  process.stdout.write(`Serve it with:\n  troupe serve --model-path ${root} --enable-lora --lora-paths ${loras}\n`);
}

export function runMakeDemo(argv: string[], defaultDir?: string, trainedSource = trainedDemoDir()): void {
  let dir: string | undefined;
  let seed: number | undefined;
  let trained = false;
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === '--seed' || arg.startsWith('--seed=')) {
      const value = arg === '--seed' ? argv[++i] : arg.slice('--seed='.length);
      if (value === undefined || !/^\d+$/.test(value) || !Number.isSafeInteger(Number(value))) {
        throw badRequest(`make-demo: --seed needs a non-negative integer, got ${JSON.stringify(value ?? null)}`);
      }
      seed = Number(value);
    } else if (arg === '--trained') {
      trained = true;
    } else if (arg.startsWith('-')) {
      throw badRequest(`make-demo: unknown option ${arg} (${USAGE})`);
    } else if (dir === undefined) {
      dir = arg;
    } else {
      throw badRequest(`make-demo: more than one directory given (${dir}, ${arg})`);
    }
  }
  dir ??= defaultDir;
  if (dir === undefined) throw badRequest(`make-demo: no directory given (${USAGE})`);
  const root = resolve(dir);
  if (trained) {
    // The trained weights come from training, not from a seed: a seed would change nothing.
    if (seed !== undefined) throw badRequest('make-demo: --seed is for the generated model; --trained copies the trained one as it is');
    if (!existsSync(join(trainedSource, 'config.json'))) {
      throw badRequest(`make-demo: --trained: no trained demo model in ${trainedSource} (demo-train/README.md says how it is made)`);
    }
    if (existsSync(root) && readdirSync(root).length > 0) throw badRequest(`make-demo: --trained: ${root} is not empty`);
    cpSync(trainedSource, root, { recursive: true });
    report('the trained demo model', root, filesUnder(root), trainedDemo(root));
    return;
  }
  makeDemo(root, { seed: seed ?? 0 });
  report(`the demo model (seed ${seed ?? 0})`, root, WRITTEN, generatedDemo(root));
}

// Which demo model `troupe serve` serves without --model-path. The trained one (models/demo,
// readable English and style adapters) when its files are there; otherwise the generated one
// (random weights in demo-model/, written on first use), which tests and benchmarks that need
// arbitrary shapes or endless outputs ask for by name.
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { demoModelDir, trainedDemoDir } from '../paths.js';

export interface DemoModel {
  dir: string;
  /** The adapters served with it, by name. */
  adapters: Array<{ name: string; path: string }>;
  /** Whether the model is generated (by makeDemo) when its config.json is missing. */
  generated: boolean;
}

/** The random demo model of `troupe make-demo`, with its adapters demo-a and demo-b. */
export function generatedDemo(dir = demoModelDir()): DemoModel {
  return { dir, adapters: ['demo-a', 'demo-b'].map((name) => ({ name, path: join(dir, 'adapters', name) })), generated: true };
}

/** The trained demo model, with every adapter directory under its adapters/, in name order. */
export function trainedDemo(dir = trainedDemoDir()): DemoModel {
  const root = join(dir, 'adapters');
  const names = existsSync(root)
    ? readdirSync(root, { withFileTypes: true })
        .filter((e) => e.isDirectory() && existsSync(join(root, e.name, 'adapter_config.json')))
        .map((e) => e.name)
        .sort()
    : [];
  return { dir, adapters: names.map((name) => ({ name, path: join(root, name) })), generated: false };
}

/** The trained demo model when its config.json is there, else the generated one. */
export function defaultDemo(dirs: { trained?: string; generated?: string } = {}): DemoModel {
  const trained = dirs.trained ?? trainedDemoDir();
  return existsSync(join(trained, 'config.json')) ? trainedDemo(trained) : generatedDemo(dirs.generated);
}

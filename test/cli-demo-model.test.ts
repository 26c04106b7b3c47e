// Which demo model `troupe serve` fills in without --model-path: the trained one once its files
// are there, else the generated one; and resolveServeArgs's own default stays the generated one,
// so that scripts which write a missing demo model never write into the trained model's folder.
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { defaultDemo, generatedDemo, trainedDemo } from '../src/cli/demo-model.js';
import { resolveServeArgs } from '../src/cli/serve.js';
import { demoModelDir } from '../src/paths.js';
import { tempDir } from './model-fixtures.js';

let tmp: { path: string; cleanup: () => void } | undefined;
afterEach(() => tmp?.cleanup());

/** A trained-model folder: config.json when `complete`, and adapter folders (those with a config are adapters). */
function trainedFolder(complete: boolean): { trained: string; generated: string } {
  tmp = tempDir('troupe-demo-choice-');
  const trained = join(tmp.path, 'models', 'demo');
  for (const name of ['kjv', 'bofh', 'notes']) mkdirSync(join(trained, 'adapters', name), { recursive: true });
  for (const name of ['kjv', 'bofh']) writeFileSync(join(trained, 'adapters', name, 'adapter_config.json'), '{}');
  if (complete) writeFileSync(join(trained, 'config.json'), '{}');
  return { trained, generated: join(tmp.path, 'demo-model') };
}

describe('the default demo model', () => {
  it('is the generated one with demo-a and demo-b while the trained folder has no config.json', () => {
    const dirs = trainedFolder(false);
    const demo = defaultDemo(dirs);
    expect(demo).toEqual({
      dir: dirs.generated,
      adapters: [
        { name: 'demo-a', path: join(dirs.generated, 'adapters', 'demo-a') },
        { name: 'demo-b', path: join(dirs.generated, 'adapters', 'demo-b') },
      ],
      generated: true,
    });
  });

  it('is the trained one, with each adapter folder in name order, once its config.json is there', () => {
    const dirs = trainedFolder(true);
    const demo = defaultDemo(dirs);
    expect(demo).toEqual({
      dir: dirs.trained,
      adapters: [
        { name: 'bofh', path: join(dirs.trained, 'adapters', 'bofh') },
        { name: 'kjv', path: join(dirs.trained, 'adapters', 'kjv') },
      ],
      generated: false,
    });
    expect(trainedDemo(dirs.trained)).toEqual(demo);
  });
});

describe('resolveServeArgs with a demo model', () => {
  it('serves the given demo model as "demo" with its adapters when no --model-path is given', () => {
    const dirs = trainedFolder(true);
    const { options, demo } = resolveServeArgs(['--device', 'cpu'], trainedDemo(dirs.trained));
    expect(demo?.generated).toBe(false);
    expect(options.modelPath).toBe(dirs.trained);
    expect(options.servedModelName).toBe('demo');
    expect(options.loraPaths.map((a) => [a.name, a.path])).toEqual([
      ['bofh', join(dirs.trained, 'adapters', 'bofh')],
      ['kjv', join(dirs.trained, 'adapters', 'kjv')],
    ]);
  });

  it('keeps --lora-paths and fills in no demo model when --model-path is given', () => {
    const dirs = trainedFolder(true);
    const onlyKjv = resolveServeArgs(['--lora-paths', `kjv=${join(dirs.trained, 'adapters', 'kjv')}`], trainedDemo(dirs.trained));
    expect(onlyKjv.options.loraPaths.map((a) => a.name)).toEqual(['kjv']);
    const other = resolveServeArgs(['--model-path', '/models/other'], trainedDemo(dirs.trained));
    expect(other.demo).toBeNull();
    expect(other.options.modelPath).toBe('/models/other');
    expect(other.options.loraPaths).toEqual([]);
  });

  it('fills in the generated demo model by default', () => {
    const { options, demo } = resolveServeArgs(['--device', 'cpu']);
    expect(demo).toEqual(generatedDemo());
    expect(options.modelPath).toBe(demoModelDir());
    expect(options.loraPaths.map((a) => a.name)).toEqual(['demo-a', 'demo-b']);
  });
});

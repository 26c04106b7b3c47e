// Where the package lives on disk, found from this file whether it runs from src/ (tests)
// or dist/ (the built server): the nearest directory above that holds package.json.
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

let root: string | null = null;

export function packageRoot(): string {
  if (root !== null) return root;
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, 'package.json'))) {
    const up = dirname(dir);
    if (up === dir) throw new Error(`cannot find package.json above ${fileURLToPath(import.meta.url)}`);
    dir = up;
  }
  root = dir;
  return dir;
}

/** The generated demo model's directory, made by `troupe make-demo` or on the first `npm start`. */
export function demoModelDir(): string {
  return join(packageRoot(), 'demo-model');
}

/** The trained demo model's directory, committed with the package once trained (models/demo/README.md). */
export function trainedDemoDir(): string {
  return join(packageRoot(), 'models', 'demo');
}

// Workers must run compiled JavaScript: Node cannot load the .ts sources that vitest runs
// from. When the caller itself is a .ts file under src/, point at the same file in the
// build output (dist/src/... or dist/..., whichever the build wrote), so `npm run build`
// must have run first; `npm test` does it in pretest.
import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

/** URL of the compiled worker `name` (e.g. 'executor.worker.js') next to `base` (import.meta.url). */
export function workerUrl(name: string, base: string): URL {
  const here = fileURLToPath(base);
  const file = name.replace(/\.ts$/, '.js');
  if (!here.endsWith('.ts')) return pathToFileURL(path.join(path.dirname(here), file));
  const parts = path.dirname(here).split(path.sep);
  const i = parts.lastIndexOf('src');
  if (i < 0) throw new Error(`cannot find the compiled form of ${here}: it is not under a src/ directory`);
  const root = parts.slice(0, i).join(path.sep);
  const rest = parts.slice(i + 1);
  const candidates = [path.join(root, 'dist', 'src', ...rest, file), path.join(root, 'dist', ...rest, file)];
  const found = candidates.find((c) => existsSync(c));
  if (!found) throw new Error(`worker script ${candidates[0]} does not exist; run \`npm run build\` first`);
  return pathToFileURL(found);
}

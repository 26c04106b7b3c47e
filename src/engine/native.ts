// Loads the native addon. The path is found from the package root (the directory holding
// package.json above this file), so it works from src/ under vitest and from dist/ alike.
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { packageRoot } from '../paths.js';
import type { NativeAddon } from './types.js';

export const ADDON_RELATIVE_PATH = join('build', 'Release', 'troupe_native.node');

let cached: NativeAddon | null = null;

export function loadNative(): NativeAddon {
  if (cached) return cached;
  const root = packageRoot();
  const file = join(root, ADDON_RELATIVE_PATH);
  if (!existsSync(file)) {
    throw new Error(`troupe: the native addon is not built (${file} is missing); run \`npm install\` or \`node scripts/build-native.js\` in ${root}`);
  }
  const require = createRequire(import.meta.url);
  try {
    cached = require(file) as NativeAddon;
  } catch (err) {
    throw new Error(`troupe: cannot load the native addon ${file}: ${(err as Error).message}; rebuild it with \`node scripts/build-native.js\``, {
      cause: err,
    });
  }
  return cached;
}

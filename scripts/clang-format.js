// Checks (or, with --fix, rewrites) the C++ and CUDA sources under native/ with clang-format and
// the repository's .clang-format. The binary comes from the clang-format npm package, so the
// check runs the same everywhere without a system install.
//   node scripts/clang-format.js [--fix]
import { spawnSync } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));
const SOURCE = /\.(cc|h|cu|cuh)$/;

function sources(dir) {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? sources(join(dir, e.name)) : SOURCE.test(e.name) ? [join(dir, e.name)] : [],
  );
}

const fix = process.argv.includes('--fix');
const files = sources(join(root, 'native'))
  .map((f) => relative(root, f))
  .sort();
// The package's own binary for this platform (its index.js wrapper adds a stack trace to every failure).
const bin = join(root, 'node_modules', 'clang-format', 'bin', `${process.platform}_${process.arch}`, 'clang-format');
const args = fix ? ['-i', ...files] : ['--dry-run', '--Werror', ...files];
const res = spawnSync(bin, args, { cwd: root, stdio: 'inherit' });
if (res.error) {
  console.error(`clang-format: cannot run ${bin}: ${res.error.message}`);
  process.exit(1);
}
if (res.status !== 0) {
  if (!fix) console.error('clang-format: native/ is not formatted; run `npm run format` to fix it');
  process.exit(res.status ?? 1);
}
console.log(`clang-format: ${files.length} files ${fix ? 'formatted' : 'checked'}`);

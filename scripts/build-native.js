#!/usr/bin/env node
// Builds the native addon (build/Release/troupe_native.node) with cmake-js. Runs as the npm
// install script; re-running is incremental because cmake-js reuses the build/ directory.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = dirname(dirname(fileURLToPath(import.meta.url)));
const cmakeJs = join(root, 'node_modules', '.bin', 'cmake-js');

function fail(message) {
  console.error(`troupe: native build failed: ${message}`);
  process.exit(1);
}

if (!existsSync(cmakeJs)) fail(`${cmakeJs} is missing; install the dependencies first (npm install)`);
const cmake = spawnSync('cmake', ['--version'], { encoding: 'utf8' });
if (cmake.error || cmake.status !== 0) fail('cmake was not found on PATH; install CMake 3.19 or newer');

const args = ['build', '--config', 'Release', '--parallel', String(availableParallelism()), '--directory', root];
console.log(`troupe: building the native addon: cmake-js ${args.join(' ')}`);
const result = spawnSync(cmakeJs, args, { cwd: root, stdio: 'inherit' });
if (result.error) fail(`could not run cmake-js: ${result.error.message}`);
if (result.status !== 0) {
  fail(`cmake-js exited with ${result.status ?? `signal ${result.signal}`}; the compiler output is above`);
}
const addon = join(root, 'build', 'Release', 'troupe_native.node');
if (!existsSync(addon)) fail(`cmake-js succeeded but ${addon} was not produced`);
console.log(`troupe: built ${addon}`);

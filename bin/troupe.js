#!/usr/bin/env node
// The `troupe` command; the code lives in dist/ (built by `npm install` / `npm run build`).
import { existsSync } from 'node:fs';

const entry = new URL('../dist/src/cli/main.js', import.meta.url);
if (!existsSync(entry)) {
  process.stderr.write('troupe: dist/ is missing; run `npm install` (or `npm run build`) first\n');
  process.exit(2);
}
const { main } = await import(entry.href);
// serve keeps the process alive with its server; other commands end when main returns.
process.exitCode = await main(process.argv.slice(2));

// Rewrites the flag table in README.md from the flag table in src/config/flags.ts (via dist/).
// Run after changing a flag: `npm run build && node scripts/readme-flags.js`. A test fails
// when the README's table and the code disagree.
import { readFileSync, writeFileSync } from 'node:fs';

const { markdownFlagTable } = await import(new URL('../dist/src/config/help.js', import.meta.url).href);
const file = new URL('../README.md', import.meta.url);
const readme = readFileSync(file, 'utf8');
const start = '<!-- flags:start -->';
const end = '<!-- flags:end -->';
const a = readme.indexOf(start);
const b = readme.indexOf(end);
if (a === -1 || b === -1) throw new Error(`README.md needs ${start} and ${end} markers`);
writeFileSync(file, readme.slice(0, a + start.length) + '\n' + markdownFlagTable() + '\n' + readme.slice(b));

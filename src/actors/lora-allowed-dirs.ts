// --lora-allowed-dirs: the directories an adapter loaded at run time may come from. Paths are
// compared after resolving symbolic links, so a link inside an allowed directory cannot lead out.
import { readdirSync, realpathSync } from 'node:fs';
import { isAbsolute, join, relative, resolve, sep } from 'node:path';
import { TroupeError } from '../errors.js';

/** The real path, else the plain absolute one, so a refusal never tells whether something outside exists. */
function real(path: string): string {
  try {
    return realpathSync(path);
  } catch {
    return resolve(path);
  }
}

function within(path: string, dir: string): boolean {
  const rel = relative(dir, path);
  return rel === '' || (!isAbsolute(rel) && rel !== '..' && !rel.startsWith(`..${sep}`));
}

/** Throws a 403 naming the flag unless path, and every entry of it, lies inside one of the directories. */
export function assertAllowedAdapterPath(path: string, allowedDirs: readonly string[]): void {
  if (allowedDirs.length === 0) return;
  const dirs = allowedDirs.map(real);
  const allowed = (p: string): boolean => dirs.some((d) => within(p, d));
  const refuse = (what: string): TroupeError =>
    new TroupeError('forbidden', `lora_path ${JSON.stringify(path)} ${what}, outside --lora-allowed-dirs (${allowedDirs.join(', ')})`);

  const target = real(path);
  if (!allowed(target)) throw refuse(target === resolve(path) ? 'is' : `leads to ${target}`);
  // The adapter's files are read through the directory, so a link among them would lead out just the same.
  let entries: string[];
  try {
    entries = readdirSync(target);
  } catch {
    return; // not a readable directory: reading the adapter says so
  }
  for (const entry of entries) {
    const file = real(join(target, entry));
    if (!allowed(file)) throw refuse(`holds ${entry}, which leads to ${file}`);
  }
}

// argv -> raw flag values, driven by the flag table. Accepts `--flag value`, `--flag=value`,
// bare boolean flags (and `--flag=true|false`), and list flags that take every following
// word up to the next `--flag`, as SGLang's argparse nargs='*' does.
import { FLAGS, findFlag, type FlagSpec } from './flags.js';

export class FlagError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'FlagError';
  }
}

export type RawValue = string | number | boolean | string[] | null;
export type RawFlags = Map<string, RawValue>;

export interface ParsedArgs {
  flags: RawFlags; // every flag, defaults filled in
  given: Set<string>; // flags named on the command line
  help: boolean;
}

export function parseArgs(argv: readonly string[]): ParsedArgs {
  const flags: RawFlags = new Map(FLAGS.map((f) => [f.name, structuredClone(f.default)]));
  const given = new Set<string>();
  let help = false;
  for (let i = 0; i < argv.length; i++) {
    const word = argv[i]!;
    if (word === '--help' || word === '-h') {
      help = true;
      continue;
    }
    if (!word.startsWith('--')) throw new FlagError(`unexpected argument "${word}": flags start with --`);
    const eq = word.indexOf('=');
    const name = word.slice(2, eq === -1 ? undefined : eq).replaceAll('_', '-');
    const spec = findFlag(name);
    if (!spec) throw new FlagError(`unknown flag --${name} (see --help)`);
    if (given.has(spec.name)) throw new FlagError(`--${spec.name} is given twice`);
    given.add(spec.name);
    const inline = eq === -1 ? null : word.slice(eq + 1);
    if (spec.kind === 'bool') {
      flags.set(spec.name, inline === null ? true : parseBool(spec, inline));
    } else if (spec.kind === 'list') {
      const items: string[] = inline === null ? [] : [inline];
      while (inline === null && i + 1 < argv.length && !argv[i + 1]!.startsWith('--')) items.push(argv[++i]!);
      flags.set(
        spec.name,
        items.map((item) => checkItem(spec, item)),
      );
    } else {
      let value = inline;
      if (value === null) {
        const next = argv[i + 1];
        if (next === undefined || (next.startsWith('--') && spec.kind !== 'int' && spec.kind !== 'float')) {
          throw new FlagError(`--${spec.name} needs a value`);
        }
        value = next;
        i++;
      }
      flags.set(spec.name, parseScalar(spec, value));
    }
  }
  return { flags, given, help };
}

function parseBool(spec: FlagSpec, value: string): boolean {
  if (/^(true|1|yes)$/i.test(value)) return true;
  if (/^(false|0|no)$/i.test(value)) return false;
  throw new FlagError(`--${spec.name} takes true or false, not "${value}"`);
}

function checkItem(spec: FlagSpec, item: string): string {
  if (spec.itemChoices && !spec.itemChoices.includes(item)) {
    throw new FlagError(`--${spec.name}: "${item}" is not one of ${spec.itemChoices.join(', ')}`);
  }
  return item;
}

function parseScalar(spec: FlagSpec, value: string): string | number {
  switch (spec.kind) {
    case 'int': {
      if (!/^-?\d+$/.test(value.trim())) throw new FlagError(`--${spec.name} takes an integer, not "${value}"`);
      return Number(value);
    }
    case 'float': {
      const n = Number(value);
      if (value.trim() === '' || !Number.isFinite(n)) throw new FlagError(`--${spec.name} takes a number, not "${value}"`);
      return n;
    }
    case 'choice':
      if (!spec.choices!.includes(value)) throw new FlagError(`--${spec.name} must be one of ${spec.choices!.join(', ')}, not "${value}"`);
      return value;
    default:
      if (value === '') throw new FlagError(`--${spec.name} needs a non-empty value`);
      return value;
  }
}

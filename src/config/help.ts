// `troupe serve --help` and the README's flag table, both rendered from the flag table.
import { FLAGS, type FlagSpec } from './flags.js';

const GROUP_TITLES: Record<FlagSpec['group'], string> = {
  model: 'Model',
  server: 'Server',
  lora: 'LoRA',
  memory: 'Memory',
  runtime: 'Runtime',
};

function valueHint(f: FlagSpec): string {
  switch (f.kind) {
    case 'bool':
      return '';
    case 'choice':
      return ` {${f.choices!.join(',')}}`;
    case 'list':
      return ' ITEM [ITEM ...]';
    case 'int':
      return ' N';
    case 'float':
      return ' X';
    default:
      return ' VALUE';
  }
}

function defaultText(f: FlagSpec): string {
  if (f.default === null || (Array.isArray(f.default) && f.default.length === 0)) return '';
  return String(f.default);
}

export function helpText(): string {
  const lines = ['Usage: troupe serve [flags]', '       troupe make-demo [dir]', ''];
  for (const group of Object.keys(GROUP_TITLES) as FlagSpec['group'][]) {
    lines.push(`${GROUP_TITLES[group]}:`);
    for (const f of FLAGS.filter((x) => x.group === group)) {
      const def = defaultText(f);
      lines.push(`  --${f.name}${valueHint(f)}`);
      lines.push(`      ${f.help}${def ? ` (default: ${def})` : ''}`);
    }
    lines.push('');
  }
  return lines.join('\n');
}

/** The README's flag table; a test keeps the README's copy equal to this. */
export function markdownFlagTable(): string {
  const rows = ['| flag | default | meaning |', '| --- | --- | --- |'];
  for (const f of FLAGS) {
    const names = [f.name, ...(f.aliases ?? [])].map((n) => `\`--${n}\``).join(', ');
    const def = defaultText(f);
    rows.push(`| ${names}${valueHint(f).replaceAll('|', '\\|')} | ${def ? `\`${def}\`` : ''} | ${f.help.replaceAll('|', '\\|')} |`);
  }
  return rows.join('\n');
}

// The linear-time matcher behind regex target_modules, checked against Python's re.fullmatch
// (one python3 run for the whole table) and, by property, against JS RegExp on small patterns
// where the two languages agree.
import { spawnSync } from 'node:child_process';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { MAX_PATTERN_LENGTH, PythonRegex, RegexError } from '../src/model/python-regex.js';

const NAMES = [
  'model.layers.0.self_attn.q_proj',
  'model.layers.17.mlp.down_proj',
  'base_model.model.model.layers.3.self_attn.v_proj',
  'model.embed_tokens',
  'lm_head',
  '',
  'a',
  'ab\n',
  'a\n',
  'x'.repeat(30),
  'aaaaaaaaaaaaaaaaaaaaaaaaaZ',
  'q_proj',
  'a{2}',
  'a-b]c',
  'tab\there',
  '\x1c',
  'é٣',
  '{}',
];

// Patterns Python compiles that this matcher refuses on purpose.
const REFUSED = new Set([
  '(?=.*q).*',
  '(?!.*vision).*q_proj',
  '.*(?<=q)_proj',
  '.*(?<!k)_proj',
  '(a)\\1',
  '(?P<x>a)(?P=x)',
  '(?i)Q_PROJ',
  '(?i:q)_proj',
  '\\bq_proj',
  'a*+',
  '(?>a*)a',
  '(?#note)q_proj',
  '(a)?(?(1)b|c)',
  '\\N{DIGIT ONE}',
  '\\0',
  '\\101',
]);

// Each is also run against NAMES; nothing here is catastrophic for Python's backtracking on
// names this short.
const PATTERNS = [
  ...REFUSED,
  '.*\\.(q_proj|v_proj)',
  '.*(q|k|v|o)_proj',
  'model\\.layers\\.\\d+\\.self_attn\\.[qkvo]_proj',
  '.*layers\\.1[0-9]\\..*',
  '.*',
  '.+',
  '',
  'a',
  'a?',
  'a*?',
  'a+?',
  'a??',
  'a{2}',
  'a{,2}',
  'a{1,}',
  'a{0}',
  'a{1,3}?',
  'x{30}',
  'x{29}',
  '^a$',
  'a$',
  'a$\\n',
  'a\\Z',
  '\\Aa',
  'ab$\\n?',
  '$',
  '^',
  '^$',
  'a^',
  '.*_proj$',
  '(a|)+',
  '(a*)*',
  '(?:a|b)*c?',
  '[a-c]',
  '[^a]',
  '[]a]',
  '[^]a]+',
  '[a-]',
  '[-a]',
  '[\\d]',
  '[\\w.]+',
  '[\\s]',
  '[\\D]+',
  '\\d',
  '\\D+',
  '\\w+',
  '\\W',
  '\\s',
  '\\S+',
  '\\t',
  'tab\\there',
  '\\x61',
  '\\u0061',
  '\\U00000061',
  '\\.',
  '\\*',
  '\\-',
  '\\]',
  'a{',
  'a{x}',
  '{}',
  'a{2',
  'a{,}',
  'a-b]c',
  '(?P<name>a)',
  '(?:)',
  '()',
  '(a)(b)?',
  'é\\d',
  '[é-ê]\\d',
  '\\x1c',
  '.*\\..*\\..*\\..*',
  // Python refuses these; so must the matcher.
  '*',
  'a**',
  'a{2}{3}',
  '(',
  ')',
  'a)',
  '[a',
  '[z-a]',
  '[\\d-z]',
  'a{3,2}',
  '\\q',
  '\\',
  '^*',
  '\\x6',
  '(?P<1>a)',
  '(?P<a>x)(?P<a>y)',
  'a|*',
  '(?',
  '(?Px)',
  '(?<x>a)',
  '\\u12',
  '\\U00110000',
];

const INDEXED: Array<[string, string]> = [
  ['model.layers.', '.self_attn.q_proj'],
  ['base_model.model.model.layers.', '.mlp.up_proj'],
  ['', ''],
  ['a', '\n'],
];
const INDEX_PATTERNS = [
  '.*\\.(q_proj|v_proj)',
  'model\\.layers\\.\\d+\\.self_attn\\.q_proj',
  '.*layers\\.1[0-9]\\..*',
  '.*layers\\.[1-9]\\..*',
  '.*layers\\.0\\d\\..*',
  '.*\\.3\\d\\d\\..*',
  '\\d*',
  '0',
  '[1-9]\\d{2}',
  '\\d$',
  'a\\d+$',
  'a\\d+\\n',
  '.*\\.(?:\\d)\\.mlp.*',
  '(.+)+_proj',
  '[a-z._]+\\.\\d+\\.self_attn\\.q_proj',
  'a\\d+$\\n',
  '.*\\.7\\..*',
];

const PY = String.raw`
import json, re, sys
cases = json.load(sys.stdin)
out = {"full": [], "indexed": []}
for p in cases["patterns"]:
    try:
        r = re.compile(p)
    except Exception as e:
        out["full"].append({"error": str(e)})
        continue
    out["full"].append({"matches": [r.fullmatch(t) is not None for t in cases["names"]]})
for p in cases["indexPatterns"]:
    r = re.compile(p)
    out["indexed"].append([any(r.fullmatch(a + str(n) + b) for n in range(1000)) for a, b in cases["indexed"]])
print(json.dumps(out))
`;

function python(): { full: Array<{ error?: string; matches?: boolean[] }>; indexed: boolean[][] } | null {
  const input = JSON.stringify({ patterns: PATTERNS, names: NAMES, indexPatterns: INDEX_PATTERNS, indexed: INDEXED });
  const run = spawnSync('python3', ['-c', PY], { input, encoding: 'utf8', timeout: 120_000 });
  if (run.error !== undefined || run.status !== 0) {
    console.warn(`python3 is not available (${run.error?.message ?? run.stderr}); skipping the cross-check with re.fullmatch`);
    return null;
  }
  return JSON.parse(run.stdout) as ReturnType<typeof python>;
}
const reference = python();

function compileOrError(p: string): PythonRegex | RegexError {
  try {
    return PythonRegex.compile(p);
  } catch (err) {
    expect(err).toBeInstanceOf(RegexError);
    return err as RegexError;
  }
}

describe('PythonRegex against Python re.fullmatch', () => {
  it.skipIf(reference === null)('agrees on every pattern x name, refusing what Python refuses and the unsupported constructs', () => {
    const disagreements: string[] = [];
    PATTERNS.forEach((p, i) => {
      const py = reference!.full[i]!;
      const ours = compileOrError(p);
      if (py.error !== undefined || REFUSED.has(p)) {
        if (!(ours instanceof RegexError)) disagreements.push(`${JSON.stringify(p)}: Python says ${py.error ?? 'ok'}, compiled here`);
        return;
      }
      if (ours instanceof RegexError) {
        disagreements.push(`${JSON.stringify(p)}: refused here (${ours.message}) but Python compiles it`);
        return;
      }
      NAMES.forEach((name, j) => {
        if (ours.fullmatch(name) !== py.matches![j]) disagreements.push(`${JSON.stringify(p)} on ${JSON.stringify(name)}: Python ${py.matches![j]}`);
      });
    });
    expect(disagreements).toEqual([]);
  });

  it.skipIf(reference === null)('fullmatchAnyIndex agrees with trying every layer index below 1000', () => {
    const disagreements: string[] = [];
    INDEX_PATTERNS.forEach((p, i) => {
      const re = PythonRegex.compile(p);
      INDEXED.forEach(([a, b], j) => {
        const want = reference!.indexed[i]![j];
        if (re.fullmatchAnyIndex(a, b) !== want)
          disagreements.push(`${JSON.stringify(p)} on ${JSON.stringify(a)} N ${JSON.stringify(b)}: Python ${want}`);
      });
    });
    expect(disagreements).toEqual([]);
  });
});

describe('PythonRegex', () => {
  it('finishes at once on patterns that make a backtracking matcher run for ages', () => {
    const name = 'x'.repeat(30);
    expect(PythonRegex.compile('(.+)+Z').fullmatch(name)).toBe(false);
    expect(PythonRegex.compile('(x+x+)+y').fullmatch('x'.repeat(5000))).toBe(false);
    expect(PythonRegex.compile('(a|a)*b').fullmatch('a'.repeat(5000))).toBe(false);
    expect(PythonRegex.compile('(.*)*(.*)*(.*)*Z').fullmatch(name)).toBe(false);
    expect(PythonRegex.compile('(.+)+').fullmatch(name)).toBe(true);
  });

  it('names the construct it refuses and where it is', () => {
    const message = (p: string): string => (compileOrError(p) as RegexError).message;
    expect(message('(?!.*vision).*q_proj')).toBe('lookahead assertions (?!...) are not supported (at position 0)');
    expect(message('x(?<=a)')).toBe('lookbehind assertions (?<=...) are not supported (at position 1)');
    expect(message('(a)\\1')).toMatch(/^backreferences .* are not supported \(at position 3\)$/);
    expect(message('(?i)q')).toMatch(/^inline flags .* are not supported/);
    expect(message('a*+')).toMatch(/^possessive quantifiers are not supported/);
    expect(message('\\bq')).toMatch(/^word boundaries/);
  });

  it('caps the pattern length and the size counted repetitions expand to', () => {
    expect(PythonRegex.compile('a'.repeat(MAX_PATTERN_LENGTH)).fullmatch('a'.repeat(MAX_PATTERN_LENGTH))).toBe(true);
    expect((compileOrError('a'.repeat(MAX_PATTERN_LENGTH + 1)) as RegexError).message).toMatch(/at most 1000 are supported/);
    for (const p of ['((a{100}){100}){100}', 'a{4294967295}', '(){4000000000}', '(?:){0,4000000000}', '(a{1000}|b){50}']) {
      expect((compileOrError(p) as RegexError).message, p).toMatch(/the pattern is too large/);
    }
    expect(PythonRegex.compile('(a{10}){10}').fullmatch('a'.repeat(100))).toBe(true);
    // Without counted repetitions no pattern within the length cap reaches the size cap.
    expect(PythonRegex.compile('a+'.repeat(MAX_PATTERN_LENGTH / 2)).fullmatch('a'.repeat(600))).toBe(true);
    expect(PythonRegex.compile('|'.repeat(MAX_PATTERN_LENGTH)).fullmatch('')).toBe(true);
    expect(PythonRegex.compile('(?:.+?)+'.repeat(MAX_PATTERN_LENGTH / 8)).fullmatch('x'.repeat(200))).toBe(true);
  });
});

// Small patterns over constructs Python and JS read the same way, on texts without newlines.
const patternArb = fc.letrec<{ alt: string; seq: string; atom: string }>((tie) => ({
  alt: fc.array(tie('seq'), { minLength: 1, maxLength: 3 }).map((s) => s.join('|')),
  seq: fc.array(fc.oneof({ weight: 4, arbitrary: tie('atom') }, fc.constantFrom('^', '$')), { minLength: 0, maxLength: 4 }).map((a) => a.join('')),
  atom: fc
    .tuple(
      fc.oneof(
        { maxDepth: 3 },
        { weight: 6, arbitrary: fc.constantFrom('a', 'b', '.', '\\.', '[ab]', '[^a]', '[a-c]', '\\d', '\\w', '_', '1') },
        { weight: 2, arbitrary: tie('alt').map((p) => `(${p})`) },
        { weight: 1, arbitrary: tie('alt').map((p) => `(?:${p})`) },
      ),
      fc.constantFrom('', '', '*', '+', '?', '*?', '+?', '??', '{2}', '{0,2}', '{1,}', '{1,3}?'),
    )
    .map(([a, q]) => a + q),
}));

describe('PythonRegex against JS RegExp (property)', () => {
  it('fullmatch equals /^(?:p)$/ on small patterns and texts', () => {
    fc.assert(
      fc.property(
        patternArb.alt,
        fc.array(fc.constantFrom('a', 'b', 'c', '.', '_', '1', '-'), { maxLength: 8 }).map((c) => c.join('')),
        (p, text) => {
          expect(PythonRegex.compile(p).fullmatch(text)).toBe(new RegExp(`^(?:${p})$`).test(text));
        },
      ),
      { seed: 20240531, numRuns: 400, endOnFailure: true },
    );
  });
});

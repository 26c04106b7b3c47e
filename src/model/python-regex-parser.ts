// The parser behind python-regex.ts: Python's sre_parse rules for the subset of syntax that
// adapter configs use, including which mistakes Python reports as errors, into a small syntax
// tree. Constructs outside the subset are refused by name.

/** A pattern Python refuses, or one this matcher does not support; names the construct and where it is. */
export class RegexError extends Error {
  constructor(
    readonly detail: string,
    readonly position: number,
  ) {
    super(`${detail} (at position ${position})`);
    this.name = 'RegexError';
  }
}

export type Pred = (cp: number) => boolean;
export type Anchor = 'start' | 'end' | 'endOrFinalNewline';
export type Node =
  | { t: 'char'; pred: Pred }
  | { t: 'cat'; items: Node[] }
  | { t: 'group'; body: Node }
  | { t: 'alt'; alts: Node[] }
  | { t: 'rep'; node: Node; min: number; max: number }
  | { t: 'assert'; anchor: Anchor };

// Python 3 str patterns are Unicode-aware: \d is any decimal digit, \w any letter, number or
// "_", \s whatever str.isspace() accepts (not JS's \s: it differs in \x1c-\x1f and U+FEFF).
const DIGIT = /^\p{Nd}$/u;
const WORD = /^[\p{L}\p{N}_]$/u;
// eslint-disable-next-line no-control-regex -- \x1c-\x1f are whitespace to Python
const SPACE = /^[\t\n\v\f\r\x1c-\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]$/u;
const CATEGORIES: Record<string, Pred> = {
  d: (c) => DIGIT.test(String.fromCodePoint(c)),
  w: (c) => WORD.test(String.fromCodePoint(c)),
  s: (c) => SPACE.test(String.fromCodePoint(c)),
};
const CONTROL: Record<string, number> = { a: 7, f: 12, n: 10, r: 13, t: 9, v: 11 };
const NEWLINE = 10;
const UNSUPPORTED_GROUPS: Array<[string, string]> = [
  ['P=', 'named backreferences (?P=...)'],
  ['=', 'lookahead assertions (?=...)'],
  ['!', 'lookahead assertions (?!...)'],
  ['<=', 'lookbehind assertions (?<=...)'],
  ['<!', 'lookbehind assertions (?<!...)'],
  ['#', 'comments (?#...)'],
  ['>', 'atomic groups (?>...)'],
  ['(', 'conditional groups (?(...)...)'],
];

/** Python's sre_parse rules for the supported subset, including which mistakes are errors. */
export class Parser {
  private pos = 0;
  private readonly groupNames = new Set<string>();
  constructor(private readonly src: number[]) {}

  parse(): Node {
    const node = this.alternation();
    if (this.pos < this.src.length) this.fail('unbalanced parenthesis');
    return node;
  }

  private fail(detail: string, at = this.pos): never {
    throw new RegexError(detail, at);
  }
  private peek(k = 0): string | undefined {
    const c = this.src[this.pos + k];
    return c === undefined ? undefined : String.fromCodePoint(c);
  }
  private eat(s: string): boolean {
    for (let i = 0; i < s.length; i++) if (this.peek(i) !== s[i]) return false;
    this.pos += s.length;
    return true;
  }

  private alternation(): Node {
    const alts = [this.sequence()];
    while (this.eat('|')) alts.push(this.sequence());
    return alts.length === 1 ? alts[0]! : { t: 'alt', alts };
  }

  private sequence(): Node {
    const items: Node[] = [];
    for (let c = this.peek(); c !== undefined && c !== '|' && c !== ')'; c = this.peek()) {
      const at = this.pos;
      const counted = c === '{' ? this.countedRepeat() : null;
      if (c !== '*' && c !== '+' && c !== '?' && counted === null) {
        items.push(this.atom());
        continue;
      }
      if (counted === null) this.pos++;
      const last = items.at(-1);
      if (last === undefined || last.t === 'assert') this.fail('nothing to repeat', at);
      if (last.t === 'rep') this.fail('multiple repeat', at);
      const [min, max] = counted ?? (c === '*' ? [0, Infinity] : c === '+' ? [1, Infinity] : [0, 1]);
      if (this.peek() === '+') this.fail('possessive quantifiers are not supported');
      this.eat('?'); // lazy: the same strings fullmatch either way
      items[items.length - 1] = { t: 'rep', node: last, min, max };
    }
    return items.length === 1 ? items[0]! : { t: 'cat', items };
  }

  /** {m}, {m,}, {,n}, {m,n} as Python reads them; anything else leaves "{" a literal. */
  private countedRepeat(): [number, number] | null {
    const m = /^\{(\d*)(,(\d*))?\}/.exec(String.fromCodePoint(...this.src.slice(this.pos, this.pos + 100)));
    if (m === null || m[0] === '{}') return null;
    const min = m[1] === '' ? 0 : Number(m[1]);
    const max = m[2] === undefined ? min : m[3] === '' ? Infinity : Number(m[3]);
    if (max < min) this.fail('min repeat greater than max repeat');
    this.pos += m[0].length;
    return [min, max];
  }

  private atom(): Node {
    const at = this.pos;
    const c = this.peek()!;
    this.pos++;
    switch (c) {
      case '(':
        return this.group(at);
      case '[':
        return this.charClass(at);
      case '.':
        return { t: 'char', pred: (x) => x !== NEWLINE };
      case '^':
        return { t: 'assert', anchor: 'start' };
      case '$':
        return { t: 'assert', anchor: 'endOrFinalNewline' };
      case '\\': {
        const e = this.escape(at, false);
        if (typeof e === 'string') return { t: 'assert', anchor: e };
        return { t: 'char', pred: typeof e === 'number' ? (x) => x === e : e };
      }
      default: {
        const cp = this.src[at]!;
        return { t: 'char', pred: (x) => x === cp };
      }
    }
  }

  private group(at: number): Node {
    if (this.eat('?')) {
      if (this.eat('P<')) {
        const end = this.src.indexOf('>'.codePointAt(0)!, this.pos);
        const name = end < 0 ? '' : String.fromCodePoint(...this.src.slice(this.pos, end));
        if (!/^[\p{L}_][\p{L}\p{N}_]*$/u.test(name)) this.fail('bad character in group name');
        if (this.groupNames.has(name)) this.fail('redefinition of a group name');
        this.groupNames.add(name);
        this.pos = end + 1;
      } else if (!this.eat(':')) {
        const kind = UNSUPPORTED_GROUPS.find(([p]) => this.eat(p));
        if (kind) this.fail(`${kind[1]} are not supported`, at);
        if (/[aiLmsux-]/.test(this.peek() ?? '')) this.fail('inline flags (?aiLmsux) are not supported', at);
        this.fail('unknown extension after "(?"', at);
      }
    }
    const body = this.alternation();
    if (!this.eat(')')) this.fail('missing ), unterminated subpattern', at);
    return { t: 'group', body };
  }

  /** What follows a backslash: a code point, a category, or (outside classes) an anchor. */
  private escape(at: number, inClass: boolean): number | Pred | Anchor {
    const c = this.peek();
    if (c === undefined) this.fail('bad escape (end of pattern)', at);
    this.pos++;
    const lower = c.toLowerCase();
    if ('dDsSwW'.includes(c)) {
      const p = CATEGORIES[lower]!;
      return c === lower ? p : (x) => !p(x);
    }
    if (Object.hasOwn(CONTROL, c)) return CONTROL[c]!;
    if (c === 'b' && inClass) return 8;
    if (!inClass && c === 'A') return 'start';
    if (!inClass && c === 'Z') return 'end';
    if (!inClass && (c === 'b' || c === 'B')) this.fail('word boundaries \\b and \\B are not supported', at);
    const width = ({ x: 2, u: 4, U: 8 } as Record<string, number>)[c];
    if (width !== undefined) {
      const digits = String.fromCodePoint(...this.src.slice(this.pos, this.pos + width));
      if (!new RegExp(`^[0-9a-fA-F]{${width}}$`).test(digits) || parseInt(digits, 16) > 0x10ffff) this.fail(`bad escape \\${c}`, at);
      this.pos += width;
      return parseInt(digits, 16);
    }
    if (/[0-9]/.test(c)) this.fail('backreferences and octal escapes (\\0-\\9) are not supported', at);
    if (c === 'N') this.fail('named characters \\N{...} are not supported', at);
    if (/[A-Za-z]/.test(c)) this.fail(`bad escape \\${c}`, at);
    return c.codePointAt(0)!;
  }

  private charClass(at: number): Node {
    const negate = this.eat('^');
    const first = this.pos;
    const preds: Pred[] = [];
    for (;;) {
      const c = this.peek();
      if (c === undefined) this.fail('unterminated character set', at);
      if (c === ']' && this.pos !== first) {
        this.pos++;
        break;
      }
      const lo = this.classItem();
      if (this.peek() === '-' && this.peek(1) !== undefined && this.peek(1) !== ']') {
        const dash = this.pos++;
        const hi = this.classItem();
        if (typeof lo !== 'number' || typeof hi !== 'number' || hi < lo) this.fail('bad character range', dash);
        preds.push((x) => x >= lo && x <= hi);
      } else {
        preds.push(typeof lo === 'number' ? (x) => x === lo : lo);
      }
    }
    return { t: 'char', pred: (x) => preds.some((p) => p(x)) !== negate };
  }

  private classItem(): number | Pred {
    const at = this.pos;
    const cp = this.src[this.pos++]!;
    if (cp !== 0x5c) return cp;
    return this.escape(at, true) as number | Pred; // no anchors inside a class
  }
}

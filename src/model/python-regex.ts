// Python `re.fullmatch` for the patterns PEFT adapter configs put in target_modules, in time
// linear in the text: the pattern compiles to an NFA that is simulated one set of states per
// character (Thompson / Pike), never by backtracking, so a hostile pattern such as "(.+)+Z"
// costs what a plain one does. Only constructs whose meaning for fullmatch is fixed are
// accepted; the rest (backreferences, lookaround, inline flags, ...) are refused by name.
// The pattern's length and the size of its compiled form are capped, which bounds memory too.

export const MAX_PATTERN_LENGTH = 1000;
/**
 * NFA instructions (and repetition copies) after counted repetitions like {m,n} are written out.
 * Any pattern within MAX_PATTERN_LENGTH and without counted repetitions compiles to fewer; the
 * cap bounds the work per character of text.
 */
export const MAX_PROGRAM_SIZE = 4_000;

export class RegexError extends Error {
  constructor(readonly detail: string, readonly position: number) {
    super(`${detail} (at position ${position})`);
    this.name = 'RegexError';
  }
}

type Pred = (cp: number) => boolean;
type Anchor = 'start' | 'end' | 'endOrFinalNewline';
type Node =
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
const SPACE = /^[\t\n\v\f\r\x1c-\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]$/u;
const CATEGORIES: Record<string, Pred> = {
  d: (c) => DIGIT.test(String.fromCodePoint(c)),
  w: (c) => WORD.test(String.fromCodePoint(c)),
  s: (c) => SPACE.test(String.fromCodePoint(c)),
};
const CONTROL: Record<string, number> = { a: 7, f: 12, n: 10, r: 13, t: 9, v: 11 };
const NEWLINE = 10;
const UNSUPPORTED_GROUPS: Array<[string, string]> = [
  ['P=', 'named backreferences (?P=...)'], ['=', 'lookahead assertions (?=...)'], ['!', 'lookahead assertions (?!...)'],
  ['<=', 'lookbehind assertions (?<=...)'], ['<!', 'lookbehind assertions (?<!...)'], ['#', 'comments (?#...)'],
  ['>', 'atomic groups (?>...)'], ['(', 'conditional groups (?(...)...)'],
];

/** Python's sre_parse rules for the supported subset, including which mistakes are errors. */
class Parser {
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
      case '(': return this.group(at);
      case '[': return this.charClass(at);
      case '.': return { t: 'char', pred: (x) => x !== NEWLINE };
      case '^': return { t: 'assert', anchor: 'start' };
      case '$': return { t: 'assert', anchor: 'endOrFinalNewline' };
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

type Inst =
  | { op: 'char'; pred: Pred; next: number }
  | { op: 'split'; a: number; b: number }
  | { op: 'jmp'; to: number }
  | { op: 'assert'; anchor: Anchor; next: number }
  | { op: 'match' };

/** A flat program; each fragment falls through to whatever is emitted after it. */
function compile(root: Node): Inst[] {
  const prog: Inst[] = [];
  let work = 0;
  // Copies of an empty group emit nothing, so copies are charged as well as instructions.
  const charge = (): void => {
    if (++work > MAX_PROGRAM_SIZE) {
      throw new RegexError(`the pattern is too large: its repetitions expand to more than ${MAX_PROGRAM_SIZE} states`, 0);
    }
  };
  const emit = (i: Inst): number => (charge(), prog.push(i) - 1);
  const split = (): number => emit({ op: 'split', a: prog.length + 1, b: -1 });
  const land = (at: number): void => {
    const i = prog[at]!;
    if (i.op === 'split') i.b = prog.length;
    else if (i.op === 'jmp') i.to = prog.length;
  };
  const gen = (n: Node): void => {
    switch (n.t) {
      case 'char': emit({ op: 'char', pred: n.pred, next: prog.length + 1 }); return;
      case 'assert': emit({ op: 'assert', anchor: n.anchor, next: prog.length + 1 }); return;
      case 'group': gen(n.body); return;
      case 'cat': n.items.forEach(gen); return;
      case 'alt': {
        const exits: number[] = [];
        n.alts.forEach((alt, i) => {
          if (i === n.alts.length - 1) return gen(alt);
          const s = split();
          gen(alt);
          exits.push(emit({ op: 'jmp', to: -1 }));
          land(s);
        });
        exits.forEach(land);
        return;
      }
      case 'rep': {
        for (let i = 0; i < n.min; i++) (charge(), gen(n.node));
        if (n.max === Infinity) {
          const loop = split();
          gen(n.node);
          emit({ op: 'jmp', to: loop });
          land(loop);
          return;
        }
        const skips: number[] = [];
        for (let i = n.min; i < n.max; i++) (skips.push(split()), gen(n.node));
        skips.forEach(land);
        return;
      }
    }
  };
  gen(root);
  emit({ op: 'match' });
  return prog;
}

/** Where a set of states stands in the text, for ^ $ \A \Z. */
interface Place {
  start: boolean;
  /** Characters after this position. */
  left: number;
  lastIsNewline: boolean;
}
const DIGITS = Array.from({ length: 10 }, (_, i) => 48 + i);

export class PythonRegex {
  private readonly mark: Int32Array;
  private stamp = 0;

  private constructor(private readonly prog: Inst[]) {
    this.mark = new Int32Array(prog.length);
  }

  /** Throws RegexError, naming the construct and its position, for what Python or this engine refuses. */
  static compile(pattern: string): PythonRegex {
    if (pattern.length > MAX_PATTERN_LENGTH) {
      throw new RegexError(`the pattern is ${pattern.length} characters long; at most ${MAX_PATTERN_LENGTH} are supported`, MAX_PATTERN_LENGTH);
    }
    return new PythonRegex(compile(new Parser(Array.from(pattern, (c) => c.codePointAt(0)!)).parse()));
  }

  /** Python's `re.fullmatch(pattern, text) is not None`. */
  fullmatch(text: string): boolean {
    return this.matched(this.feed([0], text, true, 0, text.endsWith('\n')));
  }

  /**
   * Whether `prefix + N + suffix` fullmatches for some N written in decimal without leading
   * zeros (a layer index), answered exactly by closing the state set over digit strings.
   */
  fullmatchAnyIndex(prefix: string, suffix: string): boolean {
    const lastIsNewline = suffix.endsWith('\n');
    // At least one digit and the suffix follow the prefix, so no end anchor can hold in it.
    const before = this.feed([0], prefix, true, 1 + suffix.length, lastIsNewline);
    const afterZero = this.stepRaw(before, [48]);
    const afterMany = this.stepRaw(before, DIGITS.slice(1));
    // Between two digits no anchor holds; one stamp for the whole walk visits each state once.
    const between: Place = { start: false, left: 2, lastIsNewline: false };
    const stamp = ++this.stamp;
    const seen = new Set(afterMany);
    for (let i = 0; i < afterMany.length; i++) {
      for (const next of this.stepRaw(this.closure([afterMany[i]!], between, stamp), DIGITS)) {
        if (!seen.has(next)) (seen.add(next), afterMany.push(next));
      }
    }
    return this.matched(this.feed([...afterZero, ...afterMany], suffix, false, 0, lastIsNewline));
  }

  /** Closes `raw` at the chunk's start, then steps through the chunk; `after` characters follow it. */
  private feed(raw: number[], chunk: string, startsText: boolean, after: number, lastIsNewline: boolean): number[] {
    const cps = Array.from(chunk, (c) => c.codePointAt(0)!);
    const place = (i: number): Place => ({ start: startsText && i === 0, left: cps.length - i + after, lastIsNewline });
    let set = this.closure(raw, place(0));
    for (let i = 0; i < cps.length && set.length > 0; i++) set = this.closure(this.stepRaw(set, [cps[i]!]), place(i + 1));
    return set;
  }

  private matched(set: number[]): boolean {
    return set.some((pc) => this.prog[pc]!.op === 'match');
  }

  /** Targets of the character instructions in `set` that accept any of `chars`, not yet closed. */
  private stepRaw(set: number[], chars: number[]): number[] {
    const out: number[] = [];
    for (const pc of set) {
      const inst = this.prog[pc]!;
      if (inst.op === 'char' && chars.some(inst.pred)) out.push(inst.next);
    }
    return out;
  }

  /** The character and match states reachable without consuming; anchors are checked at `place`. */
  private closure(raw: number[], place: Place, stamp = ++this.stamp): number[] {
    const out: number[] = [];
    const stack: number[] = [];
    for (let i = raw.length - 1; i >= 0; i--) stack.push(raw[i]!);
    while (stack.length > 0) {
      const pc = stack.pop()!;
      if (this.mark[pc] === stamp) continue;
      this.mark[pc] = stamp;
      const inst = this.prog[pc]!;
      if (inst.op === 'split') stack.push(inst.b, inst.a);
      else if (inst.op === 'jmp') stack.push(inst.to);
      else if (inst.op !== 'assert') out.push(pc);
      else if (holds(inst.anchor, place)) stack.push(inst.next);
    }
    return out;
  }
}

function holds(anchor: Anchor, p: Place): boolean {
  if (anchor === 'start') return p.start;
  if (anchor === 'end') return p.left === 0;
  return p.left === 0 || (p.left === 1 && p.lastIsNewline);
}

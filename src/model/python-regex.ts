// Python `re.fullmatch` for the patterns PEFT adapter configs put in target_modules, in time
// linear in the text: the pattern compiles to an NFA that is simulated one set of states per
// character (Thompson / Pike), never by backtracking, so a hostile pattern such as "(.+)+Z"
// costs what a plain one does. Only constructs whose meaning for fullmatch is fixed are
// accepted; the rest (backreferences, lookaround, inline flags, ...) are refused by name.
// The pattern's length and the size of its compiled form are capped, which bounds memory too.
import { Parser, RegexError, type Anchor, type Node, type Pred } from './python-regex-parser.js';

export { RegexError };

export const MAX_PATTERN_LENGTH = 1000;
/**
 * NFA instructions (and repetition copies) after counted repetitions like {m,n} are written out.
 * Any pattern within MAX_PATTERN_LENGTH and without counted repetitions compiles to fewer; the
 * cap bounds the work per character of text.
 */
export const MAX_PROGRAM_SIZE = 4_000;

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
      case 'char':
        emit({ op: 'char', pred: n.pred, next: prog.length + 1 });
        return;
      case 'assert':
        emit({ op: 'assert', anchor: n.anchor, next: prog.length + 1 });
        return;
      case 'group':
        gen(n.body);
        return;
      case 'cat':
        n.items.forEach(gen);
        return;
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
        for (let i = 0; i < n.min; i++) {
          charge();
          gen(n.node);
        }
        if (n.max === Infinity) {
          const loop = split();
          gen(n.node);
          emit({ op: 'jmp', to: loop });
          land(loop);
          return;
        }
        const skips: number[] = [];
        for (let i = n.min; i < n.max; i++) {
          skips.push(split());
          gen(n.node);
        }
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
        if (!seen.has(next)) {
          seen.add(next);
          afterMany.push(next);
        }
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

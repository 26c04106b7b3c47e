// The trained demo model (models/demo), which `npm start` serves once its files are there:
// greedy outputs through troupe's own engine must be English words, each adapter must move them
// towards the style it was trained on, and they must equal the greedy outputs of transformers and
// PEFT recorded when the model was made. The prompts and thresholds are in
// demo-train/styles.json, which demo-train/train.py also checks when it makes the model.
// Skipped, with the reason in the suite's name, while models/demo does not exist.
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { trainedDemo } from '../src/cli/demo-model.js';
import { resolveServeArgs } from '../src/cli/serve.js';
import { ChatTemplate } from '../src/http/openai/chat-template.js';
import { packageRoot, trainedDemoDir } from '../src/paths.js';
import { createEngine, type LocalTroupeEngine } from '../src/troupe.js';

interface MarkerCheck {
  corpus: string;
  style: string;
  markers: string[];
  minRate: number;
  minRatio: number;
}
interface PatternCheck {
  corpus: string;
  style: string;
  pattern: string;
  minShare: number;
}
interface Styles {
  completionPrompts: string[];
  chatPrompts: string[];
  maxNewTokens: number;
  realWords: number;
  adapters: Record<string, MarkerCheck | PatternCheck>;
}

const DIR = trainedDemoDir();
const PRESENT = existsSync(join(DIR, 'config.json'));
const styles = JSON.parse(readFileSync(join(packageRoot(), 'demo-train', 'styles.json'), 'utf8')) as Styles;
const english = new Set(
  readFileSync(join(packageRoot(), 'test', 'fixtures', 'demo-words.txt'), 'utf8')
    .split('\n')
    .filter((w) => w !== ''),
);

/** Lower-case words, as train.py's words_of splits them. */
const wordsOf = (text: string): string[] => text.toLowerCase().match(/[a-z]+(?:'[a-z]+)?/g) ?? [];
const share = (texts: string[], hit: (w: string) => boolean): number => {
  const words = texts.flatMap(wordsOf);
  return words.filter(hit).length / Math.max(1, words.length);
};

const SUITE = PRESENT
  ? `the trained demo model in ${DIR}`
  : `the trained demo model (skipped: ${join(DIR, 'config.json')} does not exist; demo-train/README.md says how it is made)`;

describe.skipIf(!PRESENT)(SUITE, () => {
  let engine: LocalTroupeEngine;
  let chat: ChatTemplate;
  /** Greedy outputs for every prompt of styles.json, by adapter (null: the base model). */
  const outputs = new Map<string | null, string[]>();

  beforeAll(async () => {
    const { options } = resolveServeArgs(['--device', 'cpu', '--log-level', 'error', '--max-total-tokens', '8192'], trainedDemo(DIR));
    engine = await createEngine(options);
    chat = ChatTemplate.fromTokenizerDir(DIR);
    const prompts = [...styles.completionPrompts, ...styles.chatPrompts.map((q) => chat.render([{ role: 'user', content: q }], true))];
    for (const lora of [null, ...Object.keys(styles.adapters)]) {
      const texts = await Promise.all(
        prompts.map((text) => engine.generate({ text, lora, sampling: { maxNewTokens: styles.maxNewTokens, temperature: 0 } }).then((o) => o.text)),
      );
      outputs.set(lora, texts);
    }
  }, 300_000);

  afterAll(async () => {
    await engine?.close();
  });

  it('serves the adapters that demo-train/styles.json checks', () => {
    expect(trainedDemo(DIR).adapters.map((a) => a.name)).toEqual(Object.keys(styles.adapters).sort());
  });

  it('generates the greedy outputs transformers and PEFT gave when the model was made (its report.json)', () => {
    // report.json keeps, per adapter (and the base model), transformers' greedy continuation of
    // some of the prompts above, chat prompts marked "[chat] "; same token budget, same stops.
    const report = JSON.parse(readFileSync(join(DIR, 'report.json'), 'utf8')) as {
      base: { samples: Record<string, string> };
      adapters: Record<string, { samples: Record<string, string> }>;
    };
    const keys = [...styles.completionPrompts, ...styles.chatPrompts.map((q) => `[chat] ${q}`)];
    const sets: Array<[string | null, Record<string, string>]> = [
      [null, report.base.samples],
      ...Object.entries(report.adapters).map(([n, a]) => [n, a.samples] as [string, Record<string, string>]),
    ];
    let compared = 0;
    for (const [lora, samples] of sets) {
      for (const [key, want] of Object.entries(samples)) {
        const i = keys.indexOf(key);
        expect(i, `${key} is one of styles.json's prompts`).toBeGreaterThanOrEqual(0);
        expect(outputs.get(lora)![i], `${lora ?? 'base'}: ${key}`).toBe(want);
        compared++;
      }
    }
    expect(compared).toBeGreaterThanOrEqual(4 * 5);
  });

  it('renders chat prompts in the format it was trained on', () => {
    expect(chat.render([{ role: 'user', content: ' What is love? ' }], true)).toBe('<|user|>\nWhat is love?<|end|>\n<|assistant|>\n');
  });

  it('writes mostly English words without an adapter', () => {
    const base = outputs.get(null)!;
    // It writes: a few words a prompt at least, not an end of sequence at once.
    expect(base.flatMap(wordsOf).length).toBeGreaterThanOrEqual(3 * base.length);
    expect(share(base, (w) => english.has(w))).toBeGreaterThanOrEqual(styles.realWords);
  });

  for (const [name, spec] of Object.entries(styles.adapters)) {
    it(`${name} moves the outputs towards ${spec.style}`, () => {
      const base = outputs.get(null)!;
      const adapted = outputs.get(name)!;
      expect(adapted).not.toEqual(base);
      expect(share(adapted, (w) => english.has(w))).toBeGreaterThanOrEqual(styles.realWords);
      if ('markers' in spec) {
        const markers = new Set(spec.markers);
        const rate = share(adapted, (w) => markers.has(w));
        expect(rate).toBeGreaterThanOrEqual(spec.minRate);
        expect(rate).toBeGreaterThanOrEqual(spec.minRatio * share(base, (w) => markers.has(w)));
      } else {
        const re = new RegExp(spec.pattern);
        const matching = (texts: string[]): number => texts.filter((t) => re.test(t)).length / texts.length;
        expect(matching(adapted)).toBeGreaterThanOrEqual(spec.minShare);
        expect(matching(adapted)).toBeGreaterThan(matching(base));
      }
    });
  }
});

// The README's performance tables hold what the results files say: the rows of a sitting are the
// rows bench/sitting-table.js makes from its file, and every results file the README and the
// performance notes name is in bench/results.
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';

import { gatherSitting } from '../bench/sitting.js';
import { isSitting, sittingRows } from '../bench/sitting-table.js';

const root = new URL('..', import.meta.url).pathname;
const results = join(root, 'bench/results');
const readme = readFileSync(join(root, 'README.md'), 'utf8');
const readJson = (file: string): unknown => JSON.parse(readFileSync(join(results, file), 'utf8'));

/** `a-{b,c}.json` as `a-b.json`, `a-c.json` (the notes name families of files so). */
function expandBraces(name: string): string[] {
  const m = /\{([^}]*)\}/.exec(name);
  if (!m) return [name];
  return m[1]!.split(',').flatMap((part) => expandBraces(name.replace(m[0], part)));
}

/** Every dated results file a text names. */
function namedResults(text: string): string[] {
  const names = text.match(/\d{4}-\d{2}-\d{2}-[A-Za-z0-9.{},_-]*\.json/g) ?? [];
  return [...new Set(names.flatMap(expandBraces))];
}

/** The README's table rows that name `file` in their last cell. */
function rowsNaming(file: string): string[] {
  return readme.split('\n').filter((line) => {
    if (!line.startsWith('|')) return false;
    const cells = line.split('|').filter((c) => c.trim() !== '');
    return cells.at(-1)?.includes(`\`${file}\``) ?? false;
  });
}

describe("the README's performance tables", () => {
  const sittings = [...new Set(namedResults(readme))].filter((f) => isSitting(readJson(f)));

  it('show at least one sitting', () => {
    expect(sittings.length).toBeGreaterThan(0);
  });

  it.each(sittings)('hold the rows bench/sitting-table.js makes from %s', (file) => {
    const made = sittingRows(readJson(file), file);
    // Made rows in the README, in their order, and no other row naming that file.
    expect(rowsNaming(file)).toEqual(made);
  });

  it('name only results files that are in bench/results', () => {
    const present = new Set(readdirSync(results));
    const texts = [readme, ...readdirSync(join(root, 'docs')).map((f) => readFileSync(join(root, 'docs', f), 'utf8'))];
    const missing = texts.flatMap(namedResults).filter((f) => !present.has(f));
    expect(missing).toEqual([]);
  });
});

describe('a sitting', () => {
  const dirs: string[] = [];
  afterEach(() => {
    for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
  });
  const sittingDir = (files: Record<string, unknown>): string => {
    const dir = mkdtempSync(join(tmpdir(), 'troupe-sitting-'));
    dirs.push(dir);
    for (const [name, value] of Object.entries(files)) writeFileSync(join(dir, name), typeof value === 'string' ? value : JSON.stringify(value));
    return dir;
  };
  // The parts of a real sitting, as the benchmarks wrote them.
  const real = readJson('2026-12-04-h200-all-rows.json') as Record<string, unknown> & { repeats: unknown[] };
  const parts = {
    'decode.json': real.gpuDecode,
    'hf.json': real.transformers,
    'peft.json': real.peft,
    'lora.json': real.gpuLora,
    'overhead-1.json': real.serveOverhead,
    'overhead-2.json': real.repeats[0],
  };

  it("is gathered from a folder of the benchmarks' files into the rows its tables show", () => {
    const { result, missing } = gatherSitting(sittingDir(parts), 'what it measured');
    expect(missing).toEqual([]);
    expect(result).toMatchObject({ date: '2026-12-04', gpu: 'NVIDIA H200', what: 'what it measured' });
    expect(sittingRows(result, 'x.json')).toEqual(sittingRows(real, 'x.json'));
  });

  it("takes HTTP runs in their numbers' order, the first as serveOverhead", () => {
    const a = { ...(real.serveOverhead as object), stepAloneMs: 1 };
    const b = { ...(real.serveOverhead as object), stepAloneMs: 2 };
    const c = { ...(real.serveOverhead as object), stepAloneMs: 3 };
    const { result } = gatherSitting(sittingDir({ ...parts, 'overhead-1.json': a, 'overhead-2.json': b, 'overhead-10.json': c }));
    expect([result.serveOverhead, ...result.repeats].map((r: { stepAloneMs: number }) => r.stepAloneMs)).toEqual([1, 2, 3]);
    expect(sittingRows(result, 'x.json').at(-1)).toContain('the step alone 1.00 / 2.00 / 3.00 ms');
  });

  it('keeps what a sitting cut short measured, and names what it lacks', () => {
    const { 'lora.json': _lora, 'overhead-2.json': _second, ...rest } = parts;
    const { result, missing } = gatherSitting(sittingDir(rest));
    expect(missing).toEqual(['lora.json']);
    expect(result.repeats).toBeUndefined();
    expect(isSitting(result)).toBe(false);
    expect(() => sittingRows(result, 'short.json')).toThrow('short.json: no gpuLora');
  });

  it('refuses a part that is not JSON, naming the file', () => {
    expect(() => gatherSitting(sittingDir({ ...parts, 'hf.json': '{"copyBandwidth' }))).toThrow(/hf\.json: not JSON/);
  });

  it('says which run a LoRA row lacks', () => {
    const lora = real.gpuLora as { runs: { rank: number; adapters: number }[] };
    const cut = { ...real, gpuLora: { ...lora, runs: lora.runs.filter((r) => !(r.rank === 64 && r.adapters === 0)) } };
    expect(() => sittingRows(cut, 'cut.json')).toThrow('cut.json: no gpuLora run of rank 64 over 0 adapters');
  });
});

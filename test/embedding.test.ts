// The embeddable API as the README shows it: the package entry point, options left to their
// defaults, and generate / stream / loadAdapter / unloadAdapter / close without HTTP.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { makeDemo } from '../src/model/demo.js';
import { createEngine, TroupeError, type LocalTroupeEngine } from '../src/index.js';

let dir = '';
let engine: LocalTroupeEngine;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'troupe-embed-'));
  makeDemo(dir);
  engine = await createEngine({
    modelPath: dir,
    loraPaths: [{ name: 'demo-a', path: join(dir, 'adapters', 'demo-a') }],
    device: 'cpu',
    maxTotalTokens: 4096,
  });
});

afterAll(async () => {
  await engine?.close();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe('createEngine with defaults', () => {
  it('generates with partial sampling options, and the stream ends with the same output', async () => {
    const req = { text: 'Hello', lora: 'demo-a', sampling: { maxNewTokens: 6, temperature: 0, ignoreEos: true } };
    const out = await engine.generate(req);
    expect(out.completionTokens).toBe(6);
    expect(out.finishReason).toEqual({ type: 'length', length: 6 });
    let last = null;
    for await (const chunk of engine.stream(req)) last = chunk;
    expect(last?.outputIds).toEqual(out.outputIds);
    expect(last?.text).toBe(out.text);
  });

  it('loads and unloads an adapter at run time', async () => {
    // The pool was sized from demo-a (rank 8, q/v), so a second adapter must fit that shape.
    const status = await engine.loadAdapter({ name: 'b', path: join(dir, 'adapters', 'demo-a') });
    expect(status.rank).toBe(8);
    await expect(engine.loadAdapter({ name: 'c', path: join(dir, 'adapters', 'demo-b') })).rejects.toThrow(/rank 16, above --max-lora-rank 8/);
    const req = { text: 'Hello', sampling: { maxNewTokens: 4, temperature: 0, ignoreEos: true } };
    const [base, withB] = await Promise.all([engine.generate(req), engine.generate({ ...req, lora: 'b' })]);
    expect(withB.outputIds).not.toEqual(base.outputIds);
    await engine.unloadAdapter('b');
    await expect(engine.unloadAdapter('b')).rejects.toThrow(TroupeError);
    // A name once loaded stays servable: a request loads it again; one never loaded is refused.
    expect((await engine.generate({ ...req, lora: 'b' })).outputIds).toEqual(withB.outputIds);
    await expect(engine.generate({ ...req, lora: 'never' })).rejects.toThrow(/has never been loaded/);
  });

  it('applies the same option rules as the command line', async () => {
    await expect(createEngine({ modelPath: dir, enableLora: true })).rejects.toThrow(/--max-lora-rank and --lora-target-modules/);
  });
});

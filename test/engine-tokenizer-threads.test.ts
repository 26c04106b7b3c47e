// --tokenizer-worker-num reaches the tokenizer pool: the engine reports the threads its pool was
// made with, and /get_server_info shows them under SGLang's name.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createApp } from '../src/http/app.js';
import { parseArgs } from '../src/config/parse.js';
import { validateFlags } from '../src/config/validate.js';
import { makeDemo } from '../src/model/demo.js';
import { createEngine, type LocalTroupeEngine } from '../src/troupe.js';

let dir = '';
let engine: LocalTroupeEngine;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'troupe-tok-threads-'));
  makeDemo(dir);
  const { options } = validateFlags(parseArgs(['--model-path', dir, '--device', 'cpu', '--tokenizer-worker-num', '3']).flags);
  engine = await createEngine(options);
}, 120_000);

afterAll(async () => {
  await engine?.close();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe('--tokenizer-worker-num', () => {
  it('sizes the tokenizer pool', async () => {
    expect(engine.modelInfo().tokenizerWorkers).toBe(3);
    const res = await createApp(engine, { servedModelName: 'demo' }).request('/get_server_info');
    expect(((await res.json()) as { tokenizer_worker_num: number }).tokenizer_worker_num).toBe(3);
    // And the pool works at that size.
    expect((await engine.generate({ text: 'a b', sampling: { temperature: 0, maxNewTokens: 2, ignoreEos: true } })).completionTokens).toBe(2);
  });
});

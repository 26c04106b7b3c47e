// Loading adapters at run time. Each load is logged once, with its rank, whichever way it comes:
// at start from --lora-paths, through /load_lora_adapter, or from the embedded API (it was logged
// twice, once with "(rank null)"). An adapter's config is read by the loader thread, so a
// hostile target_modules pattern fails that load alone with a 400 while requests keep running.
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createApp } from '../src/http/app.js';
import { makeDemo } from '../src/model/demo.js';
import { createEngine, type LocalTroupeEngine } from '../src/troupe.js';

let dir = '';
let engine: LocalTroupeEngine;
const lines: string[] = [];

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'troupe-load-log-'));
  makeDemo(dir);
  engine = await createEngine({
    modelPath: dir,
    device: 'cpu',
    enableLora: true,
    maxLoraRank: 16,
    loraTargetModules: ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'],
    loraPaths: [{ name: 'a', path: join(dir, 'adapters', 'demo-a') }],
    log: (_level, msg) => lines.push(msg),
  });
}, 120_000);

afterAll(async () => {
  await engine?.close();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

const loadLines = (name: string): string[] => lines.filter((l) => l.startsWith(`loaded LoRA adapter '${name}'`));

describe('adapter load log', () => {
  it('has one line per load, naming the rank', async () => {
    expect(loadLines('a')).toEqual([`loaded LoRA adapter 'a' (rank 8) from ${join(dir, 'adapters', 'demo-a')}`]);

    const app = createApp(engine, { servedModelName: 'demo' });
    const res = await app.request('/load_lora_adapter', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ lora_name: 'b', lora_path: join(dir, 'adapters', 'demo-b') }),
    });
    expect(res.status).toBe(200);
    await engine.loadAdapter({ name: 'b2', path: join(dir, 'adapters', 'demo-b'), pinned: true });

    expect(loadLines('b')).toEqual([`loaded LoRA adapter 'b' (rank 16) from ${join(dir, 'adapters', 'demo-b')}`]);
    expect(loadLines('b2')).toEqual([`loaded LoRA adapter 'b2' (pinned) (rank 16) from ${join(dir, 'adapters', 'demo-b')}`]);
    expect(lines.filter((l) => l.includes('rank null'))).toEqual([]);
  });

  it('refuses a hostile target_modules pattern with a 400 naming the file, while a request runs', async () => {
    const bad = join(dir, 'adapters', 'hostile');
    cpSync(join(dir, 'adapters', 'demo-a'), bad, { recursive: true });
    const file = join(bad, 'adapter_config.json');
    writeFileSync(file, JSON.stringify({ ...JSON.parse(readFileSync(file, 'utf8')), target_modules: '(.+)+Z' }));
    const running = engine.generate({ text: 'a b c', lora: 'a', sampling: { temperature: 0, maxNewTokens: 24, ignoreEos: true } });
    await expect(engine.loadAdapter({ name: 'hostile', path: bad })).rejects.toMatchObject({
      status: 400,
      message: expect.stringMatching(/adapter_config\.json: target_modules: the pattern matches none of the linear layers/),
    });
    expect((await running).completionTokens).toBe(24);
    expect((await engine.adapters()).map((a) => a.name)).not.toContain('hostile');
  });
});

// End to end: a real `troupe serve` process on the demo model it picks by itself (the trained
// one when models/demo is there, else the generated one, made on first use), driven over HTTP
// the way the README's curl examples do.
import { spawn, type ChildProcess } from 'node:child_process';
import { freePort } from './free-port.js';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { defaultDemo } from '../src/cli/demo-model.js';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..');
const PROMPT = 'List 3 countries and their capitals.';
// The first two adapters of the demo model that the server serves.
const [ADAPTER_1, ADAPTER_2] = defaultDemo().adapters.map((a) => a.name) as [string, string];

let child: ChildProcess | null = null;
let output = '';
let base = '';

async function waitForHealth(proc: ChildProcess): Promise<void> {
  let exited: string | null = null;
  proc.once('exit', (code, signal) => {
    exited = `exited with ${code ?? signal}`;
  });
  for (;;) {
    if (exited) throw new Error(`troupe serve ${exited} before it was healthy:\n${output.slice(-4000)}`);
    try {
      const res = await fetch(`${base}/health`);
      if (res.status === 200) return;
    } catch {
      // not listening yet
    }
    await new Promise((r) => setTimeout(r, 250));
  }
}

beforeAll(async () => {
  const port = await freePort();
  base = `http://127.0.0.1:${port}`;
  child = spawn(process.execPath, ['bin/troupe.js', 'serve', '--host', '127.0.0.1', '--port', String(port)], {
    cwd: ROOT,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  child.stdout!.on('data', (d: Buffer) => {
    output += d.toString();
  });
  child.stderr!.on('data', (d: Buffer) => {
    output += d.toString();
  });
  await waitForHealth(child);
}, 600_000);

afterAll(async () => {
  const proc = child;
  if (!proc || proc.exitCode !== null || proc.signalCode !== null) return;
  const gone = new Promise<void>((r) => proc.once('exit', () => r()));
  proc.kill('SIGTERM');
  const timer = setTimeout(() => proc.kill('SIGKILL'), 15_000);
  await gone;
  clearTimeout(timer);
}, 30_000);

const generate = (body: unknown): Promise<Response> =>
  fetch(`${base}/generate`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: typeof body === 'string' ? body : JSON.stringify(body),
  });

interface Item {
  text: string;
  output_ids: number[];
  index?: number;
  meta_info: { id: string; finish_reason: { type: string } | null; prompt_tokens: number; completion_tokens: number; cached_tokens: number };
}

async function errorMessage(res: Response, status: number): Promise<string> {
  expect(res.status).toBe(status);
  const body = (await res.json()) as { error: { message: string; code: number } };
  expect(body.error.code).toBe(status);
  return body.error.message;
}

describe('troupe serve over HTTP', () => {
  it('runs the README batch: one prompt on an adapter and on the base model, different texts', async () => {
    const res = await generate({
      text: [PROMPT, PROMPT],
      sampling_params: { max_new_tokens: 32, temperature: 0 },
      lora_path: [ADAPTER_1, null],
    });
    expect(res.status).toBe(200);
    const items = (await res.json()) as Item[];
    expect(items).toHaveLength(2);
    for (const item of items) {
      expect(typeof item.text).toBe('string');
      expect(item.meta_info.prompt_tokens).toBeGreaterThan(0);
      expect(item.output_ids).toHaveLength(item.meta_info.completion_tokens);
      if (item.meta_info.finish_reason?.type !== 'stop') expect(item.meta_info.completion_tokens).toBe(32);
    }
    expect(items[0]!.text).not.toBe(items[1]!.text);
  });

  it("reads a repeated prompt's beginning from the prefix cache until /flush_cache", async () => {
    const ask = async () => {
      const res = await generate({ text: PROMPT.repeat(4), sampling_params: { max_new_tokens: 4, temperature: 0 } });
      expect(res.status).toBe(200);
      return (await res.json()) as Item;
    };
    const first = await ask();
    const second = await ask();
    expect(second.text).toBe(first.text);
    expect(second.meta_info.cached_tokens).toBeGreaterThan(0);
    expect(second.meta_info.cached_tokens).toBeLessThan(second.meta_info.prompt_tokens);
    const flush = await fetch(`${base}/flush_cache`, { method: 'POST' });
    expect(flush.status).toBe(200);
    const third = await ask();
    expect(third.meta_info.cached_tokens).toBe(0);
    expect(third.text).toBe(first.text);
  });

  it('answers a single prompt with one object', async () => {
    const res = await generate({ text: PROMPT, sampling_params: { max_new_tokens: 4, temperature: 0 } });
    expect(res.status).toBe(200);
    const item = (await res.json()) as Item;
    expect(Array.isArray(item)).toBe(false);
    expect(typeof item.text).toBe('string');
    expect(item.meta_info.completion_tokens).toBeGreaterThan(0);
    expect(item.meta_info.completion_tokens).toBeLessThanOrEqual(4);
  });

  it('answers an unknown adapter with 400 naming it', async () => {
    const res = await generate({ text: PROMPT, lora_path: 'no-such-adapter' });
    expect(await errorMessage(res, 400)).toContain('no-such-adapter');
  });

  it('answers malformed JSON with 400', async () => {
    expect(await errorMessage(await generate('{"text": '), 400)).toContain('JSON');
  });

  it('answers a lora_path list of the wrong length with 400', async () => {
    const res = await generate({ text: [PROMPT, PROMPT], lora_path: [ADAPTER_1, null, ADAPTER_2] });
    expect(await errorMessage(res, 400)).toContain('lora_path');
  });

  it('streams SSE events ending with [DONE]', async () => {
    const res = await generate({
      text: PROMPT,
      stream: true,
      lora_path: ADAPTER_2,
      sampling_params: { max_new_tokens: 8, temperature: 0 },
    });
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toContain('text/event-stream');
    const raw = await res.text();
    expect(raw.endsWith('data: [DONE]\n\n')).toBe(true);
    const events = raw.split('\n\n').filter((e) => e !== '');
    expect(events.every((e) => e.startsWith('data: '))).toBe(true);
    const items = events.slice(0, -1).map((e) => JSON.parse(e.slice(6)) as Item);
    expect(items.length).toBeGreaterThan(0);
    const counts = items.map((i) => i.meta_info.completion_tokens);
    expect([...counts].sort((a, b) => a - b)).toEqual(counts);
    const last = items.at(-1)!;
    expect(last.meta_info.finish_reason).not.toBeNull();
    expect(last.output_ids).toHaveLength(last.meta_info.completion_tokens);
  });

  it('still answers /health after the bad requests', async () => {
    const res = await fetch(`${base}/health`);
    expect(res.status).toBe(200);
  });
});

// `troupe serve` as a process: a port it cannot bind, draining on SIGTERM, a second signal,
// and exiting when an essential actor dies. The server runs the generated demo model, named
// explicitly: its random weights never end an output early, so requests run until they are cut.
import { spawn, type ChildProcess } from 'node:child_process';
import { EventEmitter } from 'node:events';
import { createServer, type AddressInfo, type Server } from 'node:net';
import { freePort } from './free-port.js';
import { fileURLToPath } from 'node:url';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { Supervisor } from '../src/actors/supervisor.js';
import { runServe } from '../src/cli/serve.js';
import { createApp } from '../src/http/app.js';
import { loadingApp, startServer } from '../src/http/server.js';
import { makeDemo } from '../src/model/demo.js';
import { generatedDemoArgs } from './demo-server.js';
import { EchoEngine } from './http-echo-engine.js';
import { tempDir } from './model-fixtures.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const demoDir = tempDir('troupe-serve-lifecycle-');
let DEMO: string[] = [];
beforeAll(() => {
  makeDemo(demoDir.path);
  DEMO = generatedDemoArgs(demoDir.path);
}, 120_000);
afterAll(() => demoDir.cleanup());

/** A `troupe serve` child process whose stderr (the log) is gathered as it comes. */
class ServeProcess {
  readonly child: ChildProcess;
  stderr = '';
  /** Resolves once the process has exited and its output is read. */
  readonly closed: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  private readonly watchers = new Set<() => void>();
  private ended = false;

  constructor(args: string[]) {
    this.child = spawn(process.execPath, ['bin/troupe.js', 'serve', ...args], { cwd: ROOT, stdio: ['ignore', 'ignore', 'pipe'] });
    this.child.stderr!.setEncoding('utf8').on('data', (d: string) => {
      this.stderr += d;
      this.notify();
    });
    this.closed = new Promise((resolve) => {
      this.child.once('close', (code, signal) => {
        this.ended = true;
        this.notify();
        resolve({ code, signal });
      });
    });
    running.add(this);
  }

  /** The first match of `re` in the log; fails if the process ends without printing it. */
  waitFor(re: RegExp): Promise<RegExpMatchArray> {
    return new Promise((resolve, reject) => {
      const check = (): void => {
        const m = this.stderr.match(re);
        if (m || this.ended) this.watchers.delete(check);
        if (m) resolve(m);
        else if (this.ended) reject(new Error(`the server exited without logging ${re}; its log:\n${this.stderr}`));
      };
      this.watchers.add(check);
      check();
    });
  }

  private notify(): void {
    for (const w of [...this.watchers]) w();
  }
}

const running = new Set<ServeProcess>();
afterEach(() => {
  for (const p of running) if (p.child.exitCode === null && p.child.signalCode === null) p.child.kill('SIGKILL');
  running.clear();
});

function listen(server: Server, port: number): Promise<number> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', () => resolve((server.address() as AddressInfo).port));
  });
}

async function startServe(extra: string[]): Promise<{ proc: ServeProcess; base: string }> {
  const port = await freePort();
  const proc = new ServeProcess(['--port', String(port), '--device', 'cpu', ...DEMO, ...extra]);
  await proc.waitFor(/serving demo on/);
  return { proc, base: `http://127.0.0.1:${port}` };
}

const generateBody = (lora: string, maxNewTokens: number, stream = false): string =>
  JSON.stringify({
    text: 'Once upon a time',
    lora_path: lora,
    stream,
    sampling_params: { max_new_tokens: maxNewTokens, temperature: 0, ignore_eos: true },
  });

const JSON_BODY = { 'content-type': 'application/json' };
const post = (base: string, body: string): Promise<Response> => fetch(`${base}/generate`, { method: 'POST', headers: JSON_BODY, body });

/** The data payloads of a server-sent event stream, read to its end. */
async function readEvents(res: Response): Promise<string[]> {
  const text = await res.text();
  return text
    .split('\n\n')
    .filter((e) => e.startsWith('data: '))
    .map((e) => e.slice('data: '.length));
}

/** Resolves once each adapter has at least the given number of running requests (in the engine, past admission). */
async function untilRunning(base: string, want: Record<string, number>): Promise<void> {
  for (;;) {
    const state = (await (await fetch(`${base}/debug/adapters/state`)).json()) as { adapters: Array<{ name: string; running: number }> };
    const running = new Map(state.adapters.map((a) => [a.name, a.running]));
    if (Object.entries(want).every(([name, n]) => (running.get(name) ?? 0) >= n)) return;
    await new Promise((r) => setTimeout(r, 50));
  }
}

interface ErrorBody {
  error: { message: string; code: number };
}

describe('troupe serve start-up', () => {
  it('the socket answers 503 "loading" on every route until the app is put in place', async () => {
    const server = await startServer(loadingApp(), '127.0.0.1', 0);
    try {
      const base = `http://127.0.0.1:${server.port}`;
      for (const res of [await fetch(`${base}/health`), await post(base, generateBody('demo-a', 1))]) {
        expect(res.status).toBe(503);
        expect(((await res.json()) as ErrorBody).error.message).toBe('the server is loading the model');
      }
      server.use(createApp(new EchoEngine(), { servedModelName: 'demo' }));
      expect((await fetch(`${base}/health`)).status).toBe(200);
    } finally {
      await server.close();
    }
  });

  it('a port in use ends the process with one line naming it, before the model is loaded', async () => {
    const blocker = createServer();
    const port = await listen(blocker, 0);
    try {
      const proc = new ServeProcess(['--port', String(port), '--device', 'cpu']);
      const { code } = await proc.closed;
      expect(code).not.toBe(0);
      expect(code).not.toBeNull();
      expect(proc.stderr.trimEnd().split('\n')).toEqual([`troupe: error: cannot listen on 127.0.0.1:${port}: the port is already in use`]);
    } finally {
      blocker.close();
    }
  });
});

describe('troupe serve on SIGTERM', () => {
  it('lets running requests finish, refuses new ones with 503, and exits 0', async () => {
    const { proc, base } = await startServe(['--graceful-shutdown-timeout', '300']);
    const plain = post(base, generateBody('demo-a', 64));
    const stream = post(base, generateBody('demo-b', 64, true));
    // A long stream that keeps the drain open until new work has been seen refused, however
    // fast the machine runs the two requests above; its client then hangs up, which ends it.
    const holder = new AbortController();
    const held = fetch(`${base}/generate`, { method: 'POST', headers: JSON_BODY, body: generateBody('demo-a', 4000, true), signal: holder.signal });
    held.catch(() => {});
    await untilRunning(base, { 'demo-a': 2, 'demo-b': 1 });
    proc.child.kill('SIGTERM');
    await proc.waitFor(/SIGTERM: shutting down/);

    const refused = await post(base, generateBody('demo-a', 1));
    expect(refused.status).toBe(503);
    expect(((await refused.json()) as ErrorBody).error.message).toMatch(/shutting down/);
    const health = await fetch(`${base}/health`);
    expect(health.status).toBe(503);
    expect(((await health.json()) as ErrorBody).error.message).toMatch(/shutting down/);

    const res = await plain;
    expect(res.status).toBe(200);
    const out = (await res.json()) as { meta_info: { finish_reason: { type: string }; completion_tokens: number } };
    expect(out.meta_info.finish_reason.type).toBe('length');
    expect(out.meta_info.completion_tokens).toBe(64);
    const events = await readEvents(await stream);
    expect(events.at(-1)).toBe('[DONE]');
    const last = JSON.parse(events.at(-2)!) as { error?: unknown; meta_info: { finish_reason: { type: string }; completion_tokens: number } };
    expect(last.error).toBeUndefined();
    expect(last.meta_info).toMatchObject({ finish_reason: { type: 'length' }, completion_tokens: 64 });
    expect(proc.child.exitCode).toBeNull(); // still draining: the held stream runs

    holder.abort();
    expect(await proc.closed).toEqual({ code: 0, signal: null });
    expect(proc.stderr).not.toMatch(/did not finish/);
  });

  it('ends requests still running after the grace period with an error (a stream: error event, then [DONE]) and exits 0', async () => {
    const { proc, base } = await startServe(['--graceful-shutdown-timeout', '1']);
    const plain = post(base, generateBody('demo-a', 4000));
    const stream = post(base, generateBody('demo-b', 4000, true));
    await untilRunning(base, { 'demo-a': 1, 'demo-b': 1 });
    proc.child.kill('SIGTERM');

    const res = await plain;
    expect(res.status).toBe(503);
    expect(((await res.json()) as ErrorBody).error.message).toMatch(/shut down before this request finished.*--graceful-shutdown-timeout/);
    const events = await readEvents(await stream);
    expect(events.at(-1)).toBe('[DONE]');
    expect((JSON.parse(events.at(-2)!) as ErrorBody).error).toMatchObject({ code: 503, message: expect.stringMatching(/shut down before/) });
    expect(events.length).toBeGreaterThan(2); // tokens went out before the end
    expect(await proc.closed).toEqual({ code: 0, signal: null });
    expect(proc.stderr).toMatch(/2 request\(s\) did not finish within 1 s/);
  });

  it('a second signal exits at once with a non-zero code', async () => {
    const { proc, base } = await startServe(['--graceful-shutdown-timeout', '300']);
    const stream = post(base, generateBody('demo-a', 4000, true));
    stream.catch(() => {}); // the connection is cut when the process exits
    await untilRunning(base, { 'demo-a': 1 });
    proc.child.kill('SIGTERM');
    await proc.waitFor(/SIGTERM: shutting down/);
    proc.child.kill('SIGTERM');
    expect(await proc.closed).toEqual({ code: 143, signal: null });
    expect(proc.stderr).toMatch(/SIGTERM again: exiting at once/);
  });
});

describe('troupe serve when an essential actor dies', () => {
  it('answers the running request with an error and exits non-zero', async () => {
    const port = await freePort();
    let exited!: (code: number) => void;
    const exitCode = new Promise<number>((r) => (exited = r));
    const handle = await runServe(['--port', String(port), '--device', 'cpu', '--log-level', 'error', ...DEMO], {
      exit: (code) => exited(code),
      signals: new EventEmitter(),
    });
    expect(handle).not.toBeNull();
    const base = `http://127.0.0.1:${handle!.port}`;
    const plain = post(base, generateBody('demo-a', 4000));
    await untilRunning(base, { 'demo-a': 1 });
    // The scheduler, not an executor: killing an executor inside a native step would end this process.
    void (handle!.engine as unknown as { supervisor: Supervisor }).supervisor.worker('scheduler').terminate();
    const res = await plain;
    expect(res.status).toBe(503);
    expect(((await res.json()) as ErrorBody).error.message).toMatch(/the scheduler actor exited/);
    expect(await exitCode).toBe(1);
  });
});

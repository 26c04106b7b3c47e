// startServer on a real socket, with the engine double: what app.request() cannot show
// (binding, a client that hangs up, shutdown with a stream still open).
import { request as httpRequest, type ClientRequest } from 'node:http';
import { afterEach, describe, expect, it } from 'vitest';
import { createApp } from '../src/http/app.js';
import { startServer, type RunningServer } from '../src/http/server.js';
import { EchoEngine } from './http-echo-engine.js';

let running: RunningServer[] = [];

afterEach(async () => {
  await Promise.all(running.map((s) => s.close()));
  running = [];
});

async function start(engine: EchoEngine): Promise<RunningServer> {
  const server = await startServer(createApp(engine, { servedModelName: 'demo' }), '127.0.0.1', 0);
  running.push(server);
  return server;
}

/** A POST /generate whose body the caller sends (errors from hanging up are expected). */
function openGenerate(port: number): ClientRequest {
  const req = httpRequest({
    host: '127.0.0.1',
    port,
    path: '/generate',
    method: 'POST',
    headers: { 'content-type': 'application/json' },
  });
  req.on('error', () => {});
  return req;
}

/** Once the engine holds the request, hangs up and expects the engine's signal to abort. */
async function hangUpAborts(engine: EchoEngine, req: ClientRequest): Promise<void> {
  await engine.waiting;
  const signal = engine.requests[0]!.signal!;
  expect(signal.aborted).toBe(false);
  const aborted = new Promise<void>((res) => signal.addEventListener('abort', () => res()));
  req.destroy();
  await aborted;
  expect(signal.aborted).toBe(true);
}

describe('startServer', () => {
  it('binds a free port when given 0 and serves the app', async () => {
    const server = await start(new EchoEngine());
    expect(server.port).toBeGreaterThan(0);
    const res = await fetch(`http://127.0.0.1:${server.port}/generate`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ text: 'x' }),
    });
    expect(res.status).toBe(200);
    expect(((await res.json()) as { text: string }).text).toBe('[base] x -> ABC');
  });

  it('rejects with a clear error when the port is taken', async () => {
    const first = await start(new EchoEngine());
    await expect(startServer(createApp(new EchoEngine(), { servedModelName: 'demo' }), '127.0.0.1', first.port)).rejects.toThrow(
      `cannot listen on 127.0.0.1:${first.port}: the port is already in use`,
    );
  });

  it('aborts the engine work when the client hangs up on a non-streaming request', async () => {
    const engine = new EchoEngine();
    engine.armHang();
    const server = await start(engine);
    const req = openGenerate(server.port);
    req.end(JSON.stringify({ text: 'x' }));
    await hangUpAborts(engine, req);
  });

  it('aborts the engine work when the client hangs up on a stream', async () => {
    const engine = new EchoEngine();
    engine.armHang();
    const server = await start(engine);
    const req = openGenerate(server.port);
    const firstChunk = new Promise<string>((res) => {
      req.on('response', (r) => r.once('data', (d: Buffer) => res(d.toString())));
    });
    req.end(JSON.stringify({ text: 'x', stream: true }));
    expect(await firstChunk).toMatch(/^data: \{/);
    await hangUpAborts(engine, req);
  });

  it('closes while a stream is still open', async () => {
    const engine = new EchoEngine();
    engine.armHang();
    const server = await start(engine);
    const res = await fetch(`http://127.0.0.1:${server.port}/generate`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ text: 'x', stream: true }),
    });
    expect(res.status).toBe(200);
    await engine.waiting;
    await server.close();
    running = running.filter((s) => s !== server);
    await expect(fetch(`http://127.0.0.1:${server.port}/health`)).rejects.toThrow();
  });
});

// The checks in front of every route: body size (--max-request-bytes), JSON media type,
// --api-key and the Host header (--allowed-hosts), on the app and over a real socket.
import { request as httpRequest, type IncomingMessage } from 'node:http';
import { afterEach, describe, expect, it } from 'vitest';
import { createApp, type AppOptions } from '../src/http/app.js';
import { startServer, type RunningServer } from '../src/http/server.js';
import { EchoEngine } from './http-echo-engine.js';
import type { OpenAiError } from './openai-fixtures.js';

const JSON_TYPE = { 'content-type': 'application/json' };
const LIMIT = 2048;

let engine: EchoEngine;
const appWith = (opts: Partial<AppOptions> = {}): ReturnType<typeof createApp> => {
  engine = new EchoEngine();
  return createApp(engine, { servedModelName: 'demo', maxRequestBytes: LIMIT, ...opts });
};

async function expectRefusal(res: Response, status: number, ...fragments: string[]): Promise<OpenAiError> {
  expect(res.status).toBe(status);
  const body = (await res.json()) as OpenAiError;
  expect(body.error).toMatchObject({ code: status, param: null, type: 'invalid_request_error' });
  for (const f of fragments) expect(body.error.message).toContain(f);
  return body;
}

/** A JSON /generate body of exactly `bytes` bytes. */
function bodyOfSize(bytes: number): string {
  const base = JSON.stringify({ text: '' });
  return JSON.stringify({ text: 'x'.repeat(bytes - base.length) });
}

/** A body stream that sends `chunks` then stays open, so only a server that stops reading can answer. */
function openStream(chunks: Uint8Array[]): ReadableStream<Uint8Array> {
  return new ReadableStream({
    start(controller) {
      for (const c of chunks) controller.enqueue(c);
    },
  });
}

describe('--max-request-bytes', () => {
  it('accepts a body of exactly the limit', async () => {
    const app = appWith();
    const body = bodyOfSize(LIMIT);
    expect(Buffer.byteLength(body)).toBe(LIMIT);
    expect((await app.request('/generate', { method: 'POST', headers: JSON_TYPE, body })).status).toBe(200);
  });

  it('answers 413 from Content-Length alone, before reading a body that never ends', async () => {
    const app = appWith();
    const res = await app.request('/generate', {
      method: 'POST',
      headers: { ...JSON_TYPE, 'content-length': String(50 * 1024 * 1024) },
      body: openStream([new TextEncoder().encode('{"text": "')]),
      duplex: 'half',
    } as RequestInit);
    await expectRefusal(res, 413, `${LIMIT} bytes`, '--max-request-bytes');
    expect(engine.requests).toHaveLength(0);
  });

  it('counts a body without Content-Length and answers 413 once it passes the limit, without waiting for its end', async () => {
    const app = appWith();
    const chunk = new Uint8Array(1000).fill(0x20);
    const res = await app.request('/generate', {
      method: 'POST',
      headers: JSON_TYPE,
      body: openStream([chunk, chunk, chunk]),
      duplex: 'half',
    } as RequestInit);
    await expectRefusal(res, 413, '--max-request-bytes');
    expect(engine.requests).toHaveLength(0);
  });

  it('still serves a streamed body under the limit', async () => {
    const app = appWith();
    const body = new ReadableStream<Uint8Array>({
      start(controller) {
        controller.enqueue(new TextEncoder().encode('{"text": '));
        controller.enqueue(new TextEncoder().encode('"hi"}'));
        controller.close();
      },
    });
    const res = await app.request('/generate', { method: 'POST', headers: JSON_TYPE, body, duplex: 'half' } as RequestInit);
    expect(res.status).toBe(200);
    expect((await res.json()).text).toBe('[base] hi -> ABC');
  });
});

describe('JSON bodies only', () => {
  it('answers 415 naming what arrived for text/plain, forms and no Content-Type, so cross-site simple POSTs cannot act', async () => {
    const app = appWith();
    const cases: Array<[Record<string, string>, string]> = [
      [{ 'content-type': 'text/plain;charset=UTF-8' }, '"text/plain;charset=UTF-8"'],
      [{ 'content-type': 'application/x-www-form-urlencoded' }, 'application/x-www-form-urlencoded'],
      [{ 'content-type': 'multipart/form-data; boundary=x' }, 'multipart/form-data'],
      [{ 'content-type': 'application/jsonp' }, 'application/jsonp'],
      [{}, 'no Content-Type'],
    ];
    for (const path of ['/generate', '/load_lora_adapter', '/unload_lora_adapter', '/v1/completions']) {
      for (const [headers, named] of cases) {
        // Bytes, not a string: a string body would get text/plain from the Request itself.
        const body = new TextEncoder().encode(path === '/generate' ? '{"text": "x"}' : '{"lora_name": "demo-a", "lora_path": "/elsewhere"}');
        await expectRefusal(await app.request(path, { method: 'POST', headers, body }), 415, 'application/json', named);
      }
    }
    expect(engine.requests).toHaveLength(0);
    expect([...engine.adapterPaths.keys()]).toEqual(['demo-a']);
  });

  it('accepts application/json with parameters, in any case, and the +json types', async () => {
    const app = appWith();
    for (const type of ['application/json; charset=utf-8', 'Application/JSON', 'application/vnd.api+json']) {
      const res = await app.request('/generate', { method: 'POST', headers: { 'content-type': type }, body: '{"text": "x"}' });
      expect(res.status, type).toBe(200);
    }
  });

  it('leaves GET routes alone', async () => {
    expect((await appWith().request('/v1/models')).status).toBe(200);
  });
});

describe('--api-key', () => {
  const KEY = 'sk-test-0123456789';
  const withKey = (key: string | null): Record<string, string> => (key === null ? JSON_TYPE : { ...JSON_TYPE, authorization: key });

  it('answers 401 in OpenAI shape, with WWW-Authenticate, for a missing, malformed or wrong key on every other route', async () => {
    const app = appWith({ apiKey: KEY });
    const attempts: Array<[string | null, string]> = [
      [null, 'no API key'],
      [`Basic ${KEY}`, 'Bearer <key>'],
      [KEY, 'Bearer <key>'],
      ['Bearer sk-test-012345678', 'wrong'],
      [`Bearer ${KEY}x`, 'wrong'],
      ['Bearer ', 'Bearer <key>'],
    ];
    for (const [auth, why] of attempts) {
      for (const [method, path] of [
        ['POST', '/generate'],
        ['GET', '/v1/models'],
        ['GET', '/get_model_info'],
        ['POST', '/load_lora_adapter'],
        ['GET', '/nowhere'],
      ]) {
        const res = await app.request(path!, { method, headers: withKey(auth), ...(method === 'POST' ? { body: '{"text": "x"}' } : {}) });
        await expectRefusal(res, 401, why, '--api-key');
        expect(res.headers.get('www-authenticate')).toBe('Bearer');
      }
    }
    expect(engine.requests).toHaveLength(0);
  });

  it('checks the key before the body: a keyless text/plain POST is 401, not 415', async () => {
    const res = await appWith({ apiKey: KEY }).request('/generate', { method: 'POST', headers: { 'content-type': 'text/plain' }, body: 'x' });
    await expectRefusal(res, 401, 'no API key');
  });

  it('serves the right key, with either case of the scheme', async () => {
    const app = appWith({ apiKey: KEY });
    for (const auth of [`Bearer ${KEY}`, `bearer ${KEY}`]) {
      const res = await app.request('/generate', { method: 'POST', headers: withKey(auth), body: '{"text": "x"}' });
      expect(res.status).toBe(200);
    }
    expect((await app.request('/v1/models', { headers: { authorization: `Bearer ${KEY}` } })).status).toBe(200);
  });

  it('leaves /health, /health_generate and /metrics open', async () => {
    const app = appWith({ apiKey: KEY });
    expect((await app.request('/health')).status).toBe(200);
    expect((await app.request('/health_generate')).status).toBe(200);
    // The echo engine has no metrics registry: a 404 from the route, not a refusal.
    expect((await app.request('/metrics')).status).toBe(404);
  });

  it('needs no key when none is set', async () => {
    expect((await appWith().request('/v1/models')).status).toBe(200);
  });
});

describe('--allowed-hosts', () => {
  it('on a loopback --host accepts only the loopback names, with any port, and refuses others with 403 naming the flag', async () => {
    const app = appWith({ host: '127.0.0.1' });
    for (const url of ['http://localhost/health', 'http://127.0.0.1:30000/health', 'http://[::1]:8080/health', 'http://LOCALHOST./health']) {
      expect((await app.request(url)).status, url).toBe(200);
    }
    for (const url of [
      'http://attacker.example/health',
      'http://attacker.example:30000/v1/models',
      'http://127.0.0.2/health',
      'http://localhost.attacker.example/health',
    ]) {
      await expectRefusal(await app.request(url), 403, '--allowed-hosts', 'localhost, 127.0.0.1, [::1]');
    }
  });

  it('refuses a foreign Host before anything else, keyed or not', async () => {
    const app = appWith({ apiKey: 'k' });
    const res = await app.request('http://attacker.example/generate', {
      method: 'POST',
      headers: { ...JSON_TYPE, authorization: 'Bearer k' },
      body: '{"text": "x"}',
    });
    await expectRefusal(res, 403, 'attacker.example', '--allowed-hosts');
    expect(engine.requests).toHaveLength(0);
  });

  it('accepts exactly the names the flag gives: a bare name takes any port, name:port only that port', async () => {
    const app = appWith({ allowedHosts: ['api.example.com', 'gw.example.com:8443', '::1'] });
    for (const url of [
      'http://api.example.com/health',
      'http://API.example.com:9000/health',
      'http://gw.example.com:8443/health',
      'http://[::1]:1/health',
    ]) {
      expect((await app.request(url)).status, url).toBe(200);
    }
    for (const url of ['http://gw.example.com/health', 'http://gw.example.com:8444/health', 'http://localhost/health']) {
      await expectRefusal(await app.request(url), 403, 'is not in --allowed-hosts');
    }
  });

  it('accepts any Host with *, and by default when --host is not a loopback address', async () => {
    for (const opts of [{ allowedHosts: ['*'] }, { host: '0.0.0.0' }, { host: '10.1.2.3' }]) {
      expect((await appWith(opts).request('http://anything.example/health')).status).toBe(200);
    }
    expect((await appWith({ host: '::1' }).request('http://anything.example/health')).status).toBe(403);
  });
});

describe('over a real socket', () => {
  let server: RunningServer | null = null;
  afterEach(async () => {
    await server?.close();
    server = null;
  });

  const send = (port: number, headers: Record<string, string>, body?: string): Promise<{ status: number; body: string }> =>
    new Promise((resolve, reject) => {
      const req = httpRequest({ host: '127.0.0.1', port, path: '/generate', method: 'POST', headers });
      req.on('error', reject);
      req.on('response', (res: IncomingMessage) => {
        let text = '';
        res.on('data', (d: Buffer) => {
          text += d.toString();
        });
        res.on('end', () => {
          resolve({ status: res.statusCode!, body: text });
          req.destroy();
        });
      });
      if (body !== undefined) req.end(body);
      else req.flushHeaders(); // the declared body never comes
    });

  it('refuses a rebound DNS name (a foreign Host header) with 403', async () => {
    server = await startServer(appWith({ host: '127.0.0.1' }), '127.0.0.1', 0);
    const res = await send(server.port, { ...JSON_TYPE, host: 'rebound.attacker.example' }, '{"text": "x"}');
    expect(res.status).toBe(403);
    expect(res.body).toContain('--allowed-hosts');
    expect((await send(server.port, JSON_TYPE, '{"text": "x"}')).status).toBe(200);
  });

  it('answers 413 to a declared 50 MB body without waiting for it', async () => {
    server = await startServer(appWith(), '127.0.0.1', 0);
    const res = await send(server.port, { ...JSON_TYPE, 'content-length': String(50 * 1024 * 1024) });
    expect(res.status).toBe(413);
    expect(res.body).toContain('--max-request-bytes');
  });

  it('answers 413 to a chunked body that passes the limit', async () => {
    server = await startServer(appWith(), '127.0.0.1', 0);
    const res = await new Promise<number>((resolve, reject) => {
      const req = httpRequest({
        host: '127.0.0.1',
        port: server!.port,
        path: '/generate',
        method: 'POST',
        headers: { ...JSON_TYPE, 'transfer-encoding': 'chunked' },
      });
      req.on('error', reject);
      req.on('response', (r) => {
        resolve(r.statusCode!);
        req.destroy();
      });
      req.write('{"text": "');
      req.write('x'.repeat(LIMIT)); // and the stream stays open
    });
    expect(res).toBe(413);
    expect(engine.requests).toHaveLength(0);
  });
});

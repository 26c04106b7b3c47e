// What every request passes before a route sees it, cheapest first: the Host header (DNS
// rebinding), the API key, the body's media type (cross-site "simple" POSTs) and its size.
// Refusals use OpenAI's error shape, which SGLang's and OpenAI's clients both read.
import { createHash, timingSafeEqual } from 'node:crypto';
import { isIP } from 'node:net';
import type { Context, MiddlewareHandler } from 'hono';
import { bodyLimit } from 'hono/body-limit';
import { TroupeError } from '../errors.js';
import { openAiErrorBody } from './openai/errors.js';

const refuse = (c: Context, err: TroupeError): Response => c.json(openAiErrorBody(err).body, err.status as 400);

/** A host name as Host headers write it: lower case, no trailing dot, IPv6 in brackets. */
function hostName(name: string): string {
  const n = name.trim().toLowerCase().replace(/\.$/, '');
  return isIP(n) === 6 ? `[${n}]` : n;
}

/** "name", "name:port", "[v6]" or "[v6]:port" -> name and port (null when none is given). */
function splitHost(value: string): { name: string; port: string | null } {
  const m = /^(\[[^\]]*\]|[^:]*)(?::(\d+))?$/.exec(value.trim());
  return m ? { name: hostName(m[1]!), port: m[2] ?? null } : { name: hostName(value), port: null };
}

export function isLoopbackHost(host: string): boolean {
  const h = host
    .trim()
    .toLowerCase()
    .replace(/^\[(.*)\]$/, '$1');
  return h === 'localhost' || h === '::1' || (isIP(h) === 4 && h.startsWith('127.')) || h.startsWith('::ffff:127.');
}

const LOOPBACK_NAMES = ['localhost', '127.0.0.1', '[::1]'];

/**
 * --allowed-hosts: each entry is a name (any port) or name:port; * accepts any Host. Without
 * entries a loopback --host accepts only the loopback names, so a page whose DNS name was
 * rebound to 127.0.0.1 cannot reach the server; any other --host accepts every name.
 */
export function hostGuard(listenHost: string, allowedHosts: readonly string[]): MiddlewareHandler | null {
  const entries = allowedHosts.length > 0 ? allowedHosts : isLoopbackHost(listenHost) ? LOOPBACK_NAMES : ['*'];
  if (entries.includes('*')) return null;
  const allowed = entries.map(splitHost);
  return async (c, next) => {
    const value = c.req.header('host') ?? new URL(c.req.url).host;
    const { name, port } = splitHost(value);
    if (allowed.some((a) => a.name === name && (a.port === null || a.port === port))) return next();
    const how = allowedHosts.length > 0 ? 'is not in --allowed-hosts' : `is not a loopback name and the server listens on ${listenHost}`;
    return refuse(
      c,
      new TroupeError(
        'forbidden',
        `Host ${JSON.stringify(value)} ${how}; accepted: ${entries.join(', ')}. Start the server with --allowed-hosts naming it (or * for any) to accept it`,
      ),
    );
  };
}

/** The probes and metrics stay open, as in SGLang, so health checks, scrapers and endpoint pickers need no key. */
const OPEN_PATHS = new Set(['/health', '/health_generate', '/metrics', '/metrics/gateway']);

const sha256 = (s: string): Buffer => createHash('sha256').update(s, 'utf8').digest();

/** --api-key: "Authorization: Bearer KEY" on every other route, compared in constant time. */
export function apiKeyGuard(apiKey: string): MiddlewareHandler {
  const want = sha256(apiKey);
  return async (c, next) => {
    if (OPEN_PATHS.has(c.req.path)) return next();
    const header = c.req.header('authorization');
    const given = header === undefined ? null : (/^Bearer[ \t]+(.*)$/i.exec(header.trim())?.[1] ?? null);
    // Hashing first gives equal lengths, so the comparison time says nothing about the key.
    if (given !== null && timingSafeEqual(sha256(given), want)) return next();
    c.header('WWW-Authenticate', 'Bearer');
    const why =
      header === undefined ? 'no API key was given' : given === null ? 'the Authorization header is not "Bearer <key>"' : 'the API key is wrong';
    return refuse(c, new TroupeError('unauthorized', `${why}; this server needs "Authorization: Bearer <key>" with the key of its --api-key`));
  };
}

// application/json and the structured +json types, parameters such as charset allowed.
const JSON_MEDIA_TYPE = /^application\/(?:[a-z0-9!#$&^_.-]+\+)?json$/;
const BODILESS_METHODS = new Set(['GET', 'HEAD', 'OPTIONS']);
/**
 * Routes that read no body, so any POST to them is as harmless as a GET: SGLang's clients post
 * to /flush_cache with no body and no Content-Type.
 */
const BODILESS_ROUTES = new Set(['/flush_cache']);

/**
 * Every body this server reads is JSON, and asking for its media type stops cross-site pages:
 * a browser sends application/json from another origin only after a CORS preflight, which is
 * never granted here, while text/plain and form bodies go out without one.
 */
export const jsonBodyGuard: MiddlewareHandler = async (c, next) => {
  if (BODILESS_METHODS.has(c.req.method) || BODILESS_ROUTES.has(c.req.path)) return next();
  const type = c.req.header('content-type');
  if (type !== undefined && JSON_MEDIA_TYPE.test(type.split(';')[0]!.trim().toLowerCase())) return next();
  const got = type === undefined ? 'no Content-Type' : `Content-Type ${JSON.stringify(type)}`;
  return refuse(c, new TroupeError('unsupported_media_type', `request bodies must be JSON sent with Content-Type: application/json; got ${got}`));
};

/**
 * --max-request-bytes: a declared Content-Length above the limit is refused before any of the
 * body is read, and a chunked body is counted as it arrives and refused once it passes the limit.
 */
export function sizeGuard(maxBytes: number): MiddlewareHandler {
  return bodyLimit({
    maxSize: maxBytes,
    onError: (c) =>
      refuse(c, new TroupeError('payload_too_large', `the request body is larger than ${maxBytes} bytes, the server's --max-request-bytes`)),
  });
}

// Starts `troupe serve` for the serving benchmark, waits until it is healthy, and stops it.
// Its log goes to a file; the console gets its warnings and errors, the start-up lines, and a
// running count of adapters loaded (one line per adapter would bury everything else).
import { spawn, execFileSync } from 'node:child_process';
import { createWriteStream } from 'node:fs';
import net from 'node:net';
import { cpus } from 'node:os';
import { fileURLToPath } from 'node:url';
import { request } from './serve-client.js';

const repo = fileURLToPath(new URL('..', import.meta.url));
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** A port nobody listens on right now. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/**
 * Spawns `node bin/troupe.js serve ARGS` and resolves once GET /health answers 200 (it answers
 * 503 while the model and adapters load). Rejects with the log's last lines if the server exits
 * first or is not healthy within startupTimeout seconds.
 */
export async function startServer({ args, host, port, logFile, startupTimeout, adapterCount }) {
  const log = createWriteStream(logFile);
  const t0 = performance.now();
  const child = spawn(process.execPath, [`${repo}/bin/troupe.js`, 'serve', '--host', host, '--port', String(port), ...args], {
    cwd: repo,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const tail = [];
  let loaded = 0;
  let lastCount = 0;
  const info = { engineLine: null };
  const onLine = (line) => {
    log.write(line + '\n');
    tail.push(line);
    if (tail.length > 30) tail.shift();
    if (/loaded LoRA adapter/.test(line)) {
      loaded++;
      const now = performance.now();
      if (loaded === adapterCount || now - lastCount > 5000) {
        lastCount = now;
        console.log(`server: ${loaded}/${adapterCount} adapters registered, ${((now - t0) / 1000).toFixed(0)} s`);
      }
      return;
    }
    if (/ engine on /.test(line)) info.engineLine = line.replace(/^.* engine on /, '');
    if (/ (WARNING|ERROR) |listening on|engine on|serving /.test(line)) console.log(`server: ${line}`);
  };
  for (const stream of [child.stdout, child.stderr]) {
    let buf = '';
    stream.setEncoding('utf8');
    stream.on('data', (c) => {
      buf += c;
      let nl;
      while ((nl = buf.indexOf('\n')) >= 0) {
        onLine(buf.slice(0, nl));
        buf = buf.slice(nl + 1);
      }
    });
  }
  let exited = null;
  const exitPromise = new Promise((resolve) => child.on('exit', (code, signal) => resolve((exited = { code, signal }))));
  // A driver that dies must not leave a server holding the GPU.
  const killOnExit = () => child.kill('SIGKILL');
  process.on('exit', killOnExit);

  const base = `http://${host.includes(':') ? `[${host}]` : host}:${port}`;
  const deadline = t0 + startupTimeout * 1000;
  for (;;) {
    if (exited)
      throw new Error(
        `troupe serve exited (code ${exited.code}, signal ${exited.signal}) before it was healthy; last log lines:\n${tail.join('\n')}`,
      );
    if (performance.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`troupe serve not healthy after ${startupTimeout} s (--startup-timeout); last log lines:\n${tail.join('\n')}`);
    }
    const res = await request(base, '/health', { timeoutMs: 5000 }).catch(() => null);
    if (res?.status === 200) break;
    await sleep(1000);
  }
  const startupSeconds = (performance.now() - t0) / 1000;
  console.log(`server: healthy after ${startupSeconds.toFixed(1)} s (log: ${logFile})`);

  return {
    base,
    startupSeconds,
    info,
    /** SIGTERM (drain), then SIGKILL if it has not exited in `graceSeconds`. */
    async stop(graceSeconds = 60) {
      process.off('exit', killOnExit);
      if (!exited) {
        child.kill('SIGTERM');
        const timer = setTimeout(() => child.kill('SIGKILL'), graceSeconds * 1000);
        await exitPromise;
        clearTimeout(timer);
      }
      await new Promise((r) => log.end(r));
      return exited;
    },
  };
}

/** The GPU as nvidia-smi names it, or null without one. */
export function nvidiaSmi() {
  try {
    return (
      execFileSync('nvidia-smi', ['--query-gpu=name,memory.total,driver_version', '--format=csv,noheader'], {
        encoding: 'utf8',
        timeout: 20_000,
      }).trim() || null
    );
  } catch {
    return null;
  }
}

/** What the run ran on: the server's backend and device name, nvidia-smi's view, the host CPU. */
export async function describeDevice(base, engineLine) {
  const res = await request(base, '/get_model_info').catch(() => null);
  const modelInfo = res?.status === 200 ? JSON.parse(res.body) : null;
  const smi = nvidiaSmi();
  // "NVIDIA H200: 1234 KV blocks of ..." -> "NVIDIA H200"
  const engineDevice = engineLine ? engineLine.replace(/: \d+ KV blocks.*$/, '') : null;
  const cpu = `${cpus()[0]?.model ?? 'unknown'} x ${cpus().length}`;
  return {
    backend: modelInfo?.device ?? null,
    name: engineDevice ?? (modelInfo?.device === 'cpu' ? cpu : smi?.split(',')[0]) ?? null,
    nvidiaSmi: smi,
    cpu,
    engine: engineLine,
    modelInfo,
  };
}

// Every curl command and code example in README.md, run as a reader would run it against what
// `npm start` serves (the demo model on a free port instead of 30000): each block of curl
// commands in order, checking each answer's status and the shape the README shows; the OpenAI
// client example; and the embedding example in a project of its own that installs troupe from
// this checkout, offline. Shell blocks without curl (installing, GPU suites, model paths this
// machine lacks) are not run, but the troupe command lines in them must parse.
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { get as httpGet } from 'node:http';
import { freePort } from './free-port.js';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { resolveServeArgs } from '../src/cli/serve.js';
import { checkAnswer, generateSample, json, routeChecks, sseJson } from './readme-checks.js';
import { fencedBlocks, HAVE_CURL, parseCurl, runCurl, shellCommands, type Block, type CurlRequest } from './readme-examples.js';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..');
const BLOCKS = fencedBlocks(readFileSync(join(ROOT, 'README.md'), 'utf8'));
/** What `$PWD` is where `npm start` runs: the package root. */
const SHELL_ENV = { PWD: ROOT };
const README_HOST = 'localhost:30000';
/** Routes whose answer never ends: the first event is read, then the command is stopped. */
const ENDLESS = new Set(['/debug/adapters/events']);

const where = (b: Block): string => `README.md:${b.line} (${b.heading})`;
const isShell = (b: Block): boolean => b.lang === 'sh' || b.lang === 'bash';
const commandsOf = (b: Block): ReturnType<typeof shellCommands> => shellCommands(b.code, SHELL_ENV);
const CURL_BLOCKS = BLOCKS.filter((b) => isShell(b) && commandsOf(b).some((c) => c.words[0] === 'curl'));

/** Whether /health answers 200, on a connection of its own that the server may close at once when it stops. */
function healthy(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const req = httpGet({ host: '127.0.0.1', port, path: '/health', agent: false }, (res) => {
      res.resume();
      resolve(res.statusCode === 200);
    });
    req.once('error', () => resolve(false));
  });
}

/** A `troupe serve` process started as `npm start -- ARGS` starts it, on a free port. */
class Server {
  private output = '';
  private constructor(
    readonly port: number,
    private readonly child: ChildProcess,
  ) {
    child.stdout!.on('data', (d: Buffer) => (this.output += d.toString()));
    child.stderr!.on('data', (d: Buffer) => (this.output += d.toString()));
  }

  static async start(args: string[]): Promise<Server> {
    // package.json's start script is what `npm start` runs; npm itself adds nothing but a shell.
    const script = (JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { scripts: { start: string } }).scripts.start;
    const [node, ...rest] = script.split(' ');
    expect(node).toBe('node');
    const port = await freePort();
    const child = spawn(process.execPath, [...rest, ...args, '--port', String(port)], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
    const server = new Server(port, child);
    let exited: string | null = null;
    child.once('exit', (code, signal) => (exited = `exited with ${code ?? signal}`));
    for (;;) {
      if (exited) throw new Error(`npm start ${args.join(' ')} ${exited}:\n${server.output.slice(-4000)}`);
      if (await healthy(port)) return server;
      await new Promise((r) => setTimeout(r, 200));
    }
  }

  async close(): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    const gone = new Promise<void>((r) => this.child.once('exit', () => r()));
    this.child.kill('SIGTERM');
    const timer = setTimeout(() => this.child.kill('SIGKILL'), 15_000);
    await gone;
    clearTimeout(timer);
  }
}

/** Runs a program to its end; stdout and stderr are kept for the assertions. */
function run(
  cmd: string,
  args: string[],
  cwd: string,
  env: NodeJS.ProcessEnv = process.env,
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { cwd, env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.once('error', reject);
    child.once('close', (code) => resolve({ code, stdout, stderr }));
  });
}

/** The json or text block right after `block`: the answer it shows. */
function sampleAfter(block: Block): Block | null {
  const next = BLOCKS[BLOCKS.indexOf(block) + 1];
  return next && (next.lang === 'json' || next.lang === 'text') ? next : null;
}

const CHECKS = routeChecks(generateSample(BLOCKS));

// ---- running the blocks --------------------------------------------------------------------------

let main: Server;

/** Runs a block's commands in order: `npm start -- ...` starts the server its curls then talk to. */
async function runCurlBlock(block: Block): Promise<void> {
  let server = main;
  let own: Server | null = null;
  const background: Array<{ req: CurlRequest; run: ReturnType<typeof runCurl> }> = [];
  const aborted = new Set<string>();
  try {
    for (const cmd of commandsOf(block)) {
      const [name, ...args] = cmd.words;
      if (name === 'npm' && args[0] === 'start') {
        own = await Server.start(args.slice(args.indexOf('--') + 1));
        server = own;
        continue;
      }
      // The README sleeps to let a command started with & get going; its first output is awaited instead.
      if (name === 'sleep') {
        expect(background.length, `${where(block)}: sleep follows a command started with &`).toBeGreaterThan(0);
        continue;
      }
      if (name !== 'curl')
        throw new Error(`${where(block)}: "${cmd.words.join(' ')}" in a block of curl commands; this test runs only curl and npm start`);
      const curlArgs = args.map((a) => a.replaceAll(README_HOST, `localhost:${server.port}`));
      const req = parseCurl(curlArgs);
      expect(req.url.host, `${where(block)}: curl talks to the README's server`).toBe(`localhost:${server.port}`);
      const running = runCurl(curlArgs);
      if (ENDLESS.has(req.url.pathname)) {
        while (!/\n\r?\n/.test(running.body())) await Promise.race([running.done, new Promise((r) => setTimeout(r, 20))]);
        running.stop();
        checkAnswer(CHECKS, where(block), req, await running.done, { comment: cmd.comment, sample: null });
      } else if (cmd.background) {
        await running.started;
        background.push({ req, run: running });
      } else {
        checkAnswer(CHECKS, where(block), req, await running.done, { comment: cmd.comment, sample: sampleAfter(block) });
        if (req.url.pathname === '/abort_request') aborted.add(json(req.body!).rid as string);
      }
    }
    for (const { req, run: running } of background) {
      const res = await running.done;
      checkAnswer(CHECKS, where(block), req, res, { comment: null, sample: null });
      const rid = json(req.body!).rid as string | undefined;
      if (rid !== undefined && aborted.has(rid)) {
        const last = sseJson(res.body).at(-1)!;
        expect((last.meta_info as { finish_reason: { type: string } }).finish_reason.type, `${rid} was aborted`).toBe('abort');
      }
    }
  } finally {
    for (const b of background) b.run.stop();
    await own?.close();
  }
}

describe('README examples', () => {
  beforeAll(async () => {
    if (!HAVE_CURL) console.warn('curl is not installed: the README curl commands run through fetch, from their parsed arguments');
    main = await Server.start([]);
  }, 120_000);
  afterAll(async () => {
    await main?.close();
  }, 30_000);

  it('has curl blocks and code examples to run', () => {
    expect(CURL_BLOCKS.length).toBeGreaterThanOrEqual(8);
    expect(BLOCKS.filter((b) => b.lang === 'js')).toHaveLength(2);
  });

  for (const block of CURL_BLOCKS) {
    it(`runs the curl commands of ${where(block)}`, () => runCurlBlock(block), 60_000);
  }

  it('runs the OpenAI client example', async () => {
    const block = BLOCKS.find((b) => b.lang === 'js' && b.code.includes("from 'openai'"));
    expect(block, 'the OpenAI client example').toBeDefined();
    const dir = mkdtempSync(join(tmpdir(), 'troupe-readme-openai-'));
    try {
      // What `npm install openai` gives the reader, from the copy this checkout already has.
      mkdirSync(join(dir, 'node_modules'));
      symlinkSync(join(ROOT, 'node_modules', 'openai'), join(dir, 'node_modules', 'openai'), 'dir');
      expect(block!.code).toContain(`http://${README_HOST}/v1`);
      writeFileSync(join(dir, 'example.mjs'), block!.code.replaceAll(README_HOST, `localhost:${main.port}`));
      const out = await run(process.execPath, ['example.mjs'], dir);
      expect(out.code, out.stderr).toBe(0);
      expect(out.stdout.length).toBeGreaterThan(0);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }, 60_000);

  it('runs the embedding example in a project of its own, which installs troupe from this checkout', async () => {
    const code = BLOCKS.find((b) => b.lang === 'js' && b.code.includes("from 'troupe'"));
    const setup = BLOCKS.find((b) => isShell(b) && b.heading === 'Embedding');
    expect(code, 'the embedding example').toBeDefined();
    expect(setup, 'the commands that set up its project').toBeDefined();
    // It loads both demo adapters at start, which sizes the pool for the later load of demo-b.
    expect(code!.code).toMatch(/demo-model\/adapters\/demo-a[\s\S]*demo-model\/adapters\/demo-b/);
    expect(existsSync(join(ROOT, 'dist', 'src', 'index.js')), 'npm run build first').toBe(true);
    const dir = join(mkdtempSync(join(tmpdir(), 'troupe-readme-embed-')), 'my-app');
    mkdirSync(dir);
    // npm without the network, and without running troupe's install script (its addon is built).
    const env = {
      ...process.env,
      npm_config_offline: 'true',
      npm_config_ignore_scripts: 'true',
      npm_config_audit: 'false',
      npm_config_fund: 'false',
      npm_config_update_notifier: 'false',
      npm_config_yes: 'false',
    };
    try {
      writeFileSync(join(dir, 'example.mjs'), code!.code);
      let stdout = '';
      for (const cmd of commandsOf(setup!)) {
        const [name, ...args] = cmd.words.map((w) => w.replaceAll('/path/to/troupe', ROOT));
        const out = await run(name === 'node' ? process.execPath : name!, args, dir, env);
        expect(out.code, `${cmd.words.join(' ')}: ${out.stderr}`).toBe(0);
        stdout = out.stdout;
      }
      // `import ... from 'troupe'` resolves, through package.json's exports, to the built entry point and its types.
      const resolved = await run(process.execPath, ['--input-type=module', '-e', "console.log(import.meta.resolve('troupe'))"], dir);
      expect(fileURLToPath(resolved.stdout.trim())).toBe(join(ROOT, 'dist', 'src', 'index.js'));
      expect(existsSync(join(ROOT, 'dist', 'src', 'index.d.ts'))).toBe(true);

      // The same request over HTTP on the (seeded) demo model the example wrote gives the text to
      // expect: the example prints it once from generate and once, piece by piece, from the stream.
      const model = join(dir, 'demo-model');
      const server = await Server.start(['--model-path', model, '--lora-paths', `demo-b=${join(model, 'adapters', 'demo-b')}`]);
      let text: string;
      try {
        const res = await fetch(`http://127.0.0.1:${server.port}/generate`, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ text: 'Once upon a time', lora_path: 'demo-b', sampling_params: { max_new_tokens: 16, temperature: 0 } }),
        });
        text = ((await res.json()) as { text: string }).text;
      } finally {
        await server.close();
      }
      expect(text.length).toBeGreaterThan(0);
      expect(stdout).toBe(`${text}\n${text}\ndemo-a demo-b b2\n`);

      // The README says the same code type-checks as TypeScript against the shipped declarations.
      writeFileSync(join(dir, 'example.mts'), code!.code);
      const tsc = await run(
        process.execPath,
        [
          join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc'),
          '--noEmit',
          '--strict',
          '--target',
          'es2022',
          '--module',
          'nodenext',
          '--moduleResolution',
          'nodenext',
          '--types',
          'node',
          '--typeRoots',
          join(ROOT, 'node_modules', '@types'),
          'example.mts',
        ],
        dir,
      );
      expect(tsc.code, tsc.stdout + tsc.stderr).toBe(0);
    } finally {
      rmSync(dirname(dir), { recursive: true, force: true });
    }
  }, 120_000);

  it('every troupe command line in the README parses', () => {
    const lines: string[][] = [];
    for (const b of BLOCKS.filter(isShell)) {
      for (const c of commandsOf(b)) if (c.words[0] === 'npm' && c.words[1] === 'start' && c.words[2] === '--') lines.push(c.words.slice(3));
    }
    // The Deployment's args, a YAML flow list of JSON strings.
    for (const b of BLOCKS.filter((x) => x.lang === 'yaml' && x.code.includes('"serve"]'))) {
      lines.push(JSON.parse(/args: (\[[^\]]*\])/.exec(b.code)![1]!) as string[]);
    }
    expect(lines.length).toBeGreaterThanOrEqual(3);
    for (const argv of lines) expect(() => resolveServeArgs(argv), argv.join(' ')).not.toThrow();
  });
});

// Reading README.md as a user does: its fenced code blocks, the shell commands in them (quotes,
// line continuations, comments, `&`), and the curl commands among those, run with the real curl
// when the machine has it and with fetch after parsing curl's arguments when it does not.
import { spawn, spawnSync } from 'node:child_process';

export interface Block {
  lang: string;
  code: string;
  /** 1-based line of the opening fence. */
  line: number;
  /** The nearest heading above it. */
  heading: string;
}

/** Every fenced block of a markdown text, with where it is. */
export function fencedBlocks(markdown: string): Block[] {
  const blocks: Block[] = [];
  const lines = markdown.split('\n');
  let heading = '';
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!;
    const title = /^#{1,6} (.*)$/.exec(line);
    if (title) heading = title[1]!;
    const open = /^```(\S*)\s*$/.exec(line);
    if (!open) continue;
    const start = i;
    const body: string[] = [];
    for (i++; i < lines.length && !/^```\s*$/.test(lines[i]!); i++) body.push(lines[i]!);
    if (i === lines.length) throw new Error(`README.md:${start + 1}: the code block is never closed`);
    blocks.push({ lang: open[1]!, code: body.join('\n'), line: start + 1, heading });
  }
  return blocks;
}

export interface ShellCommand {
  words: string[];
  /** Ended with `&`: run in the background. */
  background: boolean;
  /** The `# ...` comment after it, if any. */
  comment: string | null;
}

/**
 * A shell block as bash would split it into simple commands: words with '...' and "..." quoting
 * (newlines inside quotes kept), backslash-newline continuations, `# comments`, `&&` and a
 * trailing `&`. `$NAME` expands from `env`; any other shell syntax fails, so a README example that needs
 * more than this is noticed rather than run wrongly.
 */
export function shellCommands(code: string, env: Record<string, string>): ShellCommand[] {
  const commands: ShellCommand[] = [];
  let words: string[] = [];
  let word: string | null = null;
  let comment: string | null = null;
  const endWord = (): void => {
    if (word !== null) words.push(word);
    word = null;
  };
  const endCommand = (background: boolean): void => {
    endWord();
    if (words.length > 0) commands.push({ words, background, comment });
    else if (background) throw new Error('a lone "&"');
    words = [];
    comment = null;
  };
  const variable = (at: number): [string, number] => {
    const name = /^[A-Za-z_]\w*/.exec(code.slice(at + 1))?.[0];
    if (!name || !(name in env)) throw new Error(`unsupported shell expansion at ${JSON.stringify(code.slice(at, at + 20))}`);
    return [env[name]!, at + name.length];
  };
  for (let i = 0; i < code.length; i++) {
    const c = code[i]!;
    if (c === '\\' && code[i + 1] === '\n') {
      i++;
    } else if (c === '\n') {
      endCommand(false);
    } else if (c === ' ' || c === '\t') {
      endWord();
    } else if (c === '#' && word === null) {
      const end = code.indexOf('\n', i);
      comment = code.slice(i + 1, end < 0 ? undefined : end).trim();
      i = (end < 0 ? code.length : end) - 1;
    } else if (c === '&' && code[i + 1] === '&') {
      // `a && b` runs b after a: here simply the next command.
      endCommand(false);
      i++;
    } else if (c === '&') {
      endCommand(true);
    } else if (c === "'") {
      const end = code.indexOf("'", i + 1);
      if (end < 0) throw new Error('unclosed single quote');
      word = (word ?? '') + code.slice(i + 1, end);
      i = end;
    } else if (c === '"') {
      word ??= '';
      for (i++; code[i] !== '"'; i++) {
        if (i >= code.length) throw new Error('unclosed double quote');
        if (code[i] === '\\' && '"\\$'.includes(code[i + 1]!)) word += code[++i];
        else if (code[i] === '$') {
          const [value, end] = variable(i);
          word += value;
          i = end;
        } else word += code[i];
      }
    } else if (c === '$') {
      const [value, end] = variable(i);
      word = (word ?? '') + value;
      i = end;
    } else if ('|;<>`(){}'.includes(c)) {
      throw new Error(`unsupported shell syntax "${c}" in ${JSON.stringify(code.slice(Math.max(0, i - 20), i + 20))}`);
    } else {
      word = (word ?? '') + c;
    }
  }
  endCommand(false);
  return commands;
}

/** What a curl command asks for, read from its arguments. */
export interface CurlRequest {
  method: string;
  url: URL;
  headers: Record<string, string>;
  body: string | null;
  /** -N: the reply is read as it arrives. */
  stream: boolean;
}

export function parseCurl(args: readonly string[]): CurlRequest {
  let method: string | null = null;
  let url: string | null = null;
  const headers: Record<string, string> = {};
  let body: string | null = null;
  let stream = false;
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    if (a === '-X') method = args[++i]!;
    else if (a === '-H') {
      const h = args[++i]!;
      const colon = h.indexOf(':');
      headers[h.slice(0, colon).trim().toLowerCase()] = h.slice(colon + 1).trim();
    } else if (a === '-d') body = args[++i]!;
    else if (/^-[sN]+$/.test(a)) stream ||= a.includes('N');
    else if (a.startsWith('-')) throw new Error(`curl option ${a} is not understood by this test; teach parseCurl`);
    else if (url === null) url = a;
    else throw new Error(`a second URL in a curl command: ${a}`);
  }
  if (url === null) throw new Error('a curl command without a URL');
  // curl sends -d data as a POST with this type unless told otherwise.
  if (body !== null) headers['content-type'] ??= 'application/x-www-form-urlencoded';
  return {
    method: method ?? (body !== null ? 'POST' : 'GET'),
    url: new URL(/^https?:\/\//.test(url) ? url : `http://${url}`),
    headers,
    body,
    stream,
  };
}

export interface CurlResult {
  status: number;
  body: string;
}

export interface RunningCurl {
  /** Resolves once the status and the first bytes of the body (or its end) are in. */
  started: Promise<void>;
  /** The whole answer; for `stop`ped commands, what came before the stop. */
  done: Promise<CurlResult>;
  /** Ends a command whose answer never ends (an event stream). */
  stop(): void;
  /** The body received so far. */
  body(): string;
}

export const HAVE_CURL = spawnSync('curl', ['--version'], { stdio: 'ignore' }).status === 0;

/** Runs a curl command line (its arguments after `curl`): with curl itself, or with fetch when it is missing. */
export function runCurl(args: readonly string[]): RunningCurl {
  return HAVE_CURL ? withCurl(args) : withFetch(parseCurl(args));
}

function withCurl(args: readonly string[]): RunningCurl {
  // -D - puts the status line and headers before the body on stdout: the status is known as
  // soon as the answer starts, even for a stream that is stopped.
  const child = spawn('curl', [...args, '-D', '-'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  let status = 0;
  let headerEnd = -1;
  let onStart: () => void = () => {};
  const started = new Promise<void>((resolve) => (onStart = resolve));
  child.stdout.setEncoding('utf8').on('data', (d: string) => {
    out += d;
    if (headerEnd < 0) {
      // Informational answers (100 Continue) come first; the last header block is the answer's.
      for (let m; (m = /^HTTP\/[\d.]+ (\d{3})[^\n]*\n(?:[^\n]*\S[^\n]*\n)*?\r?\n/.exec(out));) {
        status = Number(m[1]);
        if (status >= 200) {
          headerEnd = m[0].length;
          break;
        }
        out = out.slice(m[0].length);
      }
    }
    if (headerEnd >= 0 && out.length > headerEnd) onStart();
  });
  child.stderr.setEncoding('utf8').on('data', (d: string) => (err += d));
  let stopped = false;
  const done = new Promise<CurlResult>((resolve, reject) => {
    child.once('error', reject);
    child.once('close', (code) => {
      onStart();
      if (code !== 0 && !stopped) reject(new Error(`curl ${args.join(' ')} exited with ${code}: ${err}`));
      else resolve({ status, body: headerEnd < 0 ? '' : out.slice(headerEnd) });
    });
  });
  return {
    started,
    done,
    stop: () => {
      stopped = true;
      child.kill();
    },
    body: () => (headerEnd < 0 ? '' : out.slice(headerEnd)),
  };
}

function withFetch(req: CurlRequest): RunningCurl {
  const controller = new AbortController();
  let text = '';
  let onStart: () => void = () => {};
  const started = new Promise<void>((resolve) => (onStart = resolve));
  const done = (async (): Promise<CurlResult> => {
    const res = await fetch(req.url, { method: req.method, headers: req.headers, body: req.body, signal: controller.signal });
    const decoder = new TextDecoder();
    try {
      for await (const chunk of res.body ?? []) {
        text += decoder.decode(chunk as Uint8Array, { stream: true });
        onStart();
      }
    } catch (err) {
      if (!controller.signal.aborted) throw err;
    }
    onStart();
    return { status: res.status, body: text };
  })();
  done.catch(() => onStart());
  return { started, done, stop: () => controller.abort(), body: () => text };
}

/** The `data:` payloads of a server-sent event stream, with each event's name. */
export function sseEvents(body: string): Array<{ event: string; data: string }> {
  return body
    .split(/\r?\n\r?\n/)
    .filter((e) => e.trim() !== '')
    .map((e) => {
      const lines = e.split(/\r?\n/);
      const event =
        lines
          .find((l) => l.startsWith('event:'))
          ?.slice('event:'.length)
          .trim() ?? 'message';
      const data = lines
        .filter((l) => l.startsWith('data:'))
        .map((l) => l.slice('data:'.length).trimStart())
        .join('\n');
      return { event, data };
    });
}

// Parsing and describing JSON read from model and adapter files without echoing the file.
// A path handed to the server may point anywhere (a symlinked adapter_config.json, say), so
// an error names the file, the position and the kind of value, never the bytes it holds:
// V8's JSON.parse messages quote a snippet of the text, and JSON.stringify of a field would
// quote the rest.

/** Parses `text`; on failure throws an Error whose message is "is not valid JSON (...)". */
export function parseJson(text: string): unknown {
  try {
    return JSON.parse(text) as unknown;
  } catch {
    const at = validPrefixLength(text);
    throw new Error(at >= text.length ? 'is not valid JSON (it ends early)' : `is not valid JSON (at position ${at})`);
  }
}

/**
 * The length of the longest prefix of `text` that some valid JSON text starts with, found by
 * bisection: JSON.parse of a prefix either succeeds, fails at its end (it could go on), or
 * fails before its end. A handful of parses, so it costs little more than the parse that failed.
 */
function validPrefixLength(text: string): number {
  const viable = (n: number): boolean => {
    try {
      JSON.parse(text.slice(0, n));
      return true;
    } catch (err) {
      const msg = (err as Error).message;
      if (msg.includes('Unexpected end of JSON input')) return true;
      const at = /at position (\d+)/.exec(msg);
      return at !== null && Number(at[1]) >= n;
    }
  };
  let lo = 0; // viable
  let hi = text.length + 1; // not viable
  while (hi - lo > 1) {
    const mid = (lo + hi) >>> 1;
    if (viable(mid)) lo = mid;
    else hi = mid;
  }
  return lo;
}

/**
 * What kind of value a field holds, for "got ..." in an error. Numbers, booleans and null are
 * shown (they carry no secrets and are what a reader needs to fix a config); strings, lists and
 * objects are described by their type alone.
 */
export function describeValue(v: unknown): string {
  if (v === undefined) return 'nothing';
  if (v === null || typeof v === 'boolean') return String(v);
  if (typeof v === 'number') return String(v);
  if (typeof v === 'string') return 'a string';
  if (Array.isArray(v)) return `a list of ${v.length} item${v.length === 1 ? '' : 's'}`;
  return 'an object';
}

/**
 * How errors name a tensor or a shard file: quoted when it is a short printable name, as names
 * in well-formed checkpoints are, and otherwise only described.
 */
export function quoteName(what: string, name: string): string {
  return /^[\x21-\x7e]{1,256}$/.test(name) ? `${what} "${name}"` : `a ${what} with a ${name.length}-character name`;
}

/**
 * A config value that should be an identifier (a model_type, a rope_type), for "X is not
 * supported": quoted when it looks like one, as every real value does, and otherwise only
 * described.
 */
export function quoteIdentifier(v: unknown): string {
  return typeof v === 'string' && /^[A-Za-z0-9_.-]{1,64}$/.test(v) ? `"${v}"` : describeValue(v);
}

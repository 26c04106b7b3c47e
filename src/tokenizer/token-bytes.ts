// The most bytes of input text one token can stand for, read from tokenizer.json. A prompt of
// B bytes then needs at least B / that many tokens, so a prompt that cannot fit the context is
// known from its length alone, before a tokenizer thread spends seconds on it.
//
// The bound holds only when every input byte ends up inside some token and normalization never
// shrinks the text: byte-level BPE (GPT-2, Llama 3) and byte-fallback BPE (Llama 2) without
// whitespace-dropping pre-tokenizers or stripping added tokens. For anything else a run of
// unknown characters can fold into one token, so no bound is claimed (null).

interface Component {
  type?: unknown;
  behavior?: unknown;
  pattern?: unknown;
  content?: unknown;
  normalizers?: unknown;
  pretokenizers?: unknown;
  decoders?: unknown;
}

interface TokenizerJson {
  model?: { type?: unknown; vocab?: unknown; byte_fallback?: unknown };
  normalizer?: Component | null;
  pre_tokenizer?: Component | null;
  decoder?: Component | null;
  added_tokens?: Array<{ content?: unknown; lstrip?: unknown; rstrip?: unknown }>;
}

/** The components of a possibly nested Sequence. */
function parts(c: Component | null | undefined): Component[] {
  if (c === null || c === undefined || typeof c !== 'object') return [];
  const inner = c.normalizers ?? c.pretokenizers ?? c.decoders;
  return c.type === 'Sequence' && Array.isArray(inner) ? (inner as Component[]).flatMap(parts) : [c];
}

const utf8 = (s: string): number => Buffer.byteLength(s, 'utf8');

// Prepend adds text; Replace of a fixed string by one at least as long (Llama 2's " " -> "▁")
// only grows it. Anything else (NFC/NFKC, lowercasing, stripping) may shrink the input.
function normalizerOnlyGrows(c: Component): boolean {
  if (c.type === 'Prepend') return true;
  if (c.type !== 'Replace') return false;
  const from = (c.pattern as { String?: unknown } | undefined)?.String;
  return typeof from === 'string' && typeof c.content === 'string' && utf8(c.content) >= utf8(from);
}

// These split or map text without dropping any of it.
function preTokenizerKeepsAll(c: Component): boolean {
  if (c.type === 'ByteLevel' || c.type === 'Metaspace' || c.type === 'Digits') return true;
  return (c.type === 'Split' || c.type === 'Punctuation') && c.behavior !== 'Removed';
}

export function longestTokenBytes(json: unknown): number | null {
  if (json === null || typeof json !== 'object') return null;
  const t = json as TokenizerJson;
  const byteLevel = [...parts(t.pre_tokenizer), ...parts(t.decoder)].some((c) => c.type === 'ByteLevel');
  const byteFallback = t.model?.type === 'BPE' && t.model.byte_fallback === true;
  if (!byteLevel && !byteFallback) return null;
  if (!parts(t.normalizer).every(normalizerOnlyGrows)) return null;
  if (!parts(t.pre_tokenizer).every(preTokenizerKeepsAll)) return null;
  const added = Array.isArray(t.added_tokens) ? t.added_tokens : [];
  // An added token with lstrip/rstrip swallows the whitespace run next to it, however long.
  if (added.some((a) => a.lstrip === true || a.rstrip === true)) return null;

  const vocab = t.model?.vocab;
  const tokens = Array.isArray(vocab) ? vocab.map((e: unknown) => (Array.isArray(e) ? e[0] : e)) : Object.keys(vocab ?? {});
  let most = 0;
  for (const tok of tokens) {
    if (typeof tok !== 'string') continue;
    // A byte-level token spells one input byte per character; others spell their (normalized) text.
    most = Math.max(most, byteLevel ? [...tok].length : utf8(tok));
  }
  for (const a of added) if (typeof a.content === 'string') most = Math.max(most, utf8(a.content));
  return most > 0 ? most : null;
}

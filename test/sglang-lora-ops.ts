// The harness of SGLang's test/registered/lora/test_lora_update.py, written anew for troupe: a
// sequence of loads, unloads and forward passes against one engine (through its HTTP app), the
// adapters /load_lora_adapter and /unload_lora_adapter must report as loaded after each of them
// (implicit evictions included), the errors they and /generate must give (400, SGLang's words),
// and every forward pass's greedy output checked against an engine that held every adapter
// from the start (SGLang's static pass; it compares by ROUGE-L, greedy CPU outputs are equal).
import { expect } from 'vitest';
import type { LocalTroupeEngine } from '../src/troupe.js';
import { appFor, post, startEngine, type App, type World } from './adapter-fixtures.js';

/** SGLang's PROMPTS. */
export const PROMPTS = [
  'SGL is a',
  'AI is a field of computer science focused on',
  'Computer science is the study of',
  'Write a short story.',
  'What are the main components of a computer?',
];
const MAX_NEW_TOKENS = 4;

/** An adapter to load: its name, and its directory (the name when left out, as SGLang's tests name adapters by path). */
export interface Load {
  name: string;
  path?: string;
  pinned?: boolean;
}

export type Op =
  | { op: 'load'; adapter: Load; error?: string; evicts?: string[] }
  | { op: 'unload'; name: string }
  | { op: 'forward'; loras: Array<string | null>; error?: string; evicts?: string[] };

export const load = (adapter: string | Load, more: { error?: string; evicts?: string[] } = {}): Op => ({
  op: 'load',
  adapter: typeof adapter === 'string' ? { name: adapter } : adapter,
  ...more,
});
export const unload = (name: string): Op => ({ op: 'unload', name });
export const forward = (loras: string | null | Array<string | null>, more: { error?: string; evicts?: string[] } = {}): Op => ({
  op: 'forward',
  loras: Array.isArray(loras) ? loras : [loras],
  ...more,
});

export interface UpdateCase {
  /** --lora-paths items: PATH, NAME=PATH or SGLang's JSON form. */
  initial?: Array<string | { lora_name: string; lora_path: string; pinned: boolean }>;
  /** The other server flags. */
  args: string[];
  ops: Op[];
}

/** The names an --lora-paths item loads, and the directory of each. */
function initialAdapter(item: NonNullable<UpdateCase['initial']>[number]): { name: string; path: string } {
  if (typeof item !== 'string') return { name: item.lora_name, path: item.lora_path };
  const eq = item.indexOf('=');
  return eq < 0 ? { name: item, path: item } : { name: item.slice(0, eq), path: item.slice(eq + 1) };
}

/** SGLang's create_batch_data: every prompt with every adapter. */
function batch(loras: Array<string | null>): { text: string[]; lora_path: Array<string | null> } {
  const rows = PROMPTS.flatMap((p) => loras.map((l) => [p, l] as const));
  return { text: rows.map(([p]) => p), lora_path: rows.map(([, l]) => l) };
}

async function generate(app: App, loras: Array<string | null>): Promise<{ status: number; json: any }> {
  return post(app, '/generate', { ...batch(loras), sampling_params: { temperature: 0, top_k: 1, max_new_tokens: MAX_NEW_TOKENS } });
}

/**
 * An engine holding every adapter directory of the world from the start, for the static pass:
 * outputs keyed by directory, so a name loaded again under another path is checked against that
 * path's adapter.
 */
export class StaticOutputs {
  private engine: LocalTroupeEngine | null = null;
  private readonly keys = new Map<string, string>();
  /** Each adapter's output for every prompt, computed once. */
  private readonly byAdapter = new Map<string | null, string[]>();

  constructor(
    private readonly world: World,
    private readonly paths: string[],
  ) {
    paths.forEach((p, i) => this.keys.set(p, `static-${i}`));
  }

  /** The outputs of SGLang's batch of every prompt with each of these adapters (by directory). */
  async outputs(paths: Array<string | null>): Promise<string[]> {
    const missing = [...new Set(paths)].filter((p) => !this.byAdapter.has(p));
    if (missing.length > 0) {
      this.engine ??= await startEngine(this.world, [
        '--lora-paths',
        ...this.paths.map((p) => `${this.keys.get(p)}=${p}`),
        '--max-loras-per-batch',
        '8',
        '--max-lora-rank',
        '16',
        '--lora-target-modules',
        'all',
      ]);
      const { status, json } = await generate(
        appFor(this.engine),
        missing.map((p) => (p === null ? null : this.keys.get(p)!)),
      );
      expect(status, JSON.stringify(json)).toBe(200);
      const texts = (json as Array<{ text: string }>).map((o) => o.text);
      // Row i is prompt i / missing.length with adapter i % missing.length (create_batch_data's order).
      missing.forEach((p, j) =>
        this.byAdapter.set(
          p,
          PROMPTS.map((_, i) => texts[i * missing.length + j]!),
        ),
      );
    }
    return PROMPTS.flatMap((_, i) => paths.map((p) => this.byAdapter.get(p)![i]!));
  }

  async close(): Promise<void> {
    await this.engine?.close();
  }
}

/**
 * Runs the case on a fresh engine: each load and unload must report exactly the adapters
 * expected loaded (SGLang's session bookkeeping), each expected error must come as a 400 holding
 * its words, and each forward pass must give the static pass's outputs.
 */
export async function runUpdateCase(world: World, statics: StaticOutputs, c: UpdateCase): Promise<void> {
  const initial = (c.initial ?? []).map(initialAdapter);
  const args = c.initial ? ['--lora-paths', ...c.initial.map((i) => (typeof i === 'string' ? i : JSON.stringify(i))), ...c.args] : c.args;
  const engine = await startEngine(world, args);
  try {
    const app = appFor(engine);
    const expected = new Set(initial.map((a) => a.name));
    // Where each name was last loaded from, for the static pass.
    const pathOf = new Map(initial.map((a) => [a.name, a.path]));
    const reported = (json: any): string[] => Object.keys(json.loaded_adapters).sort();
    for (const [i, op] of c.ops.entries()) {
      const at = `op ${i} (${op.op} ${JSON.stringify(op.op === 'forward' ? op.loras : op.op === 'load' ? op.adapter.name : op.name)})`;
      if (op.op === 'load') {
        const { name, path = name, pinned = false } = op.adapter;
        const res = await post(app, '/load_lora_adapter', { lora_name: name, lora_path: path, pinned });
        if (op.error) {
          expect(res.status, at).toBe(400);
          expect(res.json.error_message, at).toContain(op.error);
          continue;
        }
        expect(res.status, `${at}: ${res.json.error_message}`).toBe(200);
        pathOf.set(name, path);
        expected.add(name);
        for (const e of op.evicts ?? []) expected.delete(e);
        expect(reported(res.json), at).toEqual([...expected].sort());
      } else if (op.op === 'unload') {
        const res = await post(app, '/unload_lora_adapter', { lora_name: op.name });
        expect(res.status, `${at}: ${res.json.error_message}`).toBe(200);
        expected.delete(op.name);
        expect(reported(res.json), at).toEqual([...expected].sort());
      } else {
        const res = await generate(app, op.loras);
        if (op.error) {
          expect(res.status, at).toBe(400);
          expect(res.json.error.message, at).toContain(op.error);
          continue;
        }
        expect(res.status, `${at}: ${JSON.stringify(res.json)}`).toBe(200);
        const texts = (res.json as Array<{ text: string }>).map((o) => o.text);
        const want = await statics.outputs(op.loras.map((l) => (l === null ? null : pathOf.get(l)!)));
        expect(texts, at).toEqual(want);
        for (const l of op.loras) if (l !== null) expected.add(l);
        for (const e of op.evicts ?? []) expected.delete(e);
      }
    }
    // /v1/models lists the same loaded set, each adapter by name with its path.
    const models = (await (await app.request('/v1/models')).json()).data as Array<{ id: string; root: string; parent: string | null }>;
    const listed = models.filter((m) => m.parent !== null);
    expect(listed.map((m) => m.id).sort()).toEqual([...expected].sort());
    for (const m of listed) expect(m.root).toBe(pathOf.get(m.id));
  } finally {
    await engine.close();
  }
}

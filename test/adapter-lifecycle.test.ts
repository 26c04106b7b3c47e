// The adapter lifecycle on the real engine through the HTTP app: SGLang's dynamic-loading
// walk-through checked against fresh engines started with the same adapters, every refusal of
// /load_lora_adapter and /unload_lora_adapter, the published transitions, /metrics and the
// visualizer's JSON and event stream.
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { AdapterTransition } from '../src/scheduler/index.js';
import type { LocalTroupeEngine } from '../src/troupe.js';
import { appFor, generateIds, makeWorld, poisonTensor, post, startEngine, type App, type World } from './adapter-fixtures.js';

const PROMPTS = ['List 3 countries and their capitals.', 'AI is a field of computer science focused on'];

let world: World;
beforeAll(() => {
  world = makeWorld('lifecycle');
});
afterAll(() => world?.cleanup());

async function withEngine<T>(args: string[], fn: (app: App, engine: LocalTroupeEngine) => Promise<T>): Promise<T> {
  const engine = await startEngine(world, args);
  try {
    return await fn(appFor(engine), engine);
  } finally {
    await engine.close();
  }
}

describe('dynamic loading (the SGLang walk-through)', () => {
  it('load lora0 and lora1, generate, unload lora0, load another adapter as lora0, generate: outputs match fresh engines', async () => {
    const lora0New = world.adapter('lora0-new', { rank: 16, modules: ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'] });
    const transitions: AdapterTransition[] = [];
    const [first, second] = await withEngine(
      ['--enable-lora', '--max-loras-per-batch', '2', '--max-lora-rank', '16', '--lora-target-modules', 'all'],
      async (app, engine) => {
        engine.onAdapterTransition((ts) => transitions.push(...ts));
        expect((await post(app, '/load_lora_adapter', { lora_name: 'lora0', lora_path: world.demoA })).json).toEqual({
          success: true,
          error_message: '',
          loaded_adapters: { lora0: world.demoA },
        });
        expect((await post(app, '/load_lora_adapter', { lora_name: 'lora1', lora_path: world.demoB })).status).toBe(200);
        const first = await generateIds(app, PROMPTS, ['lora0', 'lora1']);
        const unload = await post(app, '/unload_lora_adapter', { lora_name: 'lora0' });
        expect(unload.json).toEqual({ success: true, error_message: '', loaded_adapters: { lora1: world.demoB } });
        expect((await post(app, '/load_lora_adapter', { lora_name: 'lora0', lora_path: lora0New })).json.loaded_adapters).toEqual({
          lora1: world.demoB,
          lora0: lora0New,
        });
        return [first, await generateIds(app, PROMPTS, ['lora0', 'lora1'])];
      },
    );
    expect(second[0]).not.toEqual(first[0]); // lora0 now names a different adapter
    expect(second[1]).toEqual(first[1]);

    const fresh1 = await withEngine(['--lora-paths', `lora0=${world.demoA}`, `lora1=${world.demoB}`, '--max-loras-per-batch', '2'], (app) =>
      generateIds(app, PROMPTS, ['lora0', 'lora1']),
    );
    const fresh2 = await withEngine(['--lora-paths', `lora0=${lora0New}`, `lora1=${world.demoB}`, '--max-loras-per-batch', '2'], (app) =>
      generateIds(app, PROMPTS, ['lora0', 'lora1']),
    );
    expect(first).toEqual(fresh1);
    expect(second).toEqual(fresh2);

    // Every transition is published with its adapter, states, a reason and a time, in order.
    for (const t of transitions) {
      expect(t).toEqual({
        adapter: expect.any(String),
        from: expect.any(String),
        to: expect.any(String),
        reason: expect.any(String),
        time: expect.any(Number),
      });
      expect(t.reason.length).toBeGreaterThan(0);
    }
    expect(transitions.map((t) => t.time)).toEqual([...transitions.map((t) => t.time)].sort((a, b) => a - b));
    const lora0 = transitions.filter((t) => t.adapter === 'lora0').map((t) => `${t.from}->${t.to}`);
    expect(lora0).toEqual([
      'none->registered',
      'registered->loading',
      'loading->cpuLoaded',
      'cpuLoaded->h2dInFlight',
      'h2dInFlight->gpuResident.unpinned',
      'gpuResident.unpinned->unloading',
      'unloading->unloaded',
      'none->registered',
      'registered->loading',
      'loading->cpuLoaded',
      'cpuLoaded->h2dInFlight',
      'h2dInFlight->gpuResident.unpinned',
    ]);
    expect(transitions.find((t) => t.adapter === 'lora0' && t.to === 'unloaded')!.reason).toMatch(/no request uses it/);
  });
});

describe('load and unload refusals over HTTP', () => {
  let engine: LocalTroupeEngine;
  let app: App;
  beforeAll(async () => {
    engine = await startEngine(world, [
      '--enable-lora',
      '--max-loras-per-batch',
      '3',
      '--max-lora-rank',
      '16',
      '--lora-target-modules',
      'q_proj',
      'k_proj',
      'v_proj',
      'o_proj',
      '--lora-paths',
      `a=${world.demoA}`,
    ]);
    app = appFor(engine);
  });
  afterAll(() => engine?.close());

  async function refused(path: string, body: object, ...fragments: Array<string | RegExp>): Promise<void> {
    const { status, json } = await post(app, path, body);
    expect(status).toBe(400);
    expect(json.success).toBe(false);
    for (const f of fragments) expect(json.error_message).toMatch(f);
    expect(Object.keys(json.loaded_adapters)).toContain('a');
  }

  it('refuses a duplicate name, naming it', async () => {
    await refused('/load_lora_adapter', { lora_name: 'a', lora_path: world.demoA }, "Failed to load LoRA adapter 'a' because it is already loaded");
  });

  it('refuses to unload an unknown name, naming it', async () => {
    await refused('/unload_lora_adapter', { lora_name: 'ghost' }, "'ghost'", /not loaded/);
  });

  it('refuses a missing directory and one that is not a PEFT adapter', async () => {
    await refused('/load_lora_adapter', { lora_name: 'm', lora_path: join(world.dir, 'nowhere') }, /nowhere is not a directory/);
    const empty = join(world.dir, 'empty-adapter');
    mkdirSync(empty, { recursive: true });
    await refused('/load_lora_adapter', { lora_name: 'e', lora_path: empty }, /adapter_config\.json: missing/);
    const bad = join(world.dir, 'bad-config');
    mkdirSync(bad, { recursive: true });
    writeFileSync(join(bad, 'adapter_config.json'), JSON.stringify({ peft_type: 'LORA', r: 0, lora_alpha: 8, target_modules: ['q_proj'] }));
    await refused('/load_lora_adapter', { lora_name: 'b', lora_path: bad }, /r: must be a positive integer, got 0/);
  });

  it('refuses a rank above --max-lora-rank and modules outside --lora-target-modules', async () => {
    const big = world.adapter('rank32', { rank: 32, modules: ['q_proj'] });
    await refused(
      '/load_lora_adapter',
      { lora_name: 'big', lora_path: big },
      /with rank 32 is incompatible with the current LoRA memory pool configuration: .*rank 32, above --max-lora-rank 16/,
    );
    await refused(
      '/load_lora_adapter',
      { lora_name: 'mlp', lora_path: world.demoB },
      /incompatible .*targets gate_proj, up_proj, down_proj, not in --lora-target-modules/,
    );
  });

  it('refuses more pinned adapters than max_loras_per_batch - 1', async () => {
    const p1 = world.adapter('pin1', { modules: ['q_proj'] });
    const p2 = world.adapter('pin2', { modules: ['q_proj'] });
    const p3 = world.adapter('pin3', { modules: ['q_proj'] });
    expect((await post(app, '/load_lora_adapter', { lora_name: 'p1', lora_path: p1, pinned: true })).status).toBe(200);
    expect((await post(app, '/load_lora_adapter', { lora_name: 'p2', lora_path: p2, pinned: true })).status).toBe(200);
    await refused(
      '/load_lora_adapter',
      { lora_name: 'p3', lora_path: p3, pinned: true },
      /Failed to load LoRA adapter 'p3' as a pinned adapter\..*to avoid starvation.*: 2 adapters are pinned and at most 2 may be/,
    );
    expect((await engine.adapters()).find((s) => s.name === 'p1')).toMatchObject({ pinned: true, state: 'gpuResident.pinned' });
    // Unpinned, the same adapter is welcome.
    expect((await post(app, '/load_lora_adapter', { lora_name: 'p3', lora_path: p3 })).status).toBe(200);
    for (const name of ['p1', 'p2', 'p3']) expect((await post(app, '/unload_lora_adapter', { lora_name: name })).status).toBe(200);
  });

  it('refuses weights holding NaN or Inf, naming the tensor', async () => {
    const tensor = 'base_model.model.model.layers.2.self_attn.v_proj.lora_B.weight';
    const nan = world.adapter('nan', { modules: ['q_proj', 'v_proj'] });
    poisonTensor(nan, tensor, NaN);
    await refused('/load_lora_adapter', { lora_name: 'nan', lora_path: nan }, tensor, /holds NaN at element 3; the weights must be finite/);
    const inf = world.adapter('inf', { modules: ['q_proj', 'v_proj'] });
    poisonTensor(inf, 'base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight', -Infinity);
    await refused('/load_lora_adapter', { lora_name: 'inf', lora_path: inf }, 'layers.0.self_attn.q_proj.lora_A.weight', /-Infinity/);
    expect((await engine.adapters()).map((s) => s.name)).toEqual(['a']);
  });
});

describe('observability', () => {
  it('/metrics, /debug/adapters/state and the event stream report requests, loads, evictions and the pool', async () => {
    const x = world.adapter('obs-x');
    await withEngine(
      ['--lora-paths', `a=${world.demoA}`, `b=${world.demoB}`, '--max-loras-per-batch', '2', '--max-loaded-loras', '2'],
      async (app) => {
        // CPU memory is full, so x stays on disk until a request wants it.
        expect((await post(app, '/load_lora_adapter', { lora_name: 'x', lora_path: x })).status).toBe(200);
        const events = await app.request('/debug/adapters/events');
        expect(events.headers.get('content-type')).toMatch(/text\/event-stream/);
        const reader = events.body!.getReader();
        let sse = '';
        const readUntil = async (pattern: RegExp): Promise<void> => {
          while (!pattern.test(sse)) {
            const { value, done } = await reader.read();
            if (done) throw new Error(`event stream ended before ${pattern}: ${sse}`);
            sse += new TextDecoder().decode(value);
          }
        };
        // Two adapters of rank 16 (demo-b's), cut into slots of rank 8.
        await readUntil(/event: snapshot\ndata: .*"poolSlots":4/);

        await generateIds(app, [PROMPTS[0]!], ['a'], 4);
        await generateIds(app, [PROMPTS[0]!], ['b'], 4);
        await generateIds(app, [PROMPTS[0]!, PROMPTS[1]!], ['x', null], 4);
        await readUntil(/event: transition\ndata: .*"adapter":"x","from":"h2dInFlight","to":"gpuResident.unpinned"/);
        await reader.cancel();

        const state = await (await app.request('/debug/adapters/state')).json();
        expect(state.poolSlots).toBe(4);
        expect(state.slotsUsed).toBeLessThanOrEqual(4);
        const xs = state.adapters.find((s: { name: string }) => s.name === 'x');
        expect(xs).toMatchObject({
          state: 'gpuResident.unpinned',
          pinned: false,
          refcount: 0,
          running: 0,
          lastTransition: { to: 'gpuResident.unpinned' },
        });
        expect(xs.cpuBytes).toBe(4 * 8 * (256 + 256 + 256 + 128 + 256 + 256) * 4); // 4 layers of rank 8 on q, v and o
        expect(xs.gpuBytes).toBe(xs.cpuBytes);
        // Two CPU copies at most: 'a' had to leave CPU memory for 'x'.
        expect(state.adapters.find((s: { name: string }) => s.name === 'a')).toMatchObject({ state: 'registered', cpuBytes: 0, gpuBytes: 0 });

        const res = await app.request('/metrics');
        expect(res.headers.get('content-type')).toMatch(/text\/plain/);
        const text = await res.text();
        const value = (series: string): number => {
          const line = text.split('\n').find((l) => l.startsWith(`${series} `));
          if (!line) throw new Error(`no ${series} in /metrics:\n${text}`);
          return Number(line.slice(series.length + 1));
        };
        expect(value('troupe_adapter_requests_total{adapter="x",outcome="ok"}')).toBe(1);
        expect(value('troupe_adapter_requests_total{adapter="(base)",outcome="ok"}')).toBe(1);
        expect(value('troupe_adapter_generated_tokens_total{adapter="a"}')).toBe(4);
        expect(value('troupe_adapter_loads_total{adapter="x",stage="cpu_to_gpu"}')).toBe(1);
        expect(value('troupe_adapter_loads_total{adapter="a",stage="disk_to_cpu"}')).toBe(1);
        expect(value('troupe_adapter_evictions_total{adapter="a",from="cpu"}')).toBeGreaterThanOrEqual(1);
        expect(value('troupe_adapter_load_seconds_count{adapter="x",stage="disk_to_cpu"}')).toBe(1);
        expect(value('troupe_lora_pool_slots')).toBe(4);
        expect(value('troupe_lora_pool_slots_used')).toBe(state.slotsUsed);
      },
    );
  });
});

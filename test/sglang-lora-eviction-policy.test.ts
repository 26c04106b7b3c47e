// SGLang's pool-slot eviction policy cases (test/registered/lora/test_lora_eviction_policy.py),
// run through the scheduler: adapters are used in SGLang's access order, each filling one of the
// pool's slots; then a new adapter needs a slot and the policy picks whose slot it takes. The
// candidates are the adapters no running request uses (SGLang's candidate set): the others are
// kept busy with a running request while the new one arrives.
import { describe, expect, test } from 'vitest';
import { parseArgs } from '../src/config/parse.js';
import { validateFlags } from '../src/config/validate.js';
import type { Scheduler } from '../src/scheduler/index.js';
import { newScheduler, runAll, seq, serveLoader, step } from './scheduler-harness.js';

/** Uses each adapter in `access` order (one request run to its end each); they fill the pool's slots. */
function used(policy: 'lru' | 'fifo', access: string[]): Scheduler {
  const names = [...new Set(access)];
  const s = newScheduler({ evictionPolicy: policy, maxLorasPerBatch: names.length, gpuSlots: names.length });
  for (const n of [...names, 'new']) s.addAdapter({ name: n, path: `/${n}`, pinned: false });
  serveLoader(s);
  access.forEach((n, i) => {
    s.submit(seq(`use-${i}`, { lora: n, maxNewTokens: 1 }));
    runAll(s);
  });
  return s;
}

/** The adapter that gives up its slot when one more adapter needs one and only `candidates` may go. */
function victim(policy: 'lru' | 'fifo', access: string[], candidates: string[]): string {
  return victimOf(used(policy, access), [...new Set(access)], candidates);
}

function victimOf(s: Scheduler, names: string[], candidates: string[]): string {
  // Those that may not go run a long request each.
  for (const n of names.filter((x) => !candidates.includes(x))) s.submit(seq(`busy-${n}`, { lora: n, maxNewTokens: 50 }));
  serveLoader(s);
  step(s);
  const resident = s
    .adapters()
    .filter((a) => a.slot !== null)
    .map((a) => a.name);
  s.submit(seq('needs-a-slot', { lora: 'new', maxNewTokens: 1 }));
  const copy = s.takeCommands().find((c) => c.kind === 'copy-to-slot');
  expect(copy, 'the new adapter is copied into a slot').toMatchObject({ name: 'new' });
  // The victim leaves the GPU; an idle adapter in a lower slot may move into the victim's slot
  // and leave its own to the new one (compaction), which changes no victim.
  const taken = resident.filter((n) => s.adapters([n])[0]!.state === 'cpuLoaded');
  expect(taken).toHaveLength(1);
  return taken[0]!;
}

describe('test_lora_eviction_policy.py', () => {
  test('test_lru_basic: the least recently used adapter goes', () => {
    expect(victim('lru', ['lora1', 'lora2', 'lora3', 'lora4'], ['lora1', 'lora2', 'lora3', 'lora4'])).toBe('lora1');
  });

  test('test_lru_with_reuse: a use moves an adapter to the back', () => {
    expect(victim('lru', ['lora1', 'lora2', 'lora3', 'lora4', 'lora1'], ['lora1', 'lora2', 'lora3', 'lora4'])).toBe('lora2');
  });

  test('test_lru_multiple_reuse', () => {
    expect(victim('lru', ['lora1', 'lora2', 'lora3', 'lora1', 'lora2'], ['lora1', 'lora2', 'lora3'])).toBe('lora3');
  });

  test('test_lru_with_subset_candidates: an adapter a running request uses is not a candidate', () => {
    expect(victim('lru', ['lora1', 'lora2', 'lora3', 'lora4'], ['lora2', 'lora3', 'lora4'])).toBe('lora2');
  });

  test('test_lru_base_model_evicted_last: base-model requests hold no slot, so an adapter goes', () => {
    const s = used('lru', ['lora1', 'lora2', 'lora3']);
    s.submit(seq('base', { maxNewTokens: 50 }));
    expect(victimOf(s, ['lora1', 'lora2', 'lora3'], ['lora1', 'lora2', 'lora3'])).toBe('lora1');
    expect(runAll(s).out.get('base')!.finish).toMatchObject({ type: 'length' });
  });

  test('test_fifo_basic: the adapter longest in its slot goes', () => {
    expect(victim('fifo', ['lora1', 'lora2', 'lora3', 'lora4'], ['lora1', 'lora2', 'lora3', 'lora4'])).toBe('lora1');
  });

  test('test_fifo_ignores_reuse', () => {
    const access = ['lora1', 'lora2', 'lora3', 'lora4', 'lora4', 'lora3', 'lora2', 'lora1'];
    expect(victim('fifo', access, ['lora1', 'lora2', 'lora3', 'lora4'])).toBe('lora1');
  });

  test('test_fifo_with_subset_candidates', () => {
    expect(victim('fifo', ['lora1', 'lora2', 'lora3', 'lora4'], ['lora2', 'lora3', 'lora4'])).toBe('lora2');
  });

  test('test_fifo_base_model_evicted_last', () => {
    expect(victim('fifo', ['lora1', 'lora2', 'lora3'], ['lora1', 'lora2', 'lora3'])).toBe('lora1');
  });

  test('test_policy_remove: an unloaded adapter leaves the order, so the next least recently used goes', async () => {
    const s = used('lru', ['lora1', 'lora2', 'lora3']);
    await s.removeAdapter('lora1');
    // Its slot is free again: the next adapter takes it, and the one after evicts lora2 (an idle
    // adapter may move into lora2's slot and leave the newer one its own, lower slot).
    s.submit(seq('takes-the-free-slot', { lora: 'new', maxNewTokens: 1 }));
    runAll(s);
    s.addAdapter({ name: 'newer', path: '/newer', pinned: false });
    serveLoader(s);
    s.submit(seq('needs-a-slot', { lora: 'newer', maxNewTokens: 1 }));
    expect(s.takeCommands().find((c) => c.kind === 'copy-to-slot')).toMatchObject({ name: 'newer' });
    expect(s.adapters().find((a) => a.name === 'lora2')).toMatchObject({ state: 'cpuLoaded', slot: null });
    expect(
      s
        .adapters()
        .filter((a) => a.state === 'cpuLoaded')
        .map((a) => a.name),
    ).toEqual(['lora2']);
  });

  test('test_eviction_policy_factory: lru and fifo are accepted, any other policy is refused', () => {
    const policy = (p: string) => validateFlags(parseArgs(['--lora-eviction-policy', p]).flags).options.loraEvictionPolicy;
    expect(policy('lru')).toBe('lru');
    expect(policy('fifo')).toBe('fifo');
    expect(() => policy('invalid_policy')).toThrow(/invalid_policy/);
  });

  test('test_lru_vs_fifo_behavior: the same uses pick different victims', () => {
    const access = ['lora1', 'lora2', 'lora3', 'lora1'];
    const all = ['lora1', 'lora2', 'lora3'];
    expect(victim('lru', access, all)).toBe('lora2');
    expect(victim('fifo', access, all)).toBe('lora1');
  });
});

// The KV cache's blocks with prefixes kept: random sequences of what the scheduler does with
// them (grow a table, keep its full blocks, take up a cached prefix, release, flush) against a
// small model of who holds which block and which key names it. Every block is free, idle (cached,
// held by none) or held, never two of these; freeCount counts the free and idle ones; a prefix
// taken up is the blocks kept under those keys; and a block handed out by grow is one no table
// holds.
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { BlockManager } from '../src/scheduler/block-manager.js';

const BLOCKS = 12;

type Op =
  | { kind: 'grow'; table: number; blocks: number }
  | { kind: 'keep'; table: number; key: number }
  | { kind: 'take'; table: number; keys: number[] }
  | { kind: 'release'; table: number }
  | { kind: 'flush' };

const op: fc.Arbitrary<Op> = fc.oneof(
  fc.record({ kind: fc.constant('grow' as const), table: fc.nat(2), blocks: fc.integer({ min: 1, max: 4 }) }),
  fc.record({ kind: fc.constant('keep' as const), table: fc.nat(2), key: fc.nat(6) }),
  fc.record({ kind: fc.constant('take' as const), table: fc.nat(2), keys: fc.array(fc.nat(6), { maxLength: 4 }) }),
  fc.record({ kind: fc.constant('release' as const), table: fc.nat(2) }),
  fc.record({ kind: fc.constant('flush' as const) }),
);

describe('the block manager with kept prefixes', () => {
  it('keeps every block free, idle or held, and hands out only blocks no table holds', () => {
    fc.assert(
      fc.property(fc.array(op, { maxLength: 60 }), (ops) => {
        const kv = new BlockManager(4, BLOCKS, true);
        const tables: number[][] = Array.from({ length: 3 }, () => []);
        /** The model: which block each key names. */
        const keyed = new Map<string, number>();
        const held = () => new Set(tables.flat());
        for (const o of ops) {
          const t = tables[o.kind === 'flush' ? 0 : o.table]!;
          if (o.kind === 'grow') {
            const before = held();
            const had = t.length;
            const ok = kv.grow(t, (had + o.blocks) * 4);
            expect(ok).toBe(o.blocks <= BLOCKS - before.size);
            if (ok) {
              const fresh = t.slice(had);
              for (const b of fresh) expect(before.has(b)).toBe(false);
              // A cached block given out again is no longer cached.
              for (const [k, b] of keyed) if (fresh.includes(b)) keyed.delete(k);
            }
          } else if (o.kind === 'keep') {
            // The scheduler keeps a held block once; a key names one block.
            const block = t.find((b) => ![...keyed.values()].includes(b));
            if (block === undefined || keyed.has(`k${o.key}`)) continue;
            kv.keep(block, `k${o.key}`);
            keyed.set(`k${o.key}`, block);
          } else if (o.kind === 'take') {
            if (t.length > 0) continue; // only an empty table takes up a prefix
            const keys = o.keys.map((k) => `k${k}`);
            kv.takePrefix(t, keys.length, (i) => keys[i]!);
            const want: number[] = [];
            for (const k of keys) {
              const b = keyed.get(k);
              if (b === undefined) break;
              want.push(b);
            }
            expect(t).toEqual(want);
          } else if (o.kind === 'release') {
            kv.release(t);
          } else {
            kv.flushPrefixes();
            keyed.clear();
          }
          expect(kv.freeCount).toBe(BLOCKS - held().size);
          expect(kv.prefix!.cachedBlocks).toBe(keyed.size);
        }
        for (const t of tables) kv.release(t);
        expect(kv.freeCount).toBe(BLOCKS);
      }),
      { numRuns: 1000 },
    );
  });
});

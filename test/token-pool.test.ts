// The pool sequences keep their tokens in: runs by size class, reused once given back, and the
// tokens of runs in use kept when the pool grows.
import { describe, expect, test } from 'vitest';
import { TokenPool } from '../src/scheduler/token-pool.js';

describe('token pool', () => {
  test('runs are powers of two of at least 64', () => {
    expect([1, 64, 65, 300, 1024, 1025].map((n) => TokenPool.runLength(n))).toEqual([64, 64, 128, 512, 1024, 2048]);
  });

  test('runs do not overlap, and a run given back is handed out again for the same class only', () => {
    const pool = new TokenPool(256);
    const a = pool.alloc(10);
    const b = pool.alloc(100);
    const c = pool.alloc(64);
    const runs = [
      [a, 64],
      [b, 128],
      [c, 64],
    ].sort((x, y) => x[0]! - y[0]!);
    for (let i = 1; i < runs.length; i++) expect(runs[i]![0]).toBeGreaterThanOrEqual(runs[i - 1]![0]! + runs[i - 1]![1]!);
    expect(pool.inUse()).toBe(256);
    pool.release(a, 64);
    expect(pool.inUse()).toBe(192);
    // A 128 run does not take the freed 64 one.
    const d = pool.alloc(128);
    expect(d).not.toBe(a);
    expect(pool.alloc(40)).toBe(a);
    expect(pool.inUse()).toBe(384);
  });

  test('growing keeps what runs in use hold, at the same offsets', () => {
    const pool = new TokenPool(64);
    const offsets: number[] = [];
    for (let r = 0; r < 40; r++) {
      const at = pool.alloc(64);
      offsets.push(at);
      pool.data.fill(r + 1, at, at + 64);
    }
    expect(pool.data.length).toBeGreaterThanOrEqual(40 * 64);
    offsets.forEach((at, r) => expect(Array.from(new Set(pool.data.subarray(at, at + 64)))).toEqual([r + 1]));
  });

  test('a pool made empty grows on first use', () => {
    const pool = new TokenPool(0);
    const at = pool.alloc(5);
    pool.data[at + 4] = 7;
    expect(pool.data[at + 4]).toBe(7);
  });
});

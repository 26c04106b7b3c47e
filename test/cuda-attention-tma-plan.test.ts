// The tensor-copy decode attention's plan (native/cuda/attention_tma_plan.h: which cache rows each
// copy brings, where they land swizzled in shared memory, which keys each split attends to) needs
// no GPU: test/gpu/attention_tma_plan_check.cc plays it against a paged cache on the host.
import { execFileSync } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect, it } from 'vitest';

it('places every key a split attends to once, and reads masked keys as zeros', () => {
  const bin = join(mkdtempSync(join(tmpdir(), 'tma-plan-')), 'check');
  execFileSync('g++', ['-std=c++17', '-O2', '-Inative', '-o', bin, 'test/gpu/attention_tma_plan_check.cc'], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const out = execFileSync(bin, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  expect(out.trim().split('\n').at(-1)).toBe('9520 cases, 0 failed');
});

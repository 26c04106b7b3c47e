// The gate/up GEMM's plan (native/cuda/gate_up_plan.h: which block takes which tile's K stages
// and LoRA A units, and where their parts meet) needs no GPU: test/gpu/gate_up_plan_check.cc
// plays it over shapes with and without LoRA, split rows and grids of several sizes on the host.
import { execFileSync } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect, it } from 'vitest';

it('gives every stage of every tile one block, and every unit that others wait for a place before theirs', () => {
  const bin = join(mkdtempSync(join(tmpdir(), 'gate-up-plan-')), 'check');
  execFileSync('g++', ['-std=c++17', '-O2', '-Inative', '-o', bin, 'test/gpu/gate_up_plan_check.cc'], { stdio: ['ignore', 'pipe', 'pipe'] });
  const out = execFileSync(bin, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  expect(out.trim().split('\n').at(-1)).toBe('1024 cases, 0 failed');
});

// The LoRA pool's run layout (native/cuda/lora_runs.h: where each rank of an adapter that takes
// several slots lies) needs no GPU: test/gpu/lora_runs_check.cc plays it over pools of adapters of
// random ranks on the host.
import { execFileSync } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect, it } from 'vitest';

it('gives every rank of every adapter a row and a column of its own, and finds it again', () => {
  const bin = join(mkdtempSync(join(tmpdir(), 'lora-runs-')), 'check');
  execFileSync('g++', ['-std=c++17', '-O2', '-Inative', '-o', bin, 'test/gpu/lora_runs_check.cc'], { stdio: ['ignore', 'pipe', 'pipe'] });
  const out = execFileSync(bin, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  expect(out.trim().split('\n').at(-1)).toBe('648 cases, 0 failed');
});

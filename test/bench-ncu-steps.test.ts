// bench/ncu_steps.py: splits an Nsight Compute CSV of bench/gpu-lora-profile.js into steps at
// their embedding kernel and reports each case's mean GPU time per kernel, leaving out the
// context fill and each case's warm-up step.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';

const HEADER = '"ID","Kernel Name","Grid Size","gpu__time_duration.sum"';
const UNITS = '"","","","ns"';

/** One step's CSV rows: the embedding kernel, then the given kernels (name, ns). */
function step(kernels: [string, number][]): string[] {
  return [['troupe::<unnamed>::embedKernel(const unsigned short *, int)', 2000] as [string, number], ...kernels].map(
    ([name, ns]) => `"0","${name}","(1, 1, 1)","${ns.toLocaleString('en-US')}"`,
  );
}

function run(lines: string[]): {
  stdout: string;
  json: { kernels: Record<string, Record<string, { us: number; launches: number }>>; totalUs: Record<string, number> };
} {
  const dir = mkdtempSync(join(tmpdir(), 'ncu-steps-'));
  writeFileSync(join(dir, 'prof.csv'), [HEADER, UNITS, ...lines].join('\n') + '\n');
  const stdout = execFileSync('python3', ['bench/ncu_steps.py', join(dir, 'prof.csv'), join(dir, 'out.json')], {
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  return { stdout, json: JSON.parse(readFileSync(join(dir, 'out.json'), 'utf8')) };
}

const gemm = 'nvjet_sm90_tss_128x32_64x10_2x1_v_bz_TNT';
const shrink = 'void troupe::<unnamed>::itemShrinkKernel<256, 4>(const unsigned short *, int)';

describe('ncu_steps.py', () => {
  it('averages the timed steps of each case and skips the fill and warm-up steps', () => {
    const lines = ['"0","troupe::<unnamed>::convertKernel(const void *)","(1, 1, 1)","99,000"'];
    for (let i = 0; i < 4; i++) lines.push(...step([['prefillAttention(float)', 50_000]]));
    const cases: [string, number][][] = [
      [[gemm, 10_000]],
      [
        [gemm, 11_000],
        [shrink, 6_000],
      ],
      [
        [gemm, 12_000],
        [shrink, 7_000],
        [shrink, 5_000],
      ],
    ];
    for (const kernels of cases) {
      // The warm-up step's times are far off, so counting it would show.
      lines.push(...step(kernels.map(([n, ns]) => [n, ns * 100] as [string, number])));
      lines.push(...step(kernels), ...step(kernels));
    }
    const { json, stdout } = run(lines);
    expect(json.kernels['base']).toEqual({ embedKernel: { us: 2, launches: 1 }, [gemm]: { us: 10, launches: 1 } });
    expect(json.kernels['1 adapter']![gemm]).toEqual({ us: 11, launches: 1 });
    expect(json.kernels['8 adapters']!['itemShrinkKernel']).toEqual({ us: 12, launches: 2 });
    expect(json.totalUs).toEqual({ base: 12, '1 adapter': 19, '8 adapters': 26 });
    expect(stdout).toMatch(/itemShrinkKernel\s+2\s+0\.0\s+6\.0\s+12\.0/);
  });

  it('refuses a profile whose steps do not match the benchmark', () => {
    const lines = [...step([[gemm, 1000]]), ...step([[gemm, 1000]])];
    expect(() => run(lines)).toThrow(/2 steps, expected 13/);
  });
});

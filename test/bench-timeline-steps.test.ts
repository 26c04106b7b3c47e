// bench/timeline_steps.py: reads a kernel timeline (bench/kernel_timeline.cc) of
// bench/gpu-lora-profile.js, splits it into steps at their embedding kernel and says, per case,
// what each kernel adds to a step, the idle time before it and how early it started, and lays out
// one layer from a RoPE kernel to the next. bench/timeline_decode.py does the same for the decode
// steps of bench/gpu-decode-timeline.js, the timeline's last STEPS less two of warm-up.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';

const embed = 'troupe::(anonymous namespace)::embedKernel(const unsigned short*, int)';
const rope = 'troupe::(anonymous namespace)::ropeKvKernel(float*, int)';
const gemm = 'nvjet_sm90_tss_128x32_64x10_2x1_v_bz_TNT';
const shrink = 'void troupe::cuda::(anonymous namespace)::itemShrinkKernel<256, 1, 8>(const unsigned short*, int)';

type Kernel = [name: string, startUs: number, endUs: number, grid?: number];
type Row = { launches: number; runs: number; adds: number; idle: number; early: number };
type Case = { spanUs: number; kernels: Record<string, Row>; layer: { kernel: string; startUs: number; endUs: number; blocks: number }[] };

/** Timeline lines of one step starting at t0 (us): its embedding kernel (1 us), then the kernels (grids of 132 blocks unless given). */
function step(t0: number, kernels: Kernel[]): string[] {
  const line = ([name, s, e, grid = 132]: Kernel) => `${Math.round((t0 + s) * 1e3)} ${Math.round((t0 + e) * 1e3)} 7 3 ${grid} ${name}`;
  return [line([embed, 0, 1]), ...kernels.map(line)];
}

function run(lines: string[], script = 'timeline_steps.py', args: string[] = [], env: Record<string, string> = {}): { stdout: string; json: any } {
  const dir = mkdtempSync(join(tmpdir(), 'timeline-steps-'));
  // The records come in the order CUPTI hands back its buffers, not by start.
  writeFileSync(join(dir, 'timeline.txt'), [...lines].reverse().join('\n') + '\n');
  const stdout = execFileSync('python3', [`bench/${script}`, join(dir, 'timeline.txt'), ...args, join(dir, 'out.json')], {
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, ...env },
  });
  return { stdout, json: JSON.parse(readFileSync(join(dir, 'out.json'), 'utf8')) };
}

/**
 * The benchmark's steps: 4 that fill the context, then `perCase` per case (the first warm-up, far
 * slower); `slow` (case, timed step) runs that step's kernels 5x as long, as a step tuning a GEMM does.
 */
function profile(cases: Kernel[][], perCase = 3, slow?: [number, number]): string[] {
  const lines: string[] = [];
  let t0 = 0;
  const add = (kernels: Kernel[]) => {
    lines.push(...step(t0, kernels));
    t0 += 10_000;
  };
  const stretched = (kernels: Kernel[], k: number) => kernels.map(([n, s, e, grid]) => [n, s * k, e * k, grid] as Kernel);
  for (let i = 0; i < 4; i++) add([[gemm, 2, 50]]);
  cases.forEach((kernels, c) => {
    add(stretched(kernels, 10));
    for (let i = 0; i < perCase - 1; i++) add(slow && slow[0] === c && slow[1] === i ? stretched(kernels, 5) : kernels);
  });
  return lines;
}

describe('timeline_steps.py', () => {
  it('says what each kernel adds, the idle time before it and how early it started, per case', () => {
    const layer = (at: number, extra: Kernel[]): Kernel[] => [[rope, at, at + 5], [gemm, at + 6, at + 20], ...extra];
    const { json, stdout }: { json: Record<string, Case>; stdout: string } = run(
      profile([
        [...layer(2, []), ...layer(30, [])],
        [...layer(2, [[shrink, 8, 12]]), ...layer(30, [[shrink, 36, 40]])].sort((a, b) => a[1] - b[1]),
        [
          // A shrink before each GEMM, which starts 2 us before the shrink ends.
          [rope, 2, 7],
          [shrink, 8, 12, 96],
          [gemm, 10, 30],
          [rope, 31, 36],
          [shrink, 37, 41, 96],
          [gemm, 39, 59],
        ],
      ]),
    );
    // Base: embed 0-1, idle 1, RoPE 2-7, idle 1, GEMM 8-22, idle 8, RoPE 30-35, idle 1, GEMM 36-50.
    expect(json['base']!.spanUs).toBe(50);
    expect(json['base']!.kernels['ropeKvKernel']).toEqual({ launches: 2, runs: 10, adds: 10, idle: 9, early: 0 });
    expect(json['base']!.kernels[gemm]).toEqual({ launches: 2, runs: 28, adds: 28, idle: 2, early: 0 });
    // 8 adapters: the GEMM starts 2 us before the shrink ends, so it adds only what reaches past it.
    const eight = json['8 adapters']!;
    expect(eight.spanUs).toBe(59);
    expect(eight.kernels['itemShrinkKernel']).toEqual({ launches: 2, runs: 8, adds: 8, idle: 2, early: 0 });
    expect(eight.kernels[gemm]).toEqual({ launches: 2, runs: 40, adds: 36, idle: 0, early: 4 });
    // One layer, from its RoPE kernel's start, the same in both layers of the step, with each
    // kernel's grid.
    expect(eight.layer).toEqual([
      { kernel: 'ropeKvKernel', startUs: 0, endUs: 5, blocks: 132 },
      { kernel: 'itemShrinkKernel', startUs: 6, endUs: 10, blocks: 96 },
      { kernel: gemm, startUs: 8, endUs: 28, blocks: 132 },
    ]);
    expect(stdout).toMatch(/what 8 adapters add over base, by kernel/);
    expect(stdout).toMatch(/itemShrinkKernel\s+\+8\.0/);
    expect(stdout).toMatch(/span\s+\+9\.0/);
  });

  it('takes PROFILE_STEPS steps a case and leaves out a timed step far longer than the others', () => {
    const kernels: Kernel[] = [
      [rope, 2, 7],
      [gemm, 8, 22],
    ];
    for (const [perCase, slowStep] of [
      [5, 2],
      [3, 0],
    ] as const) {
      const { json }: { json: Record<string, Case> } = run(profile([kernels, kernels, kernels], perCase, [0, slowStep]), 'timeline_steps.py', [], {
        PROFILE_STEPS: String(perCase),
      });
      // Base: its slow step (a span of 110 us) is left out, so the span and counts are one step's.
      expect(json['base']!.spanUs).toBe(22);
      expect(json['base']!.kernels[gemm]).toEqual({ launches: 1, runs: 14, adds: 14, idle: 1, early: 0 });
      expect(json['8 adapters']!.spanUs).toBe(22);
    }
  });

  it('refuses a timeline whose steps do not match the benchmark', () => {
    const lines = [...step(0, [[gemm, 2, 5]]), ...step(100, [[gemm, 2, 5]])];
    expect(() => run(lines)).toThrow(/2 steps, expected 13/);
  });
});

describe('timeline_decode.py', () => {
  // Two prefills that fill the context, then 5 decode steps, the first two (capture, first replay) slow.
  function decodes(steps: Kernel[][]): string[] {
    const fill: Kernel[] = [[gemm, 2, 400]];
    return [fill, fill, ...steps].flatMap((kernels, i) => step(i * 10_000, kernels));
  }
  const slow: Kernel[] = [
    [rope, 2, 50],
    [gemm, 60, 900],
  ];
  // Each layer: RoPE 5 us, then the GEMM starting 1 us before RoPE ends (launched early).
  const fast: Kernel[] = [
    [rope, 2, 7],
    [gemm, 6, 20, 96],
    [rope, 21, 26],
    [gemm, 25, 39, 96],
  ];

  it("takes the last STEPS decode steps less the warm-up: each kernel's time and one layer", () => {
    const { json, stdout } = run(decodes([slow, slow, fast, fast, fast]), 'timeline_decode.py', ['5']);
    expect(json.spanUs).toBe(39);
    // 1 us idle before each RoPE kernel (after the embedding kernel, after the first GEMM).
    expect(json.kernels['ropeKvKernel']).toEqual({ launches: 2, runs: 10, adds: 10, idle: 2, early: 0 });
    // Each GEMM adds what reaches past its RoPE kernel: 13 of its 14 us.
    expect(json.kernels[gemm]).toEqual({ launches: 2, runs: 28, adds: 26, idle: 0, early: 2 });
    expect(json.layer).toEqual([
      { kernel: 'ropeKvKernel', startUs: 0, endUs: 5, blocks: 132 },
      { kernel: gemm, startUs: 4, endUs: 18, blocks: 96 },
    ]);
    expect(stdout).toMatch(/^3 steps timed, step span 39\.0 us/);
  });

  it('refuses a step count the timeline does not hold, or one with nothing after the warm-up', () => {
    const lines = decodes([slow, slow, fast]);
    expect(() => run(lines, 'timeline_decode.py', ['9'])).toThrow(/5 steps; STEPS must be more than 2 and at most that/);
    expect(() => run(lines, 'timeline_decode.py', ['2'])).toThrow(/STEPS must be more than 2/);
  });
});

// bench/timeline_prefill.py: reads a kernel timeline (bench/kernel_timeline.cc) of
// bench/gpu-lora-prefill.js, splits it into steps at their embedding kernel, twelve a engine, and
// reports each engine's mean time per kernel over its timed steps (every fourth step, the first of
// each prefill, is warm-up), its span and idle time, and what each later engine's kernels take
// beyond the first's.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';

const embed = 'troupe::(anonymous namespace)::embedKernel(const unsigned short*, int)';
const gemm = 'nvjet_sm90_tss_128x256_64x4_2x1_v_bz_TNT';
const augment = 'troupe::cuda::(anonymous namespace)::augmentKernel(troupe::cuda::LoraSlices, int)';

type Kernel = [name: string, startUs: number, endUs: number];
type Engine = { engine: number; spanUs: number; idleUs: number; kernels: Record<string, { us: number; launches: number }> };

/** Timeline lines of one step starting at t0 (us): its embedding kernel (1 us), then the kernels. */
function step(t0: number, kernels: Kernel[]): string[] {
  const line = ([name, s, e]: Kernel) => `${Math.round((t0 + s) * 1e3)} ${Math.round((t0 + e) * 1e3)} 7 0 132 ${name}`;
  return [line([embed, 0, 1]), ...kernels.map(line)];
}

/** Twelve steps an engine; the warm-up steps (0, 4, 8) take ten times as long. */
function engines(perEngine: Kernel[][]): string[] {
  const lines: string[] = [];
  let t = 0;
  for (const kernels of perEngine)
    for (let s = 0; s < 12; s++) {
      const scale = s % 4 === 0 ? 10 : 1;
      lines.push(
        ...step(
          t,
          kernels.map(([n, a, b]) => [n, a * scale, b * scale] as Kernel),
        ),
      );
      t += 10_000;
    }
  return lines;
}

function run(lines: string[]): { stdout: string; json: Engine[] } {
  const dir = mkdtempSync(join(tmpdir(), 'timeline-prefill-'));
  // CUPTI hands its records back buffer by buffer, not in the order the kernels started.
  writeFileSync(join(dir, 'timeline.txt'), [...lines].reverse().join('\n') + '\n');
  const stdout = execFileSync('python3', ['bench/timeline_prefill.py', join(dir, 'timeline.txt'), join(dir, 'out.json')], {
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  return { stdout, json: JSON.parse(readFileSync(join(dir, 'out.json'), 'utf8')) };
}

describe('timeline_prefill.py', () => {
  it("averages each engine's timed steps and names what the later engines add", () => {
    const base: Kernel[] = [
      [gemm, 2, 202],
      [gemm, 210, 410],
    ];
    const adapters: Kernel[] = [
      [gemm, 2, 222],
      [augment, 230, 330],
      [gemm, 340, 560],
    ];
    const { json, stdout } = run(engines([base, adapters]));
    expect(json).toHaveLength(2);
    expect(json[0]!.kernels[gemm]).toEqual({ us: 400, launches: 2 });
    expect(json[0]!.kernels['embedKernel']).toEqual({ us: 1, launches: 1 });
    // Span from the embedding kernel's start to the last kernel's end; idle: the gaps between kernels.
    expect(json[0]!.spanUs).toBeCloseTo(410, 6);
    expect(json[0]!.idleUs).toBeCloseTo(1 + 8, 6);
    expect(json[1]!.kernels[gemm]).toEqual({ us: 440, launches: 2 });
    expect(json[1]!.kernels['augmentKernel']).toEqual({ us: 100, launches: 1 });
    expect(json[1]!.idleUs).toBeCloseTo(1 + 8 + 10, 6);
    expect(stdout).toMatch(/engine 1: augmentKernel \+100 us a step/);
    expect(stdout).not.toMatch(/engine 1: nvjet/);
  });
});

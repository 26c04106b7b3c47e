// Closing the engine while adapters are being read from disk: the loader thread is terminated
// with native reads in flight, and a read that completes then must not take the process down
// (an exception out of the native completion callback aborts the whole process, test runner
// included, so passing at all is the assertion that matters; the loads must also fail cleanly).
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseArgs } from '../src/config/parse.js';
import { validateFlags } from '../src/config/validate.js';
import { DEMO_MODEL, makeDemo, makeRandomAdapter } from '../src/model/demo.js';
import { createEngine } from '../src/troupe.js';

const ADAPTERS = 12;
let dir = '';

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'troupe-close-read-'));
  makeDemo(dir);
  // Float32 rank-16 adapters on every module: large enough that several reads are in flight at once.
  for (let i = 0; i < ADAPTERS; i++) {
    makeRandomAdapter(
      join(dir, 'big', `a${i}`),
      { rank: 16, alpha: 32, targetModules: ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'], seed: 100 + i },
      DEMO_MODEL,
    );
  }
});
afterAll(() => {
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe('closing the engine during adapter reads', () => {
  it('survives reads that finish while the loader thread is torn down, and fails their loads', async () => {
    for (let round = 0; round < 4; round++) {
      const argv = [
        '--model-path',
        dir,
        '--device',
        'cpu',
        '--max-total-tokens',
        '2048',
        '--enable-lora',
        '--max-lora-rank',
        '16',
        '--lora-target-modules',
        'all',
        '--max-loras-per-batch',
        '2',
        '--lora-allowed-dirs',
        join(dir, 'big'),
      ];
      const engine = await createEngine(validateFlags(parseArgs(argv).flags).options);
      // Close as soon as the first read has started, with the others queued or in flight behind it.
      const reading = new Promise<void>((resolve) => {
        engine.onAdapterTransition((ts) => {
          if (ts.some((t) => t.to.startsWith('loading'))) resolve();
        });
      });
      const loads = Promise.allSettled(
        Array.from({ length: ADAPTERS }, (_, i) => engine.loadAdapter({ name: `a${i}`, path: join(dir, 'big', `a${i}`) })),
      );
      await reading;
      await engine.close();
      const settled = await loads;
      for (const s of settled) {
        // A load either finished before the close or failed saying the engine is closed.
        if (s.status === 'rejected') expect(String((s.reason as Error).message)).toMatch(/closed|closing|unavailable/);
      }
      expect(
        settled.some((s) => s.status === 'rejected'),
        `round ${round}: every load finished before the close`,
      ).toBe(true);
    }
  }, 240_000);
});

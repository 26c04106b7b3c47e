// Base decode steps for a kernel timeline (bench/kernel_timeline.cc): ROWS sequences (default 1)
// over a 512-token context filled by real prefills, then STEPS decode steps (default 10) in CUDA
// graphs, as bench/gpu-decode.js takes them (GRAPHS=0: launched one by one, without graphs). On a
// CUDA machine, after `npm run build` and `node scripts/build-native.js`:
//   TROUPE_KERNEL_TIMELINE=/tmp/t.txt LD_PRELOAD=/tmp/libkernel_timeline.so ROWS=1 \
//     node bench/gpu-decode-timeline.js MODEL && python3 bench/timeline_decode.py /tmp/t.txt 10
import { greedyBatch, randomTokenSource, tuneAtFirstCapture } from './gpu-steps.js';

tuneAtFirstCapture();
const root = new URL('..', import.meta.url);
const { loadNative } = await import(new URL('dist/src/engine/native.js', root).href);
const { openCheckpoint } = await import(new URL('dist/src/model/checkpoint.js', root).href);

const modelDir = process.argv[2];
if (!modelDir) throw new Error('usage: [ROWS=n] [STEPS=n] [GRAPHS=0] node bench/gpu-decode-timeline.js MODEL_DIR');
const ROWS = Number(process.env.ROWS ?? 1);
const STEPS = Number(process.env.STEPS ?? 10);
if (!(Number.isInteger(ROWS) && ROWS >= 1 && ROWS <= 128)) throw new Error(`ROWS must be 1 to 128, got ${process.env.ROWS}`);
if (!(Number.isInteger(STEPS) && STEPS >= 3 && STEPS <= 100)) throw new Error(`STEPS must be 3 to 100, got ${process.env.STEPS}`);
const GRAPHS = process.env.GRAPHS ?? '1';
if (GRAPHS !== '0' && GRAPHS !== '1') throw new Error(`GRAPHS must be 0 or 1, got ${GRAPHS}`);
const BLOCK = 16;
const CONTEXT = 512;
const maxBlocks = Math.ceil((CONTEXT + STEPS) / BLOCK);
const addon = loadNative();
const ckpt = openCheckpoint(modelDir);
const c = ckpt.config;
const h = addon.createEngine(c, ckpt.tensors, {
  device: 'cuda',
  blockSize: BLOCK,
  kvBlocks: 128 * maxBlocks, // room for 128 rows whatever ROWS, as bench/gpu-decode.js allocates
  memFractionStatic: 0.85,
  loraSlots: 0,
  maxLoraRank: 0,
  loraModules: [],
  threads: 0,
  cudaGraphMaxBs: GRAPHS === '1' ? 128 : 0,
});
const source = randomTokenSource(1);
const seqs = Array.from({ length: ROWS }, (_, i) => ({
  tokens: source(CONTEXT - 1).map((t) => t % c.vocabSize),
  cached: 0,
  blocks: Array.from({ length: maxBlocks }, (_, k) => i * maxBlocks + k),
}));
for (let i = 0; i < ROWS; i += 8) addon.step(h, greedyBatch(seqs.slice(i, i + 8), maxBlocks));
let last = seqs.map(() => 5000);
const times = [];
for (let s = 0; s < STEPS; s++) {
  const batch = greedyBatch(
    seqs.map((q, i) => ({ tokens: [last[i]], cached: CONTEXT - 1 + s, blocks: q.blocks })),
    maxBlocks,
  );
  const t0 = performance.now();
  const r = addon.step(h, batch);
  times.push(performance.now() - t0);
  last = Array.from(r.tokens);
}
addon.destroyEngine(h);
console.log(`${ROWS} rows, ${STEPS} decode steps${GRAPHS === '1' ? '' : ' without graphs'}: ${times.map((t) => t.toFixed(2)).join(' ')} ms`);

// The executor actor: owns the native engine and runs one forward step per `step` message.
// The main thread initializes it; the scheduler talks to it over a direct channel so the
// main thread stays off the per-step path.
import { parentPort, workerData } from 'node:worker_threads';
import { loadNative } from '../engine/native.js';
import type { NativeAddon, StepResult } from '../engine/types.js';
import { feedInputs } from './feed.js';
import { TroupeError } from '../errors.js';
import { buffersOf, Mailbox, withTransfer, type Transfer } from './mailbox.js';
import type { ExecutorMsg, ExecutorReplies, ExecutorWorkerData } from './protocol.js';

if (!parentPort) throw new Error('executor.worker must run in a worker thread');
const data = workerData as ExecutorWorkerData;

let native: NativeAddon | null = null;
let handle = -1;
/** The tokens the last step sampled, for the step after it to take its fed inputs from; null after a failed step. */
let lastTokens: Int32Array | null = null;
/** When the last step ended (performance.now()), for the next one's waitMs; -1 before the first. */
let lastEnd = -1;

function step(msg: ExecutorMsg & { type: 'step' }): Transfer<StepResult> {
  if (!native || handle < 0) throw new TroupeError('unavailable', 'the engine is not initialized');
  const batch = msg.batch;
  const lastEndBefore = lastEnd;
  if (batch.feed) feedInputs(batch, lastTokens);
  lastTokens = null;
  const t0 = performance.now();
  let r: StepResult;
  try {
    r = native.step(handle, batch);
  } finally {
    // A step that threw ends here too: the next one's wait starts now, not at the step before.
    lastEnd = performance.now();
  }
  r.stepMs = lastEnd - t0;
  // From the end of the last step: its reply, this step's message and its inputs' copy.
  if (lastEndBefore >= 0) r.waitMs = t0 - lastEndBefore;
  // Its buffers leave with the result.
  lastTokens = r.tokens.slice();
  return withTransfer(r, buffersOf([r.tokens, r.logprobs, r.topIds, r.topLogprobValues, r.logits]));
}

/**
 * Runs a step from the event loop rather than inside the delivery of its message. With overlap
 * scheduling the next step is always queued on the scheduler's port when one ends, and a port
 * delivers what keeps arriving (up to a thousand messages) before the thread looks at its other
 * port: run inline, steps would keep the main thread's messages (shutdown) waiting that long.
 * Immediates run in order, so steps do too.
 */
function stepSoon(msg: ExecutorMsg & { type: 'step' }): Promise<Transfer<StepResult>> {
  return new Promise((resolve, reject) =>
    setImmediate(() => {
      try {
        resolve(step(msg));
      } catch (err) {
        reject(err instanceof Error ? err : new Error(String(err)));
      }
    }),
  );
}

const handler = (msg: ExecutorMsg): ExecutorReplies[ExecutorMsg['type']] | Transfer<StepResult> | Promise<Transfer<StepResult>> => {
  switch (msg.type) {
    case 'init': {
      native ??= loadNative();
      if (handle >= 0) throw new Error('the engine is already initialized');
      handle = native.createEngine(msg.config, msg.tensors, msg.options);
      return { handle, info: native.engineInfo(handle) };
    }
    case 'step':
      return stepSoon(msg);
    case 'shutdown':
      if (native && handle >= 0) native.destroyEngine(handle);
      handle = -1;
      return undefined;
  }
};

// Both the main thread (init, shutdown) and the scheduler (step) may ask.
for (const [port, name] of [
  [parentPort, 'main'],
  [data.schedulerPort, 'scheduler'],
] as const) {
  new Mailbox<ExecutorMsg, ExecutorReplies, never, Record<never, never>>(port, name).serve(handler);
}

// The executor actor: owns the native engine and runs one forward step per `step` message.
// The main thread initializes it; the scheduler talks to it over a direct channel so the
// main thread stays off the per-step path.
import { parentPort, workerData } from 'node:worker_threads';
import { loadNative } from '../engine/native.js';
import type { NativeAddon, StepResult } from '../engine/types.js';
import { TroupeError } from '../errors.js';
import { buffersOf, Mailbox, withTransfer, type Transfer } from './mailbox.js';
import type { ExecutorMsg, ExecutorReplies, ExecutorWorkerData } from './protocol.js';

if (!parentPort) throw new Error('executor.worker must run in a worker thread');
const data = workerData as ExecutorWorkerData;

let native: NativeAddon | null = null;
let handle = -1;

function step(batch: ExecutorMsg & { type: 'step' }): Transfer<StepResult> {
  if (!native || handle < 0) throw new TroupeError('unavailable', 'the engine is not initialized');
  const r = native.step(handle, batch.batch);
  return withTransfer(r, buffersOf([r.tokens, r.logprobs, r.topIds, r.topLogprobValues, r.logits]));
}

const handler = (msg: ExecutorMsg): ExecutorReplies[ExecutorMsg['type']] | Transfer<StepResult> => {
  switch (msg.type) {
    case 'init': {
      native ??= loadNative();
      if (handle >= 0) throw new Error('the engine is already initialized');
      handle = native.createEngine(msg.config, msg.tensors, msg.options);
      return { handle, info: native.engineInfo(handle) };
    }
    case 'step':
      return step(msg);
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

// The scheduler actor: hosts the pure-logic Scheduler and drives the step loop. It talks
// to the executors (one per tensor-parallel rank, each sent the same batch) and the loader
// over direct channels; the main thread only submits, aborts and receives the token events
// of each step as one message.
import { parentPort, workerData, type MessagePort } from 'node:worker_threads';
import { badRequest, toWire, TroupeError } from '../errors.js';
import type { StepBatch, StepResult } from '../engine/types.js';
import { Scheduler, type TokenEvent } from '../scheduler/index.js';
import { Mailbox } from './mailbox.js';
import { stepRanks } from './ranks.js';
import type {
  AdapterTransition,
  ExecutorMsg,
  ExecutorReplies,
  LoaderMsg,
  LoaderOutMsg,
  LoaderOutReplies,
  LoaderReplies,
  SchedulerMsg,
  SchedulerOutMsg,
  SchedulerOutReplies,
  SchedulerReplies,
  SchedulerWorkerData,
} from './protocol.js';

if (!parentPort) throw new Error('scheduler.worker must run in a worker thread');
const data = workerData as SchedulerWorkerData;

const main = new Mailbox<SchedulerMsg, SchedulerReplies, SchedulerOutMsg, SchedulerOutReplies>(parentPort, 'main');
const executors = data.executorPorts.map(
  (port, rank) => new Mailbox<never, Record<never, never>, ExecutorMsg, ExecutorReplies>(port, rank === 0 ? 'executor' : `executor-${rank}`),
);

let loaderPort = data.loaderPort;
let loader = connectLoader(loaderPort);

let sched: Scheduler | null = null;
let overlapSchedule = false;
let looping = false;
let transitions: AdapterTransition[] = [];

function scheduler(): Scheduler {
  if (!sched) throw new TroupeError('unavailable', 'the scheduler is not initialized');
  return sched;
}

function flushCommands(s: Scheduler): void {
  for (const command of s.takeCommands()) loader.send({ type: 'command', command });
}

/** Events made outside a step (max_new_tokens 0, requests ended by an adapter's load failure). */
function flushEvents(s: Scheduler): void {
  const events = s.takeEvents();
  if (events.length > 0) main.send({ type: 'tokens', events });
}

/** Sequences a step failed alone: one `failed` message per distinct reason, the rest of the step stands. */
function sendFailures(s: Scheduler): void {
  const byMessage = new Map<string, string[]>();
  for (const f of s.takeFailures()) byMessage.set(f.message, [...(byMessage.get(f.message) ?? []), f.id]);
  for (const [message, ids] of byMessage) main.send({ type: 'failed', ids, error: { kind: 'internal', message } });
}

/**
 * Adapter transitions of one tick go out as one message, with a few counters for the metrics;
 * the main thread keeps no copy of the adapter table and asks for it when it needs it.
 */
function queueTransition(t: AdapterTransition): void {
  if (transitions.length === 0) {
    queueMicrotask(() => {
      const batch = transitions;
      transitions = [];
      main.send({ type: 'adapters', transitions: batch, counters: scheduler().adapterCounters() });
    });
  }
  transitions.push(t);
}

/**
 * Runs steps until nothing is schedulable; any message that may unblock work calls it again.
 * With overlap scheduling (one engine rank), the step after the one in flight is scheduled and
 * sent before that one's result is back, so the executor starts it the moment the first ends:
 * this thread's work for a step (completing the last one, scheduling, building the batch) runs
 * while the engine computes instead of between two steps.
 */
async function loop(): Promise<void> {
  if (looping || !sched) return;
  looping = true;
  const s = sched;
  const overlap = overlapSchedule && executors.length === 1;
  const inFlight: Array<{ result: Promise<StepResult>; seqIds: string[] }> = [];
  const send = (next: { batch: StepBatch; seqIds: string[] } | null): void => {
    if (!next) return;
    const result = stepRanks(executors, next.batch);
    // Awaited in turn below; a rejection before then is not unhandled.
    result.catch(() => undefined);
    inFlight.push({ result, seqIds: next.seqIds });
  };
  // The last step's token events. They go to the main thread once the next step is on its way
  // to the executors: copying them into a message (a few dozen objects a step) is then done
  // while the executors run, not between two steps.
  let tokens: TokenEvent[] = [];
  const sendTokens = (): void => {
    if (tokens.length > 0) main.send({ type: 'tokens', events: tokens });
    tokens = [];
    sendFailures(s);
  };
  try {
    for (;;) {
      flushCommands(s);
      if (inFlight.length === 0) send(s.schedule());
      if (overlap && inFlight.length === 1) send(s.scheduleAhead());
      const head = inFlight.shift();
      if (!head) break;
      sendTokens();
      flushEvents(s);
      let result;
      try {
        result = await head.result;
      } catch (err) {
        // A failed step fails the sequences in it, not the engine: free them and go on.
        s.discardStep();
        for (const id of head.seqIds) s.abort(id);
        main.send({ type: 'failed', ids: head.seqIds, error: toWire(err) });
        continue;
      }
      tokens = s.complete(result);
    }
  } finally {
    sendTokens();
    flushCommands(s);
    flushEvents(s);
    looping = false;
  }
}

let kicked = false;
/** Starts the loop after the messages already queued are handled, so requests that arrive together share the first step. */
function kick(): void {
  // Loads start now, not after the step in progress: a request's adapter is read (and copied
  // into a free slot) while the request waits.
  if (sched) flushCommands(sched);
  if (looping || kicked) return;
  kicked = true;
  setImmediate(() => {
    kicked = false;
    void loop();
  });
}

function connectLoader(port: MessagePort): Mailbox<LoaderOutMsg, LoaderOutReplies, LoaderMsg, LoaderReplies> {
  return new Mailbox<LoaderOutMsg, LoaderOutReplies, LoaderMsg, LoaderReplies>(port, 'loader').serve((msg) => {
    scheduler().onLoaderEvent(msg.event);
    kick();
  });
}

main.serve(async (msg): Promise<SchedulerReplies[SchedulerMsg['type']]> => {
  switch (msg.type) {
    case 'init':
      if (sched) throw new Error('the scheduler is already initialized');
      sched = new Scheduler(msg.options);
      overlapSchedule = msg.options.overlapSchedule ?? false;
      sched.subscribe(queueTransition);
      return;
    case 'submit':
      scheduler().submit(msg.seq);
      kick();
      return;
    case 'abort': {
      const ev = scheduler().abort(msg.id);
      if (ev) main.send({ type: 'tokens', events: [ev] });
      kick();
      return;
    }
    case 'addAdapter': {
      const s = scheduler();
      s.addAdapter(msg.spec);
      kick();
      const status = await s.adapterRead(msg.spec.name);
      if (!status) throw badRequest(`LoRA adapter '${msg.spec.name}' was removed while loading`);
      return status;
    }
    case 'removeAdapter': {
      const done = scheduler().removeAdapter(msg.name);
      kick();
      await done;
      kick();
      return;
    }
    case 'adapters':
      return scheduler().adapters(msg.names);
    case 'adapterDetails':
      return scheduler().adapterDetails();
    case 'stats':
      return scheduler().stats();
    case 'load':
      return scheduler().load();
    case 'flushCache':
      scheduler().flushCache();
      return;
    case 'loaderRestarted':
      // Events the old loader sent but that are not yet handled describe copies that are gone.
      loaderPort.close();
      loaderPort = msg.port;
      loader = connectLoader(loaderPort);
      sched?.loaderRestarted();
      kick();
      return;
  }
});

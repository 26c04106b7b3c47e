// Spawns the executor, loader and scheduler actors, wires their direct channels and
// watches them. An actor that dies fails every outstanding call with an error naming it
// and marks the engine unhealthy, so nothing waits forever on a thread that is gone.
import { MessageChannel, Worker, type MessagePort } from 'node:worker_threads';
import { TroupeError } from '../errors.js';
import { Mailbox } from './mailbox.js';
import type {
  ExecutorMsg,
  ExecutorReplies,
  ExecutorWorkerData,
  LoaderMsg,
  LoaderReplies,
  LoaderWorkerData,
  SchedulerMsg,
  SchedulerOutMsg,
  SchedulerOutReplies,
  SchedulerReplies,
  SchedulerWorkerData,
} from './protocol.js';
import { workerUrl } from './worker-url.js';

export type ActorName = 'executor' | 'loader' | 'scheduler';

export interface Actors {
  executor: Mailbox<never, Record<never, never>, ExecutorMsg, ExecutorReplies>;
  loader: Mailbox<never, Record<never, never>, LoaderMsg, LoaderReplies>;
  scheduler: Mailbox<SchedulerOutMsg, SchedulerOutReplies, SchedulerMsg, SchedulerReplies>;
}

export class Supervisor {
  readonly actors: Actors;
  private readonly workers: Record<ActorName, Worker>;
  private failure: TroupeError | null = null;
  private closing = false;
  private readonly crashListeners: Array<(err: TroupeError) => void> = [];
  private readonly alive = new Set<ActorName>(['executor', 'loader', 'scheduler']);

  constructor() {
    const execSched = new MessageChannel();
    const loaderSched = new MessageChannel();
    const spawn = (name: ActorName, data: object, transfer: MessagePort[]): Worker =>
      new Worker(workerUrl(`${name}.worker.js`, import.meta.url), {
        workerData: data,
        transferList: transfer,
        name: `troupe-${name}`,
      });
    this.workers = {
      executor: spawn('executor', { schedulerPort: execSched.port1 } satisfies ExecutorWorkerData, [execSched.port1]),
      loader: spawn('loader', { schedulerPort: loaderSched.port1 } satisfies LoaderWorkerData, [loaderSched.port1]),
      scheduler: spawn(
        'scheduler',
        { executorPort: execSched.port2, loaderPort: loaderSched.port2 } satisfies SchedulerWorkerData,
        [execSched.port2, loaderSched.port2],
      ),
    };
    this.actors = {
      executor: new Mailbox(this.workers.executor, 'executor'),
      loader: new Mailbox(this.workers.loader, 'loader'),
      scheduler: new Mailbox(this.workers.scheduler, 'scheduler'),
    };
    for (const name of Object.keys(this.workers) as ActorName[]) {
      const w = this.workers[name];
      w.on('error', (err) => this.crashed(name, `crashed: ${err.message}`));
      w.on('exit', (code) => {
        this.alive.delete(name);
        this.crashed(name, `exited with code ${code}`);
      });
    }
  }

  /** Null while every actor is alive; otherwise the error that describes the first death. */
  get unhealthy(): TroupeError | null {
    return this.failure;
  }

  /** The thread behind an actor (fault drills and diagnostics). */
  worker(name: ActorName): Worker {
    return this.workers[name];
  }

  onCrash(listener: (err: TroupeError) => void): void {
    this.crashListeners.push(listener);
  }

  private crashed(name: ActorName, what: string): void {
    if (this.closing || this.failure) return;
    this.failure = new TroupeError('unavailable', `the ${name} actor ${what}; the engine must be restarted`);
    for (const box of Object.values(this.actors)) (box as Mailbox<never, never, never, never>).failAll(this.failure);
    for (const l of this.crashListeners) l(this.failure);
  }

  async close(): Promise<void> {
    if (this.closing) return;
    this.closing = true;
    const closed = new TroupeError('unavailable', 'the engine is closed');
    this.failure ??= closed;
    for (const box of Object.values(this.actors)) (box as Mailbox<never, never, never, never>).failAll(closed);
    // Terminating a thread inside a native call would take the process down, so the executor
    // first finishes its step and destroys the engine; a stuck one must not block closing.
    if (this.alive.has('executor')) await this.shutdownExecutor(5000);
    await Promise.all(Object.values(this.workers).map((w) => w.terminate()));
  }

  /** A shutdown call outside the mailbox, which may already have failed every call. */
  private shutdownExecutor(timeoutMs: number): Promise<void> {
    const w = this.workers.executor;
    return new Promise<void>((resolve) => {
      const done = (): void => {
        clearTimeout(timer);
        w.off('message', onMessage);
        w.off('exit', done);
        resolve();
      };
      const onMessage = (m: unknown): void => {
        if ((m as { r?: number }).r === SHUTDOWN_ID) done();
      };
      const timer = setTimeout(done, timeoutMs);
      w.on('message', onMessage);
      w.once('exit', done);
      w.postMessage({ c: SHUTDOWN_ID, m: { type: 'shutdown' } satisfies ExecutorMsg });
    });
  }
}

// Mailbox call ids count up from 1, so this one never collides.
const SHUTDOWN_ID = -1;

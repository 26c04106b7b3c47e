// Spawns the executor actors (one per tensor-parallel rank), the loader and the scheduler,
// wires their direct channels and watches them. The loader holds nothing that cannot be read
// from disk again, so when it dies it is replaced (a few times a minute at most). The scheduler
// and the executors hold the requests and the KV cache: when one of them dies, every outstanding
// call fails with an error naming it and the engine is marked unhealthy for good, so nothing
// waits forever on a thread that is gone; the other ranks are released from the collectives
// they wait in.
import { randomUUID } from 'node:crypto';
import { MessageChannel, Worker, type MessagePort, type ResourceLimits } from 'node:worker_threads';
import { loadNative } from '../engine/native.js';
import { TroupeError } from '../errors.js';
import type { Log } from '../log.js';
import { Mailbox } from './mailbox.js';
import { spawnSchedulerThread } from './scheduler-limits.js';
import type { ExecutorBox } from './ranks.js';
import type {
  ExecutorMsg,
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

/** Rank 0's executor is 'executor'; rank r > 0's is 'executor-r'. */
export type ActorName = 'executor' | `executor-${number}` | 'loader' | 'scheduler';

export interface Actors {
  /** Rank 0's executor. */
  executor: ExecutorBox;
  /** Every rank's executor, by rank. */
  executors: ExecutorBox[];
  /** Replaced when the loader is restarted: look it up here each time. */
  loader: Mailbox<never, Record<never, never>, LoaderMsg, LoaderReplies>;
  scheduler: Mailbox<SchedulerOutMsg, SchedulerOutReplies, SchedulerMsg, SchedulerReplies>;
}

export class Supervisor {
  readonly actors: Actors;
  private readonly workers = new Map<ActorName, Worker>();
  private failure: TroupeError | null = null;
  private closing = false;
  private readonly crashListeners: Array<(err: TroupeError) => void> = [];
  private readonly alive = new Set<ActorName>();
  /** The loader's init message, sent again to each replacement. */
  private loaderInit: LoaderInit | null = null;
  /** When the loader was restarted, within the last RESTART_WINDOW_MS. */
  private restarts: number[] = [];
  /** The id the ranks' engines share, so they find each other in the native addon. */
  readonly tpGroup = `troupe-tp-${randomUUID()}`;

  constructor(
    readonly tpSize = 1,
    private readonly log: Log = () => {},
  ) {
    const rankName = (r: number): ActorName => (r === 0 ? 'executor' : `executor-${r}`);
    const execScheds = Array.from({ length: tpSize }, () => new MessageChannel());
    const loaderSched = new MessageChannel();
    const spawn = this.spawn.bind(this);
    const executors = execScheds.map((ch, r) =>
      spawn(rankName(r), 'executor.worker.js', { schedulerPort: ch.port1, rank: r } satisfies ExecutorWorkerData, [ch.port1]),
    );
    const loader = spawn('loader', 'loader.worker.js', { schedulerPort: loaderSched.port1 } satisfies LoaderWorkerData, [loaderSched.port1]);
    const scheduler = spawnSchedulerThread((limits) =>
      spawn(
        'scheduler',
        'scheduler.worker.js',
        { executorPorts: execScheds.map((ch) => ch.port2), loaderPort: loaderSched.port2 } satisfies SchedulerWorkerData,
        [...execScheds.map((ch) => ch.port2), loaderSched.port2],
        limits,
      ),
    );
    const boxes: ExecutorBox[] = executors.map((w, r) => new Mailbox(w, rankName(r)));
    this.actors = {
      executor: boxes[0]!,
      executors: boxes,
      loader: new Mailbox(loader, 'loader'),
      scheduler: new Mailbox(scheduler, 'scheduler'),
    };
  }

  private spawn(name: ActorName, file: string, data: object, transfer: MessagePort[], resourceLimits: ResourceLimits = {}): Worker {
    const w = new Worker(workerUrl(file, import.meta.url), { workerData: data, transferList: transfer, name: `troupe-${name}`, resourceLimits });
    this.workers.set(name, w);
    this.alive.add(name);
    // An uncaught exception comes as 'error' and then 'exit'; a terminated thread only exits.
    let error: string | null = null;
    w.on('error', (err) => {
      error = err.message;
      if (name !== 'loader') this.crashed(name, `crashed: ${err.message}`);
    });
    w.on('exit', (code) => {
      this.alive.delete(name);
      const what = error !== null ? `crashed: ${error}` : `exited with code ${code}`;
      if (name === 'loader') this.restartLoader(what);
      else this.crashed(name, what);
    });
    return w;
  }

  /** Initializes the loader and keeps the message, so a replacement gets the same. */
  initLoader(msg: LoaderInit): Promise<void> {
    this.loaderInit = msg;
    return this.actors.loader.call(msg);
  }

  /**
   * A new loader thread with its own channel to the scheduler: initialized first, so it never
   * sees a command it cannot run, and then handed to the scheduler, which forgets the CPU
   * copies the old one held and issues again what may have been lost with it.
   */
  private restartLoader(what: string): void {
    if (this.closing || this.failure) return;
    const now = Date.now();
    this.restarts = this.restarts.filter((t) => now - t < RESTART_WINDOW_MS);
    if (this.restarts.length >= MAX_LOADER_RESTARTS) {
      const window = RESTART_WINDOW_MS / 1000;
      this.crashed('loader', `${what}, after ${MAX_LOADER_RESTARTS} restarts within ${window} s; it is not restarted again`);
      return;
    }
    this.restarts.push(now);
    this.actors.loader.failAll(new TroupeError('unavailable', `the loader actor ${what}`));
    const channel = new MessageChannel();
    const worker = this.spawn('loader', 'loader.worker.js', { schedulerPort: channel.port1 } satisfies LoaderWorkerData, [channel.port1]);
    const box = new Mailbox<never, Record<never, never>, LoaderMsg, LoaderReplies>(worker, 'loader');
    this.actors.loader = box;
    this.log(
      'warning',
      `the loader actor ${what}; restarted it (${this.restarts.length} of ${MAX_LOADER_RESTARTS} restarts a minute); adapters it held in CPU memory are read from disk again`,
    );
    void (async () => {
      if (this.loaderInit) await box.call(this.loaderInit);
      await this.actors.scheduler.call({ type: 'loaderRestarted', port: channel.port2 }, [channel.port2]);
    })().catch((err: unknown) => {
      // A replacement that died in turn has been replaced (or given up on) already.
      if (this.actors.loader === box) this.crashed('loader', `could not be restarted: ${(err as Error).message}`);
    });
  }

  /** Null while every actor is alive; otherwise the error that describes the first death. */
  get unhealthy(): TroupeError | null {
    return this.failure;
  }

  /** The thread behind an actor (fault drills and diagnostics). */
  worker(name: ActorName): Worker {
    const w = this.workers.get(name);
    if (!w) throw new Error(`no actor named ${name}`);
    return w;
  }

  /** Hears the death that made the engine unhealthy (not a loader restart); returns the unsubscribe. */
  onCrash(listener: (err: TroupeError) => void): () => void {
    this.crashListeners.push(listener);
    return () => {
      const i = this.crashListeners.indexOf(listener);
      if (i >= 0) this.crashListeners.splice(i, 1);
    };
  }

  private crashed(name: ActorName, what: string): void {
    if (this.closing || this.failure) return;
    this.failure = new TroupeError('unavailable', `the ${name} actor ${what}; the engine must be restarted`);
    this.releaseRanks(this.failure.message);
    for (const box of this.boxes()) box.failAll(this.failure);
    for (const l of this.crashListeners) l(this.failure);
  }

  async close(): Promise<void> {
    if (this.closing) return;
    this.closing = true;
    const closed = new TroupeError('unavailable', 'the engine is closed');
    this.failure ??= closed;
    this.releaseRanks('the engine is closing');
    for (const box of this.boxes()) box.failAll(closed);
    // Terminating a thread inside a native call would take the process down, so each executor
    // first finishes its step and destroys its engine; a stuck one must not block closing.
    const executors = [...this.workers.keys()].filter((n) => n.startsWith('executor') && this.alive.has(n));
    await Promise.all(executors.map((n) => this.shutdownExecutor(n, 5000)));
    await Promise.all([...this.workers.values()].map((w) => w.terminate()));
  }

  private boxes(): Array<Mailbox<never, never, never, never>> {
    const { executors, loader, scheduler } = this.actors;
    return [...executors, loader, scheduler] as unknown as Array<Mailbox<never, never, never, never>>;
  }

  /** Ranks blocked in a collective with a dead one would wait forever: fail their collectives. */
  private releaseRanks(why: string): void {
    if (this.tpSize > 1) loadNative().abortTensorParallel(this.tpGroup, why);
  }

  /** A shutdown call outside the mailbox, which may already have failed every call. */
  private shutdownExecutor(name: ActorName, timeoutMs: number): Promise<void> {
    const w = this.worker(name);
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

type LoaderInit = Extract<LoaderMsg, { type: 'init' }>;

/** A loader that dies more often than this is broken, not unlucky: the next death is fatal. */
const MAX_LOADER_RESTARTS = 3;
const RESTART_WINDOW_MS = 60_000;

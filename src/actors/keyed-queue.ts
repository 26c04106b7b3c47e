// Concurrency for the loader's commands: a command waits only for the earlier commands that
// share one of its keys (an adapter, a slot), so unrelated reads and copies overlap while the
// order that matters is kept; and a counting limit for work that must not all run at once.

export class KeyedQueue {
  /** The last task of each key, settled (a failure does not stop the tasks after it). */
  private readonly tails = new Map<string, Promise<void>>();

  /** Runs `task` once every earlier task sharing a key with it has ended; the promise is the task's. */
  run<T>(keys: readonly string[], task: () => Promise<T>): Promise<T> {
    const before = keys.flatMap((k) => this.tails.get(k) ?? []);
    const done = Promise.all(before).then(task);
    const settled = done.then(
      () => undefined,
      () => undefined,
    );
    for (const k of keys) this.tails.set(k, settled);
    void settled.then(() => {
      for (const k of keys) if (this.tails.get(k) === settled) this.tails.delete(k);
    });
    return done;
  }

  /** Keys with a task queued or running. */
  get busyKeys(): number {
    return this.tails.size;
  }
}

export class Limit {
  private running = 0;
  private readonly waiters: Array<() => void> = [];

  constructor(readonly max: number) {}

  async run<T>(task: () => Promise<T>): Promise<T> {
    if (this.running >= this.max) await new Promise<void>((resolve) => this.waiters.push(resolve));
    else this.running++;
    try {
      return await task();
    } finally {
      // The slot passes straight to the next waiter.
      const next = this.waiters.shift();
      if (next) next();
      else this.running--;
    }
  }
}

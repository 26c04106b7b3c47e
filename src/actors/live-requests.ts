// The requests the engine is answering, by id. A drain waits for it to empty; every path
// that ends a request deletes it here, so no other bookkeeping is needed to know when.
import type { LiveRequest } from './request.js';

export class LiveRequests extends Map<string, LiveRequest> {
  private waiters: Array<() => void> = [];

  override delete(id: string): boolean {
    const had = super.delete(id);
    if (had && this.size === 0) this.wake();
    return had;
  }

  override clear(): void {
    super.clear();
    this.wake();
  }

  /** Resolves once no request is live (at once if none is). */
  whenEmpty(): Promise<void> {
    return this.size === 0 ? Promise.resolve() : new Promise((resolve) => this.waiters.push(resolve));
  }

  private wake(): void {
    const waiters = this.waiters;
    this.waiters = [];
    for (const w of waiters) w();
  }
}

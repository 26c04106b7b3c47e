// A small typed actor runtime over MessagePort-like endpoints (MessagePort, Worker,
// parentPort). Each side declares the messages it accepts as a discriminated union on
// `type` plus a map from type to reply type; `call` correlates replies by id, `send` is
// one-way. Envelopes are kept tiny because the scheduler/executor pair crosses threads on
// every forward step.
import type { TransferListItem } from 'node:worker_threads';
import { fromWire, toWire, TroupeError, type WireError } from '../errors.js';

export interface Message {
  type: string;
}

/** Replies keyed by message type; one-way messages map to void. */
export type Replies<M extends Message> = { [K in M['type']]: unknown };

/** The subset of MessagePort / Worker / parentPort the runtime needs. */
export interface PortLike {
  postMessage(value: unknown, transferList?: readonly TransferListItem[]): void;
  on(event: 'message', listener: (value: unknown) => void): unknown;
  on(event: 'close', listener: () => void): unknown;
}

type Envelope =
  | { c: number; m: Message } // call
  | { m: Message; c?: undefined } // send
  | { r: number; v: unknown; e?: undefined } // reply
  | { r: number; e: WireError }; // error reply

/** A handler's way to hand back a value and the buffers to move rather than copy. */
export class Transfer<T> {
  constructor(
    readonly value: T,
    readonly list: TransferListItem[],
  ) {}
}
export const withTransfer = <T>(value: T, list: TransferListItem[]): Transfer<T> => new Transfer(value, list);

type Reply<T> = T | Transfer<T> | Promise<T | Transfer<T>>;
/** Answers any accepted message; replies are checked against the union of the reply types. */
export type Handler<In extends Message, InR extends Replies<In>> = (msg: In) => Reply<InR[In['type']]>;

interface Pending {
  resolve(v: unknown): void;
  reject(e: Error): void;
}

/** Buffers behind typed arrays, deduplicated (postMessage refuses a buffer listed twice). */
export function buffersOf(arrays: Array<ArrayBufferView | null | undefined>): ArrayBuffer[] {
  const set = new Set<ArrayBuffer>();
  for (const a of arrays) if (a && a.buffer instanceof ArrayBuffer && a.byteLength > 0) set.add(a.buffer);
  return [...set];
}

/**
 * One end of a conversation. `In`/`InR`: what this side accepts and answers; `Out`/`OutR`:
 * what it sends to the other side and what comes back.
 */
export class Mailbox<In extends Message, InR extends Replies<In>, Out extends Message, OutR extends Replies<Out>> {
  private nextId = 1;
  private readonly pending = new Map<number, Pending>();
  private handler: Handler<In, InR> | null = null;
  private closedError: Error | null = null;

  constructor(
    private readonly port: PortLike,
    private readonly peerName: string,
  ) {
    port.on('message', (raw) => this.receive(raw as Envelope));
    port.on('close', () => this.failAll(new TroupeError('unavailable', `the ${peerName} actor is gone`)));
  }

  /** Answer incoming messages; a thrown error goes back to the caller as a WireError. */
  serve(handler: Handler<In, InR>): this {
    this.handler = handler;
    return this;
  }

  call<M extends Out>(msg: M, transfer?: readonly TransferListItem[]): Promise<OutR[M['type']]> {
    if (this.closedError) return Promise.reject(this.closedError);
    const id = this.nextId++;
    return new Promise<OutR[M['type']]>((resolve, reject) => {
      this.pending.set(id, { resolve: resolve as (v: unknown) => void, reject });
      try {
        this.port.postMessage({ c: id, m: msg } satisfies Envelope, transfer);
      } catch (err) {
        this.pending.delete(id);
        reject(err instanceof Error ? err : new Error(String(err)));
      }
    });
  }

  send(msg: Out, transfer?: readonly TransferListItem[]): void {
    if (this.closedError) return;
    this.port.postMessage({ m: msg } satisfies Envelope, transfer);
  }

  /** Reject every outstanding call (the peer crashed or was closed); later calls fail at once. */
  failAll(err: Error): void {
    this.closedError ??= err;
    const pending = [...this.pending.values()];
    this.pending.clear();
    for (const p of pending) p.reject(err);
  }

  get inFlight(): number {
    return this.pending.size;
  }

  private receive(env: Envelope): void {
    if ('r' in env) {
      const p = this.pending.get(env.r);
      if (!p) return;
      this.pending.delete(env.r);
      if (env.e) p.reject(fromWire(env.e));
      else p.resolve(env.v);
      return;
    }
    const id = env.c;
    const handler = this.handler;
    if (!handler) {
      if (id !== undefined) this.reply(id, undefined, new Error(`${env.m.type} arrived before a handler was set`));
      return;
    }
    let out: unknown;
    try {
      out = handler(env.m as In);
    } catch (err) {
      if (id !== undefined) this.reply(id, undefined, err);
      else this.reportOneWay(env.m, err);
      return;
    }
    if (out instanceof Promise) {
      out.then(
        (v) => id !== undefined && this.reply(id, v),
        (err) => (id !== undefined ? this.reply(id, undefined, err) : this.reportOneWay(env.m, err)),
      );
    } else if (id !== undefined) {
      this.reply(id, out);
    }
  }

  private reply(id: number, value: unknown, err?: unknown): void {
    if (err !== undefined) {
      this.port.postMessage({ r: id, e: toWire(err) } satisfies Envelope);
      return;
    }
    if (value instanceof Transfer) {
      try {
        this.port.postMessage({ r: id, v: value.value } satisfies Envelope, value.list);
        return;
      } catch {
        // Buffers owned by native code may refuse to move; copying is always allowed.
      }
      this.port.postMessage({ r: id, v: value.value } satisfies Envelope);
      return;
    }
    this.port.postMessage({ r: id, v: value } satisfies Envelope);
  }

  private reportOneWay(msg: Message, err: unknown): void {
    // A one-way message has nobody to answer; losing the error silently would hide bugs.
    process.emitWarning(`${this.peerName}: ${msg.type} failed: ${err instanceof Error ? err.message : String(err)}`);
  }
}

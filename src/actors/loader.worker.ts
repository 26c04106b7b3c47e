// The loader actor: reads adapter weights from disk into CPU memory and copies them into
// engine pool slots (or from one slot to another), off the step loop's thread. The scheduler
// decides what to load where; this only executes its commands and reports back. A CPU copy is a
// native host adapter (read by native code, page-locked on a GPU machine); under tensor
// parallelism every rank's slot is filled with that rank's slice of the same host copy.
//
// Commands run at once unless they name the same adapter or the same slot: those keep the
// order they came in (a copy waits for its adapter's read and for the clear of its slot before
// it). Reads and copies run on libuv's thread pool, at most MAX_READS reads at a time, so many
// loads do not queue behind one file and a copy into a slot always finds a thread.
import { parentPort, workerData } from 'node:worker_threads';
import { loadNative } from '../engine/native.js';
import type { HostAdapter, LoraModule, ModelConfig, NativeAddon } from '../engine/types.js';
import { toWire } from '../errors.js';
import { readAdapterHost, readAdapterInfo } from '../model/adapter.js';
import { planTensorParallel, type RankShard } from '../model/tensor-parallel.js';
import { Mailbox } from './mailbox.js';
import { poolMismatch } from './plan.js';
import { KeyedQueue, Limit } from './keyed-queue.js';
import { fillSlot, swapSlots } from './ranks.js';
import type { LoaderCommand, LoaderEvent, LoaderMsg, LoaderOutMsg, LoaderOutReplies, LoaderReplies, LoaderWorkerData } from './protocol.js';

if (!parentPort) throw new Error('loader.worker must run in a worker thread');
const data = workerData as LoaderWorkerData;

/** libuv's pool has four threads (UV_THREADPOOL_SIZE); one is left for copies into slots. */
const MAX_READS = 3;

interface Pool {
  native: NativeAddon;
  handles: number[]; // by rank
  shards: RankShard[];
  config: ModelConfig;
  maxLoraRank: number;
  loraModules: LoraModule[];
  /** Host copies are page-locked when the engines run on a GPU. */
  pageLocked: boolean;
}
let pool: Pool | null = null;
const onCpu = new Map<string, HostAdapter>();

const scheduler = new Mailbox<LoaderMsg, LoaderReplies, LoaderOutMsg, LoaderOutReplies>(data.schedulerPort, 'scheduler');
const emit = (event: LoaderEvent): void => scheduler.send({ type: 'event', event });

const reads = new Limit(MAX_READS);
const queue = new KeyedQueue();

function dropCopy(name: string, p: Pool): void {
  const host = onCpu.get(name);
  if (!host) return;
  onCpu.delete(name);
  p.native.destroyHostAdapter(host.handle);
}

async function run(cmd: LoaderCommand): Promise<void> {
  const p = pool;
  if (!p) throw new Error('the loader is not initialized');
  switch (cmd.kind) {
    case 'load-cpu': {
      try {
        const { info, host } = await reads.run(() => readAdapterHost(p.native, cmd.path, p.config, { pageLocked: p.pageLocked }));
        const why = poolMismatch(cmd.name, info.rank, info.targetModules, p);
        if (why) {
          p.native.destroyHostAdapter(host.handle);
          emit({ kind: 'load-failed', name: cmd.name, error: why });
          return;
        }
        dropCopy(cmd.name, p); // a second read of the same name replaces its copy
        onCpu.set(cmd.name, host);
        emit({ kind: 'cpu-loaded', name: cmd.name, rank: info.rank, targetModules: info.targetModules, bytes: host.bytes });
      } catch (err) {
        emit({ kind: 'load-failed', name: cmd.name, error: toWire(err).message });
      }
      return;
    }
    case 'copy-to-slot': {
      const host = onCpu.get(cmd.name);
      if (!host) {
        emit({ kind: 'load-failed', name: cmd.name, error: `adapter '${cmd.name}' is not in CPU memory` });
        return;
      }
      try {
        await fillSlot(p.native, p.handles, p.shards, p.config, cmd.slot, host.handle);
        emit({ kind: 'slot-ready', name: cmd.name, slot: cmd.slot });
      } catch (err) {
        emit({ kind: 'load-failed', name: cmd.name, error: toWire(err).message });
      }
      return;
    }
    case 'clear-slot':
      for (const h of p.handles) p.native.clearLoraSlot(h, cmd.slot);
      return;
    case 'swap-slots': {
      const [from, to] = cmd.slots;
      const [mover, partner] = cmd.names;
      try {
        await swapSlots(p.native, p.handles, from, to);
      } catch (err) {
        const error = `moving from slot ${from} to slot ${to} failed: ${toWire(err).message}`;
        for (const name of cmd.names) if (name !== null) emit({ kind: 'move-failed', name, error });
        return;
      }
      emit({ kind: 'slot-ready', name: mover, slot: to });
      if (partner !== null) emit({ kind: 'slot-ready', name: partner, slot: from });
      return;
    }
    case 'drop-cpu':
      dropCopy(cmd.name, p);
      return;
  }
}

/** What a command must wait for: the earlier commands naming the same adapter or slot. */
function keysOf(cmd: LoaderCommand): string[] {
  switch (cmd.kind) {
    case 'load-cpu':
    case 'drop-cpu':
      return [`adapter:${cmd.name}`];
    case 'copy-to-slot':
      return [`adapter:${cmd.name}`, `slot:${cmd.slot}`];
    case 'clear-slot':
      return [`slot:${cmd.slot}`];
    case 'swap-slots':
      return [...cmd.slots.map((s) => `slot:${s}`), ...cmd.names.flatMap((n) => (n === null ? [] : [`adapter:${n}`]))];
  }
}

scheduler.serve((msg) => {
  // A failure outside the ones reported as events reaches the mailbox, which warns of it.
  if (msg.type === 'command') return queue.run(keysOf(msg.command), () => run(msg.command));
});

new Mailbox<LoaderMsg, LoaderReplies, never, Record<never, never>>(parentPort, 'main').serve((msg) => {
  // Off the main thread: an adapter's files and its target_modules pattern cost the server's
  // HTTP thread nothing, whatever they hold.
  if (msg.type === 'inspect') return readAdapterInfo(msg.path);
  if (msg.type !== 'init') throw new Error(`the main thread sent ${msg.type}; only init and inspect come from there`);
  const native = loadNative();
  pool = {
    native,
    handles: msg.handles,
    shards: planTensorParallel(msg.config, msg.tpSize),
    config: msg.config,
    maxLoraRank: msg.maxLoraRank,
    loraModules: msg.loraModules,
    pageLocked: msg.handles.length > 0 && native.engineInfo(msg.handles[0]!).device === 'cuda',
  };
});

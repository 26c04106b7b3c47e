// The loader actor: reads adapter weights from disk into CPU memory and copies them into
// engine pool slots, off the step loop's thread. The scheduler decides what to load where;
// this only executes its commands and reports back. Under tensor parallelism every rank's
// slot is filled with that rank's slice of the same host copy.
import { parentPort, workerData } from 'node:worker_threads';
import { loadNative } from '../engine/native.js';
import type { AdapterWeights, LoraModule, ModelConfig, NativeAddon } from '../engine/types.js';
import { toWire } from '../errors.js';
import { loadAdapterWeights } from '../model/adapter.js';
import { planTensorParallel, type RankShard } from '../model/tensor-parallel.js';
import { Mailbox } from './mailbox.js';
import { poolMismatch } from './plan.js';
import { fillSlot } from './ranks.js';
import type { LoaderCommand, LoaderEvent, LoaderMsg, LoaderOutMsg, LoaderOutReplies, LoaderReplies, LoaderWorkerData } from './protocol.js';

if (!parentPort) throw new Error('loader.worker must run in a worker thread');
const data = workerData as LoaderWorkerData;

interface Pool {
  native: NativeAddon;
  handles: number[]; // by rank
  shards: RankShard[];
  config: ModelConfig;
  maxLoraRank: number;
  loraModules: LoraModule[];
}
let pool: Pool | null = null;
const onCpu = new Map<string, AdapterWeights>();

const scheduler = new Mailbox<LoaderMsg, LoaderReplies, LoaderOutMsg, LoaderOutReplies>(data.schedulerPort, 'scheduler');
const emit = (event: LoaderEvent): void => scheduler.send({ type: 'event', event });

function run(cmd: LoaderCommand): void {
  if (!pool) throw new Error('the loader is not initialized');
  switch (cmd.kind) {
    case 'load-cpu': {
      try {
        const { info, weights } = loadAdapterWeights(cmd.path, pool.config);
        const why = poolMismatch(cmd.name, info.rank, info.targetModules, pool);
        if (why) {
          emit({ kind: 'load-failed', name: cmd.name, error: why });
          return;
        }
        onCpu.set(cmd.name, weights);
        const bytes = weights.weights.reduce((n, w) => n + w.a.byteLength + w.b.byteLength, 0);
        emit({ kind: 'cpu-loaded', name: cmd.name, rank: info.rank, targetModules: info.targetModules, bytes });
      } catch (err) {
        emit({ kind: 'load-failed', name: cmd.name, error: toWire(err).message });
      }
      return;
    }
    case 'copy-to-slot': {
      const weights = onCpu.get(cmd.name);
      if (!weights) {
        emit({ kind: 'load-failed', name: cmd.name, error: `adapter '${cmd.name}' is not in CPU memory` });
        return;
      }
      try {
        fillSlot(pool.native, pool.handles, pool.shards, pool.config, cmd.slot, weights);
        emit({ kind: 'slot-ready', name: cmd.name, slot: cmd.slot });
      } catch (err) {
        emit({ kind: 'load-failed', name: cmd.name, error: toWire(err).message });
      }
      return;
    }
    case 'clear-slot':
      for (const h of pool.handles) pool.native.clearLoraSlot(h, cmd.slot);
      return;
    case 'drop-cpu':
      onCpu.delete(cmd.name);
      return;
  }
}

scheduler.serve((msg) => {
  if (msg.type === 'command') run(msg.command);
});

new Mailbox<LoaderMsg, LoaderReplies, never, Record<never, never>>(parentPort, 'main').serve((msg) => {
  if (msg.type !== 'init') throw new Error(`the main thread sent ${msg.type}; only init comes from there`);
  pool = {
    native: loadNative(),
    handles: msg.handles,
    shards: planTensorParallel(msg.config, msg.tpSize),
    config: msg.config,
    maxLoraRank: msg.maxLoraRank,
    loraModules: msg.loraModules,
  };
});

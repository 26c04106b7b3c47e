// What the outside sees of an adapter: its status (the embeddable API's AdapterStatus), the
// detail the visualizer shows, its published transitions, and the counters the metrics read.
import type { AdapterStatus } from '../api.js';
import { residencyOf, type AdapterSnapshot } from '../../statecharts/adapter.machine.js';

/** One published state change of an adapter; `time` is epoch milliseconds (sub-millisecond precision). */
export interface AdapterTransition {
  adapter: string;
  from: string;
  to: string;
  reason: string;
  time: number;
}

/** An adapter's status plus what a live view of the pool shows. */
export interface AdapterDetail extends AdapterStatus {
  /** Waiting and running requests that name it. */
  refcount: number;
  running: number;
  /** Size of its weights (float32) while held in CPU memory, and while copied into or held by a slot. */
  cpuBytes: number;
  gpuBytes: number;
  /** The pool slots it holds from `slot` on (its rank's span: engine/lora-slots.ts); 0 without a slot. */
  slotSpan: number;
  lastTransition: AdapterTransition | null;
}

/** Pool and CPU-cache figures that cost nothing to keep: the metrics need no adapter table. */
export interface AdapterCounters {
  slots: number;
  slotsUsed: number;
  /** Adapters whose weights are in CPU memory (reads in flight not counted). */
  cpuAdapters: number;
  /** Registered adapters per published state (states with none left out). */
  byState: Record<string, number>;
}

export function adapterStatus(snap: AdapterSnapshot, label: string, loaded: boolean): AdapterStatus {
  const ctx = snap.context;
  return {
    name: ctx.name,
    path: ctx.path,
    pinned: ctx.pinned,
    loaded,
    state: label,
    rank: ctx.rank,
    targetModules: [...ctx.targetModules],
    slot: ctx.slot,
    error: ctx.error,
  };
}

export function adapterDetail(
  snap: AdapterSnapshot,
  label: string,
  loaded: boolean,
  last: AdapterTransition | null,
  slotSpan: number,
): AdapterDetail {
  const ctx = snap.context;
  const res = residencyOf(snap) ?? '';
  const inSlot = res === 'h2dInFlight' || res === 'moving' || res.startsWith('gpuResident');
  return {
    ...adapterStatus(snap, label, loaded),
    refcount: ctx.users,
    running: ctx.running,
    cpuBytes: ctx.cpuCopy ? ctx.bytes : 0,
    gpuBytes: inSlot ? ctx.bytes : 0,
    slotSpan: ctx.slot === null ? 0 : slotSpan,
    lastTransition: last,
  };
}

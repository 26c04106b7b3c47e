// What AdapterActors keeps for each adapter beside its machine's snapshot: what it derives from
// the snapshot to file and publish it without reading the machine again, the callers waiting on
// it, and the requests its machine has not heard of yet (see pending-counts.ts).
import type { AdapterStatus } from '../api.js';
import { adapterStateLabel, residencyOf, type AdapterInput, type AdapterSnapshot } from '../../statecharts/adapter.machine.js';
import type { Placement } from './adapter-index.js';
import type { AdapterTransition } from './adapter-view.js';

export interface AdapterRecord {
  readonly name: string;
  readonly pinned: boolean;
  snap: AdapterSnapshot;
  /** Derived from the machine's snapshot: the published label and where the index files it. */
  label: string;
  placed: Placement;
  /** The state nodes `label` and `placed.residency` were read from (see AdapterActors.observe). */
  nodes: AdapterSnapshot['_nodes'];
  last: AdapterTransition | null;
  removal: { promise: Promise<void>; resolve: () => void } | null;
  /** Callers waiting for its read from disk to end. */
  readWaiters: Array<(status: AdapterStatus | null) => void>;
  /**
   * Requests that named it since its machine last heard of any (see PendingCounts.acquire): they
   * reach the machine as one counted ACQUIRE before it is read, or sent an event that depends on
   * them.
   */
  acquired: number;
  /**
   * Requests that started running, and running requests that ended, since its machine last heard
   * of any (see PendingCounts.started): they reach it as one COUNTS before anything else, or
   * the ends with the EVICT that sends it from its slot.
   */
  started: number;
  ended: number;
}

/** The record of a machine that has just taken its first snapshot. */
export function newRecord(input: AdapterInput, first: AdapterSnapshot): AdapterRecord {
  return {
    name: input.name,
    pinned: input.pinned,
    snap: first,
    label: adapterStateLabel(first),
    placed: { residency: residencyOf(first), slot: null, span: 1 },
    nodes: first._nodes,
    last: null,
    removal: null,
    readWaiters: [],
    acquired: 0,
    started: 0,
    ended: 0,
  };
}

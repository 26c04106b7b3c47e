// What an adapter's machine may hear later than it happened, and in which order: requests
// naming it (ACQUIRE), and requests starting and ending (START, RELEASE). PendingCounts
// (pending-counts.ts) keeps them pending and lets the machine hear them before anything that
// depends on them, all in one COUNTS event, or the ends with the EVICT that sends it from its
// slot, so a step that turns a batch over costs fewer statechart transitions, with the same
// outcome.
import type { AdapterEvent } from '../../statecharts/adapter.machine.js';

/**
 * Events the machine takes the same before and after acquisitions it has not heard yet: their
 * guards and actions neither read nor change the count of requests naming the adapter or its
 * admission, and none leads to 'failed', where ACQUIRE is refused. The acquisitions stay
 * pending past them, so when a batch turns over, each START, COPY and SLOT_READY is one
 * transition, not two: transitions are most of what such a step costs.
 * test/adapter-acquire-order.test.ts checks the claim against the machine.
 */
export const ACQUIRE_INDEPENDENT: ReadonlySet<AdapterEvent['type']> = new Set(['START', 'PREEMPT', 'COPY', 'SLOT_READY', 'LOAD', 'DROP_CPU']);

/**
 * Events whose guards acquisitions can only make pass (a RELEASE, or the ends an EVICT or COUNTS
 * carries, need at least as many users as they release) and whose actions only add to or take
 * from the count. One the machine accepts without the pending acquisitions ends the same as after
 * them, so they stay pending; one it refuses so is sent again after them, and refused then only
 * if it would have been anyway.
 */
export const ACQUIRE_MONOTONE: ReadonlySet<AdapterEvent['type']> = new Set(['RELEASE', 'EVICT', 'COUNTS']);

/** Whether acquisitions pending before `event` may as well be heard with the counts sent first: it would hear them anyway. */
export function needsAcquisitions(event: AdapterEvent): boolean {
  return !ACQUIRE_INDEPENDENT.has(event.type) && !ACQUIRE_MONOTONE.has(event.type);
}

/**
 * Where starts and ends may wait to be heard: a resident adapter takes START, and RELEASE asks
 * only that no more requests end than run and use it. Not while it is being unloaded (label
 * 'unloading'), where the last release completes the unload at once.
 */
export function takesCountsLater(label: string): boolean {
  return label === 'gpuResident.unpinned' || label === 'gpuResident.pinned';
}

export const startedReason = (count: number): string => (count === 1 ? 'a request started' : `${count} requests started`);
export const endedReason = (count: number): string => (count === 1 ? 'a request ended' : `${count} requests ended`);

/** Why a COUNTS is sent (it moves no state, so this is never published). */
export const COUNTS_REASON = 'requests named it, started or ended since it last heard';

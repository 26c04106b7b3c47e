// Which adapter gives up its slot or its CPU copy when another needs one. Candidates come
// from the index's eviction orders (at most the slots, or the CPU budget); whether a candidate
// may go at all is its machine's call, asked through `canGo`.
import type { AdapterIndex } from './adapter-index.js';

export interface Victim {
  name: string;
  /** Why this one: the policy's name, or that the waiting requests want it last. */
  why: string;
}

interface Wanted {
  name: string;
  seq: number;
}

/**
 * The victim for an adapter wanted at `forSeq` (-Infinity for a pinned one): the first in
 * `order` that no waiting request wants; failing that, of those wanted later than it, the one
 * wanted last. Adapters wanted sooner are never displaced, so the choice never undoes a sooner
 * adapter's placement.
 *
 * Asking a machine costs as much as a small transition, and when a batch ends every adapter
 * that leaves its slot is usually still wanted; so the wanted ones are asked latest-wanted
 * first, which settles the choice with one question where a walk in `order` asks each new
 * latest. `canGo` has no effects, so the order of the questions does not change the answer.
 */
export function pickVictim(
  order: ReadonlyMap<string, true>,
  index: AdapterIndex,
  forSeq: number,
  canGo: (name: string) => boolean,
  policy: string,
): Victim | null {
  let later: Wanted[] | null = null;
  for (const name of order.keys()) {
    const seq = index.demand.seq(name);
    if (seq === null) {
      if (canGo(name)) return { name, why: policy };
    } else if (seq > forSeq) {
      (later ??= []).push({ name, seq });
    }
  }
  if (later === null) return null;
  // Wanted adapters' places are distinct (each is its oldest request's arrival).
  later.sort((a, b) => b.seq - a.seq);
  for (const { name } of later) {
    if (canGo(name)) return { name, why: 'wanted last by the waiting requests' };
  }
  return null;
}

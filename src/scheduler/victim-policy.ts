// Which adapter gives up its slot or its CPU copy when another needs one. Candidates come
// from the index's eviction orders (at most the slots, or the CPU budget); whether a candidate
// may go at all is its machine's call, asked through `canGo`.
import type { AdapterIndex } from './adapter-index.js';

export interface Victim {
  name: string;
  /** Why this one: the policy's name, or that the waiting requests want it last. */
  why: string;
}

/**
 * The victim for an adapter wanted at `forSeq` (-Infinity for a pinned one): the first in
 * `order` that no waiting request wants; failing that, of those wanted later than it, the one
 * wanted last. Adapters wanted sooner are never displaced, so the choice never undoes a sooner
 * adapter's placement.
 */
export function pickVictim(
  order: ReadonlyMap<string, true>,
  index: AdapterIndex,
  forSeq: number,
  canGo: (name: string) => boolean,
  policy: string,
): Victim | null {
  let later: string | null = null;
  let laterSeq = forSeq;
  for (const name of order.keys()) {
    const seq = index.demand.seq(name);
    if (seq === null) {
      if (canGo(name)) return { name, why: policy };
    } else if (seq > laterSeq && canGo(name)) {
      later = name;
      laterSeq = seq;
    }
  }
  return later === null ? null : { name: later, why: 'wanted last by the waiting requests' };
}

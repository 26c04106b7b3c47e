// Which adapter gives up its slot or its CPU copy when another needs one. Candidates come
// from the index's eviction orders (at most the slots, or the CPU budget); whether a candidate
// may go at all is its machine's call, asked through `canGo`, except that one a running request
// uses (`busy`) never goes and its machine need not be asked.
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
 *
 * Asking a machine costs as much as a small transition, and when a batch ends every adapter
 * that leaves its slot is usually still wanted; so the wanted ones are asked latest-wanted
 * first, which settles the choice with one question where a walk in `order` asks each new
 * latest. `busy` and `canGo` have no effects, so the order of the questions does not change the
 * answer. Placement asks on every step, usually to learn that every slot holder is running:
 * busy ones are passed over first, and the others are kept in two small arrays sorted as they
 * come, without an object each.
 */
export function pickVictim(
  order: { keys(): Iterable<string> },
  index: AdapterIndex,
  forSeq: number,
  busy: (name: string) => boolean,
  canGo: (name: string) => boolean,
  policy: string,
): Victim | null {
  // Wanted later than `forSeq`, latest first; places are distinct (each is its oldest request's arrival).
  const names: string[] = [];
  const seqs: number[] = [];
  for (const name of order.keys()) {
    if (busy(name)) continue;
    const seq = index.demand.seq(name);
    if (seq === null) {
      if (canGo(name)) return { name, why: policy };
    } else if (seq > forSeq) {
      let at = seqs.length;
      while (at > 0 && seqs[at - 1]! < seq) {
        names[at] = names[at - 1]!;
        seqs[at] = seqs[at - 1]!;
        at--;
      }
      names[at] = name;
      seqs[at] = seq;
    }
  }
  for (const name of names) {
    if (canGo(name)) return { name, why: 'wanted last by the waiting requests' };
  }
  return null;
}

/** A run of slots for an adapter that takes more than one, and the adapters that leave it. */
export interface RunVictims {
  slot: number;
  victims: Victim[];
}

/**
 * The run of `span` slots (from a multiple of `span`) that an adapter wanted at `forSeq` takes
 * when none is free: pickVictim's choice among the resident adapters whose leaving, with that of
 * every other adapter in the run around them, frees one; each of those others must be one the
 * choice could have made too (not busy, not wanted sooner, its machine letting it go). An adapter
 * of `span` slots or more frees a run alone.
 */
export function pickRun(
  index: AdapterIndex,
  span: number,
  slotOf: (name: string) => number,
  forSeq: number,
  busy: (name: string) => boolean,
  canGo: (name: string) => boolean,
  policy: string,
): RunVictims | null {
  const runOf = (name: string): number => {
    const slot = slotOf(name);
    return index.runLength(slot) >= span ? slot : slot - (slot % span);
  };
  const othersGo = (name: string): boolean =>
    index.runOwners(runOf(name), span).every((other) => {
      if (other === name) return true;
      if (busy(other)) return false;
      const seq = index.demand.seq(other);
      return (seq === null || seq > forSeq) && canGo(other);
    });
  const first = pickVictim(index.slotOrder, index, forSeq, busy, (name) => canGo(name) && othersGo(name), policy);
  if (!first) return null;
  const slot = runOf(first.name);
  const victims = [first];
  for (const other of index.runOwners(slot, span)) {
    if (other !== first.name) victims.push({ name: other, why: `it shares the run with "${first.name}"` });
  }
  return { slot, victims };
}

// Keeping sequence lists in arrival order (the waiting queue, the running list) as sequences
// join them.
import type { Sequence } from './sequence.js';

/** Puts `s` into `list` after every sequence that arrived before it. */
export function insertByArrival(list: Sequence[], s: Sequence): void {
  let i = list.length;
  while (i > 0 && list[i - 1]!.arrival > s.arrival) i--;
  // Usually the newest: a splice there would still make an array of the none it removes.
  if (i === list.length) list.push(s);
  else list.splice(i, 0, s);
}

/**
 * Puts `added` into `list` (in arrival order) where insertByArrival would put each. When `added`
 * is in arrival order too (the waiting queue's order, which an admission walk keeps), in one pass
 * from the back, which moves each element of `list` at most once.
 */
export function mergeByArrival(list: Sequence[], added: readonly Sequence[]): void {
  for (let k = 1; k < added.length; k++) {
    if (added[k - 1]!.arrival > added[k]!.arrival) {
      for (const s of added) insertByArrival(list, s);
      return;
    }
  }
  let i = list.length - 1;
  // Grown by pushing, not by setting its length, so that the array keeps no holes.
  for (const s of added) list.push(s);
  let w = list.length - 1;
  let j = added.length - 1;
  while (j >= 0) {
    if (i >= 0 && list[i]!.arrival > added[j]!.arrival) list[w--] = list[i--]!;
    else list[w--] = added[j--]!;
  }
}

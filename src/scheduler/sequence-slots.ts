// The engine's sequence slots (native/sequence_table.h): a running sequence holds one, and its
// sampling values and blocks reach the engine once, in the first step after it takes the slot;
// later steps send only the blocks it gains.
import type { Sequence } from './sequence.js';

/** The engine's table holds this many (native/sequence_table.h, kMaxSlots): --max-running-requests is checked against it. */
export const MAX_SEQUENCE_SLOTS = 65536;

export class SequenceSlots {
  private readonly free: number[] = [];
  private next = 0;

  /** The sequence's slot, taking a free one when it holds none. */
  of(s: Sequence): number {
    if (s.seqSlot < 0) s.seqSlot = this.free.pop() ?? this.next++;
    return s.seqSlot;
  }

  /**
   * Gives back the slot of a sequence that leaves the running list. A step already built may
   * still name it for that sequence; the engine runs steps in order, so a later step that fills
   * the slot for another sequence only takes effect after those.
   */
  release(s: Sequence): void {
    if (s.seqSlot >= 0) this.free.push(s.seqSlot);
    s.seqSlot = -1;
    s.slotFilled = false;
  }
}

// What the scheduler asks of the adapter loader (run by the host thread) and what it hears back.
import type { LoraModule } from '../engine/types.js';

export type LoaderCommand =
  | { kind: 'load-cpu'; name: string; path: string } // read + validate from disk into CPU memory
  | { kind: 'copy-to-slot'; name: string; slot: number } // copy the CPU copy into a pool slot
  | { kind: 'clear-slot'; slot: number }
  /**
   * Exchange two slots' contents inside the engines: names[0] moves from slots[0] to slots[1],
   * and names[1] (null: the slot is free) the other way.
   */
  | { kind: 'swap-slots'; slots: [number, number]; names: [string, string | null] }
  | { kind: 'drop-cpu'; name: string }; // free the CPU copy

export type LoaderEvent =
  | { kind: 'cpu-loaded'; name: string; rank: number; targetModules: LoraModule[]; bytes?: number }
  | { kind: 'load-failed'; name: string; error: string }
  | { kind: 'slot-ready'; name: string; slot: number }
  /** A swap-slots failed: the engines left both slots empty. */
  | { kind: 'move-failed'; name: string; error: string };

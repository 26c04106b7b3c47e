// The lifecycle of one LoRA adapter as a statechart, and the adapter's only owner: its context
// holds the pool slot, the pinned flag, the requests using it, a pending removal and its CPU
// copy, and its transitions emit the loader commands ('command' events). Residency (disk ->
// CPU -> GPU slot and back, and from one slot to another) and admission (open, or unloading while requests still use it)
// are parallel regions: a draining adapter must still be loadable, because requests queued
// before the unload request have to run to completion.
//
// The host decides *which* adapter gets a slot or loses its CPU copy (that needs a view over
// all adapters); the machine decides whether the move is allowed and what it costs.
import { and, assign, emit, enqueueActions, not, or, setup, stateIn, type SnapshotFrom } from 'xstate';
import type { LoaderCommand } from '../src/scheduler/loader.js';
import type { LoraModule } from '../src/engine/types.js';

export interface AdapterInput {
  name: string;
  path: string;
  pinned: boolean;
  /** The LoRA pool's limits; an adapter outside them fails at load. */
  maxRank: number;
  poolModules: readonly LoraModule[];
}

export interface AdapterContext extends AdapterInput {
  rank: number | null;
  targetModules: LoraModule[];
  slot: number | null;
  error: string | null;
  /** Waiting and running requests that name it, and how many of them run. */
  users: number;
  running: number;
  /** An unload was asked: it leaves once nothing uses it and no transfer is in flight. */
  removal: boolean;
  /** Whether the loader holds its weights in CPU memory, and their size (float32 bytes). */
  cpuCopy: boolean;
  bytes: number;
  /** A read issued again after a loader restart has not landed yet. */
  rereading: boolean;
  /**
   * It failed while a read and a copy were issued again after a loader restart: the read failed
   * and the copy queued behind it will fail too. Until the loader reports that, it must not leave,
   * or the report would reach the next adapter of its name.
   */
  copyQueued: boolean;
}

export type AdapterEvent =
  | { type: 'LOAD' }
  | { type: 'CPU_LOADED'; rank: number; targetModules: LoraModule[]; bytes?: number }
  | { type: 'LOAD_FAILED'; error: string }
  | { type: 'COPY'; slot: number }
  | { type: 'SLOT_READY'; slot: number }
  /**
   * Move to pool slot `slot` (so that the batches that use it cover fewer slots, or to leave its
   * slot to an adapter that will): the engines exchange the two slots' contents, and `partner`,
   * the adapter that holds `slot` (null for a free slot), takes this one's (it hears GIVE_SLOT).
   * Emits the exchange.
   */
  | { type: 'MOVE'; slot: number; partner: string | null }
  /** Another adapter's MOVE takes its slot: it moves to that adapter's `slot`. */
  | { type: 'GIVE_SLOT'; slot: number }
  /** The exchange failed: the engines left both slots empty. */
  | { type: 'MOVE_FAILED'; error: string }
  /**
   * Leave the slot. `started` and `ended` (default 0): requests that started running on it and
   * running requests that ended, which it has not heard of yet, heard with it (as a START and a
   * RELEASE of them just before), so the step whose requests end and whose slot goes to another
   * adapter costs it one transition.
   */
  | { type: 'EVICT'; started?: number; ended?: number }
  | { type: 'DROP_CPU' }
  | { type: 'UNLOAD' }
  /** Asks an adapter being unloaded to leave; its guard decides whether it may yet. */
  | { type: 'DRAINED' }
  /** A request names an adapter whose unload still waits for its requests: it stays, as if loaded again. */
  | { type: 'REVIVE' }
  /**
   * A request naming it was queued / started running / went back to waiting / ended; `count`
   * requests at once (default 1): a step starts or ends many requests of one adapter, and many
   * arrive between two steps, and one event each would cost more than the step's own scheduling.
   */
  | { type: 'ACQUIRE'; count?: number }
  | { type: 'START'; count?: number }
  | { type: 'PREEMPT' }
  | { type: 'RELEASE'; running: boolean; count?: number }
  /**
   * A resident adapter's requests that named it, started running and ended running since it last
   * heard, heard at once, as ACQUIRE, START and RELEASE { running: true } of those counts in that
   * order would be: one transition where three would cost three.
   */
  | { type: 'COUNTS'; acquired: number; started: number; ended: number }
  /** The loader thread was replaced: its CPU copies and the commands it had not run are gone. */
  | { type: 'LOADER_RESTARTED' };

/** What the machine asks of the loader; the host forwards each to the loader thread. */
export interface AdapterCommandEvent {
  type: 'command';
  command: LoaderCommand;
}

function poolMismatch(ctx: AdapterContext, rank: number, modules: readonly LoraModule[]): string | null {
  if (rank > ctx.maxRank) return `rank ${rank} exceeds the LoRA pool's max rank ${ctx.maxRank} (--max-lora-rank)`;
  const outside = modules.filter((m) => !ctx.poolModules.includes(m));
  if (outside.length > 0) {
    return `targets ${outside.join(', ')}, not in the LoRA pool's modules (${ctx.poolModules.join(', ')}; --lora-target-modules)`;
  }
  return null;
}

/** The requests an EVICT says started and ended running (none for any other event). */
const startedWith = (event: AdapterEvent): number => (event.type === 'EVICT' ? (event.started ?? 0) : 0);
const endedWith = (event: AdapterEvent): number => (event.type === 'EVICT' ? (event.ended ?? 0) : 0);

/** Whether `ended` running requests may end: no more than run, nor than use it. */
const mayEnd = (ended: number, running: number, users: number): boolean => ended >= 0 && running >= ended && users >= ended;

/** Whether it may leave its slot once the starts and ends an EVICT carries are heard: nothing runs then, and no read is in flight. */
const idleWith = (ctx: AdapterContext, event: AdapterEvent): boolean => {
  const started = startedWith(event);
  const ended = endedWith(event);
  const running = ctx.running + started;
  return started >= 0 && running === ended && mayEnd(ended, running, ctx.users) && !ctx.rereading;
};

const command = (c: LoaderCommand): AdapterCommandEvent => ({ type: 'command', command: c });
const inResidency = (leaf: string) => stateIn(`#adapter.live.residency.${leaf}`);
const inAdmission = (leaf: string) => stateIn(`#adapter.live.admission.${leaf}`);

export const adapterMachine = setup({
  types: {} as { context: AdapterContext; events: AdapterEvent; input: AdapterInput; emitted: AdapterCommandEvent },
  actions: {
    storeShape: assign(({ event }) =>
      event.type === 'CPU_LOADED'
        ? { rank: event.rank, targetModules: [...event.targetModules], bytes: event.bytes ?? 0, cpuCopy: true, rereading: false }
        : {},
    ),
    storePoolMismatch: assign(({ context, event }) =>
      event.type === 'CPU_LOADED'
        ? { rank: event.rank, targetModules: [...event.targetModules], error: poolMismatch(context, event.rank, event.targetModules) }
        : {},
    ),
    storeError: assign(({ event }) => (event.type === 'LOAD_FAILED' ? { error: event.error } : {})),
    storeSlot: assign(({ event }) => (event.type === 'COPY' || event.type === 'MOVE' || event.type === 'GIVE_SLOT' ? { slot: event.slot } : {})),
    clearSlot: assign({ slot: null }),
    // Leaving its slot, it hears the starts and ends the EVICT carries.
    leaveSlot: assign(({ context, event }) => {
      const ended = endedWith(event);
      return { slot: null, users: context.users - ended, running: context.running + startedWith(event) - ended };
    }),
    forgetCpuCopy: assign({ cpuCopy: false, rereading: false }),
    markRereading: assign({ cpuCopy: false, rereading: true }),
    endRereading: assign({ rereading: false }),
    markRemoval: assign({ removal: true }),
    clearRemoval: assign({ removal: false }),
    noteQueuedCopy: assign(({ context }) => ({ copyQueued: context.rereading })),
    // The loader reports the rest of a failed load (the copy queued behind a read that failed).
    copyFailedToo: assign({ copyQueued: false }),
    acquire: assign(({ context, event }) => ({ users: context.users + (event.type === 'ACQUIRE' ? (event.count ?? 1) : 1) })),
    start: assign(({ context, event }) => ({ running: context.running + (event.type === 'START' ? (event.count ?? 1) : 1) })),
    preempt: assign(({ context }) => ({ running: context.running - 1 })),
    count: assign(({ context, event }) =>
      event.type === 'COUNTS' ? { users: context.users + event.acquired - event.ended, running: context.running + event.started - event.ended } : {},
    ),
    release: assign(({ context, event }) => {
      if (event.type !== 'RELEASE') return {};
      const n = event.count ?? 1;
      return { users: context.users - n, running: context.running - (event.running ? n : 0) };
    }),
    // Loader commands. Each reads the context before the transition's assignments run.
    readFromDisk: emit(({ context }) => command({ kind: 'load-cpu', name: context.name, path: context.path })),
    copyToSlot: emit(({ context, event }) =>
      command({ kind: 'copy-to-slot', name: context.name, slot: event.type === 'COPY' ? event.slot : context.slot! }),
    ),
    dropCpuCopy: emit(({ context }) => command({ kind: 'drop-cpu', name: context.name })),
    swapSlots: emit(({ context, event }) =>
      command({
        kind: 'swap-slots',
        slots: [context.slot!, event.type === 'MOVE' ? event.slot : context.slot!],
        names: [context.name, event.type === 'MOVE' ? event.partner : null],
      }),
    ),
    // Failing or leaving for good frees whatever it still holds.
    freeAll: enqueueActions(({ context, enqueue }) => {
      if (context.slot !== null) enqueue.emit(command({ kind: 'clear-slot', slot: context.slot }));
      if (context.cpuCopy) enqueue.emit(command({ kind: 'drop-cpu', name: context.name }));
    }),
  },
  guards: {
    fitsPool: ({ context, event }) => event.type === 'CPU_LOADED' && poolMismatch(context, event.rank, event.targetModules) === null,
    sameSlot: ({ context, event }) => event.type === 'SLOT_READY' && event.slot === context.slot,
    sameSlotPinned: ({ context, event }) => event.type === 'SLOT_READY' && event.slot === context.slot && context.pinned,
    rereading: ({ context }) => context.rereading,
    // Never evicts an adapter a running request uses, nor one whose CPU copy is being read again.
    evictable: ({ context, event }) => idleWith(context, event),
    evictableWithCopy: ({ context, event }) => idleWith(context, event) && context.cpuCopy,
    // Moves only while no request runs on it (a step reads its slot) and no read of it is in flight.
    movable: ({ context }) => context.running === 0 && !context.rereading,
    hasCpuCopy: ({ context }) => context.cpuCopy,
    hasRunning: ({ context }) => context.running > 0,
    canRelease: ({ context, event }) => {
      if (event.type !== 'RELEASE') return false;
      const n = event.count ?? 1;
      return n >= 1 && context.users >= n && (!event.running || context.running >= n);
    },
    countsAddUp: ({ context, event }) =>
      event.type === 'COUNTS' &&
      event.acquired >= 0 &&
      event.started >= 0 &&
      mayEnd(event.ended, context.running + event.started, context.users + event.acquired),
    acquiresNone: ({ event }) => event.type === 'COUNTS' && event.acquired === 0,
    // Requests it hears of at once: acquisitions only while it admits requests (as ACQUIRE).
    countsFit: and(['countsAddUp', or(['acquiresNone', inAdmission('open')])]),
    removalAskedAndUnused: ({ context }) => context.removal && context.users === 0 && !context.copyQueued,
    copyQueued: ({ context }) => context.copyQueued,
    /** Unloading completes once no request uses it and no read or copy of it is in flight. */
    drained: and([
      ({ context }) => context.users === 0 && !context.rereading,
      not(inResidency('loading')),
      not(inResidency('h2dInFlight')),
      not(inResidency('moving')),
    ]),
  },
}).createMachine({
  id: 'adapter',
  context: ({ input }) => ({
    ...input,
    rank: null,
    targetModules: [],
    slot: null,
    error: null,
    users: 0,
    running: 0,
    removal: false,
    cpuCopy: false,
    bytes: 0,
    rereading: false,
    copyQueued: false,
  }),
  initial: 'live',
  states: {
    live: {
      type: 'parallel',
      on: {
        PREEMPT: { guard: 'hasRunning', actions: 'preempt' },
        RELEASE: { guard: 'canRelease', actions: 'release' },
      },
      states: {
        residency: {
          initial: 'registered',
          states: {
            registered: { on: { LOAD: { target: 'loading', actions: 'readFromDisk' } } },
            loading: {
              on: {
                CPU_LOADED: [
                  { guard: 'fitsPool', target: 'cpuLoaded', actions: 'storeShape' },
                  // The read landed, so the loader holds a copy to drop.
                  { target: '#adapter.failed', actions: ['storePoolMismatch', 'dropCpuCopy'] },
                ],
                LOAD_FAILED: { target: '#adapter.failed', actions: 'storeError' },
                LOADER_RESTARTED: { actions: 'readFromDisk' },
              },
            },
            cpuLoaded: {
              on: {
                COPY: { target: 'h2dInFlight', actions: ['copyToSlot', 'storeSlot'] },
                DROP_CPU: { target: 'registered', actions: ['dropCpuCopy', 'forgetCpuCopy'] },
                LOADER_RESTARTED: { target: 'registered', actions: 'forgetCpuCopy' },
              },
            },
            h2dInFlight: {
              on: {
                SLOT_READY: [
                  { guard: 'sameSlotPinned', target: 'gpuResident.pinned' },
                  { guard: 'sameSlot', target: 'gpuResident.unpinned' },
                ],
                CPU_LOADED: { guard: 'rereading', actions: 'storeShape' },
                // The copy (or the read issued again for it) failed: the slot holds nothing usable.
                LOAD_FAILED: { target: '#adapter.failed', actions: ['noteQueuedCopy', 'storeError', 'freeAll', 'clearSlot', 'forgetCpuCopy'] },
                // The copy was lost with the loader: read again and copy into the same slot.
                LOADER_RESTARTED: { actions: ['markRereading', 'readFromDisk', 'copyToSlot'] },
              },
            },
            gpuResident: {
              initial: 'unpinned',
              on: {
                START: { actions: 'start' },
                COUNTS: { guard: 'countsFit', actions: 'count' },
                CPU_LOADED: { guard: 'rereading', actions: 'storeShape' },
                // The slot still holds the weights, so requests go on; only a later copy needs them again.
                LOAD_FAILED: { guard: 'rereading', actions: ['storeError', 'endRereading'] },
                // The slot keeps its weights (they live in the engines); the CPU copy is read again.
                LOADER_RESTARTED: { actions: ['markRereading', 'readFromDisk'] },
                MOVE: { guard: 'movable', target: '#adapter.live.residency.moving', actions: ['swapSlots', 'storeSlot'] },
                GIVE_SLOT: { guard: 'movable', target: '#adapter.live.residency.moving', actions: 'storeSlot' },
              },
              states: {
                unpinned: {
                  on: {
                    EVICT: [
                      { guard: 'evictableWithCopy', target: '#adapter.live.residency.cpuLoaded', actions: 'leaveSlot' },
                      // Its copy could not be read again after a loader restart: back to disk.
                      { guard: 'evictable', target: '#adapter.live.residency.registered', actions: 'leaveSlot' },
                    ],
                  },
                },
                // A pinned adapter has no EVICT transition: it keeps a slot until unloaded.
                pinned: {},
              },
            },
            // Its weights go from one slot to another inside the engines (MOVE or GIVE_SLOT);
            // no step runs on it meanwhile.
            moving: {
              on: {
                SLOT_READY: [
                  { guard: 'sameSlotPinned', target: 'gpuResident.pinned' },
                  { guard: 'sameSlot', target: 'gpuResident.unpinned' },
                ],
                // Both slots were left empty: copied again from its CPU copy when next wanted.
                MOVE_FAILED: [
                  { guard: 'hasCpuCopy', target: 'cpuLoaded', actions: 'clearSlot' },
                  { target: 'registered', actions: 'clearSlot' },
                ],
                // The exchange may have been lost with the loader: read again and copy into the new slot.
                LOADER_RESTARTED: { target: 'h2dInFlight', actions: ['markRereading', 'readFromDisk', 'copyToSlot'] },
              },
            },
          },
        },
        admission: {
          initial: 'open',
          states: {
            open: {
              on: {
                ACQUIRE: { actions: 'acquire' },
                UNLOAD: { target: 'unloading', actions: 'markRemoval' },
              },
            },
            unloading: {
              on: {
                DRAINED: { guard: 'drained', target: '#adapter.unloaded', actions: ['freeAll', 'clearSlot', 'forgetCpuCopy'] },
                // Its weights never left (it is still draining), so being named again costs nothing.
                REVIVE: { target: 'open', actions: 'clearRemoval' },
              },
            },
          },
        },
      },
    },
    failed: {
      on: {
        RELEASE: { guard: 'canRelease', actions: 'release' },
        LOAD_FAILED: { actions: 'copyFailedToo' },
        // The copy queued behind the failed read is lost with the loader: no report will come.
        LOADER_RESTARTED: { guard: 'copyQueued', actions: 'copyFailedToo' },
        UNLOAD: [{ guard: not('copyQueued'), target: 'unloaded' }, { actions: 'markRemoval' }],
        // An unload asked while the adapter was still loading completes once the load failed
        // and the requests that waited for it are ended.
        DRAINED: { guard: 'removalAskedAndUnused', target: 'unloaded' },
      },
    },
    unloaded: { type: 'final' },
  },
});

export type AdapterSnapshot = SnapshotFrom<typeof adapterMachine>;

/** The residency path ('cpuLoaded', 'gpuResident.pinned'), or 'unloading' / 'failed' / 'unloaded'. */
export function adapterStateLabel(snap: AdapterSnapshot): string {
  const value = snap.value as string | { live: { residency: unknown; admission: string } };
  if (typeof value === 'string') return value;
  if (value.live.admission === 'unloading') return 'unloading';
  return flatten(value.live.residency);
}

/** The residency leaf ('registered' ... 'gpuResident.pinned') or null once failed/unloaded. */
export function residencyOf(snap: AdapterSnapshot): string | null {
  const value = snap.value as string | { live: { residency: unknown } };
  return typeof value === 'string' ? null : flatten(value.live.residency);
}

/**
 * Paths already joined, by parent key and child path: each state's label is then one string,
 * which the scheduler's maps keyed by labels and residencies find without hashing a new one.
 */
const joined = new Map<string, Map<string, string>>();

function flatten(v: unknown): string {
  if (typeof v === 'string') return v;
  const [k, inner] = Object.entries(v as Record<string, unknown>)[0] ?? ['', ''];
  if (inner === undefined || inner === '') return k;
  const rest = flatten(inner);
  let byRest = joined.get(k);
  if (byRest === undefined) joined.set(k, (byRest = new Map()));
  let path = byRest.get(rest);
  if (path === undefined) byRest.set(rest, (path = `${k}.${rest}`));
  return path;
}

export { adapterChartJson, type ChartJson } from './chart-json.js';

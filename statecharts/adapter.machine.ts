// The lifecycle of one LoRA adapter as a statechart. Residency (disk -> CPU -> GPU slot and
// back) and admission (open, or unloading while requests still use it) are parallel regions:
// a draining adapter must still be loadable, because requests queued before the unload
// request have to run to completion.
import { assign, setup, type AnyStateNode, type SnapshotFrom } from 'xstate';
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
}

export type AdapterEvent =
  | { type: 'LOAD' }
  | { type: 'CPU_LOADED'; rank: number; targetModules: LoraModule[] }
  | { type: 'LOAD_FAILED'; error: string }
  | { type: 'COPY'; slot: number }
  | { type: 'SLOT_READY' }
  | { type: 'EVICT' }
  | { type: 'DROP_CPU' }
  | { type: 'UNLOAD' }
  | { type: 'DRAINED' };

function poolMismatch(ctx: AdapterContext, rank: number, modules: readonly LoraModule[]): string | null {
  if (rank > ctx.maxRank) return `rank ${rank} exceeds the LoRA pool's max rank ${ctx.maxRank} (--max-lora-rank)`;
  const outside = modules.filter((m) => !ctx.poolModules.includes(m));
  if (outside.length > 0) {
    return `targets ${outside.join(', ')}, not in the LoRA pool's modules (${ctx.poolModules.join(', ')}; --lora-target-modules)`;
  }
  return null;
}

export const adapterMachine = setup({
  types: {} as { context: AdapterContext; events: AdapterEvent; input: AdapterInput },
  actions: {
    storeShape: assign(({ event }) =>
      event.type === 'CPU_LOADED' ? { rank: event.rank, targetModules: [...event.targetModules] } : {},
    ),
    storePoolMismatch: assign(({ context, event }) =>
      event.type === 'CPU_LOADED'
        ? {
            rank: event.rank,
            targetModules: [...event.targetModules],
            error: poolMismatch(context, event.rank, event.targetModules),
          }
        : {},
    ),
    storeError: assign(({ event }) => (event.type === 'LOAD_FAILED' ? { error: event.error } : {})),
    storeSlot: assign(({ event }) => (event.type === 'COPY' ? { slot: event.slot } : {})),
    clearSlot: assign({ slot: null }),
  },
  guards: {
    fitsPool: ({ context, event }) =>
      event.type === 'CPU_LOADED' && poolMismatch(context, event.rank, event.targetModules) === null,
    isPinned: ({ context }) => context.pinned,
  },
}).createMachine({
  id: 'adapter',
  context: ({ input }) => ({ ...input, rank: null, targetModules: [], slot: null, error: null }),
  initial: 'live',
  states: {
    live: {
      type: 'parallel',
      states: {
        residency: {
          initial: 'registered',
          states: {
            registered: { on: { LOAD: 'loading' } },
            loading: {
              on: {
                CPU_LOADED: [
                  { guard: 'fitsPool', target: 'cpuLoaded', actions: 'storeShape' },
                  { target: '#adapter.failed', actions: 'storePoolMismatch' },
                ],
                LOAD_FAILED: { target: '#adapter.failed', actions: 'storeError' },
              },
            },
            cpuLoaded: {
              on: {
                COPY: { target: 'h2dInFlight', actions: 'storeSlot' },
                DROP_CPU: 'registered',
              },
            },
            h2dInFlight: {
              on: {
                SLOT_READY: [{ guard: 'isPinned', target: 'gpuResident.pinned' }, { target: 'gpuResident.unpinned' }],
                LOAD_FAILED: { target: '#adapter.failed', actions: ['storeError', 'clearSlot'] },
              },
            },
            gpuResident: {
              initial: 'unpinned',
              states: {
                unpinned: { on: { EVICT: { target: '#adapter.live.residency.cpuLoaded', actions: 'clearSlot' } } },
                // A pinned adapter has no EVICT transition: it keeps its slot until unloaded.
                pinned: {},
              },
            },
          },
        },
        admission: {
          initial: 'open',
          states: {
            open: { on: { UNLOAD: 'unloading' } },
            unloading: { on: { DRAINED: { target: '#adapter.unloaded', actions: 'clearSlot' } } },
          },
        },
      },
    },
    failed: { on: { UNLOAD: 'unloaded' } },
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

function flatten(v: unknown): string {
  if (typeof v === 'string') return v;
  const [k, inner] = Object.entries(v as Record<string, unknown>)[0] ?? ['', ''];
  return inner === undefined || inner === '' ? k : `${k}.${flatten(inner)}`;
}

export interface ChartJson {
  states: Array<{ id: string; parent?: string; type: string; initial?: boolean }>;
  transitions: Array<{ from: string; to: string; event: string; guard?: string }>;
}

/** The chart's states and transitions as plain JSON (ids are dotted paths from the root), for visualizers. */
export function adapterChartJson(): ChartJson {
  const out: ChartJson = { states: [], transitions: [] };
  // StateNode's generics differ per machine; the walk only reads structure.
  const walk = (node: AnyStateNode): void => {
    const id = node.path.join('.');
    if (node.parent) {
      const parent = node.parent.path.join('.');
      const initialOfParent = node.parent.type === 'compound' && node.parent.config.initial === node.key;
      out.states.push({
        id,
        type: node.type,
        ...(parent ? { parent } : {}),
        ...(initialOfParent ? { initial: true } : {}),
      });
    }
    for (const [event, defs] of node.transitions) {
      for (const def of defs) {
        for (const target of def.target ?? []) {
          const guard = def.guard;
          out.transitions.push({
            from: id,
            to: target.path.join('.'),
            event,
            ...(typeof guard === 'string' ? { guard } : {}),
          });
        }
      }
    }
    for (const child of Object.values(node.states)) walk(child as AnyStateNode);
  };
  walk(adapterMachine.root as AnyStateNode);
  return out;
}

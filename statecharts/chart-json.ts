// The adapter chart's structure as plain JSON, for the visualizer page and the coverage test.
import type { AnyStateNode } from 'xstate';
import { adapterMachine } from './adapter.machine.js';

export interface ChartJson {
  states: Array<{ id: string; parent?: string; type: string; initial?: boolean }>;
  /** Eventless transitions (taken as soon as their guard holds) have the event 'always'. */
  transitions: Array<{ from: string; to: string; event: string; guard?: string }>;
}

/** The chart's states and transitions (ids are dotted paths from the root); targetless transitions change no state and are left out. */
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
    const defs = [...node.transitions].flatMap(([event, list]) => list.map((def) => ({ event, def })));
    for (const def of node.always ?? []) defs.push({ event: 'always', def });
    for (const { event, def } of defs) {
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
    for (const child of Object.values(node.states)) walk(child as AnyStateNode);
  };
  walk(adapterMachine.root as AnyStateNode);
  return out;
}

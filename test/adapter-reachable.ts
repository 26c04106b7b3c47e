// Every state an adapter's machine reaches, for tests that check a claim about its events
// against all of them rather than against the few a scenario passes through.
import { initialTransition, transition } from 'xstate';
import { adapterMachine, type AdapterEvent, type AdapterSnapshot } from '../statecharts/adapter.machine.js';

export const ALPHABET: AdapterEvent[] = [
  { type: 'LOAD' },
  { type: 'CPU_LOADED', rank: 8, targetModules: ['q_proj'], bytes: 64 },
  { type: 'CPU_LOADED', rank: 64, targetModules: ['q_proj'], bytes: 64 },
  { type: 'LOAD_FAILED', error: 'unreadable' },
  { type: 'COPY', slot: 0 },
  { type: 'SLOT_READY', slot: 0 },
  { type: 'MOVE', slot: 1, partner: null },
  { type: 'GIVE_SLOT', slot: 1 },
  { type: 'SLOT_READY', slot: 1 },
  { type: 'MOVE_FAILED', error: 'exchange failed' },
  { type: 'EVICT' },
  { type: 'DROP_CPU' },
  { type: 'UNLOAD' },
  { type: 'DRAINED' },
  { type: 'REVIVE' },
  { type: 'ACQUIRE', count: 2 },
  { type: 'START' },
  { type: 'PREEMPT' },
  { type: 'RELEASE', running: true },
  { type: 'RELEASE', running: false },
  { type: 'LOADER_RESTARTED' },
];

/** Every snapshot the alphabet reaches within `depth` events, pinned or not. */
export function reachable(depth: number): AdapterSnapshot[] {
  const seen = new Map<string, AdapterSnapshot>();
  let frontier: AdapterSnapshot[] = [false, true].map(
    (pinned) => initialTransition(adapterMachine, { name: 'a', path: '/a', pinned, maxRank: 16, poolModules: ['q_proj', 'v_proj'] })[0],
  );
  for (let d = 0; d <= depth && frontier.length > 0; d++) {
    const next: AdapterSnapshot[] = [];
    for (const snap of frontier) {
      const key = JSON.stringify([snap.value, snap.context, snap.status]);
      if (seen.has(key)) continue;
      seen.set(key, snap);
      if (snap.status !== 'active') continue;
      for (const e of ALPHABET) if (snap.can(e)) next.push(transition(adapterMachine, snap, e)[0]);
    }
    frontier = next;
  }
  return [...seen.values()];
}

// The one actor scope that every adapter's machine takes its transitions under, and what those
// transitions leave behind: the loader commands they emit and the actions they put off until
// their snapshot is taken.
//
// Each adapter is its machine's snapshot, advanced by the machine's own transition function
// (XState's actor logic interface) under this shared scope, whose actions run as an actor runs
// them. An actor per adapter would add a mailbox, a system and an inspection path per adapter
// and per event, and nothing here uses them.
import { createEmptyActor, type ActorScope, type ExecutableActionObject } from 'xstate';
import {
  adapterMachine,
  type AdapterCommandEvent,
  type AdapterEvent,
  type AdapterInput,
  type AdapterSnapshot,
} from '../../statecharts/adapter.machine.js';
import type { LoaderCommand } from './loader.js';

type AdapterActorScope = ActorScope<AdapterSnapshot, AdapterEvent, ActorScope<AdapterSnapshot, AdapterEvent>['system'], AdapterCommandEvent>;

export class AdapterScope {
  private commands: LoaderCommand[] = [];
  /** What the running transition's actions put off until its snapshot is taken (emits do). */
  private readonly deferred: Array<() => void> = [];
  private readonly scope: AdapterActorScope;

  constructor() {
    // As XState's pure transition() builds its scope, but once, not per event: the machine has
    // no children, delays or sends, so `self` and its system only receive inspection events,
    // which nobody inspects.
    const self = createEmptyActor();
    this.scope = {
      self: self as unknown as AdapterActorScope['self'],
      id: self.id,
      sessionId: self.sessionId,
      logger: console.log,
      system: self.system,
      defer: (fn) => this.deferred.push(fn),
      emit: (e) => this.commands.push(e.command),
      stopChild: () => {},
      actionExecutor: (action: ExecutableActionObject) => action.exec?.(action.info, action.params),
    };
  }

  /** A new machine's first snapshot, its deferred actions run; throws the error it starts with. */
  initial(input: AdapterInput): AdapterSnapshot {
    const first = adapterMachine.getInitialSnapshot(this.scope, input);
    this.runDeferred();
    if (first.status === 'error') throw first.error;
    return first;
  }

  /**
   * The machine's next snapshot; an adapter that left (a final snapshot) takes no events. What
   * the transition's actions put off runs at runDeferred, once the caller has taken the snapshot.
   */
  transition(snap: AdapterSnapshot, event: AdapterEvent): AdapterSnapshot {
    if (snap.status !== 'active') return snap;
    try {
      return adapterMachine.transition(snap, event, this.scope);
    } catch (err) {
      this.deferred.length = 0;
      throw err;
    }
  }

  runDeferred(): void {
    // Each deferred call may defer more (none does today); run until none is left.
    for (let i = 0; i < this.deferred.length; i++) this.deferred[i]!();
    this.deferred.length = 0;
  }

  /** The loader commands emitted since the last call. */
  takeCommands(): LoaderCommand[] {
    const out = this.commands;
    this.commands = [];
    return out;
  }
}

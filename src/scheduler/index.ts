export { Scheduler, type SchedulerLoad, type SchedulerOptions, type SchedulerStats, type StepFailure } from './scheduler.js';
export type { SeqInit, TokenEvent } from './sequence.js';
export type { LoaderCommand, LoaderEvent } from './loader.js';
export type { AdapterCounters, AdapterDetail, AdapterTransition } from './adapter-registry.js';
export {
  adapterMachine,
  adapterChartJson,
  adapterStateLabel,
  type AdapterContext,
  type AdapterCommandEvent,
  type AdapterEvent,
  type AdapterInput,
  type ChartJson,
} from '../../statecharts/adapter.machine.js';

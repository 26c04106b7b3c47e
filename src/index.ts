// The package's public surface: the embeddable engine and the types it speaks.
export { createEngine } from './troupe.js';
export type { CreateEngineOptions, EngineLog, LocalTroupeEngine } from './troupe.js';
export type * from './api.js';
export type { ServeOptions, LogLevel } from './config/options.js';
export { TroupeError } from './errors.js';
export type { ErrorKind } from './errors.js';

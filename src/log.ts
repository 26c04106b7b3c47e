// A small leveled logger. Lines go to stderr so stdout stays free for command output.
import type { LogLevel } from './config/options.js';

const ORDER: Record<LogLevel, number> = { debug: 10, info: 20, warning: 30, error: 40 };

export type Log = (level: LogLevel, message: string) => void;

export function createLog(min: LogLevel, sink: (line: string) => void = (l) => process.stderr.write(l + '\n')): Log {
  return (level, message) => {
    if (ORDER[level] < ORDER[min]) return;
    const ts = new Date().toISOString().replace('T', ' ').slice(0, 19);
    sink(`[${ts}] ${level.toUpperCase()} ${message}`);
  };
}

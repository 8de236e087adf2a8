/**
 * The one pino root logger. Components take `child({ component, ... })`; fields first,
 * fixed lowercase messages. Logs go to stderr as JSON.
 */
import { pino } from 'pino';
import type { Logger } from 'pino';

export type { Logger };

export const logLevels = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;
export type LogLevel = (typeof logLevels)[number];

/** Creates the root logger of a process. */
export function createRootLogger(level: LogLevel, base: Record<string, unknown> = {}): Logger {
  return pino(
    {
      level,
      base,
      // Timestamps are bigint in the core; JSON has no bigint, so they log as strings.
      formatters: { log: (fields) => JSON.parse(JSON.stringify(fields, (_key, value: unknown) => (typeof value === 'bigint' ? value.toString() : value))) as Record<string, unknown> },
    },
    pino.destination({ dest: 2, sync: false }),
  );
}

/**
 * The one pino root logger. Components take `child({ component, ... })`; fields first,
 * fixed lowercase messages. Logs go to stderr as JSON.
 */
import { pino } from 'pino';
import type { Logger } from 'pino';
import { redactSecrets } from './pipeline/redact.ts';

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
      // This formatter runs before pino's serializers, and JSON.stringify drops an Error's
      // own message and stack (not enumerable), so errors are serialised here, at any depth.
      formatters: { log: (fields) => JSON.parse(JSON.stringify(fields, logReplacer)) as Record<string, unknown> },
      // Already serialised by the formatter; a second pass would call every error an Object.
      serializers: { err: (value: unknown) => value },
      // Every line, whatever logged it (an info, an error quoting a URI): no password.
      hooks: { streamWrite: redactSecrets },
    },
    pino.destination({ dest: 2, sync: false }),
  );
}

function logReplacer(_key: string, value: unknown): unknown {
  if (typeof value === 'bigint') return value.toString();
  // type, message and stack with every cause's, plus the error's own fields (retryable, code).
  if (value instanceof Error) return pino.stdSerializers.err(value);
  return value;
}

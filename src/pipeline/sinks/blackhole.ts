/**
 * The `blackhole` sink: accepts and discards, for benchmarks.
 * `blackhole://?flushMs=<n>` simulates a flush latency.
 */
import type { Span } from '../../core/span.ts';
import type { Sink } from '../sink.ts';
import type { ChangeEvent } from '../source.ts';
import { intParam, parseUri } from '../uri.ts';

export interface BlackholeOptions {
  readonly flushMs: number;
}

export function parseBlackholeUri(uri: string): BlackholeOptions {
  const url = parseUri(uri, ['blackhole'], 'sink');
  return { flushMs: intParam(url, 'flushMs', 0, 0, 60_000) };
}

export class BlackholeSink implements Sink {
  eventsWritten = 0;

  constructor(private readonly options: BlackholeOptions) {}

  async write(_span: Span, events: readonly ChangeEvent[]): Promise<void> {
    this.eventsWritten += events.length;
  }

  async flush(): Promise<void> {
    if (this.options.flushMs > 0) await new Promise((resolve) => setTimeout(resolve, this.options.flushMs));
  }

  async retire(): Promise<void> {}

  async close(): Promise<void> {}
}

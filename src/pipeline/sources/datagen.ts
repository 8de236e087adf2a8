/**
 * The `datagen` source: a deterministic synthetic change log, for benchmarks and tests at
 * scale. `datagen://?rate=<events/s per span>&keys=<keys per span>&seed=<n>`.
 *
 * Timestamps are wall-clock milliseconds. A span's events fall every 1000/rate ms at an
 * offset derived from the span; the key and value of the event at ts t are hashes of
 * (seed, table, span range, t), so any capture reading any range of a span's history
 * gets exactly the same events: a pure function of (seed, table, key range, ts).
 */
import type { Span } from '../../core/span.ts';
import { spanKeyHashes } from '../../core/span-digest.ts';
import type { ChangeEvent, ReadResult, Source } from '../source.ts';
import { intParam, parseUri } from '../uri.ts';

export interface DatagenOptions {
  readonly rate: number;
  readonly keys: number;
  readonly seed: number;
}

/** Parses a `datagen://` URI. */
export function parseDatagenUri(uri: string): DatagenOptions {
  const url = parseUri(uri, ['datagen'], 'source');
  return {
    rate: intParam(url, 'rate', 1, 1, 1000),
    keys: intParam(url, 'keys', 100, 1, 1_000_000),
    seed: intParam(url, 'seed', 1, 0, 2 ** 31),
  };
}

export class DatagenSource implements Source {
  private readonly periodMs: bigint;

  constructor(private readonly options: DatagenOptions) {
    this.periodMs = BigInt(Math.max(1, Math.floor(1000 / options.rate)));
  }

  async resolvedTs(): Promise<bigint> {
    return BigInt(Date.now() - 1);
  }

  async currentTs(): Promise<bigint> {
    return BigInt(Date.now());
  }

  async read(span: Span, afterTs: bigint, uptoTs: bigint, limit: number): Promise<ReadResult> {
    const events: ChangeEvent[] = [];
    if (uptoTs <= afterTs) return { events, readUpToTs: afterTs };
    const identity = `${this.options.seed}\u0000${span.table}\u0000${span.start}\u0000${span.end}`;
    const offset = BigInt(spanKeyHashes(identity)[0]) % this.periodMs;
    // The first event time strictly after afterTs.
    let ts = afterTs + 1n;
    const rem = (((ts - offset) % this.periodMs) + this.periodMs) % this.periodMs;
    if (rem !== 0n) ts += this.periodMs - rem;
    for (; ts <= uptoTs; ts += this.periodMs) {
      if (events.length >= limit) return { events, readUpToTs: ts - 1n };
      const [a, b] = spanKeyHashes(`${identity}\u0000${ts}`);
      const index = a % this.options.keys;
      const key = `${span.start}\u0000${index.toString(36).padStart(6, '0')}`;
      events.push(b % 10 === 0 ? { table: span.table, key, op: 'delete', ts } : { table: span.table, key, value: `v${b.toString(36)}`, op: 'put', ts });
    }
    return { events, readUpToTs: uptoTs };
  }

  async close(): Promise<void> {}
}

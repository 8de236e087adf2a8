/**
 * The `datagen` source: a deterministic synthetic change log, for benchmarks and tests at
 * scale. `datagen://?rate=<events/s per span>&keys=<keys per span>&seed=<n>`, or
 * `totalRate=<events/s over the whole changefeed>[&spans=<n>]` instead of `rate`; a rate
 * of 0 makes idle spans (no events; the resolved-ts still advances with the clock), so a
 * million mostly idle spans is expressible (issue 11).
 *
 * Timestamps are wall-clock milliseconds. A span's events fall every 1000/rate ms at an
 * offset derived from the span; the key and value of the event at ts t are hashes of
 * (seed, table, span range, t), so any capture reading any range of a span's history
 * gets exactly the same events: a pure function of (seed, table, key range, ts).
 */
import type { QuietAnswer, QuietRequest } from '../../agent/quiet-spans.ts';
import type { Span } from '../../core/span.ts';
import { spanKeyHashState, spanKeyHashes } from '../../core/span-digest.ts';
import type { ChangeEvent, ReadResult, Source, SourceContext } from '../source.ts';
import { BadUriError, intParam, optionalIntParam, parseUri, rejectUnknownParams } from '../uri.ts';

/** The most events per second one datagen span makes (one per ms). */
export const datagenSpanRateMax = 1_000;
/** The most events per second `totalRate` may ask of a whole changefeed. */
export const datagenTotalRateMax = 10_000_000;
/** The largest `spans` hint: a changefeed's own bound on spans (`changefeedLimits.spansMax`). */
export const datagenSpansHintMax = 1_000_000;

export interface DatagenOptions {
  /** Events/s per span; 0 makes idle spans. Ignored when `totalRate` is set. */
  readonly rate: number;
  /** Events/s over the whole changefeed, spread over its spans; 0 makes idle spans. */
  readonly totalRate?: number;
  /** What `totalRate` is divided by, instead of the changefeed's span count. */
  readonly spans?: number;
  readonly keys: number;
  readonly seed: number;
}

/** What the capture knows when it opens the source: the changefeed's span count, for `totalRate`. */
/** What datagen takes from where it is opened: the changefeed's span count. */
export type DatagenContext = Pick<SourceContext, 'spanCount'>;

/** Parses a `datagen://` URI. */
export function parseDatagenUri(uri: string): DatagenOptions {
  const url = parseUri(uri, ['datagen'], 'source');
  rejectUnknownParams(url, ['rate', 'totalRate', 'spans', 'keys', 'seed'], 'source');
  const total = optionalIntParam(url, 'totalRate', 0, datagenTotalRateMax);
  if (total !== undefined && url.searchParams.has('rate')) throw new BadUriError('source uri: give rate (events/s per span) or totalRate (events/s over the changefeed), not both');
  if (total === undefined && url.searchParams.has('spans')) throw new BadUriError('source uri: spans is the divisor of totalRate; give it only with totalRate');
  const spans = optionalIntParam(url, 'spans', 1, datagenSpansHintMax);
  return {
    rate: intParam(url, 'rate', 1, 0, datagenSpanRateMax),
    ...(total === undefined ? {} : { totalRate: total }),
    ...(spans === undefined ? {} : { spans }),
    keys: intParam(url, 'keys', 100, 1, 1_000_000),
    seed: intParam(url, 'seed', 1, 0, 2 ** 31),
  };
}

/**
 * The ms between two events of one span, or undefined for idle spans. `totalRate` is
 * spread evenly: each of the n spans makes totalRate/n events/s, so one event every
 * 1000*n/totalRate ms (rounded down, at least 1 ms: a share above 1000/s is capped).
 * n is the `spans` hint, else the changefeed's span count when the capture opened the
 * source; without either it is 1 (the whole rate on every span).
 */
export function datagenPeriodMs(options: DatagenOptions, context: DatagenContext = {}): bigint | undefined {
  if (options.totalRate === undefined) return options.rate === 0 ? undefined : BigInt(Math.max(1, Math.floor(1000 / options.rate)));
  if (options.totalRate === 0) return undefined;
  const spans = BigInt(options.spans ?? Math.max(1, context.spanCount ?? 1));
  const period = (1000n * spans) / BigInt(options.totalRate);
  return period < 1n ? 1n : period;
}

/** The last ts the number loop of `read` holds exactly. */
const maxSafeTs = BigInt(Number.MAX_SAFE_INTEGER);

export class DatagenSource implements Source {
  /** Undefined: idle spans, no events, the resolved-ts still follows the clock. */
  private readonly periodMs: bigint | undefined;

  constructor(
    private readonly options: DatagenOptions,
    context: DatagenContext = {},
  ) {
    this.periodMs = datagenPeriodMs(options, context);
  }

  async resolvedTs(): Promise<bigint> {
    return BigInt(Date.now() - 1);
  }

  async currentTs(): Promise<bigint> {
    return BigInt(Date.now());
  }

  /**
   * Each span's next event is known (one every period, at the span's offset): a quiet
   * span's history is complete and empty up to just before it, or up to now.
   */
  async quietUpTo(requests: readonly QuietRequest[]): Promise<QuietAnswer[]> {
    const resolved = BigInt(Date.now() - 1);
    const periodMs = this.periodMs;
    return requests.map(({ span, afterTs }) => {
      if (resolved <= afterTs) return { quietTs: afterTs, needsStep: false };
      if (periodMs === undefined) return { quietTs: resolved, needsStep: false };
      const next = this.firstEventAfter(span, afterTs, periodMs);
      return next <= resolved ? { quietTs: next - 1n, needsStep: true } : { quietTs: resolved, needsStep: false };
    });
  }

  /** The identity the span's events derive from. */
  private identityOf(span: Span): string {
    return `${this.options.seed}\u0000${span.table}\u0000${span.start}\u0000${span.end}`;
  }

  /** Where in each period the span's events fall, cached per span object (its pipeline keeps one). */
  private readonly offsets = new WeakMap<Span, bigint>();

  /** The first event time of the span strictly after `afterTs`. */
  private firstEventAfter(span: Span, afterTs: bigint, periodMs: bigint): bigint {
    let offset = this.offsets.get(span);
    if (offset === undefined) {
      offset = BigInt(spanKeyHashes(this.identityOf(span))[0]) % periodMs;
      this.offsets.set(span, offset);
    }
    let ts = afterTs + 1n;
    const rem = (((ts - offset) % periodMs) + periodMs) % periodMs;
    if (rem !== 0n) ts += periodMs - rem;
    return ts;
  }

  /**
   * The events of (afterTs, uptoTs]. The loop runs on numbers, not bigints (timestamps are
   * wall-clock ms, far below 2^53), and hashes the span's identity once per read: each
   * event continues the hash from there over its ts digits, the same hash as of the whole
   * `identity \0 ts` text. One bigint per event remains, its `ts`.
   */
  async read(span: Span, afterTs: bigint, uptoTs: bigint, limit: number): Promise<ReadResult> {
    const events: ChangeEvent[] = [];
    if (uptoTs <= afterTs) return { events, readUpToTs: afterTs };
    const periodMs = this.periodMs;
    if (periodMs === undefined) return { events, readUpToTs: uptoTs };
    const identity = this.identityOf(span);
    const first = this.firstEventAfter(span, afterTs, periodMs);
    // Past 2^53 ms numbers lose whole ms: a read stops there (no clock gets that far).
    if (afterTs >= maxSafeTs) return { events, readUpToTs: afterTs };
    const last = uptoTs > maxSafeTs ? maxSafeTs : uptoTs;
    if (first > last) return { events, readUpToTs: last };
    const prefix = spanKeyHashState('\u0000', spanKeyHashState(identity));
    const { keys } = this.options;
    const { table, start } = span;
    const step = Number(periodMs);
    const end = Number(last);
    let ts = Number(first);
    for (; ts <= end; ts += step) {
      if (events.length >= limit) return { events, readUpToTs: BigInt(ts - 1) };
      const hashes = spanKeyHashState(String(ts), prefix);
      const a = hashes[0] >>> 0;
      const b = hashes[1] >>> 0;
      const key = `${start}\u0000${(a % keys).toString(36).padStart(6, '0')}`;
      events.push(b % 10 === 0 ? { table, key, op: 'delete', ts: BigInt(ts) } : { table, key, value: `v${b.toString(36)}`, op: 'put', ts: BigInt(ts) });
    }
    return { events, readUpToTs: last };
  }

  async close(): Promise<void> {}
}

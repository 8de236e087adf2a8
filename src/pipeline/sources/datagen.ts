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
 *
 * Table mode, `datagen://?tableRate=<events/s per table>&keys=<K>&dist=uniform|zipf
 * [&zipfS=<s>]`: each table makes one stream of events, one every 1000/tableRate ms at
 * an offset derived from the table, with keys `<table>/<index>` (the index zero-padded,
 * so the keys are text and sort by index; they lie in the table's default prefix
 * `<table>/`). The key index of the event at ts t is drawn from the distribution by a
 * hash of (seed, table, t): uniform over the K keys, or zipf with exponent s (index 0
 * the hottest). A span reads only the events whose keys fall inside it, so its rate is
 * its share of the table's traffic and splitting a hot span splits its traffic (issue
 * 12). A read or quiet check scans at most {@link datagenTableScanEventsMax} table
 * events; a read that hits the bound ends there (`readUpToTs` says how far it got).
 */
import type { QuietAnswer, QuietRequest } from '../../agent/quiet-spans.ts';
import type { Span } from '../../core/span.ts';
import { spanKeyHashState, spanKeyHashes } from '../../core/span-digest.ts';
import type { ChangeEvent, ReadResult, Source, SourceContext } from '../source.ts';
import { BadUriError, intParam, optionalIntParam, optionalNumberParam, parseUri, rejectUnknownParams } from '../uri.ts';

/** The most events per second one datagen span makes (one per ms). */
export const datagenSpanRateMax = 1_000;
/** The most events per second `totalRate` may ask of a whole changefeed. */
export const datagenTotalRateMax = 10_000_000;
/** The largest `spans` hint: a changefeed's own bound on spans (`changefeedLimits.spansMax`). */
export const datagenSpansHintMax = 1_000_000;

/** The most table events one read or quiet check of table mode looks at. */
export const datagenTableScanEventsMax = 100_000;
/** The largest zipf exponent `zipfS` may ask for. */
export const datagenZipfSMax = 5;

/** How table mode draws a key index. */
export type DatagenDistribution = 'uniform' | 'zipf';

/** Table mode: one stream per table, keys drawn over the table (see the file comment). */
export interface DatagenTableMode {
  /** Events/s per table (at most one per ms). */
  readonly rate: number;
  readonly dist: DatagenDistribution;
  /** The zipf exponent (only with `dist` zipf). */
  readonly zipfS: number;
}

export interface DatagenOptions {
  /** Events/s per span; 0 makes idle spans. Ignored when `totalRate` or `table` is set. */
  readonly rate: number;
  /** Events/s over the whole changefeed, spread over its spans; 0 makes idle spans. */
  readonly totalRate?: number;
  /** What `totalRate` is divided by, instead of the changefeed's span count. */
  readonly spans?: number;
  /** Keys per span; in table mode, keys over the table. */
  readonly keys: number;
  readonly seed: number;
  /** Set: table mode (`tableRate`), the other rates do not apply. */
  readonly table?: DatagenTableMode;
}

/** What the capture knows when it opens the source: the changefeed's span count, for `totalRate`. */
/** What datagen takes from where it is opened: the changefeed's span count. */
export type DatagenContext = Pick<SourceContext, 'spanCount'>;

/** Parses a `datagen://` URI. */
export function parseDatagenUri(uri: string): DatagenOptions {
  const url = parseUri(uri, ['datagen'], 'source');
  rejectUnknownParams(url, ['rate', 'totalRate', 'spans', 'keys', 'seed', 'tableRate', 'dist', 'zipfS'], 'source');
  const tableRate = optionalIntParam(url, 'tableRate', 1, datagenSpanRateMax);
  if (tableRate === undefined) {
    if (url.searchParams.has('dist') || url.searchParams.has('zipfS')) throw new BadUriError('source uri: dist and zipfS are for table mode; give them with tableRate');
  } else {
    for (const other of ['rate', 'totalRate', 'spans']) {
      if (url.searchParams.has(other)) throw new BadUriError(`source uri: tableRate (events/s per table) and ${other} do not go together`);
    }
    const dist = url.searchParams.get('dist') ?? 'uniform';
    if (dist !== 'uniform' && dist !== 'zipf') throw new BadUriError(`parameter dist=${JSON.stringify(dist)} must be uniform or zipf`);
    if (dist === 'uniform' && url.searchParams.has('zipfS')) throw new BadUriError('source uri: zipfS goes only with dist=zipf');
    const zipfS = optionalNumberParam(url, 'zipfS', 0, datagenZipfSMax) ?? 1;
    if (!(zipfS > 0)) throw new BadUriError(`parameter zipfS=${JSON.stringify(url.searchParams.get('zipfS'))} must be above 0`);
    return {
      rate: 0,
      keys: intParam(url, 'keys', 100, 1, 1_000_000),
      seed: intParam(url, 'seed', 1, 0, 2 ** 31),
      table: { rate: tableRate, dist, zipfS: dist === 'zipf' ? zipfS : 0 },
    };
  }
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
  if (options.table !== undefined) return BigInt(Math.max(1, Math.floor(1000 / options.table.rate)));
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
      if (this.options.table !== undefined) return this.tableQuietUpTo(span, afterTs, resolved, periodMs);
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
    if (this.options.table !== undefined) return this.readTable(span, afterTs, uptoTs, limit, periodMs);
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

  // ---- table mode ----

  /** Per table: its identity's hash state and its offset in the period. */
  private readonly tableStreams = new Map<string, { readonly prefix: readonly [number, number]; readonly offset: number }>();
  /** The zipf CDF over the K keys (index 0 the hottest), made on first use. */
  private zipfCdf: Float64Array | undefined;

  private tableStream(table: string, periodMs: bigint): { readonly prefix: readonly [number, number]; readonly offset: number } {
    let stream = this.tableStreams.get(table);
    if (stream === undefined) {
      const identity = `${this.options.seed}\u0000table\u0000${table}`;
      stream = { prefix: spanKeyHashState('\u0000', spanKeyHashState(identity)), offset: Number(BigInt(spanKeyHashes(identity)[0]) % periodMs) };
      this.tableStreams.set(table, stream);
    }
    return stream;
  }

  /** The ts of the table's first event strictly after `afterTs` (a number: ts are far below 2^53). */
  private firstTableEventAfter(table: string, afterTs: number, periodMs: bigint): number {
    const step = Number(periodMs);
    const { offset } = this.tableStream(table, periodMs);
    const ts = afterTs + 1;
    const rem = (((ts - offset) % step) + step) % step;
    return rem === 0 ? ts : ts + step - rem;
  }

  /** The key index drawn from the distribution by a uniform 32-bit hash. */
  private keyIndex(uniform: number): number {
    const { keys } = this.options;
    const table = this.options.table as DatagenTableMode;
    if (table.dist === 'uniform') return uniform % keys;
    const cdf = (this.zipfCdf ??= zipfCdf(keys, table.zipfS));
    const u = uniform / 4_294_967_296;
    let low = 0;
    let high = keys - 1;
    while (low < high) {
      const mid = (low + high) >>> 1;
      if ((cdf[mid] as number) > u) high = mid;
      else low = mid + 1;
    }
    return low;
  }

  /** The event of `table` at `ts` (one of its stream's instants). */
  private tableEvent(table: string, ts: number, prefix: readonly [number, number], width: number): ChangeEvent {
    const hashes = spanKeyHashState(String(ts), prefix);
    const mixed = mix32((hashes[0] ^ Math.imul(hashes[1], 0x9e3779b1)) >>> 0);
    const b = hashes[1] >>> 0;
    const key = `${table}/${String(this.keyIndex(mixed)).padStart(width, '0')}`;
    return b % 10 === 0 ? { table, key, op: 'delete', ts: BigInt(ts) } : { table, key, value: `v${b.toString(36)}`, op: 'put', ts: BigInt(ts) };
  }

  /** The width of a zero-padded key index. */
  private get indexWidth(): number {
    return String(Math.max(0, this.options.keys - 1)).length;
  }

  /**
   * The span's events of (afterTs, uptoTs]: the table's stream filtered by the span's
   * range. At most {@link datagenTableScanEventsMax} table events are looked at, and at
   * most `limit` returned; either bound ends the read just before the next event.
   */
  private readTable(span: Span, afterTs: bigint, uptoTs: bigint, limit: number, periodMs: bigint): ReadResult {
    const events: ChangeEvent[] = [];
    if (afterTs >= maxSafeTs) return { events, readUpToTs: afterTs };
    const last = Number(uptoTs > maxSafeTs ? maxSafeTs : uptoTs);
    const { prefix } = this.tableStream(span.table, periodMs);
    const width = this.indexWidth;
    const step = Number(periodMs);
    let scanned = 0;
    let ts = this.firstTableEventAfter(span.table, Number(afterTs), periodMs);
    for (; ts <= last; ts += step) {
      if (scanned >= datagenTableScanEventsMax) return { events, readUpToTs: BigInt(ts - 1) };
      scanned++;
      const event = this.tableEvent(span.table, ts, prefix, width);
      if (event.key < span.start || (span.end !== '' && event.key >= span.end)) continue;
      if (events.length >= limit) return { events, readUpToTs: BigInt(ts - 1) };
      events.push(event);
    }
    return { events, readUpToTs: BigInt(last) };
  }

  /** A quiet check in table mode: up to just before the span's next event, within the scan bound. */
  private tableQuietUpTo(span: Span, afterTs: bigint, resolved: bigint, periodMs: bigint): QuietAnswer {
    if (afterTs >= maxSafeTs) return { quietTs: afterTs, needsStep: false };
    const { prefix } = this.tableStream(span.table, periodMs);
    const width = this.indexWidth;
    const step = Number(periodMs);
    const last = Number(resolved > maxSafeTs ? maxSafeTs : resolved);
    let ts = this.firstTableEventAfter(span.table, Number(afterTs), periodMs);
    for (let scanned = 0; ts <= last; ts += step, scanned++) {
      if (scanned >= datagenTableScanEventsMax) return { quietTs: BigInt(ts - 1), needsStep: false };
      const { key } = this.tableEvent(span.table, ts, prefix, width);
      if (key >= span.start && (span.end === '' || key < span.end)) return { quietTs: BigInt(ts - 1), needsStep: true };
    }
    return { quietTs: BigInt(last), needsStep: false };
  }
}

/** The CDF of zipf(s) over `keys` ranks: entry i is P(index <= i). */
export function zipfCdf(keys: number, s: number): Float64Array {
  const cdf = new Float64Array(keys);
  let sum = 0;
  for (let i = 0; i < keys; i++) {
    sum += 1 / (i + 1) ** s;
    cdf[i] = sum;
  }
  for (let i = 0; i < keys; i++) cdf[i] = (cdf[i] as number) / sum;
  cdf[keys - 1] = 1;
  return cdf;
}

/** A 32-bit finaliser (murmur3's), so consecutive timestamps draw independent-looking indices. */
function mix32(h: number): number {
  let x = h >>> 0;
  x ^= x >>> 16;
  x = Math.imul(x, 0x85ebca6b);
  x ^= x >>> 13;
  x = Math.imul(x, 0xc2b2ae35);
  x ^= x >>> 16;
  return x >>> 0;
}

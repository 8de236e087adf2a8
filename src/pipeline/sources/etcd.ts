/**
 * The `etcd` source: a table is a key prefix or range of an upstream etcd, and a
 * timestamp is an etcd revision. `etcd://host:port[,host:port...]`.
 *
 * Spans share watchers. Every watcher of a source is on one raw watch stream (so one
 * on-demand progress request covers them all), and the spans of one table held here
 * share one *group* watcher: its events are handed to the member spans' buffers by key
 * (a binary search over the members sorted by start, O(log spans) per event), and the
 * group's delivered position G — the revision of its last event, or of a progress
 * notification, up to which the watcher has sent everything — is the resolved-ts of
 * every member, idle or not. A capture with a million spans of ten tables has about ten
 * watchers, not a million.
 *
 * The range a group watches is its table's range when the opener gave the tables
 * (`SourceContext.tables`, as the capture does), else the smallest one covering its
 * members, grown (the watcher re-created from G + 1 over the union) when a span outside it
 * joins; it never shrinks while the group lives. Why not a watcher per contiguous run of
 * held spans: once a capture holds spans spread over a table the covering range is the
 * table's range anyway; runs would make the watcher count follow the placement (spans scattered
 * over three captures are runs of one or two), which is unbounded. The price: a capture
 * holding every third span of a table receives the whole table's events and drops two
 * thirds of them. Joins that arrive together (a pipeline's start-up, a move) are applied
 * at the next turn of the event loop, so they grow the range once, not once per span.
 *
 * A span joins a group directly when its reader stands at or after G (events at or
 * below its position are filtered); a span behind the group — the usual case for a span
 * moved here from its checkpoint — first catches up on a private watcher from its
 * position + 1 and is handed over once its own delivered position P >= G at that moment:
 * the group's later events are all > G, those <= P are filtered, so nothing is lost or
 * delivered twice. Private watchers are bounded (`catchUpWatchersMax`; further spans wait
 * in order), and so are all watchers of the source (`watchersMax`): groups get the slots
 * the catch-ups cannot take, so neither starves the other, and a table beyond them waits
 * for another table to leave. A private watcher
 * whose table has no group becomes its group. A span whose buffer overflows
 * (`bufferedEventsMax` events or `spanBufferBytesMax` bytes) keeps the revisions it
 * buffered whole, leaves its group (or its private watcher), and once its reader drained
 * them catches up again privately from there: a group never waits for one slow span, and
 * a backlog larger than the buffer still moves, one buffer at a time. The bytes of all
 * buffers are bounded too (`bufferBytesMax`): past it, the spans holding the most are cut
 * to their first buffered revision, an overflow at their second, so a slow sink slows the
 * reading of its spans rather than growing the capture's memory. Two spans of one table
 * that overlap (a table rebuilt while old spans are still held) are never members at
 * once: the later one stays on its private watcher until the other leaves.
 *
 * ```
 *   idle --(behind G)--> queued --(slot)--> catching-up --(P >= G)--> member
 *     |                                        |    \--(no group: its watcher becomes it)--> member
 *     +--(at or after G, covered)--> member     +--(buffer full)--> overflowed
 *     +--(at or after G, not covered; new group)--> joining --(next turn)--> member | queued
 *   member --(buffer full, or cut by the source's bound)--> overflowed --(reader drained it)--> idle (placed again)
 *   catching-up | member --(compacted, canceled)--> failed;   any --(released)--> gone
 * ```
 *
 * A start revision that etcd has compacted is never a silent gap: reads fail with a
 * {@link CompactedError} naming the revision, for the spans that need that history.
 */
import type { QuietAnswer, QuietRequest } from '../../agent/quiet-spans.ts';
import type { Etcd3, IWatchRequest, IWatchResponse } from 'etcd3';
import type { Span, TableRange } from '../../core/span.ts';
import { sampleEtcdBoundaries } from './etcd-sample.ts';
import { spanKey } from '../../core/span.ts';
import { assert, assertNever } from '../../core/assert.ts';
import type { EtcdUriSecurity } from '../etcd-uri-security.ts';
import { LazyEtcdClient, etcdSecurityParams, parseEtcdUriSecurity } from '../etcd-uri-security.ts';
import type { ChangeEvent, ReadResult, SnapshotPage, SnapshotSource, Source, SourceContext, SourceStats } from '../source.ts';
import { BadUriError, intParam, parseMultiHostUri, rejectUnknownParams } from '../uri.ts';

/** The history a read needs was compacted away. */
export class CompactedError extends Error {
  override readonly name = 'CompactedError';
  readonly retryable = false;
}

export interface EtcdSourceOptions {
  readonly endpoints: readonly string[];
  /** Events buffered per span before it leaves its watcher and catches up again later. */
  readonly bufferedEventsMax: number;
  /**
   * Bytes buffered per span before it leaves its watcher, as {@link bufferedEventsMax}
   * (`spanBufferBytesMax`). An event counts its key, its value and
   * {@link eventOverheadBytes}.
   */
  readonly spanBufferBytesMax: number;
  /**
   * Bytes buffered over all spans of the source (`bufferBytesMax`): past it the spans
   * holding the most are cut to their first buffered revision and read the rest again
   * from etcd once their reader got there (see `shed`).
   */
  readonly bufferBytesMax: number;
  /**
   * A new group whose joiners stand more than this many revisions behind the head starts
   * its watcher at the head; the joiners catch up privately, in parallel
   * (`groupStartBehindMax`).
   */
  readonly groupStartBehindMax: number;
  /**
   * The largest watch response the source takes (`watchResponseBytesMax`, default 256
   * MiB; gRPC's default of 4 MiB was passed by a watcher 1,000 revisions of 128-put
   * transactions behind, which then failed and reopened for ever). A response is decoded
   * whole before its events are filtered into the buffers, so this bounds that transient.
   */
  readonly watchResponseBytesMax: number;
  /** Private watchers at once that bring spans behind their group up to it (`catchUpWatchersMax`). */
  readonly catchUpWatchersMax: number;
  /**
   * Watchers at once, group and private (`watchersMax`): at most `watchersMax -
   * catchUpWatchersMax` tables have a group watcher; further tables wait for one to leave.
   */
  readonly watchersMax: number;
  readonly progressIntervalMs: number;
  /**
   * `notify` (default): trust only the per-watcher progress notifications etcd sends on
   * each watcher's own channel (in order with its events). `request`: also send
   * on-demand progress requests; etcd 3.4 answers them out of order with events, which
   * lets the resolved-ts pass undelivered events, so it is only for newer servers.
   */
  readonly progress: 'notify' | 'request';
  /**
   * Backfill page size and parallelism (`backfillPageKeys`, `backfillSpansInFlight`). A
   * failed page retries like any pipeline step (the capture's pipeline retry flags).
   */
  readonly backfill: { readonly pageKeysMax: number; readonly spansInFlightMax: number };
  /** TLS and user/password files (`ca`, `cert`, `key`, `user`, `passwordFile`); undefined: plain, no auth. */
  readonly security: EtcdUriSecurity;
}

/** The parameters an etcd source URI takes. */
const sourceParams = ['bufferedEventsMax', 'spanBufferBytesMax', 'bufferBytesMax', 'progressIntervalMs', 'progress', 'backfillPageKeys', 'backfillSpansInFlight', 'watchersMax', 'catchUpWatchersMax', 'groupStartBehindMax', 'watchResponseBytesMax', ...etcdSecurityParams];

/** Parses an `etcd://host:port[,host:port][?param=value...]` URI. */
export function parseEtcdSourceUri(uri: string): EtcdSourceOptions {
  const { url, hosts } = parseMultiHostUri(uri, 'etcd', 'source');
  const security = parseEtcdUriSecurity(url, 'source');
  rejectUnknownParams(url, sourceParams, 'source');
  const endpoints = hosts.split(',').filter((h) => h !== '');
  if (endpoints.length === 0 || !endpoints.every((e) => /^[a-zA-Z0-9.-]+:\d{1,5}$/.test(e))) {
    throw new BadUriError(`source uri ${JSON.stringify(uri)} must be etcd://host:port[,host:port...]`);
  }
  const watchersMax = intParam(url, 'watchersMax', 1_024, 2, 100_000);
  const catchUpWatchersMax = intParam(url, 'catchUpWatchersMax', 128, 1, 100_000);
  if (catchUpWatchersMax >= watchersMax) {
    throw new BadUriError(`parameter catchUpWatchersMax=${catchUpWatchersMax} must be below watchersMax=${watchersMax}`);
  }
  const spanBufferBytesMax = intParam(url, 'spanBufferBytesMax', 4 * 2 ** 20, 1_024, 2 ** 32);
  const bufferBytesMax = intParam(url, 'bufferBytesMax', 256 * 2 ** 20, 1_024, 2 ** 40);
  if (spanBufferBytesMax > bufferBytesMax) {
    throw new BadUriError(`parameter spanBufferBytesMax=${spanBufferBytesMax} must not be above bufferBytesMax=${bufferBytesMax}`);
  }
  return {
    endpoints,
    bufferedEventsMax: intParam(url, 'bufferedEventsMax', 100_000, 100, 10_000_000),
    spanBufferBytesMax,
    bufferBytesMax,
    catchUpWatchersMax,
    watchersMax,
    groupStartBehindMax: intParam(url, 'groupStartBehindMax', 1_000, 0, 2 ** 52),
    watchResponseBytesMax: intParam(url, 'watchResponseBytesMax', 256 * 2 ** 20, 4 * 2 ** 20, 2 ** 31 - 1),
    progressIntervalMs: intParam(url, 'progressIntervalMs', 100, 10, 60_000),
    progress: parseProgress(url.searchParams.get('progress')),
    backfill: {
      pageKeysMax: intParam(url, 'backfillPageKeys', 1_000, 1, 100_000),
      spansInFlightMax: intParam(url, 'backfillSpansInFlight', 4, 1, 1_000),
    },
    security,
  };
}

function parseProgress(value: string | null): 'notify' | 'request' {
  if (value === null || value === 'notify') return 'notify';
  if (value === 'request') return 'request';
  throw new BadUriError(`parameter progress=${JSON.stringify(value)} must be notify or request`);
}

/**
 * What an event costs a buffer besides its key and value bytes: the event object, its
 * two string headers, its bigint revision and its array slot. Measured on Node 20 (no
 * pointer compression): 200,000 events of 12-byte keys and 16-byte values held in an
 * array took 163 bytes each of heap, 135 beyond their 28 bytes of key and value.
 */
export const eventOverheadBytes = 128;

/** The bytes an event counts in a buffer. */
export function eventBytes(event: ChangeEvent): number {
  return event.key.length + (event.value === undefined ? 0 : event.value.length) + eventOverheadBytes;
}

/** True when key `key` lies before the range end `end` ('' = +infinity). */
function beforeEnd(key: string, end: string): boolean {
  return end === '' || key < end;
}

/** The larger of two range ends ('' = +infinity). */
function maxEnd(a: string, b: string): string {
  return a === '' || b === '' ? '' : a > b ? a : b;
}

function maxTs(a: bigint, b: bigint): bigint {
  return a > b ? a : b;
}

/** One etcd watcher on the source's stream. */
interface Watcher {
  kind: 'group' | 'catch-up';
  readonly start: string;
  readonly end: string;
  readonly startRevision: bigint;
  /** Known once etcd answered the create. */
  id: string | undefined;
  /** Every event of the range with a revision <= this was received. */
  delivered: bigint;
  /** False once canceled or replaced: its later responses are ignored. */
  live: boolean;
  /** The span a catch-up watcher serves, or the group a group watcher serves. */
  span: SpanRead | undefined;
  group: Group | undefined;
}

/**
 * `idle`: nothing serves it; the next call starts it from the reader's position.
 * `overflowed`: its buffer filled; it serves what it holds (up to `resolved`) and starts
 * again from there once its reader got that far.
 */
type SpanMode = 'idle' | 'queued' | 'catching-up' | 'joining' | 'member' | 'overflowed' | 'failed';

/** What reading one span holds. */
interface SpanRead {
  readonly span: Span;
  readonly key: string;
  /** The reader position this state serves: a read from below it starts over. */
  base: bigint;
  /** Events at or below this are not taken into the buffer (delivered before, or read). */
  filterTs: bigint;
  events: ChangeEvent[];
  /** What `events` counts (see {@link eventBytes}); the source sums them in `bufferedBytes`. */
  bytes: number;
  /** Everything up to this is in `events` or was read (a member: or up to its group's). */
  resolved: bigint;
  mode: SpanMode;
  error: Error | undefined;
  watcher: Watcher | undefined;
  group: Group | undefined;
}

/** The spans of one table that share a watcher. */
interface Group {
  readonly table: string;
  /** Sorted by start; never overlapping. */
  readonly members: SpanRead[];
  /** Reading at or after `delivered` but outside the watched range: applied next turn. */
  readonly joining: SpanRead[];
  watcher: Watcher | undefined;
  start: string;
  end: string;
  /** G: every event of [start, end) up to this went to the members. */
  delivered: bigint;
}

type WatchStream = Awaited<ReturnType<Etcd3['watchClient']['watch']>>;

/** Index of the last span in `spans` (sorted by start) with start <= key, or -1. */
function lastStartingAtOrBefore(spans: readonly SpanRead[], key: string): number {
  let lo = 0;
  let hi = spans.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if ((spans[mid] as SpanRead).span.start <= key) lo = mid + 1;
    else hi = mid;
  }
  return lo - 1;
}

export class EtcdSource implements Source, SnapshotSource {
  readonly snapshots: SnapshotSource = this;
  readonly backfillLimits: EtcdSourceOptions['backfill'];
  private readonly etcd: LazyEtcdClient;
  private stream: WatchStream | undefined;
  private opening: Promise<WatchStream> | undefined;
  private readonly spans = new Map<string, SpanRead>();
  private readonly groups = new Map<string, Group>();
  /** Spans waiting for a private watcher, in arrival order. */
  private readonly queue = new Set<SpanRead>();
  private readonly catchingUp = new Set<SpanRead>();
  private readonly live = new Set<Watcher>();
  private readonly byId = new Map<string, Watcher>();
  private pendingCreates: Watcher[] = [];
  private readonly dirtyGroups = new Set<Group>();
  private syncScheduled = false;
  private readonly timer: NodeJS.Timeout;
  private closed = false;
  private created = 0;
  private overflowCount = 0;
  /** Overflows `shed` made: the source held more than `bufferBytesMax`. */
  private shedCount = 0;
  /** Bytes in every span's buffer (see {@link eventBytes}). */
  private bufferedBytes = 0;
  /** The highest revision etcd's answers carried: at most its current revision. */
  private head = 0n;
  private handOverCount = 0;

  /** The changefeed's tables when the opener told them: a new group watches its whole table at once. */
  private readonly tableRanges: ReadonlyMap<string, TableRange>;

  constructor(
    private readonly options: EtcdSourceOptions,
    context: SourceContext = {},
  ) {
    this.etcd = new LazyEtcdClient({ endpoints: options.endpoints, callTimeoutMs: 5_000, security: options.security, credentialsRoot: context.credentialsRoot, receiveBytesMax: options.watchResponseBytesMax });
    this.tableRanges = new Map((context.tables ?? []).map((t) => [t.name, t]));
    this.backfillLimits = options.backfill;
    this.timer = setInterval(() => this.requestProgress(), options.progressIntervalMs);
  }

  async currentTs(): Promise<bigint> {
    const response = await (await this.etcd.get()).get('\u0000').exec();
    return BigInt(response.header.revision);
  }

  /** Split points from the table's keys at `atTs` (see etcd-sample.ts). */
  async sampleBoundaries(range: TableRange, count: number, atTs: bigint): Promise<string[]> {
    return sampleEtcdBoundaries(await this.etcd.get(), range, count, atTs);
  }

  /**
   * Just before the oldest revision etcd still keeps: a watch from revision 1 is refused
   * with the compact revision when history was compacted.
   */
  async earliestTs(): Promise<bigint> {
    // Revision 1 readable: nothing was ever compacted. Otherwise a watch from revision 1
    // is refused with the compact revision, which a plain read does not tell.
    const client = await this.etcd.get();
    try {
      await client.get('\u0000spanfeed-earliest-probe').revision('1').exec();
      return 0n;
    } catch (error) {
      if (!/compacted/i.test((error as Error).message)) throw error;
    }
    const stream = await client.watchClient.watch();
    try {
      return await new Promise<bigint>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error('etcd did not answer a watch request')), 5_000);
        stream.on('error', (error: Error) => {
          clearTimeout(timer);
          reject(error);
        });
        stream.on('data', (response: IWatchResponse) => {
          if (response.created && !response.canceled) {
            // Accepted from revision 1: nothing was compacted, or the refusal follows.
            return;
          }
          clearTimeout(timer);
          const compact = BigInt(response.compact_revision || '0');
          resolve(compact > 0n ? compact - 1n : 0n);
        });
        stream.write({ create_request: { key: Buffer.from('\u0000spanfeed-earliest-probe', 'latin1'), start_revision: '1' } });
      });
    } finally {
      stream.end();
    }
  }

  async snapshot(span: Span, atTs: bigint, afterKey: string | undefined, limit: number, sinceTs?: bigint): Promise<SnapshotPage> {
    const start = afterKey === undefined ? Buffer.from(span.start, 'latin1') : Buffer.concat([Buffer.from(afterKey, 'latin1'), Buffer.from([0])]);
    const end = span.end === '' ? Buffer.from([0]) : Buffer.from(span.end, 'latin1');
    if (sinceTs !== undefined) return this.incrementalPage(span, atTs, start, end, limit, sinceTs);
    const response = await (await this.etcd.get()).getAll().inRange({ start, end }).revision(atTs.toString()).limit(limit).exec();
    const events: ChangeEvent[] = response.kvs.map((kv) => ({
      table: span.table,
      key: kv.key.toString('latin1'),
      value: kv.value.toString('latin1'),
      op: 'put',
      ts: BigInt(kv.mod_revision),
    }));
    const last = events.at(-1);
    return { events, nextAfterKey: response.more && last !== undefined ? last.key : undefined };
  }

  /**
   * An incremental page: the page's keys with their mod revisions (keys only), then the
   * values of those modified after `sinceTs` in one range over them, filtered by etcd
   * (`min_mod_revision`), so unchanged values are never sent.
   */
  private async incrementalPage(span: Span, atTs: bigint, start: Buffer, end: Buffer, limit: number, sinceTs: bigint): Promise<SnapshotPage> {
    const client = await this.etcd.get();
    const keysOnly = client.getAll().inRange({ start, end }).revision(atTs.toString()).limit(limit);
    (keysOnly as unknown as { request: { keys_only: boolean } }).request.keys_only = true;
    const listed = await keysOnly.exec();
    const keys = listed.kvs.map((kv) => kv.key.toString('latin1'));
    const changed = listed.kvs.filter((kv) => BigInt(kv.mod_revision) > sinceTs);
    const last = keys.at(-1);
    const nextAfterKey = listed.more && last !== undefined ? last : undefined;
    const first = changed[0];
    const lastChanged = changed.at(-1);
    if (first === undefined || lastChanged === undefined) return { events: [], nextAfterKey, keys };
    const response = await client
      .getAll()
      .inRange({ start: first.key, end: Buffer.concat([lastChanged.key, Buffer.from([0])]) })
      .revision(atTs.toString())
      .minModRevision((sinceTs + 1n).toString())
      .exec();
    const events: ChangeEvent[] = response.kvs.map((kv) => ({ table: span.table, key: kv.key.toString('latin1'), value: kv.value.toString('latin1'), op: 'put', ts: BigInt(kv.mod_revision) }));
    return { events, nextAfterKey, keys };
  }

  async countKeys(span: Span, atTs: bigint): Promise<number> {
    const end = span.end === '' ? Buffer.from([0]) : Buffer.from(span.end, 'latin1');
    return (await this.etcd.get()).getAll().inRange({ start: Buffer.from(span.start, 'latin1'), end }).revision(atTs.toString()).count();
  }

  async resolvedTs(span: Span, afterTs: bigint): Promise<bigint> {
    const read = await this.ensure(span, afterTs);
    if (read.error !== undefined) throw read.error;
    return this.resolvedOf(read);
  }

  async read(span: Span, afterTs: bigint, uptoTs: bigint, limit: number): Promise<ReadResult> {
    const read = await this.ensure(span, afterTs);
    if (read.error !== undefined) throw read.error;
    const resolved = this.resolvedOf(read);
    const events: ChangeEvent[] = [];
    let readUpToTs = uptoTs > resolved ? resolved : uptoTs;
    let i = 0;
    let bytes = 0;
    // Events at or below afterTs were read before (or predate the reader): drop them.
    while (i < read.events.length && (read.events[i] as ChangeEvent).ts <= afterTs) bytes += eventBytes(read.events[i++] as ChangeEvent);
    while (i < read.events.length) {
      const event = read.events[i] as ChangeEvent;
      if (event.ts > readUpToTs) break;
      // Never split one revision (a transaction) across reads.
      if (events.length >= limit && event.ts !== events[events.length - 1]?.ts) {
        readUpToTs = (events[events.length - 1] as ChangeEvent).ts;
        break;
      }
      events.push(event);
      bytes += eventBytes(event);
      i++;
    }
    read.events = i === read.events.length ? [] : read.events.slice(i);
    read.bytes -= bytes;
    this.bufferedBytes -= bytes;
    if (readUpToTs < afterTs) readUpToTs = afterTs;
    return { events, readUpToTs };
  }

  /**
   * A span read here from at most `afterTs` holds every event up to its resolved-ts in
   * its buffer (or they were read, at or below the reader's position): quiet up to
   * there, or up to just before its first buffered event after `afterTs`. A span not
   * read here, failed, read from past `afterTs`, or one whose reading starts again only
   * on a call (idle, or overflowed and read to its end) takes a step.
   */
  async quietUpTo(requests: readonly QuietRequest[]): Promise<QuietAnswer[]> {
    return requests.map(({ span, afterTs }) => {
      const read = this.spans.get(spanKey(span));
      const stuck = read === undefined || read.error !== undefined || afterTs < read.base || read.mode === 'idle' || (read.mode === 'overflowed' && afterTs >= read.resolved);
      if (read === undefined || stuck) return { quietTs: afterTs, needsStep: true };
      const resolved = this.resolvedOf(read);
      const next = read.events.find((event) => event.ts > afterTs);
      if (next !== undefined && next.ts <= resolved) return { quietTs: next.ts - 1n > afterTs ? next.ts - 1n : afterTs, needsStep: true };
      return { quietTs: resolved > afterTs ? resolved : afterTs, needsStep: false };
    });
  }

  /** Stops reading a span: it leaves its group (an empty group cancels its watcher) or its private watcher. */
  release(span: Span): void {
    const key = spanKey(span);
    const read = this.spans.get(key);
    if (read === undefined) return;
    this.spans.delete(key);
    this.detach(read);
    this.pump();
  }

  /** Watchers and spans of this source, for metrics. */
  stats(): SourceStats {
    let group = 0;
    for (const watcher of this.live) if (watcher.kind === 'group') group++;
    return {
      watchers: { group, catchUp: this.live.size - group },
      watchersCreated: this.created,
      overflows: this.overflowCount,
      sheds: this.shedCount,
      bufferedBytes: this.bufferedBytes,
      handOvers: this.handOverCount,
      spans: this.spans.size,
      spansQueued: this.queue.size,
      groups: this.groups.size,
    };
  }

  /**
   * Throws an `InvariantError` with the broken rule when the bookkeeping is inconsistent;
   * the tests call it after every step.
   */
  checkInvariants(): void {
    let catchUpWatchers = 0;
    for (const watcher of this.live) {
      assert(watcher.live, 'a retired watcher is counted live');
      if (watcher.kind === 'catch-up') {
        catchUpWatchers++;
        assert(watcher.span !== undefined && watcher.span.watcher === watcher && watcher.span.mode === 'catching-up', 'a catch-up watcher serves no catching-up span', watcher.start);
      } else {
        assert(watcher.group !== undefined && watcher.group.watcher === watcher, 'a group watcher is not its group\'s', watcher.start);
      }
    }
    assert(catchUpWatchers === this.catchingUp.size, 'catch-up watchers and catching-up spans differ', { catchUpWatchers, catchingUp: this.catchingUp.size });
    assert(this.catchingUp.size <= this.options.catchUpWatchersMax, 'more catch-ups than catchUpWatchersMax', this.catchingUp.size);
    assert(this.live.size <= this.options.watchersMax, 'more watchers than watchersMax', this.live.size);
    for (const [table, group] of this.groups) {
      assert(group.table === table, 'a group is filed under another table', table);
      assert(group.watcher !== undefined || group.members.length === 0, 'a group without a watcher has members', table);
      if (group.watcher !== undefined) assert(group.delivered >= group.watcher.startRevision - 1n, 'a group is behind its watcher\'s start', table);
      let previous: SpanRead | undefined;
      for (const member of group.members) {
        assert(member.mode === 'member' && member.group === group && this.spans.get(member.key) === member, 'a member is not held as one', member.key);
        assert(this.covers(group, member), 'a member lies outside its group\'s range', member.key);
        assert(previous === undefined || !beforeEnd(member.span.start, previous.span.end), 'members overlap or are out of order', member.key);
        previous = member;
      }
      for (const joiner of group.joining) assert(joiner.mode === 'joining' && joiner.group === group, 'a joiner is not held as one', joiner.key);
    }
    for (const read of this.queue) assert(read.mode === 'queued' && this.spans.get(read.key) === read, 'a queued span is not held as one', read.key);
    let bufferedBytes = 0;
    let oneRevisionEach = true;
    for (const read of this.spans.values()) {
      const resolved = this.resolvedOf(read);
      assert(read.filterTs >= read.base, 'a span takes events from before its reader', read.key);
      let last = read.base;
      let bytes = 0;
      for (const event of read.events) {
        assert(event.ts >= last && event.ts <= resolved, 'a span\'s buffer is out of order or past its resolved-ts', read.key);
        last = event.ts;
        bytes += eventBytes(event);
      }
      assert(bytes === read.bytes, 'a span\'s byte count differs from its buffer', { key: read.key, bytes, counted: read.bytes });
      const oneRevision = read.events.length === 0 || (read.events[0] as ChangeEvent).ts === last;
      // Only a single revision (kept whole) may pass a span's bounds.
      assert(oneRevision || (read.bytes <= this.options.spanBufferBytesMax && read.events.length <= this.options.bufferedEventsMax), 'a span holds more than its bounds', { key: read.key, bytes: read.bytes, events: read.events.length });
      if (!oneRevision) oneRevisionEach = false;
      bufferedBytes += bytes;
      if (read.mode === 'member') assert(read.group !== undefined && read.group.members.includes(read), 'a member is missing from its group', read.key);
      if (read.mode === 'catching-up') assert(this.catchingUp.has(read), 'a catching-up span is not counted', read.key);
      if (read.mode === 'queued') assert(this.queue.has(read), 'a queued span is not in the queue', read.key);
    }
    assert(bufferedBytes === this.bufferedBytes, 'the source\'s byte count differs from its spans\'', { bufferedBytes, counted: this.bufferedBytes });
    // Past the bound only by spans that cannot be cut (one revision each).
    assert(this.bufferedBytes <= this.options.bufferBytesMax || oneRevisionEach, 'the source holds more than bufferBytesMax', this.bufferedBytes);
  }

  async close(): Promise<void> {
    this.closed = true;
    clearInterval(this.timer);
    // Cancel, not only end: a half-closed stream keeps its watchers on etcd, and closing
    // the client does not end calls in flight.
    const stream = this.stream;
    this.stream = undefined;
    this.reset();
    stream?.cancel();
    this.etcd.close();
  }

  // ---- spans ----

  private resolvedOf(read: SpanRead): bigint {
    if (read.mode === 'member' && read.group !== undefined) return maxTs(read.resolved, read.group.delivered);
    return read.resolved;
  }

  /** The span's state, (re)started so that it serves a reader at afterTs. */
  private async ensure(span: Span, afterTs: bigint): Promise<SpanRead> {
    // Every watcher lives on the stream: open it before deciding anything, so nothing
    // changes while this call waits.
    await this.openStream();
    const key = spanKey(span);
    let read = this.spans.get(key);
    if (read !== undefined && afterTs < read.base) {
      // The reader went back before what this state serves (it did not release first).
      this.detach(read);
      this.spans.delete(key);
      read = undefined;
    }
    if (read === undefined) {
      read = { span, key, base: afterTs, filterTs: afterTs, events: [], bytes: 0, resolved: afterTs, mode: 'idle', error: undefined, watcher: undefined, group: undefined };
      this.spans.set(key, read);
    }
    if (read.mode === 'idle' || (read.mode === 'overflowed' && afterTs >= read.resolved)) {
      // New, or its reader consumed what an overflow left: (re)start from the reader.
      read.base = afterTs;
      read.filterTs = afterTs;
      read.resolved = afterTs;
      this.dropBuffer(read);
      this.place(read);
    }
    return read;
  }

  /** Puts a span that reads from `base` into its group, or in line for a catch-up. */
  private place(read: SpanRead): void {
    let group = this.groups.get(read.span.table);
    if (group === undefined) {
      group = { table: read.span.table, members: [], joining: [], watcher: undefined, start: read.span.start, end: read.span.end, delivered: read.base };
      this.groups.set(group.table, group);
    }
    // A span overlapping a member (a table rebuilt while old spans are held) reads on
    // a private watcher until the other leaves.
    const overlaps = group.watcher !== undefined && this.overlapsMember(group, read);
    if (!overlaps && (group.watcher === undefined || read.base >= group.delivered)) {
      if (group.watcher !== undefined && this.covers(group, read)) {
        this.addMember(group, read, read.base);
        return;
      }
      read.mode = 'joining';
      read.group = group;
      group.joining.push(read);
      this.dirtyGroups.add(group);
      this.scheduleSync();
      return;
    }
    read.mode = 'queued';
    this.queue.add(read);
    this.pump();
  }

  private covers(group: Group, read: SpanRead): boolean {
    return group.start <= read.span.start && (group.end === '' || (read.span.end !== '' && read.span.end <= group.end));
  }

  private overlapsMember(group: Group, read: SpanRead): boolean {
    const i = lastStartingAtOrBefore(group.members, read.span.start);
    const before = group.members[i];
    if (before !== undefined && beforeEnd(read.span.start, before.span.end)) return true;
    const after = group.members[i + 1];
    return after !== undefined && beforeEnd(after.span.start, read.span.end);
  }

  private addMember(group: Group, read: SpanRead, filterTs: bigint): void {
    read.mode = 'member';
    read.group = group;
    read.filterTs = maxTs(read.filterTs, filterTs);
    group.members.splice(lastStartingAtOrBefore(group.members, read.span.start) + 1, 0, read);
  }

  /** Takes a span off whatever serves it; an empty group cancels its watcher. */
  private detach(read: SpanRead): void {
    switch (read.mode) {
      case 'member': {
        const group = read.group as Group;
        const i = group.members.indexOf(read, Math.max(0, lastStartingAtOrBefore(group.members, read.span.start)));
        if (i >= 0) group.members.splice(i, 1);
        this.dropIfEmpty(group);
        break;
      }
      case 'joining': {
        const group = read.group as Group;
        const i = group.joining.indexOf(read);
        if (i >= 0) group.joining.splice(i, 1);
        this.dropIfEmpty(group);
        break;
      }
      case 'catching-up':
        if (read.watcher !== undefined) this.retire(read.watcher);
        this.catchingUp.delete(read);
        break;
      case 'queued':
        this.queue.delete(read);
        break;
      case 'idle':
      case 'overflowed':
      case 'failed':
        break;
      default:
        assertNever(read.mode, 'span mode');
    }
    read.mode = 'idle';
    this.dropBuffer(read);
    read.watcher = undefined;
    read.group = undefined;
  }

  /** Appends an event to the span's buffer, counting its bytes. */
  private buffer(read: SpanRead, event: ChangeEvent): void {
    read.events.push(event);
    const bytes = eventBytes(event);
    read.bytes += bytes;
    this.bufferedBytes += bytes;
  }

  /** Empties the span's buffer. */
  private dropBuffer(read: SpanRead): void {
    this.bufferedBytes -= read.bytes;
    read.bytes = 0;
    read.events = [];
  }

  /**
   * Over a bound (events or bytes) with an event at `ts`, and an earlier revision to cut
   * at: one revision (a transaction) larger than the bound is kept whole rather than
   * never delivered.
   */
  private overflows(read: SpanRead, ts: bigint): boolean {
    return (read.events.length > this.options.bufferedEventsMax || read.bytes > this.options.spanBufferBytesMax) && (read.events[0] as ChangeEvent).ts < ts;
  }

  /**
   * A span's buffer passed a bound with an event at revision `ts`: it keeps the events
   * before `ts` (all of them arrived: a watcher delivers in revision order), leaves its
   * watcher, and goes on from `ts - 1` once its reader got there. Never splitting a
   * revision keeps a transaction whole.
   */
  private overflow(read: SpanRead, ts: bigint): void {
    this.overflowCount++;
    const events = read.events;
    let bytes = read.bytes;
    while (events.length > 0 && (events[events.length - 1] as ChangeEvent).ts >= ts) bytes -= eventBytes(events.pop() as ChangeEvent);
    this.bufferedBytes -= read.bytes - bytes;
    // Set aside (still counted in the source's bytes) while it leaves its watcher, which
    // empties the buffer.
    read.events = [];
    read.bytes = 0;
    this.detach(read);
    read.mode = 'overflowed';
    read.events = events;
    read.bytes = bytes;
    read.resolved = ts - 1n;
  }

  /**
   * The source holds more than `bufferBytesMax`: the spans holding the most bytes are cut
   * to their first buffered revision (an overflow at their second), until the source
   * holds at most three quarters of the bound, so that a scan of the spans is paid once
   * per quarter of the bound received, not once per response. Each cut span still has
   * its next revision to give its reader, and reads the rest again from etcd, from there,
   * once its reader got that far (a private catch-up, as after any overflow): a slow sink
   * slows its spans' reading instead of growing memory. A span holding one revision only
   * cannot be cut; past the bound by such spans the source holds at most one revision
   * per span.
   */
  private shed(): void {
    const target = this.options.bufferBytesMax - Math.floor(this.options.bufferBytesMax / 4);
    const cuttable: { read: SpanRead; bytes: number; at: bigint }[] = [];
    for (const read of this.spans.values()) {
      const first = read.events[0];
      if (first === undefined) continue;
      const at = read.events.find((event) => event.ts !== first.ts)?.ts;
      if (at !== undefined) cuttable.push({ read, bytes: read.bytes, at });
    }
    cuttable.sort((a, b) => b.bytes - a.bytes);
    for (const { read, at } of cuttable) {
      if (this.bufferedBytes <= target) break;
      this.shedCount++;
      this.overflow(read, at);
    }
  }

  private dropIfEmpty(group: Group): void {
    if (group.members.length > 0 || group.joining.length > 0) return;
    if (group.watcher !== undefined) this.retire(group.watcher);
    group.watcher = undefined;
    if (this.groups.get(group.table) === group) this.groups.delete(group.table);
    this.dirtyGroups.delete(group);
  }

  private scheduleSync(): void {
    if (this.syncScheduled) return;
    this.syncScheduled = true;
    setImmediate(() => {
      this.syncScheduled = false;
      this.syncGroups();
    });
  }

  /**
   * Applies the joins of this turn: a group without a watcher gets one from the lowest
   * position of its joiners; one that must grow is re-created from G + 1 over the union;
   * joiners that fell behind G meanwhile catch up privately.
   */
  private syncGroups(): void {
    if (this.closed || this.stream === undefined) return;
    for (const group of [...this.dirtyGroups]) {
      this.dirtyGroups.delete(group);
      if (this.groups.get(group.table) !== group) continue;
      if (group.watcher === undefined) {
        if (group.joining.length === 0) {
          this.dropIfEmpty(group);
          continue;
        }
        if (!this.groupSlotFree()) {
          // Needs a slot: a freed one syncs again.
          this.dirtyGroups.add(group);
          continue;
        }
        const joining = group.joining.splice(0).sort((a, b) => (a.span.start < b.span.start ? -1 : a.span.start > b.span.start ? 1 : 0));
        const first = joining[0] as SpanRead;
        let from = first.base;
        for (const read of joining) if (read.base < from) from = read.base;
        // Far behind the head, one watcher would read the backlog at etcd's pace for a
        // watcher behind, a batch of 1,000 revisions every 100 ms: the group starts at
        // the head instead and the joiners behind it catch up on private watchers, side
        // by side (at most catchUpWatchersMax), each at that pace, then hand over.
        if (this.head - from > BigInt(this.options.groupStartBehindMax)) from = this.head;
        group.delivered = from;
        // The whole table when told (see place()), else the first joiner's range, grown.
        const table = this.tableRanges.get(group.table);
        const whole = table !== undefined && joining.every((read) => table.start <= read.span.start && (table.end === '' || (read.span.end !== '' && read.span.end <= table.end)));
        let start = whole ? table.start : first.span.start;
        let end = whole ? table.end : first.span.end;
        for (const read of joining) {
          if (this.joinOrQueue(group, read)) {
            if (read.span.start < start) start = read.span.start;
            end = maxEnd(end, read.span.end);
          }
        }
        group.start = start;
        group.end = end;
        group.watcher = this.createWatcher('group', start, end, from + 1n, undefined, group);
      } else {
        const joining = group.joining.splice(0);
        let start = group.start;
        let end = group.end;
        for (const read of joining) {
          if (this.joinOrQueue(group, read)) {
            if (read.span.start < start) start = read.span.start;
            end = maxEnd(end, read.span.end);
          }
        }
        if (start !== group.start || end !== group.end) this.grow(group, start, end);
      }
    }
    this.pump();
  }

  /** A joiner at or after G becomes a member; one behind it (or overlapping a member) catches up. */
  private joinOrQueue(group: Group, read: SpanRead): boolean {
    read.group = undefined;
    if (read.base >= group.delivered && !this.overlapsMember(group, read)) {
      this.addMember(group, read, read.base);
      return true;
    }
    read.mode = 'queued';
    this.queue.add(read);
    return false;
  }

  /** Re-creates the group's watcher over [start, end) from G + 1: nothing up to G comes twice. */
  private grow(group: Group, start: string, end: string): void {
    if (group.watcher !== undefined) this.retire(group.watcher);
    group.start = start;
    group.end = end;
    group.watcher = this.createWatcher('group', start, end, group.delivered + 1n, undefined, group);
  }

  /** Starts the queued spans' catch-ups, in order, while the bounds allow. */
  private pump(): void {
    if (this.closed || this.stream === undefined) return;
    for (const read of this.queue) {
      const group = this.groups.get(read.span.table);
      if (group === undefined || group.watcher === undefined || (read.base >= group.delivered && !this.overlapsMember(group, read))) {
        // The group is gone, or caught up with this span's reader meanwhile.
        this.queue.delete(read);
        this.place(read);
        continue;
      }
      if (this.catchingUp.size >= this.options.catchUpWatchersMax) break;
      this.queue.delete(read);
      read.mode = 'catching-up';
      this.catchingUp.add(read);
      read.watcher = this.createWatcher('catch-up', read.span.start, read.span.end, read.base + 1n, read, undefined);
    }
    if (this.groupSlotFree()) for (const group of this.dirtyGroups) if (group.watcher === undefined) this.scheduleSync();
  }

  /** Group watchers take the slots catch-ups cannot: neither kind starves the other. */
  private groupSlotFree(): boolean {
    return this.live.size - this.catchingUp.size < this.options.watchersMax - this.options.catchUpWatchersMax;
  }

  /** A catching-up span at or after its group's G moves into it; with no group its watcher becomes one. */
  private tryHandOver(read: SpanRead): void {
    const watcher = read.watcher;
    if (read.mode !== 'catching-up' || watcher === undefined) return;
    let group = this.groups.get(read.span.table);
    // No group watcher to hand over to, and no slot to make this one it: read on privately.
    if ((group === undefined || group.watcher === undefined) && !this.groupSlotFree()) return;
    if (group !== undefined && group.watcher === undefined && group.members.length === 0) {
      // Only joiners waiting for a slot: this watcher serves them instead.
      group.watcher = watcher;
      group.start = watcher.start;
      group.end = watcher.end;
      group.delivered = read.resolved;
    } else if (group === undefined) {
      group = { table: read.span.table, members: [], joining: [], watcher, start: watcher.start, end: watcher.end, delivered: read.resolved };
      this.groups.set(group.table, group);
    } else {
      if (read.resolved < group.delivered || this.overlapsMember(group, read)) return;
      this.retire(watcher);
      this.catchingUp.delete(read);
      read.watcher = undefined;
      this.handOverCount++;
      this.addMember(group, read, read.resolved);
      if (!this.covers(group, read)) this.grow(group, read.span.start < group.start ? read.span.start : group.start, maxEnd(group.end, read.span.end));
      this.pump();
      return;
    }
    // Promoted: the private watcher is now the group's.
    watcher.kind = 'group';
    watcher.span = undefined;
    watcher.group = group;
    this.catchingUp.delete(read);
    read.watcher = undefined;
    this.addMember(group, read, read.resolved);
    this.dirtyGroups.add(group);
    this.scheduleSync();
    this.pump();
  }

  // ---- watchers ----

  private createWatcher(kind: Watcher['kind'], start: string, end: string, startRevision: bigint, span: SpanRead | undefined, group: Group | undefined): Watcher {
    const stream = this.stream;
    const watcher: Watcher = { kind, start, end, startRevision, id: undefined, delivered: startRevision - 1n, live: true, span, group };
    this.live.add(watcher);
    this.created++;
    if (stream === undefined) {
      // The stream broke in between: `broken` reset every span; this one too.
      this.live.delete(watcher);
      watcher.live = false;
      return watcher;
    }
    this.pendingCreates.push(watcher);
    const request: IWatchRequest = {
      create_request: {
        key: Buffer.from(start, 'latin1'),
        range_end: end === '' ? Buffer.from([0]) : Buffer.from(end, 'latin1'),
        start_revision: startRevision.toString(),
        progress_notify: true,
      },
    };
    stream.write(request);
    return watcher;
  }

  /** Cancels a watcher; responses still on their way are ignored. */
  private retire(watcher: Watcher): void {
    if (!watcher.live) return;
    watcher.live = false;
    this.live.delete(watcher);
    if (watcher.id !== undefined) {
      this.byId.delete(watcher.id);
      this.stream?.write({ cancel_request: { watch_id: watcher.id } });
    }
    // Without an id yet: its create answer finds it retired and cancels it then.
  }

  private async openStream(): Promise<WatchStream> {
    // A pipeline step still running when its source closed must not reopen a stream.
    if (this.closed) throw new Error('the etcd source is closed');
    if (this.stream !== undefined) return this.stream;
    if (this.opening !== undefined) return this.opening;
    this.opening = this.etcd.get().then(async (client) => {
      // The head before any watcher: a group that would start far behind it starts there.
      this.noteHead(BigInt((await client.get('\u0000').exec()).header.revision));
      return client.watchClient.watch();
    }).then((stream) => {
      this.stream = stream;
      this.opening = undefined;
      stream.on('data', (response: IWatchResponse) => this.onResponse(response));
      const broken = (): void => {
        if (this.stream !== stream) return;
        this.stream = undefined;
        this.reset();
      };
      stream.on('error', () => broken());
      stream.on('end', () => broken());
      return stream;
    }, (error: unknown) => {
      // The next read tries again (a credential file fixed, etcd back).
      this.opening = undefined;
      throw error;
    });
    return this.opening;
  }

  /** Every watcher is gone with the stream: readers start over from where they stand. */
  private reset(): void {
    for (const read of this.spans.values()) {
      if (read.mode === 'failed') continue;
      read.mode = 'idle';
      this.dropBuffer(read);
      read.watcher = undefined;
      read.group = undefined;
    }
    for (const watcher of this.live) watcher.live = false;
    this.live.clear();
    this.byId.clear();
    this.pendingCreates = [];
    this.groups.clear();
    this.queue.clear();
    this.catchingUp.clear();
    this.dirtyGroups.clear();
  }

  private requestProgress(): void {
    if (this.options.progress !== 'request') return;
    if (this.stream !== undefined && this.byId.size > 0) this.stream.write({ progress_request: {} });
  }

  /** The highest revision etcd said it had reached (response headers). */
  private noteHead(revision: bigint): void {
    if (revision > this.head) this.head = revision;
  }

  private onResponse(response: IWatchResponse): void {
    const revision = BigInt(response.header.revision);
    this.noteHead(revision);
    if (response.created) {
      const watcher = this.pendingCreates.shift();
      if (watcher === undefined) return;
      if (response.canceled) {
        if (watcher.live) this.fail(watcher, response);
        return;
      }
      watcher.id = response.watch_id;
      if (!watcher.live) {
        this.stream?.write({ cancel_request: { watch_id: response.watch_id } });
        return;
      }
      this.byId.set(response.watch_id, watcher);
      return;
    }
    if (response.watch_id === '-1') {
      // A progress answer: every watcher on the stream is synced up to this revision.
      for (const watcher of [...this.byId.values()]) this.advance(watcher, revision);
      return;
    }
    const watcher = this.byId.get(response.watch_id);
    if (watcher === undefined || !watcher.live) return;
    if (response.canceled) {
      this.fail(watcher, response);
      return;
    }
    let last = watcher.delivered;
    if (watcher.group !== undefined) last = this.deliverToGroup(watcher.group, response);
    else if (watcher.span !== undefined) last = this.deliverToSpan(watcher, watcher.span, response);
    if (this.bufferedBytes > this.options.bufferBytesMax) {
      this.shed();
      this.pump();
    }
    if (!watcher.live) return;
    this.advance(watcher, response.events.length === 0 ? revision : last);
  }

  private toEvent(table: string, event: IWatchResponse['events'][number], ts: bigint): ChangeEvent {
    const kv = event.kv;
    return event.type === 'Delete'
      ? { table, key: kv.key.toString('latin1'), op: 'delete', ts }
      : { table, key: kv.key.toString('latin1'), value: kv.value.toString('latin1'), op: 'put', ts };
  }

  /** Hands each event to the member holding its key; members that overflow leave. Returns the last revision. */
  private deliverToGroup(group: Group, response: IWatchResponse): bigint {
    let last = group.delivered;
    let overflowed: Map<SpanRead, bigint> | undefined;
    for (const event of response.events) {
      const ts = BigInt(event.kv.mod_revision);
      last = ts;
      const key = event.kv.key.toString('latin1');
      const member = group.members[lastStartingAtOrBefore(group.members, key)];
      if (member === undefined || !beforeEnd(key, member.span.end) || ts <= member.filterTs || overflowed?.has(member) === true) continue;
      this.buffer(member, this.toEvent(group.table, event, ts));
      // Too far ahead of its reader: it leaves (after this response, so the search
      // above stays valid) and catches up privately once its reader drained it.
      if (this.overflows(member, ts)) (overflowed ??= new Map()).set(member, ts);
    }
    for (const [member, ts] of overflowed ?? []) this.overflow(member, ts);
    if (overflowed !== undefined) this.pump();
    return last;
  }

  private deliverToSpan(watcher: Watcher, read: SpanRead, response: IWatchResponse): bigint {
    let last = watcher.delivered;
    for (const event of response.events) {
      const ts = BigInt(event.kv.mod_revision);
      last = ts;
      if (ts <= read.filterTs) continue;
      this.buffer(read, this.toEvent(read.span.table, event, ts));
      if (this.overflows(read, ts)) {
        this.overflow(read, ts);
        this.pump();
        break;
      }
    }
    return last;
  }

  /** The watcher sent everything up to `revision`: its group or span resolves to it. */
  private advance(watcher: Watcher, revision: bigint): void {
    if (!watcher.live || revision <= watcher.delivered) return;
    watcher.delivered = revision;
    const group = watcher.group;
    if (group !== undefined) {
      if (group.watcher !== watcher) return;
      group.delivered = revision;
      // Catch-ups of this table standing at or after the new G hand over now.
      for (const read of [...this.catchingUp]) if (read.span.table === group.table && read.resolved >= revision) this.tryHandOver(read);
      return;
    }
    const read = watcher.span;
    if (read === undefined || read.watcher !== watcher) return;
    read.resolved = maxTs(read.resolved, revision);
    this.tryHandOver(read);
  }

  private fail(watcher: Watcher, response: IWatchResponse): void {
    const group = watcher.group;
    const read = watcher.span;
    this.retire(watcher);
    if (group !== undefined && group.watcher === watcher) {
      const compact = BigInt(response.compact_revision || '0');
      group.watcher = undefined;
      for (const member of group.members) {
        const resolved = this.resolvedOf(member);
        member.group = undefined;
        if (compact > 0n && resolved + 1n >= compact) {
          // This member needs nothing that was compacted (the group started lower for
          // another): it serves what it holds and starts again from there, as after an
          // overflow.
          member.mode = 'overflowed';
          member.resolved = resolved;
          continue;
        }
        member.mode = 'failed';
        member.error = this.compactedOrFailed(resolved + 1n, group.table, response);
        this.dropBuffer(member);
      }
      group.members.length = 0;
      // Joiners waiting for this group get a watcher of their own start.
      if (group.joining.length > 0) {
        this.dirtyGroups.add(group);
        this.scheduleSync();
      } else this.dropIfEmpty(group);
    } else if (read !== undefined && read.watcher === watcher) {
      this.catchingUp.delete(read);
      read.watcher = undefined;
      read.mode = 'failed';
      this.dropBuffer(read);
      read.error = this.compactedOrFailed(watcher.startRevision, read.span.table, response);
    }
    this.pump();
  }

  private compactedOrFailed(revision: bigint, table: string, response: IWatchResponse): Error {
    const compact = BigInt(response.compact_revision || '0');
    if (compact > 0n) {
      return new CompactedError(
        `revision ${revision} of table ${table} was compacted by etcd (oldest kept: ${compact}); resume the changefeed with backfill`,
      );
    }
    return new Error(`etcd canceled the watch of table ${table}: ${response.cancel_reason || 'no reason given'}`);
  }
}

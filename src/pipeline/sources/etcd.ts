/**
 * The `etcd` source: a table is a key prefix or range of an upstream etcd, and a
 * timestamp is an etcd revision. `etcd://host:port[,host:port...]`.
 *
 * Each span is watched from `after + 1` on one raw watch stream per source (so one
 * on-demand progress request covers every span): events arrive in revision order, and a
 * progress answer (header revision R, watch id -1) says every watcher on the stream has
 * delivered everything up to R, which makes R the resolved-ts even of idle spans. Events
 * are buffered per span (bounded); a span whose buffer overflows is re-watched from
 * where its reader stands.
 *
 * A start revision that etcd has compacted is never a silent gap: reads fail with a
 * {@link CompactedError} naming the revision.
 */
import type { Etcd3, IWatchRequest, IWatchResponse } from 'etcd3';
import type { Span, TableRange } from '../../core/span.ts';
import { sampleEtcdBoundaries } from './etcd-sample.ts';
import { spanKey } from '../../core/span.ts';
import type { EtcdUriSecurity } from '../etcd-uri-security.ts';
import { LazyEtcdClient, etcdSecurityParams, parseEtcdUriSecurity } from '../etcd-uri-security.ts';
import type { ChangeEvent, ReadResult, SnapshotPage, SnapshotSource, Source, SourceContext } from '../source.ts';
import { BadUriError, intParam, parseMultiHostUri, rejectUnknownParams } from '../uri.ts';

/** The history a read needs was compacted away. */
export class CompactedError extends Error {
  override readonly name = 'CompactedError';
  readonly retryable = false;
}

export interface EtcdSourceOptions {
  readonly endpoints: readonly string[];
  /** Events buffered per span before its watch is dropped and re-created later. */
  readonly bufferedEventsMax: number;
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
const sourceParams = ['bufferedEventsMax', 'progressIntervalMs', 'progress', 'backfillPageKeys', 'backfillSpansInFlight', ...etcdSecurityParams];

/** Parses an `etcd://host:port[,host:port][?param=value...]` URI. */
export function parseEtcdSourceUri(uri: string): EtcdSourceOptions {
  const { url, hosts } = parseMultiHostUri(uri, 'etcd', 'source');
  const security = parseEtcdUriSecurity(url, 'source');
  rejectUnknownParams(url, sourceParams, 'source');
  const endpoints = hosts.split(',').filter((h) => h !== '');
  if (endpoints.length === 0 || !endpoints.every((e) => /^[a-zA-Z0-9.-]+:\d{1,5}$/.test(e))) {
    throw new BadUriError(`source uri ${JSON.stringify(uri)} must be etcd://host:port[,host:port...]`);
  }
  return {
    endpoints,
    bufferedEventsMax: intParam(url, 'bufferedEventsMax', 100_000, 100, 10_000_000),
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

interface SpanWatch {
  readonly span: Span;
  readonly startRevision: bigint;
  id: string | undefined;
  events: ChangeEvent[];
  resolved: bigint;
  error: Error | undefined;
  overflowed: boolean;
}

type WatchStream = Awaited<ReturnType<Etcd3['watchClient']['watch']>>;

export class EtcdSource implements Source, SnapshotSource {
  readonly snapshots: SnapshotSource = this;
  readonly backfillLimits: EtcdSourceOptions['backfill'];
  private readonly etcd: LazyEtcdClient;
  private stream: WatchStream | undefined;
  private opening: Promise<WatchStream> | undefined;
  private readonly watches = new Map<string, SpanWatch>();
  private readonly byId = new Map<string, SpanWatch>();
  private pendingCreates: SpanWatch[] = [];
  private readonly timer: NodeJS.Timeout;
  private closed = false;

  constructor(
    private readonly options: EtcdSourceOptions,
    context: SourceContext = {},
  ) {
    this.etcd = new LazyEtcdClient({ endpoints: options.endpoints, callTimeoutMs: 5_000, security: options.security, credentialsRoot: context.credentialsRoot });
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
    const watch = await this.ensure(span, afterTs);
    if (watch.error !== undefined) throw watch.error;
    return watch.resolved;
  }

  async read(span: Span, afterTs: bigint, uptoTs: bigint, limit: number): Promise<ReadResult> {
    const watch = await this.ensure(span, afterTs);
    if (watch.error !== undefined) throw watch.error;
    const events: ChangeEvent[] = [];
    let readUpToTs = uptoTs > watch.resolved ? watch.resolved : uptoTs;
    let i = 0;
    // Events at or below afterTs were read before (or predate the reader): drop them.
    while (i < watch.events.length && (watch.events[i] as ChangeEvent).ts <= afterTs) i++;
    while (i < watch.events.length) {
      const event = watch.events[i] as ChangeEvent;
      if (event.ts > readUpToTs) break;
      // Never split one revision (a transaction) across reads.
      if (events.length >= limit && event.ts !== events[events.length - 1]?.ts) {
        readUpToTs = (events[events.length - 1] as ChangeEvent).ts;
        break;
      }
      events.push(event);
      i++;
    }
    watch.events = watch.events.slice(i);
    if (readUpToTs < afterTs) readUpToTs = afterTs;
    return { events, readUpToTs };
  }

  /** Stops watching a span. */
  release(span: Span): void {
    const key = spanKey(span);
    const watch = this.watches.get(key);
    if (watch === undefined) return;
    this.watches.delete(key);
    this.cancel(watch);
  }

  async close(): Promise<void> {
    this.closed = true;
    clearInterval(this.timer);
    this.stream?.end();
    this.etcd.close();
  }

  // ---- watches ----

  /** The span's watch, (re-)created so that it starts at or before afterTs + 1. */
  private async ensure(span: Span, afterTs: bigint): Promise<SpanWatch> {
    const key = spanKey(span);
    const existing = this.watches.get(key);
    if (existing !== undefined && existing.startRevision <= afterTs + 1n && !existing.overflowed) return existing;
    if (existing !== undefined) this.cancel(existing);
    const watch: SpanWatch = { span, startRevision: afterTs + 1n, id: undefined, events: [], resolved: afterTs, error: undefined, overflowed: false };
    this.watches.set(key, watch);
    const stream = await this.openStream();
    this.pendingCreates.push(watch);
    const request: IWatchRequest = {
      create_request: {
        key: Buffer.from(span.start, 'latin1'),
        range_end: span.end === '' ? Buffer.from([0]) : Buffer.from(span.end, 'latin1'),
        start_revision: watch.startRevision.toString(),
        progress_notify: true,
      },
    };
    stream.write(request);
    return watch;
  }

  private cancel(watch: SpanWatch): void {
    if (watch.id !== undefined) {
      this.byId.delete(watch.id);
      this.stream?.write({ cancel_request: { watch_id: watch.id } });
    } else {
      // Its create answer will find it no longer wanted and cancel it then.
      watch.error ??= new Error('released');
    }
  }

  private async openStream(): Promise<WatchStream> {
    // A pipeline step still running when its source closed must not reopen a stream.
    if (this.closed) throw new Error('the etcd source is closed');
    if (this.stream !== undefined) return this.stream;
    if (this.opening !== undefined) return this.opening;
    this.opening = this.etcd.get().then((client) => client.watchClient.watch()).then((stream) => {
      this.stream = stream;
      this.opening = undefined;
      stream.on('data', (response: IWatchResponse) => this.onResponse(response));
      const broken = (): void => {
        if (this.stream !== stream) return;
        this.stream = undefined;
        // Every watch on the stream is gone: readers re-create theirs from where they stand.
        for (const watch of this.watches.values()) watch.overflowed = true;
        this.byId.clear();
        this.pendingCreates = [];
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

  private requestProgress(): void {
    if (this.options.progress !== 'request') return;
    if (this.stream !== undefined && this.byId.size > 0) this.stream.write({ progress_request: {} });
  }

  private onResponse(response: IWatchResponse): void {
    const revision = BigInt(response.header.revision);
    if (response.created) {
      const watch = this.pendingCreates.shift();
      if (watch === undefined) return;
      if (response.canceled) {
        watch.error = this.compactedOrFailed(watch, response);
        return;
      }
      watch.id = response.watch_id;
      if (this.watches.get(spanKey(watch.span)) !== watch) {
        this.stream?.write({ cancel_request: { watch_id: response.watch_id } });
        return;
      }
      this.byId.set(response.watch_id, watch);
      return;
    }
    if (response.watch_id === '-1') {
      // A progress answer: every watcher on the stream is synced up to this revision.
      for (const watch of this.byId.values()) if (revision > watch.resolved) watch.resolved = revision;
      return;
    }
    const watch = this.byId.get(response.watch_id);
    if (watch === undefined) return;
    if (response.canceled) {
      this.byId.delete(response.watch_id);
      watch.error = this.compactedOrFailed(watch, response);
      return;
    }
    for (const event of response.events) {
      const kv = event.kv;
      const ts = BigInt(kv.mod_revision);
      watch.events.push(
        event.type === 'Delete'
          ? { table: watch.span.table, key: kv.key.toString('latin1'), op: 'delete', ts }
          : { table: watch.span.table, key: kv.key.toString('latin1'), value: kv.value.toString('latin1'), op: 'put', ts },
      );
      if (ts > watch.resolved) watch.resolved = ts;
    }
    if (response.events.length === 0 && revision > watch.resolved) watch.resolved = revision;
    if (watch.events.length > this.options.bufferedEventsMax) {
      // Too far ahead of its reader: drop the watch; the next read re-creates it.
      watch.overflowed = true;
      watch.events = [];
      this.byId.delete(response.watch_id);
      this.stream?.write({ cancel_request: { watch_id: response.watch_id } });
    }
  }

  private compactedOrFailed(watch: SpanWatch, response: IWatchResponse): Error {
    const compact = BigInt(response.compact_revision || '0');
    if (compact > 0n) {
      return new CompactedError(
        `revision ${watch.startRevision} of table ${watch.span.table} was compacted by etcd (oldest kept: ${compact}); resume the changefeed with backfill`,
      );
    }
    return new Error(`etcd canceled the watch of table ${watch.span.table}: ${response.cancel_reason || 'no reason given'}`);
  }
}

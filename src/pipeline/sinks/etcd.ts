/**
 * The `etcd` sink: mirrors each table's keys under a target prefix of a (downstream)
 * etcd. `etcd://host:port[,host:port...]/<target-prefix>`.
 *
 * Never goes backwards: next to every mirrored key the sink keeps the source revision
 * it last applied (under `/spanfeed-mirror-revisions/<target key>`, zero-padded so the
 * string order is the numeric order), and applies an event only in a transaction that
 * compares it: a replayed older event (at-least-once delivery) never overwrites a newer
 * one. Within one write only the last event per key is applied; transactions run with a
 * bounded number in flight. `retire` deletes the span's keys with older markers.
 */
import type { Etcd3 } from 'etcd3';
import type { Span } from '../../core/span.ts';
import { prefixEnd } from '../../core/span.ts';
import type { EtcdUriSecurity } from '../etcd-uri-security.ts';
import { LazyEtcdClient, etcdSecurityParams, parseEtcdUriSecurity } from '../etcd-uri-security.ts';
import type { RetireScope, Sink, SinkContext } from '../sink.ts';
import type { ChangeEvent } from '../source.ts';
import { BadUriError, intParam, parseMultiHostUri, rejectUnknownParams } from '../uri.ts';

export const mirrorRevisionsPrefix = '/spanfeed-mirror-revisions/';

/** Transactions tried per event before the write fails (and the pipeline retries). */
const applyAttemptsMax = 8;

export interface EtcdSinkOptions {
  readonly endpoints: readonly string[];
  readonly targetPrefix: string;
  readonly txnsInFlightMax: number;
  /** TLS and user/password files (`ca`, `cert`, `key`, `user`, `passwordFile`); undefined: plain, no auth. */
  readonly security: EtcdUriSecurity;
}

/** The parameters an etcd sink URI takes. */
const sinkParams = ['txnsInFlightMax', ...etcdSecurityParams];

/** Parses `etcd://host:port[,host:port...]/<target-prefix>[?param=value...]`. */
export function parseEtcdSinkUri(uri: string): EtcdSinkOptions {
  const { url } = parseMultiHostUri(uri, 'etcd', 'sink');
  const security = parseEtcdUriSecurity(url, 'sink');
  rejectUnknownParams(url, sinkParams, 'sink');
  const rest = uri.slice('etcd://'.length).split('?')[0] ?? '';
  const slash = rest.indexOf('/');
  const hosts = slash < 0 ? rest : rest.slice(0, slash);
  const targetPrefix = slash < 0 ? '' : decodeURIComponent(rest.slice(slash + 1));
  const endpoints = hosts.split(',').filter((h) => h !== '');
  if (endpoints.length === 0 || !endpoints.every((e) => /^[a-zA-Z0-9.-]+:\d{1,5}$/.test(e))) {
    throw new BadUriError(`sink uri ${JSON.stringify(uri)} must be etcd://host:port[,host:port...]/<target-prefix>`);
  }
  if (targetPrefix === '') throw new BadUriError(`sink uri ${JSON.stringify(uri)} needs a target prefix: etcd://host:port/<target-prefix>`);
  return { endpoints, targetPrefix, txnsInFlightMax: intParam(url, 'txnsInFlightMax', 64, 1, 4096), security };
}

/** A revision as a fixed-width string: string order is numeric order. */
export function revisionText(ts: bigint): string {
  return ts.toString().padStart(20, '0');
}

/** Revision markers read per page when a span is retired. */
const retirePageKeysMax = 1_000;

/** Target keys remembered as mirrored, to try the likelier transaction first. */
const knownKeysMax = 1_000_000;

export class EtcdSink implements Sink {
  private readonly etcd: LazyEtcdClient;
  /** Keys this sink has mirrored: an update is likelier than a first write for them. */
  private readonly known = new Set<string>();

  constructor(
    private readonly options: EtcdSinkOptions,
    context: SinkContext = {},
  ) {
    this.etcd = new LazyEtcdClient({ endpoints: options.endpoints, callTimeoutMs: 10_000, security: options.security, credentialsRoot: context.credentialsRoot });
  }

  async write(_span: Span, events: readonly ChangeEvent[]): Promise<void> {
    const client = await this.etcd.get();
    const latest = new Map<string, ChangeEvent>();
    for (const event of events) latest.set(event.key, event);
    const queue = [...latest.values()];
    const workers = Array.from({ length: Math.min(this.options.txnsInFlightMax, queue.length) }, async () => {
      for (let event = queue.shift(); event !== undefined; event = queue.shift()) await this.apply(client, event);
    });
    await Promise.all(workers);
  }

  /** Every write was a committed etcd transaction: nothing more to make durable. */
  async flush(): Promise<void> {}

  /**
   * Deletes every mirrored key of the span whose revision marker is older than
   * `beforeTs`, page by page; each delete is a transaction that compares the marker it
   * read, so a key written meanwhile is kept. The marker stays, at `beforeTs`.
   */
  async retire(span: Span, beforeTs: bigint, scope?: RetireScope): Promise<void> {
    const range = scope ?? span;
    const keep = scope?.keep;
    const prefix = mirrorRevisionsPrefix + this.options.targetPrefix;
    const end = Buffer.from(range.end === '' ? prefixEnd(prefix) : prefix + range.end, 'latin1');
    const rev = revisionText(beforeTs);
    let start = Buffer.from(prefix + range.start, 'latin1');
    const client = await this.etcd.get();
    for (;;) {
      const page = await client.getAll().inRange({ start, end }).limit(retirePageKeysMax).exec();
      const stale = page.kvs.filter((kv) => kv.value.toString('latin1') < rev && keep?.has(kv.key.toString('latin1').slice(prefix.length)) !== true);
      const workers = Array.from({ length: Math.min(this.options.txnsInFlightMax, stale.length) }, async () => {
        for (let kv = stale.shift(); kv !== undefined; kv = stale.shift()) {
          const target = Buffer.from(kv.key.toString('latin1').slice(mirrorRevisionsPrefix.length), 'latin1');
          await client.if(kv.key, 'Value', '==', kv.value).then(client.delete().key(target), client.put(kv.key).value(rev)).commit();
        }
      });
      await Promise.all(workers);
      const last = page.kvs.at(-1);
      if (!page.more || last === undefined) return;
      start = Buffer.concat([last.key, Buffer.from([0])]);
    }
  }

  async close(): Promise<void> {
    this.etcd.close();
  }

  private remember(target: string): void {
    if (this.known.size >= knownKeysMax) this.known.clear();
    this.known.add(target);
  }

  private async apply(client: Etcd3, event: ChangeEvent): Promise<void> {
    const target = this.options.targetPrefix + event.key;
    const marker = mirrorRevisionsPrefix + target;
    const targetKey = Buffer.from(target, 'latin1');
    const markerKey = Buffer.from(marker, 'latin1');
    const rev = revisionText(event.ts);
    const ops = [
      event.op === 'delete' ? client.delete().key(targetKey) : client.put(targetKey).value(Buffer.from(event.value ?? '', 'latin1')),
      client.put(markerKey).value(rev),
    ];
    // Applied only over an older revision, or where the key was never mirrored; the
    // likelier of the two transactions goes first, so one round trip is the usual cost.
    // Two writers of one key (a replay racing the new primary) may both miss; retry
    // until the marker is at or past this event.
    const over = (): Promise<boolean> => client.if(markerKey, 'Value', '<', rev).then(...ops).commit().then((r) => r.succeeded);
    const first = (): Promise<boolean> => client.if(markerKey, 'Version', '==', 0).then(...ops).commit().then((r) => r.succeeded);
    const tries = this.known.has(target) ? [over, first] : [first, over];
    for (let attempt = 0; attempt < applyAttemptsMax; attempt++) {
      for (const attemptTxn of tries) {
        if (await attemptTxn()) {
          this.remember(target);
          return;
        }
      }
      const current = await client.get(markerKey).string();
      if (current !== null && current >= rev) {
        this.remember(target);
        return;
      }
    }
    throw new Error(`could not apply revision ${event.ts} to ${JSON.stringify(target)} after ${applyAttemptsMax} attempts`);
  }
}

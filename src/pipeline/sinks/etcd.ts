/**
 * The `etcd` sink: mirrors each table's keys under a target prefix of a (downstream)
 * etcd. `etcd://host:port[,host:port...]/<target-prefix>[?txnsInFlightMax=<n>][&txnOpsMax=<n>][&txnBytesMax=<n>]`.
 *
 * Never goes backwards: next to every mirrored key the sink keeps the source revision
 * it last applied (under `/spanfeed-mirror-revisions/<target key>`, zero-padded so the
 * string order is the numeric order), and applies an event only in a transaction that
 * compares it: a replayed older event (at-least-once delivery) never overwrites a newer
 * one. Within one write only the last event per key is applied.
 *
 * Many keys go in one transaction: its compares are one per key, ANDed (the key's marker
 * is older than the event, or absent: etcd has no OR, so the sink picks the one it
 * expects), its success branch puts every key and marker, and its failure branch reads
 * every marker. A transaction that fails changed nothing; the markers it read (all at one
 * revision) say which keys are already at or past their event (dropped: a newer writer
 * got there) and which compare each other key needs, and the rest goes again. So each
 * key is still applied only by a transaction that saw its marker older, exactly as when
 * every key had a transaction of its own. Transactions carry at most `txnOpsMax / 2` keys
 * (the downstream's `--max-txn-ops`) and about `txnBytesMax` bytes (below its
 * `--max-request-bytes`), at most `txnsInFlightMax` of them in flight over the whole sink.
 * `retire` deletes the span's keys with older markers.
 */
import type { Etcd3, IRequestOp } from 'etcd3';
import type { Span } from '../../core/span.ts';
import { prefixEnd } from '../../core/span.ts';
import type { EtcdUriSecurity } from '../etcd-uri-security.ts';
import { LazyEtcdClient, etcdSecurityParams, parseEtcdUriSecurity } from '../etcd-uri-security.ts';
import type { RetireScope, Sink, SinkContext } from '../sink.ts';
import type { ChangeEvent } from '../source.ts';
import { BadUriError, intParam, parseMultiHostUri, rejectUnknownParams } from '../uri.ts';
import { InFlightLimit } from './in-flight-limit.ts';

export const mirrorRevisionsPrefix = '/spanfeed-mirror-revisions/';

/** Transactions tried per batch of keys before the write fails (and the pipeline retries). */
const applyAttemptsMax = 8;

/**
 * Operations each mirrored key takes in the transaction's largest list: its put (or
 * delete) and its marker's put in the success branch (one compare and one read in the
 * others).
 */
const opsPerKey = 2;

/** Bytes a transaction holds per key besides its keys and value (the revision text twice, protobuf framing). */
const keyOverheadBytes = 64;

export interface EtcdSinkOptions {
  readonly endpoints: readonly string[];
  readonly targetPrefix: string;
  /** Transactions in flight over the whole sink (every span it writes). */
  readonly txnsInFlightMax: number;
  /** The downstream etcd's `--max-txn-ops`: a transaction carries `txnOpsMax / 2` keys at most. */
  readonly txnOpsMax: number;
  /** Bytes of keys and values per transaction, below the downstream's `--max-request-bytes` (a bigger single event still goes, alone). */
  readonly txnBytesMax: number;
  /** TLS and user/password files (`ca`, `cert`, `key`, `user`, `passwordFile`); undefined: plain, no auth. */
  readonly security: EtcdUriSecurity;
}

/** Defaults of the sink's bounds: etcd's own `--max-txn-ops` (128) and 1 MiB under its 1.5 MiB `--max-request-bytes`. */
export const etcdSinkDefaults = { txnsInFlightMax: 64, txnOpsMax: 128, txnBytesMax: 1024 * 1024 } as const;

/** The parameters an etcd sink URI takes. */
const sinkParams = ['txnsInFlightMax', 'txnOpsMax', 'txnBytesMax', ...etcdSecurityParams];

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
  return {
    endpoints,
    targetPrefix,
    txnsInFlightMax: intParam(url, 'txnsInFlightMax', etcdSinkDefaults.txnsInFlightMax, 1, 4096),
    // At least one key (two operations) per transaction; etcd itself takes any --max-txn-ops.
    txnOpsMax: intParam(url, 'txnOpsMax', etcdSinkDefaults.txnOpsMax, opsPerKey, 1_000_000),
    txnBytesMax: intParam(url, 'txnBytesMax', etcdSinkDefaults.txnBytesMax, 1024, 2 ** 31),
    security,
  };
}

/** A revision as a fixed-width string: string order is numeric order. */
export function revisionText(ts: bigint): string {
  return ts.toString().padStart(20, '0');
}

/** Revision markers read per page when a span is retired. */
const retirePageKeysMax = 1_000;

/** Target keys remembered as mirrored, to pick the likelier compare first. */
const knownKeysMax = 1_000_000;

/** A batch of keys could not be applied: other writers kept moving its markers meanwhile. */
export class MirrorApplyError extends Error {
  override readonly name = 'MirrorApplyError';
  readonly retryable = true;
}

/** One key's change as a transaction applies it. */
interface KeyWrite {
  /** The target key as a binary string, for the set of known keys. */
  readonly target: string;
  readonly targetKey: Buffer;
  readonly markerKey: Buffer;
  /** The event's revision as marker text (`revisionText`). */
  readonly rev: Buffer;
  readonly op: 'put' | 'delete';
  readonly value: Buffer | undefined;
  /** What the transaction expects the marker to be: absent (never mirrored) or older. */
  expect: 'absent' | 'older';
}

export class EtcdSink implements Sink {
  private readonly etcd: LazyEtcdClient;
  /** Keys this sink has mirrored: an update is likelier than a first write for them. */
  private readonly known = new Set<string>();
  private readonly txns: InFlightLimit;
  private readonly keysPerTxnMax: number;

  constructor(
    private readonly options: EtcdSinkOptions,
    context: SinkContext = {},
  ) {
    this.etcd = new LazyEtcdClient({ endpoints: options.endpoints, callTimeoutMs: 10_000, security: options.security, credentialsRoot: context.credentialsRoot });
    this.txns = new InFlightLimit(options.txnsInFlightMax);
    this.keysPerTxnMax = Math.floor(options.txnOpsMax / opsPerKey);
  }

  async write(_span: Span, events: readonly ChangeEvent[]): Promise<void> {
    if (events.length === 0) return;
    const client = await this.etcd.get();
    const latest = new Map<string, ChangeEvent>();
    for (const event of events) latest.set(event.key, event);
    const batches: KeyWrite[][] = [];
    let batch: KeyWrite[] = [];
    let batchBytes = 0;
    for (const event of latest.values()) {
      const write = this.keyWrite(event);
      const bytes = write.targetKey.length + write.markerKey.length * 3 + (write.value?.length ?? 0) + keyOverheadBytes;
      if (batch.length > 0 && (batch.length >= this.keysPerTxnMax || batchBytes + bytes > this.options.txnBytesMax)) {
        batches.push(batch);
        batch = [];
        batchBytes = 0;
      }
      batch.push(write);
      batchBytes += bytes;
    }
    batches.push(batch);
    // Every transaction settles before the write returns, failed or not: the pipeline's
    // retry of this write must not race a transaction of this one still in flight.
    const outcomes = await Promise.allSettled(batches.map((b) => this.txns.run(() => this.apply(client, b))));
    const failed = outcomes.find((o): o is PromiseRejectedResult => o.status === 'rejected');
    if (failed !== undefined) throw failed.reason;
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
      const outcomes = await Promise.allSettled(
        stale.map((kv) =>
          this.txns.run(async () => {
            const target = Buffer.from(kv.key.toString('latin1').slice(mirrorRevisionsPrefix.length), 'latin1');
            await client.if(kv.key, 'Value', '==', kv.value).then(client.delete().key(target), client.put(kv.key).value(rev)).commit();
          }),
        ),
      );
      const failed = outcomes.find((o): o is PromiseRejectedResult => o.status === 'rejected');
      if (failed !== undefined) throw failed.reason;
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

  private keyWrite(event: ChangeEvent): KeyWrite {
    const target = this.options.targetPrefix + event.key;
    return {
      target,
      targetKey: Buffer.from(target, 'latin1'),
      markerKey: Buffer.from(mirrorRevisionsPrefix + target, 'latin1'),
      rev: Buffer.from(revisionText(event.ts), 'latin1'),
      op: event.op,
      value: event.op === 'put' ? Buffer.from(event.value ?? '', 'latin1') : undefined,
      expect: this.known.has(target) ? 'older' : 'absent',
    };
  }

  /**
   * Applies a batch of keys, each only over an older marker or where it has none, in
   * transactions of the keys still behind. A failed transaction changed nothing and read
   * every marker of the batch at its revision: a key at or past its event is done (a
   * newer write got there first: nothing goes backwards), and each other key's compare
   * is set to what its marker is, for the next try. Two writers of one key (a replay
   * racing the new primary) may keep failing each other's compares; after
   * `applyAttemptsMax` tries the write fails and the pipeline retries it.
   */
  private async apply(client: Etcd3, batch: readonly KeyWrite[]): Promise<void> {
    let pending = batch;
    for (let attempt = 0; attempt < applyAttemptsMax; attempt++) {
      const success: IRequestOp[] = [];
      for (const w of pending) {
        success.push(w.op === 'delete' ? { request_delete_range: { key: w.targetKey } } : { request_put: { key: w.targetKey, value: w.value as Buffer } });
        success.push({ request_put: { key: w.markerKey, value: w.rev } });
      }
      const response = await client.kv.txn({
        compare: pending.map((w) => (w.expect === 'absent' ? { key: w.markerKey, target: 'Version', result: 'Equal', version: 0 } : { key: w.markerKey, target: 'Value', result: 'Less', value: w.rev })),
        success,
        failure: pending.map((w) => ({ request_range: { key: w.markerKey } })),
      });
      if (response.succeeded) {
        for (const w of pending) this.remember(w.target);
        return;
      }
      const behind: KeyWrite[] = [];
      pending.forEach((w, i) => {
        const marker = response.responses[i]?.response_range?.kvs[0];
        if (marker === undefined) {
          w.expect = 'absent';
          behind.push(w);
        } else if (Buffer.compare(marker.value, w.rev) < 0) {
          w.expect = 'older';
          behind.push(w);
        } else {
          this.remember(w.target);
        }
      });
      if (behind.length === 0) return;
      pending = behind;
    }
    throw new MirrorApplyError(`could not apply ${pending.length} keys (the first ${JSON.stringify(pending[0]?.target)}) after ${applyAttemptsMax} transactions: their markers kept moving`);
  }
}

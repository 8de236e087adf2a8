/**
 * The backfill records of a changefeed as the API shows them, read from etcd at most
 * once per `maxAgeMs` per changefeed and shared by every request meanwhile.
 *
 * Why a bounded, cached read and not counters: the records are written by the captures
 * (one per span, fenced, see src/pipeline/backfill.ts), not by the owner, so counters in
 * the owner would need a watch on every record and would be rebuilt by a full read after
 * each owner change anyway. Before, every `GET /changefeeds/{id}` and every page of
 * `GET /spans` read and parsed all of them (a million at a million spans), in one
 * response. Now the read happens only while someone asks, at most every `maxAgeMs`, in
 * etcd pages of `pageKeysMax` keys (the event loop runs between pages), and the answer
 * says how old it is (`readAgeMs`).
 */
import type { Etcd3 } from 'etcd3';
import type { BackfillRecord } from '../pipeline/backfill.ts';
import { isOfGeneration, spanKeyOfBackfillKey, tableOfSpanKey } from '../pipeline/backfill.ts';
import type { ChangefeedInfo } from '../server/changefeed-info.ts';

/** The bounds of the backfill read. */
export interface BackfillProgressLimits {
  /** A read younger than this is answered from memory. */
  readonly maxAgeMs: number;
  /** Keys per etcd range request. */
  readonly pageKeysMax: number;
}

export const backfillProgressDefaults: BackfillProgressLimits = { maxAgeMs: 2_000, pageKeysMax: 5_000 };

/**
 * A read nobody asked about for this many `maxAgeMs` is dropped: at a million spans one
 * changefeed's records are a large map, and a removed changefeed must not keep its own.
 */
export const backfillProgressKeptAges = 30;

/** One read: the records of each table's current snapshot, by span key. */
export interface BackfillSnapshot {
  readonly records: ReadonlyMap<string, BackfillRecord>;
  /** `Date.now()` when the read finished. */
  readonly readAtMs: number;
}

interface Entry {
  /** The tables' snapshot revisions the read was for: another generation reads again. */
  readonly generation: string;
  snapshot: BackfillSnapshot | undefined;
  reading: Promise<BackfillSnapshot> | undefined;
}

export class BackfillProgressCache {
  private readonly entries = new Map<string, Entry>();

  constructor(
    private readonly client: () => Etcd3,
    private readonly prefixOf: (id: string) => string,
    private readonly limits: BackfillProgressLimits = backfillProgressDefaults,
  ) {}

  /** The records of a changefeed (undefined when it backfills nothing), at most `maxAgeMs` old. */
  async get(info: ChangefeedInfo, nowMs = Date.now()): Promise<BackfillSnapshot | undefined> {
    this.evict(nowMs);
    if (!info.tables.some((t) => t.backfillTs !== undefined)) {
      this.entries.delete(info.id);
      return undefined;
    }
    const generation = JSON.stringify(info.tables.map((t) => [t.name, t.backfillTs ?? null]));
    let entry = this.entries.get(info.id);
    if (entry === undefined || entry.generation !== generation) {
      entry = { generation, snapshot: undefined, reading: undefined };
      this.entries.set(info.id, entry);
    }
    if (entry.snapshot !== undefined && nowMs - entry.snapshot.readAtMs < this.limits.maxAgeMs) return entry.snapshot;
    if (entry.reading === undefined) {
      const current = entry;
      current.reading = this.read(info).then(
        (snapshot) => {
          current.snapshot = snapshot;
          current.reading = undefined;
          return snapshot;
        },
        (error: unknown) => {
          current.reading = undefined;
          throw error;
        },
      );
    }
    return entry.reading;
  }

  /** Forgets a changefeed (removed). */
  forget(id: string): void {
    this.entries.delete(id);
  }

  /** Changefeeds read into memory, for tests. */
  get size(): number {
    return this.entries.size;
  }

  /** Drops reads older than {@link backfillProgressKeptAges} ages: O(changefeeds read). */
  private evict(nowMs: number): void {
    const keptMs = this.limits.maxAgeMs * backfillProgressKeptAges;
    for (const [id, entry] of this.entries) {
      if (entry.reading === undefined && entry.snapshot !== undefined && nowMs - entry.snapshot.readAtMs > keptMs) this.entries.delete(id);
    }
  }

  private async read(info: ChangefeedInfo): Promise<BackfillSnapshot> {
    const snapshots = new Map(info.tables.map((t) => [t.name, t.backfillTs]));
    const prefix = this.prefixOf(info.id);
    const end = Buffer.from(prefix, 'utf8');
    end[end.length - 1] = (end[end.length - 1] as number) + 1;
    let start = Buffer.from(prefix, 'utf8');
    const records = new Map<string, BackfillRecord>();
    for (;;) {
      const response = await this.client().getAll().inRange({ start, end }).limit(this.limits.pageKeysMax).exec();
      for (const kv of response.kvs) {
        const span = spanKeyOfBackfillKey(prefix, kv.key.toString('utf8'));
        const record = JSON.parse(kv.value.toString('utf8')) as BackfillRecord;
        if (isOfGeneration(record, snapshots.get(tableOfSpanKey(span)))) records.set(span, record);
      }
      const last = response.kvs.at(-1);
      if (!response.more || last === undefined) return { records, readAtMs: Date.now() };
      start = Buffer.concat([last.key, Buffer.from([0])]);
    }
  }
}

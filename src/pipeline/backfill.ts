/**
 * Backfill (initial scan) bookkeeping: per span, the snapshot revision, the last key
 * already written (the resume token), and progress. Stored in etcd under
 * `/changefeeds/<id>/backfill/<span>` by whichever capture runs the span, after every
 * page it flushed; a capture that takes the span over (after a crash or a move) resumes
 * from the token instead of from the beginning. Tokens only move forward; a late write
 * of an older token by a capture that lost the span only costs pages written again
 * (every sink is idempotent).
 */
import type { Etcd3 } from 'etcd3';
import type { Span } from '../core/span.ts';
import { spanKey } from '../core/span.ts';

/** What is stored per span. Keys are base64 (binary-safe). */
export interface BackfillRecord {
  /** The revision whose state the span copies. */
  readonly snapshotTs: string;
  /**
   * The table's backfill revision this record belongs to (absent in older records: then
   * `snapshotTs`). A table backfilled again (resume with backfill) starts a new one.
   */
  readonly generation?: string;
  readonly afterKeyBase64?: string;
  readonly keysDone: number;
  readonly keysTotal: number;
  readonly done: boolean;
}

/** Where backfill records live. */
export interface BackfillStore {
  load(span: Span): Promise<BackfillRecord | undefined>;
  save(span: Span, record: BackfillRecord): Promise<void>;
}

/** Bounds and retries of backfill. */
export interface BackfillLimits {
  /** Keys read and written per page. */
  readonly pageKeysMax: number;
  /** Spans of one changefeed backfilling at once on one capture. */
  readonly spansInFlightMax: number;
  /** Tries of one page before the changefeed fails. */
  readonly pageTriesMax: number;
  readonly retryBackoffMs: number;
}

export const backfillDefaults: BackfillLimits = { pageKeysMax: 1_000, spansInFlightMax: 4, pageTriesMax: 5, retryBackoffMs: 100 };

/** The etcd key of a span's record under `prefix`. */
export function backfillKey(prefix: string, span: Span): string {
  return prefix + Buffer.from(spanKey(span), 'latin1').toString('hex');
}

/** The prefix of every record of one table's spans under `prefix` (span keys start with the table). */
export function backfillTablePrefix(prefix: string, table: string): string {
  return prefix + Buffer.from(`${table}\u0000`, 'latin1').toString('hex');
}

export class EtcdBackfillStore implements BackfillStore {
  constructor(
    private readonly client: Etcd3,
    private readonly prefix: string,
  ) {}

  async load(span: Span): Promise<BackfillRecord | undefined> {
    const value = await this.client.get(backfillKey(this.prefix, span)).string();
    return value === null ? undefined : (JSON.parse(value) as BackfillRecord);
  }

  async save(span: Span, record: BackfillRecord): Promise<void> {
    await this.client.put(backfillKey(this.prefix, span)).value(JSON.stringify(record)).exec();
  }
}

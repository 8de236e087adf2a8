/**
 * Backfill (initial scan) bookkeeping: per span, the snapshot revision, the last key
 * already written (the resume token), and progress. Stored in etcd under
 * `/changefeeds/<id>/backfill/<span>` by whichever capture runs the span, after every
 * page it flushed; a capture that takes the span over (after a crash or a move) resumes
 * from the token instead of from the beginning. Tokens only move forward: a late write
 * of an older token by a capture that lost the span (its save was in flight when it
 * stopped) is dropped by the store ({@link supersedes}), so a reader never sees progress
 * go back; every stored token names pages some writer flushed.
 */
import type { Etcd3 } from 'etcd3';
import type { Span } from '../core/span.ts';
import { spanKey } from '../core/span.ts';
import type { BackfillProgress } from '../agent/span-pipeline.ts';

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
  /** An incremental backfill's lower bound (only keys modified after it were copied). */
  readonly sinceTs?: string;
  /** When the backfill of this span started and when its last page was copied (ms since the epoch). */
  readonly startedAtMs?: number;
  readonly finishedAtMs?: number;
}

/** Where backfill records live. */
export interface BackfillStore {
  load(span: Span): Promise<BackfillRecord | undefined>;
  save(span: Span, record: BackfillRecord): Promise<void>;
}

/**
 * Bounds of backfill. A failed page is a failed pipeline step: retried in place with the
 * pipeline's backoff, from its resume token, then given back like any other step.
 */
export interface BackfillLimits {
  /** Keys read and written per page. */
  readonly pageKeysMax: number;
  /** Spans of one changefeed backfilling at once on one capture. */
  readonly spansInFlightMax: number;
}

export const backfillDefaults: BackfillLimits = { pageKeysMax: 1_000, spansInFlightMax: 4 };

/**
 * The key range one page of an incremental backfill retires: from just past the page's
 * lower bound (`afterKey`, or the span's start on the first page) through its last key,
 * or to the span's end on the last page. Keys in that range the snapshot no longer has
 * were deleted upstream; the page's own keys are kept (unchanged ones were not copied).
 * The one definition: the pipeline runner performs it and the simulator checks it.
 */
export function incrementalRetireRange(span: Span, afterKey: string | undefined, lastKey: string | undefined, lastPage: boolean): { start: string; end: string } {
  const start = afterKey === undefined ? span.start : `${afterKey}\u0000`;
  const end = lastPage || lastKey === undefined ? span.end : `${lastKey}\u0000`;
  return { start, end };
}

/**
 * The backfill generation a record belongs to: the table's backfill revision when the
 * record was written (`generation`; records older than that field carry only their
 * `snapshotTs`, which was the generation then). A table backfilled again (resume with
 * backfill) starts a new generation, and records of other generations do not count.
 * The one definition of the rule: the pipelines, the API and the verifier use it.
 */
export function recordGeneration(record: BackfillRecord): string {
  return record.generation ?? record.snapshotTs;
}

/** True when `record` belongs to the table's current backfill `generation` (a decimal revision). */
export function isOfGeneration(record: BackfillRecord, generation: string | undefined): boolean {
  return generation !== undefined && recordGeneration(record) === generation;
}

/** The span key a record's etcd key under `prefix` names (the inverse of {@link backfillKey}). */
export function spanKeyOfBackfillKey(prefix: string, key: string): string {
  return Buffer.from(key.slice(prefix.length), 'hex').toString('latin1');
}

/** The table of a span key (span keys start with the table and a NUL). */
export function tableOfSpanKey(spanKey: string): string {
  return spanKey.slice(0, spanKey.indexOf('\u0000'));
}

/** A record as the pure pipeline reads it. */
export function toBackfillProgress(record: BackfillRecord): BackfillProgress {
  return {
    generation: BigInt(recordGeneration(record)),
    snapshotTs: BigInt(record.snapshotTs),
    afterKey: record.afterKeyBase64 === undefined ? undefined : Buffer.from(record.afterKeyBase64, 'base64').toString('latin1'),
    keysDone: record.keysDone,
    keysTotal: record.keysTotal,
    done: record.done,
    sinceTs: record.sinceTs === undefined ? undefined : BigInt(record.sinceTs),
    startedAtMs: record.startedAtMs,
    finishedAtMs: record.finishedAtMs,
  };
}

/** The record the pure pipeline's progress is stored as. */
export function fromBackfillProgress(progress: BackfillProgress): BackfillRecord {
  return {
    snapshotTs: progress.snapshotTs.toString(),
    generation: progress.generation.toString(),
    ...(progress.afterKey === undefined ? {} : { afterKeyBase64: Buffer.from(progress.afterKey, 'latin1').toString('base64') }),
    keysDone: progress.keysDone,
    keysTotal: Math.max(progress.keysTotal, progress.keysDone),
    done: progress.done,
    ...(progress.sinceTs === undefined ? {} : { sinceTs: progress.sinceTs.toString() }),
    ...(progress.startedAtMs === undefined ? {} : { startedAtMs: progress.startedAtMs }),
    ...(progress.finishedAtMs === undefined ? {} : { finishedAtMs: progress.finishedAtMs }),
  };
}

/** A backfill's progress as people who run one read it: timing, rate, time left. */
export interface BackfillTiming {
  readonly startedAt: string | null;
  readonly finishedAt: string | null;
  readonly durationMs: number | null;
  readonly keysPerSecond: number | null;
  /** Estimated time left at the rate so far; null before any key is copied, 0 once done. */
  readonly etaMs: number | null;
}

/**
 * Timing of a backfill over its span records at `nowMs`: it started with its first span
 * and is finished when every span is (`done`), at its last; the rate is the keys copied
 * over the time since the start (or the whole duration once finished).
 */
export function backfillTiming(records: Iterable<BackfillRecord>, keysDone: number, keysTotal: number, done: boolean, nowMs: number): BackfillTiming {
  let started: number | undefined;
  let finished: number | undefined;
  for (const record of records) {
    if (record.startedAtMs !== undefined && (started === undefined || record.startedAtMs < started)) started = record.startedAtMs;
    if (record.finishedAtMs !== undefined && (finished === undefined || record.finishedAtMs > finished)) finished = record.finishedAtMs;
  }
  if (started === undefined) return { startedAt: null, finishedAt: null, durationMs: null, keysPerSecond: null, etaMs: done ? 0 : null };
  const end = done && finished !== undefined ? finished : nowMs;
  const durationMs = Math.max(0, end - started);
  const keysPerSecond = durationMs > 0 ? Math.round((keysDone * 1000) / durationMs) : null;
  const etaMs = done ? 0 : keysPerSecond === null || keysPerSecond === 0 ? null : Math.round(((keysTotal - keysDone) * 1000) / keysPerSecond);
  return {
    startedAt: new Date(started).toISOString(),
    finishedAt: done && finished !== undefined ? new Date(finished).toISOString() : null,
    durationMs,
    keysPerSecond,
    etaMs: etaMs === null ? null : Math.max(0, etaMs),
  };
}

/**
 * Whether `next` may replace the stored `current`: always for another generation (a
 * table backfilled again starts over); within one, only when it does not go back (fewer
 * keys, or a finished span made unfinished). The one rule of "tokens only move forward".
 */
export function supersedes(current: BackfillRecord | undefined, next: BackfillRecord): boolean {
  if (current === undefined || recordGeneration(current) !== recordGeneration(next)) return true;
  if (current.done && !next.done) return false;
  return next.keysDone >= current.keysDone;
}

/** Conflicting writers retried per save before the save fails (and its step is retried). */
export const backfillSaveAttemptsMax = 8;

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

  /** Writes `record` unless the stored one is further on; compare-and-put on its revision. */
  async save(span: Span, record: BackfillRecord): Promise<void> {
    const key = backfillKey(this.prefix, span);
    for (let attempt = 0; attempt < backfillSaveAttemptsMax; attempt++) {
      const stored = await this.client.get(key).exec();
      const kv = stored.kvs[0];
      const current = kv === undefined ? undefined : (JSON.parse(kv.value.toString()) as BackfillRecord);
      if (!supersedes(current, record)) return;
      const txn = kv === undefined ? this.client.if(key, 'Create', '==', 0) : this.client.if(key, 'Mod', '==', kv.mod_revision);
      const result = await txn.then(this.client.put(key).value(JSON.stringify(record))).commit();
      if (result.succeeded) return;
    }
    throw new Error(`backfill record of ${spanKey(span)} kept changing under ${backfillSaveAttemptsMax} attempts to save it`);
  }
}

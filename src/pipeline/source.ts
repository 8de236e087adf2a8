/**
 * Sources: where span pipelines read changes from (DESIGN.md §7).
 */
import type { QuietAnswer, QuietRequest } from '../agent/quiet-spans.ts';
import type { Span, TableRange } from '../core/span.ts';
import type { BackfillLimits } from './backfill.ts';

/** One change of one key. Keys and values are binary strings (one byte per code unit). */
export interface ChangeEvent {
  readonly table: string;
  readonly key: string;
  readonly value?: string;
  readonly op: 'put' | 'delete';
  readonly ts: bigint;
}

/** What a read returned: events in ts order, and how far the read got. */
export interface ReadResult {
  readonly events: readonly ChangeEvent[];
  /** Every event of the span with ts <= this was returned (by this or earlier reads). */
  readonly readUpToTs: bigint;
}

/** One page of a snapshot read. */
export interface SnapshotPage {
  /**
   * The keys of the page as puts, each with ts = the revision that last changed it; for
   * an incremental read only those changed after its `sinceTs`.
   */
  readonly events: readonly ChangeEvent[];
  /** Where the next page starts (exclusive), or undefined after the last page. */
  readonly nextAfterKey: string | undefined;
  /** Every key of the page, changed or not (an incremental read only). */
  readonly keys?: readonly string[];
}

/** A source that can read a consistent snapshot for backfill (initial scan). */
export interface SnapshotSource {
  /** Backfill bounds the source's URI asked for, over the defaults. */
  readonly backfillLimits?: Partial<BackfillLimits>;
  /**
   * Keys of `span` at `atTs` after `afterKey` (exclusive; '' = from the start), at most
   * `limit`. With `sinceTs` (an incremental backfill) the values of only the keys
   * modified after it are read, and the page lists every key in `keys`.
   */
  snapshot(span: Span, atTs: bigint, afterKey: string | undefined, limit: number, sinceTs?: bigint): Promise<SnapshotPage>;
  /** How many keys `span` holds at `atTs`. */
  countKeys(span: Span, atTs: bigint): Promise<number>;
}

/** What a source is opened with besides its URI. */
export interface SourceContext {
  /** Files the URI names (`ca`, `cert`, `key`, `passwordFile`) must lie under it; undefined: the URI may name none. */
  readonly credentialsRoot?: string | undefined;
  /** The changefeed's span count, when the opener knows it (datagen spreads `totalRate` over it). */
  readonly spanCount?: number | undefined;
  /** The changefeed's tables, when the opener knows them (the etcd source watches whole tables). */
  readonly tables?: readonly TableRange[] | undefined;
}

/** How a source reads upstream, for metrics (the etcd source: its watchers). */
export interface SourceStats {
  /** Upstream watchers open: shared by a table's spans, and private catch-ups. */
  readonly watchers: { readonly group: number; readonly catchUp: number };
  /** Watchers created since the source opened (re-creations included). */
  readonly watchersCreated: number;
  /** Times a span's buffer filled and it left its watcher, since the source opened. */
  readonly overflows: number;
  /** Of those, the times the source's whole buffer was past its bound and cut the span's. */
  readonly sheds: number;
  /** Bytes buffered over every span now: keys, values and a fixed overhead per event. */
  readonly bufferedBytes: number;
  /** Times a span caught up on a private watcher moved into its table's group. */
  readonly handOvers: number;
  /** Spans read. */
  readonly spans: number;
  /** Spans waiting for a catch-up watcher. */
  readonly spansQueued: number;
  /** Groups (tables) read. */
  readonly groups: number;
}

/** A source of changes for spans. */
export interface Source {
  /** Present when the source can backfill. */
  readonly snapshots?: SnapshotSource;
  /** The highest ts up to which the span's history after `afterTs` is complete. */
  resolvedTs(span: Span, afterTs: bigint): Promise<bigint>;
  /**
   * Events with afterTs < ts <= uptoTs, in ts order, at most `limit` of them. A read may
   * consume what it returns (the etcd source drops them from its buffer): a caller that
   * could not write them calls `release` before it reads from `afterTs` again.
   */
  read(span: Span, afterTs: bigint, uptoTs: bigint, limit: number): Promise<ReadResult>;
  /**
   * For each request, how far past its `afterTs` the span's history is complete with no
   * event in it, and whether an event follows (see src/agent/quiet-spans.ts): one call
   * moves thousands of idle spans on. Read-only; absent when the source cannot tell
   * (every span then takes steps).
   */
  quietUpTo?(requests: readonly QuietRequest[]): Promise<readonly QuietAnswer[]>;
  /** The span is no longer read here (or is read again from its position): free what reading it holds. */
  release?(span: Span): void;
  /** How the source reads upstream now, when it can tell. */
  stats?(): SourceStats;
  /** Where a changefeed that starts `now` begins. */
  currentTs(): Promise<bigint>;
  /** Where a changefeed that starts `earliest` begins (default: `currentTs`). */
  earliestTs?(): Promise<bigint>;
  /**
   * Up to `count - 1` keys that cut the table's range into spans holding about as many of
   * its keys each, as of `atTs` (fewer for a table with few keys). Absent for a source
   * whose keys spread evenly over the raw bytes anyway (datagen).
   */
  sampleBoundaries?(range: TableRange, count: number, atTs: bigint): Promise<string[]>;
  close(): Promise<void>;
}

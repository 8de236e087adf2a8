/**
 * Sinks: where span pipelines write (DESIGN.md §7). A checkpoint may pass an event only
 * once `flush` has returned for a position at or after it.
 */
import type { Span } from '../core/span.ts';
import type { Logger } from '../log.ts';
import type { ChangeEvent } from './source.ts';

/** What the host of a sink (a capture) gives it when it opens it. */
export interface SinkContext {
  readonly log?: Logger;
  /** Files the file sink's retention deleted. */
  readonly filesRetired?: (count: number) => void;
  /** The file sink's `--file-sink-root`: every table directory it makes is checked to be under it. */
  readonly fileSinkRoot?: string;
  /** Files the URI names (`ca`, `cert`, `key`, `passwordFile`) must lie under it; undefined: the URI may name none. */
  readonly credentialsRoot?: string | undefined;
}

/** Part of a span to retire: keys in [start, end) ('' end: the span's end), except `keep`. */
export interface RetireScope {
  readonly start: string;
  readonly end: string;
  readonly keep: ReadonlySet<string>;
}

export interface Sink {
  write(span: Span, events: readonly ChangeEvent[]): Promise<void>;
  /** Resolves once everything written for `span` up to `uptoTs` is durable. */
  flush(span: Span, uptoTs: bigint): Promise<void>;
  /**
   * Removes every key of `span` whose state in the sink was set before `beforeTs`. A
   * backfill at snapshot revision R writes every key it copies stamped R, then retires
   * the span before R: what is left older is a key the upstream no longer has (deleted
   * while the changefeed could not see it, e.g. behind a compaction). Idempotent, never
   * goes backwards (a key written at or after `beforeTs` is kept), durable on return.
   *
   * With `scope` only its key range of the span is retired, and its `keep` keys stay
   * whatever their ts: an incremental backfill copies only the keys modified since its
   * lower bound and retires page by page, keeping the page's unchanged keys (the sink
   * already holds them).
   */
  retire(span: Span, beforeTs: bigint, scope?: RetireScope): Promise<void>;
  /**
   * The changefeed's persisted checkpoint, each time the host reads it: every event at or
   * below it is durable in the sink, over all spans. A sink that deletes old data (the
   * file sink's retention) never deletes anything above it.
   */
  observeCheckpoint?(checkpointTs: bigint): void;
  close(): Promise<void>;
}

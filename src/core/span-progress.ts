/**
 * Per-span progress as the owner knows it, kept apart from scheduling state: what each
 * capture last said about the spans it is primary for (checkpoint, resolved-ts, events a
 * second) and when, plus each capture's K slowest spans.
 *
 * Captures do not send every span's progress on every report (a million spans would make
 * every report a million entries). Each report carries the capture's K slowest primaries
 * (lowest checkpoint first) and a bounded round-robin slice of the others, so every span
 * is refreshed within `primaries / slice` reports, and the slowest are always current.
 * Nothing here decides anything the scheduler or the watermark depends on: the
 * changefeed's checkpoint is still computed from the captures' watermarks.
 *
 * Pure: the owner passes the time in (ms) with each report.
 */
import type { CaptureId, ProgressReport, SpanProgress } from './messages.ts';
import type { Span } from './span.ts';
import { spanKey } from './span.ts';

/** One span's progress as last reported. */
export interface SpanProgressEntry {
  readonly span: Span;
  readonly captureId: CaptureId;
  readonly checkpointTs: bigint;
  readonly resolvedTs: bigint;
  readonly eventsPerSecond: number;
  /** When the owner received it. */
  readonly atMs: number;
}

export class SpanProgressBook {
  private readonly entries = new Map<string, SpanProgressEntry>();
  private readonly slowestByCapture = new Map<CaptureId, readonly SpanProgressEntry[]>();

  /** How many spans have an entry. */
  get size(): number {
    return this.entries.size;
  }

  /** Takes one report's progress from `captureId`, received at `nowMs`. */
  apply(captureId: CaptureId, report: ProgressReport, nowMs: number): void {
    const slowest: SpanProgressEntry[] = [];
    for (const progress of report.slowest) slowest.push(this.put(captureId, progress, nowMs));
    this.slowestByCapture.set(captureId, slowest);
    for (const progress of report.slice) this.put(captureId, progress, nowMs);
  }

  /**
   * The progress of `span` when it was last reported by `primary` (the capture that holds
   * it now); undefined when that capture has not reported it yet (an entry from a former
   * primary says nothing about the span's current pipeline).
   */
  get(span: Span, primary: CaptureId | undefined): SpanProgressEntry | undefined {
    const entry = this.entries.get(spanKey(span));
    return entry !== undefined && entry.captureId === primary ? entry : undefined;
  }

  /**
   * The `k` slowest spans over all captures: an exact merge of the captures' own lists
   * (exact for k up to the K each capture sends), skipping entries `isCurrent` rejects
   * (a span that moved or was removed since).
   */
  slowest(k: number, isCurrent: (entry: SpanProgressEntry) => boolean): SpanProgressEntry[] {
    const merged: SpanProgressEntry[] = [];
    for (const list of this.slowestByCapture.values()) {
      for (const entry of list) {
        // The list may be older than the entry: take the latest values of the span.
        const latest = this.entries.get(spanKey(entry.span));
        if (latest !== undefined && latest.captureId === entry.captureId && isCurrent(latest)) merged.push(latest);
      }
    }
    merged.sort((a, b) => (a.checkpointTs < b.checkpointTs ? -1 : a.checkpointTs > b.checkpointTs ? 1 : spanKey(a.span) < spanKey(b.span) ? -1 : 1));
    return merged.slice(0, k);
  }

  /** Forgets a capture's list of slowest spans (it left); its entries age out as others report the spans. */
  forgetCapture(captureId: CaptureId): void {
    this.slowestByCapture.delete(captureId);
  }

  /** Keeps only the entries of spans `keep` accepts (after a table update removed spans). */
  retain(keep: (span: Span) => boolean): void {
    for (const [key, entry] of this.entries) if (!keep(entry.span)) this.entries.delete(key);
  }

  private put(captureId: CaptureId, progress: SpanProgress, nowMs: number): SpanProgressEntry {
    const entry: SpanProgressEntry = {
      span: progress.span,
      captureId,
      checkpointTs: progress.checkpointTs,
      resolvedTs: progress.resolvedTs,
      eventsPerSecond: progress.eventsPerSecond,
      atMs: nowMs,
    };
    this.entries.set(spanKey(progress.span), entry);
    return entry;
  }
}

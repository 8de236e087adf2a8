/**
 * Stall detection (issue 9): a changefeed whose checkpoint stands still while there is
 * something to flush is `stalled`, not `advancing`. A hung or failing sink, a pipeline
 * that keeps retrying, a span stuck on one capture: the checkpoint stops, the resolved-ts
 * (what the source has made available) goes on.
 *
 * Pure: time is the `nowMs` the shell passes in (any monotonic clock in ms); no I/O.
 *
 * ```
 * idle ──resolved-ts seen past an unchanged checkpoint──► behind (since now)
 * behind ──checkpoint moves──► idle (behind again from now, if the resolved-ts is still past it)
 * behind ──stallAfterMs passed──► stalled
 * stalled ──checkpoint moves, or reaches the barrier──► idle
 * ```
 *
 * "Behind" starts when the resolved-ts is first seen past the checkpoint, not when the
 * checkpoint last moved: after an hour of quiet upstream (an etcd source with no writes:
 * checkpoint and resolved equal and unchanged) one new write must not make the changefeed
 * stalled at once; it is stalled only if that write is not flushed within stallAfterMs.
 *
 * Who holds the checkpoint back ({@link findStallHolders}) is computed only while
 * stalled, from the owner's per-capture indexes: the captures whose aggregate checkpoint
 * is at the global one (O(captures)), then the spans those captures replicate whose
 * checkpoint is at it (O(spans of those captures)), listing a bounded number.
 */
import type { CaptureId, CaptureWatermark } from './messages.ts';
import type { CaptureSpans } from './replication-manager.ts';
import type { Span } from './span.ts';
import { compareSpans } from './span.ts';

/** What the detector sees each tick. */
export interface StallInput {
  readonly nowMs: number;
  /** The changefeed's global checkpoint (never goes down). */
  readonly checkpointTs: bigint;
  /** The changefeed's global resolved-ts. */
  readonly resolvedTs: bigint;
  /** The position the changefeed must not pass (target-ts): there it is done, not stalled. */
  readonly barrierTs: bigint;
}

/** The detector's answer for one tick. */
export type StallVerdict =
  | { readonly stalled: false }
  | {
      readonly stalled: true;
      /** When the checkpoint was first seen behind the resolved-ts without moving since (input clock). */
      readonly sinceMs: number;
      readonly stalledForMs: number;
    };

const notStalled: StallVerdict = { stalled: false };

/** Tracks one changefeed's checkpoint over time; one per coordinator (per run). */
export class StallDetector {
  private checkpointTs: bigint | undefined;
  /** When the resolved-ts was first seen past the current checkpoint; undefined: not behind. */
  private behindSinceMs: number | undefined;
  private lastNowMs = Number.NEGATIVE_INFINITY;

  /** @param stallAfterMs how long the checkpoint may stay behind without moving; 0 turns detection off. */
  constructor(readonly stallAfterMs: number) {}

  /** Feeds one tick's watermark; returns whether the changefeed is stalled now. */
  observe(input: StallInput): StallVerdict {
    // A clock that goes back (it should not) must not make durations negative.
    const nowMs = Math.max(input.nowMs, this.lastNowMs);
    this.lastNowMs = nowMs;
    if (this.checkpointTs !== input.checkpointTs) {
      this.checkpointTs = input.checkpointTs;
      this.behindSinceMs = undefined;
    }
    const behind = input.resolvedTs > input.checkpointTs && input.checkpointTs < input.barrierTs;
    if (!behind) {
      this.behindSinceMs = undefined;
      return notStalled;
    }
    this.behindSinceMs ??= nowMs;
    const stalledForMs = nowMs - this.behindSinceMs;
    if (this.stallAfterMs <= 0 || stalledForMs < this.stallAfterMs) return notStalled;
    return { stalled: true, sinceMs: this.behindSinceMs, stalledForMs };
  }
}

/** A span holding the checkpoint back, with the capture that replicates it. */
export interface StallHolderSpan {
  readonly span: Span;
  readonly capture: CaptureId;
  /** Its checkpoint as the owner last heard it (at or below the global checkpoint). */
  readonly checkpointTs: bigint;
}

/** Who holds a stalled checkpoint back. */
export interface StallHolders {
  /** At most `listedMax` of them, in span order. */
  readonly spans: readonly StallHolderSpan[];
  /** All of them. */
  readonly spanCount: number;
  /** At most `listedMax` of them, sorted. */
  readonly captures: readonly CaptureId[];
  readonly captureCount: number;
}

/**
 * Finds the captures and spans at (or below) the global checkpoint. A capture holds it
 * back when its aggregate (the min over the spans it replicates as primary, current as of
 * its latest report) is there; its spans are those whose checkpoint, as the owner last
 * heard it, is there. Per-span checkpoints are refreshed only by collections, so the
 * coordinator asks the holding captures for one when a stall starts; until it arrives a
 * span that has moved on may still be counted. Cost: O(captures + spans of the holding
 * captures), and O(listedMax) memory.
 */
export function findStallHolders(
  checkpointTs: bigint,
  captures: Iterable<readonly [CaptureId, CaptureSpans, CaptureWatermark | undefined]>,
  listedMax: number,
): StallHolders {
  const holding: CaptureId[] = [];
  const listed: StallHolderSpan[] = [];
  let spanCount = 0;
  let captureCount = 0;
  for (const [capture, spans, aggregate] of captures) {
    if (spans.replicatingDigest.count === 0 || aggregate === undefined || aggregate.checkpointTs > checkpointTs) continue;
    captureCount++;
    insertBounded(holding, capture, listedMax, (a, b) => (a < b ? -1 : a > b ? 1 : 0));
    for (const set of spans.primaries.values()) {
      if (set.state !== 'replicating' || set.checkpointTs > checkpointTs) continue;
      spanCount++;
      insertBounded(listed, { span: set.span, capture, checkpointTs: set.checkpointTs }, listedMax, (a, b) => compareSpans(a.span, b.span));
    }
  }
  return { spans: listed, spanCount, captures: holding, captureCount };
}

/** Keeps `list` the `max` smallest items seen, sorted: O(max) per item, no full sort. */
function insertBounded<T>(list: T[], item: T, max: number, compare: (a: T, b: T) => number): void {
  if (max <= 0) return;
  const last = list[list.length - 1];
  if (list.length >= max && last !== undefined && compare(item, last) >= 0) return;
  let at = list.length;
  while (at > 0 && compare(item, list[at - 1] as T) < 0) at--;
  list.splice(at, 0, item);
  if (list.length > max) list.pop();
}

/**
 * A one-line explanation of a stall, for the API and logs. It leaves the duration out
 * (that is `stalledForMs`), so the line changes only when the holders do.
 */
export function describeStall(heldBy: StallHolders): string {
  const spans = `${heldBy.spanCount} span${heldBy.spanCount === 1 ? '' : 's'}`;
  const more = heldBy.captureCount > heldBy.captures.length ? ` and ${heldBy.captureCount - heldBy.captures.length} more` : '';
  const captures = heldBy.captureCount === 0 ? '' : ` on ${heldBy.captures.join(', ')}${more}`;
  return `the checkpoint stands still while the resolved-ts is past it; held back by ${spans}${captures}`;
}

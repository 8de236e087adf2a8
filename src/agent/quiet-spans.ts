/**
 * Bulk checks of quiet spans. A capture with 33,000 spans, most of them idle, spent its
 * time taking two calls a span (resolve, then an empty read and flush) just to move each
 * checkpoint on: with 256 calls in flight a tick, a round over every span took 13 s, and
 * that was the changefeed's checkpoint lag. A streaming span between steps with no
 * failure behind it is "quiet": instead of a step it waits in a line, and a bounded
 * batch of the line goes to the source in one call, which answers for each span how far
 * its history is complete with no event in it. There is nothing to write for those
 * events, so the checkpoint moves there without a sink call; a span with an event next
 * takes a step as before.
 *
 * It is safe because a quiet span holds nothing unwritten (a step ends with everything
 * it read flushed) and the answer covers only ts with no event of the span: the sink
 * holds every event up to the new checkpoint because there are none it lacks.
 */
import type { Span } from '../core/span.ts';

/** One span of a check: how far past `afterTs` is its history complete and empty? */
export interface QuietRequest {
  readonly span: Span;
  readonly afterTs: bigint;
}

/** A bulk check for the shell to put to the source; answered by `onQuietOutcome`. */
export interface QuietCheck {
  readonly id: number;
  readonly requests: readonly QuietRequest[];
}

/**
 * The source's answer for one span: no events in (afterTs, quietTs] and the history
 * complete up to `quietTs` (`quietTs` = afterTs when it cannot tell); `needsStep` when
 * the span should take a step: an event follows, or reading it goes on only with a call.
 */
export interface QuietAnswer {
  readonly quietTs: bigint;
  readonly needsStep: boolean;
}

/** What became of a check: one answer per request, in order, or a failure. */
export type QuietOutcome =
  | { readonly kind: 'quiet-checked'; readonly id: number; readonly answers: readonly QuietAnswer[] }
  | { readonly kind: 'failed'; readonly id: number; readonly error: string };

/** Bounds of the checks. */
export interface QuietLimits {
  /** Spans in one check; 0 turns the checks off (every span takes steps). */
  readonly quietBatchMax: number;
  /** Checks in flight at once. */
  readonly quietChecksInFlightMax: number;
  /** The least time between two checks of one span. */
  readonly quietIntervalMs: number;
}

export const quietDefaults: QuietLimits = { quietBatchMax: 4_096, quietChecksInFlightMax: 4, quietIntervalMs: 500 };

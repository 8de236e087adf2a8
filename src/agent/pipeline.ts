/**
 * What the agent asks of the span pipelines, and what they tell it back. The shell (or
 * the simulator) runs the pipelines; the agent only decides.
 */
import type { Span } from '../core/span.ts';

/** Agent -> pipelines: at most one request in flight per span (the agent queues the rest). */
export type PipelineCommand =
  /** Start reading the source strictly after `checkpointTs`, buffer, write nothing. */
  | { readonly kind: 'prepare'; readonly span: Span; readonly key: string; readonly checkpointTs: bigint }
  /** Start writing to the sink every event with ts > `checkpointTs` (re-read from there if needed). */
  | { readonly kind: 'promote'; readonly span: Span; readonly key: string; readonly checkpointTs: bigint }
  /** Stop; flush what is durable; then report `stopped` with the final checkpoint. */
  | { readonly kind: 'stop'; readonly span: Span; readonly key: string }
  /** No pipeline may write past this position. */
  | { readonly kind: 'barrier'; readonly barrierTs: bigint };

/** Pipelines -> agent, fed in by the shell; events for spans the agent forgot are ignored. */
export type PipelineEvent =
  /** The source has a resolved-ts for the span: it can be promoted. */
  | { readonly kind: 'prepared'; readonly key: string; readonly resolvedTs: bigint }
  /**
   * Flushed (checkpoint) and received (resolved) positions moved. Once a rate window was
   * measured: events and bytes written a second, and the split key of the window's key
   * sample with the distinct keys in it (`key-sample.ts`), when the sample has one.
   */
  | {
      readonly kind: 'progress';
      readonly key: string;
      readonly checkpointTs: bigint;
      readonly resolvedTs: bigint;
      readonly eventsPerSecond?: number;
      readonly bytesPerSecond?: number | undefined;
      readonly splitKey?: string | undefined;
      readonly sampleKeys?: number | undefined;
    }
  /** A stop finished; `checkpointTs` is durable in the sink. */
  | { readonly kind: 'stopped'; readonly key: string; readonly checkpointTs: bigint }
  /** A step failed and is retried in place (a sink or source outage); the span stays. */
  | { readonly kind: 'retrying'; readonly key: string; readonly error: string }
  /** A step that failed before went through: the span's outage is over. */
  | { readonly kind: 'recovered'; readonly key: string }
  /** The pipeline failed and is gone; `retryable: false` fails the changefeed. */
  | { readonly kind: 'failed'; readonly key: string; readonly error: string; readonly retryable: boolean };

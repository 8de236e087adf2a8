/**
 * Sinks: where span pipelines write (DESIGN.md §7). A checkpoint may pass an event only
 * once `flush` has returned for a position at or after it.
 */
import type { Span } from '../core/span.ts';
import type { ChangeEvent } from './source.ts';

export interface Sink {
  write(span: Span, events: readonly ChangeEvent[]): Promise<void>;
  /** Resolves once everything written for `span` up to `uptoTs` is durable. */
  flush(span: Span, uptoTs: bigint): Promise<void>;
  close(): Promise<void>;
}

/**
 * Span ids on the wire: each direction of one gRPC stream keeps a dictionary, so a span
 * travels as (table, start, end) once per stream and as a number after that (the idea of
 * HTTP/2's header compression). A capture with 300,000 spans otherwise sends their full
 * keys in every progress slice and status.
 *
 * It is safe because a gRPC stream delivers every message, in order, or breaks: the
 * receiver has learned every id the sender used before, and a broken stream starts both
 * dictionaries over (the owner re-opens it; the protocol above is level-triggered). The
 * one way to fall out of step is a message the receiver refuses (malformed, past a
 * bound) after the sender named new ids in it, so a receiver ends the stream on any
 * refused message.
 *
 * The sender assigns ids 1, 2, 3, ... in the order it first sends spans; the receiver
 * checks that order, so a sender that skips or repeats one is caught at once. When the
 * sender's dictionary is full it starts over at the next message and says so in the
 * header (`spanIdsReset`), so memory on both sides stays bounded however many spans come
 * and go on a stream.
 */
import type { Span } from '../core/span.ts';

/**
 * Ids a receiver keeps per stream, whatever its peer's setting: the protocol's bound
 * (`--rpc-span-ids-max` may be set at most to this, so no sender goes past it).
 */
export const spanIdsPerStreamLimit = 2_097_152;

/** The default for a sender's dictionary: a million spans per stream. */
export const spanIdsPerStreamDefault = 1_048_576;

/**
 * A sender's dictionary. Keyed by the span object: the owner's replication sets and the
 * capture's held spans each keep one object per span, so the same span is the same
 * object; an equal copy only costs a second id.
 */
export class SpanIdEncoder {
  private readonly ids = new Map<Span, number>();
  private resetPending = false;

  /** `max` 0: no ids, every span goes in full. */
  constructor(private readonly max: number) {
    if (!Number.isInteger(max) || max < 0 || max > spanIdsPerStreamLimit) throw new RangeError(`span ids per stream must be 0..${spanIdsPerStreamLimit}, got ${max}`);
  }

  /** Starts a message: true when the dictionary started over (the receiver must too). */
  beginMessage(): boolean {
    if (this.max > 0 && this.ids.size >= this.max) {
      this.ids.clear();
      this.resetPending = true;
    }
    const reset = this.resetPending;
    this.resetPending = false;
    return reset;
  }

  /**
   * The span's id if the receiver knows it (`known`), else the id it is given now
   * (`defined`), or 0 when the dictionary is full until the next message.
   */
  idOf(span: Span): { readonly id: number; readonly known: boolean } {
    const id = this.ids.get(span);
    if (id !== undefined) return { id, known: true };
    if (this.ids.size >= this.max) return { id: 0, known: false };
    const next = this.ids.size + 1;
    this.ids.set(span, next);
    return { id: next, known: false };
  }

  get size(): number {
    return this.ids.size;
  }
}

/** Why a receiver could not read a span id: the stream is out of step and must end. */
export class SpanIdError extends Error {
  override readonly name = 'SpanIdError';
}

/** A receiver's dictionary. */
export class SpanIdDecoder {
  private readonly spans: Span[] = [];

  /** The sender started over: forget every id. */
  reset(): void {
    this.spans.length = 0;
  }

  /** Learns `id` for `span`: it must be the next id, within the protocol's bound. */
  define(id: number, span: Span): void {
    if (id !== this.spans.length + 1) throw new SpanIdError(`span id ${id} is out of order (expected ${this.spans.length + 1})`);
    if (id > spanIdsPerStreamLimit) throw new SpanIdError(`span id ${id} is past the bound of ${spanIdsPerStreamLimit} per stream`);
    this.spans.push(span);
  }

  /** The span named by `id`. */
  spanOf(id: number): Span {
    const span = this.spans[id - 1];
    if (span === undefined) throw new SpanIdError(`span id ${id} was never defined on this stream`);
    return span;
  }

  get size(): number {
    return this.spans.length;
  }
}

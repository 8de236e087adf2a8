/**
 * The sets of a changefeed in span order (table, start, end), kept incrementally, so that
 * the API pages through a million spans without sorting them per request (issue 11).
 *
 * Adds and removals are queued (O(1)) and applied on the next read: a handful by binary
 * search and splice (one native memmove each), many at once by sorting the added ones and
 * merging them in one pass, O(n + k log k). Spans are created in table order and key order
 * (`changefeedSpans`), so even the first read after a million creations sorts runs that are
 * already in order. A read after no change costs O(log n) to find its cursor.
 */
import type { Span } from './span.ts';

/** What the index orders: anything with a span, compared by identity for removal. */
export interface Spanned {
  readonly span: Span;
}

/** Orders spans by table, then start, then end (plain string order, like the keys). */
export function compareSpans(a: Span, b: Span): number {
  if (a.table !== b.table) return a.table < b.table ? -1 : 1;
  if (a.start !== b.start) return a.start < b.start ? -1 : 1;
  if (a.end !== b.end) return a.end < b.end ? -1 : 1;
  return 0;
}

/** Up to this many queued changes are spliced in one by one; more are merged in one pass. */
export const spanOrderSpliceMax = 64;

/** Which items a page keeps; the walk stops after `scanMax` items looked at. */
export interface SpanPageQuery<T> {
  /** Start strictly after this span (a cursor); undefined: from the first. */
  readonly after?: Span | undefined;
  /** Only this table's spans (found by binary search, not by walking the others). */
  readonly table?: string | undefined;
  readonly keep?: ((item: T) => boolean) | undefined;
  readonly limit: number;
  readonly scanMax: number;
}

/** A page: the items kept, and the span to continue after (undefined: the end). */
export interface SpanPage<T> {
  readonly items: T[];
  readonly next: Span | undefined;
}

export class SpanOrder<T extends Spanned> {
  private sorted: T[] = [];
  private added: T[] = [];
  private readonly removed = new Set<T>();

  /** Items indexed, counting the queued changes. */
  get size(): number {
    return this.sorted.length + this.added.length - this.removed.size;
  }

  /** Indexes an item that is not indexed. */
  add(item: T): void {
    // An item removed and added again before a read is simply kept.
    if (this.removed.delete(item)) return;
    this.added.push(item);
  }

  /** Drops an indexed item. */
  remove(item: T): void {
    // A short queue is searched; a long one is filtered at the merge instead.
    const queued = this.added.length <= spanOrderSpliceMax ? this.added.indexOf(item) : -1;
    if (queued >= 0) this.added.splice(queued, 1);
    else this.removed.add(item);
  }

  /** One page in span order. */
  page(query: SpanPageQuery<T>): SpanPage<T> {
    this.settle();
    const sorted = this.sorted;
    let at = 0;
    if (query.table !== undefined) at = this.firstAbove({ table: query.table, start: '', end: '' }, true);
    if (query.after !== undefined) at = Math.max(at, this.firstAbove(query.after, false));
    const items: T[] = [];
    let scanned = 0;
    for (; at < sorted.length; at++) {
      const item = sorted[at] as T;
      if (query.table !== undefined && item.span.table !== query.table) return { items, next: undefined };
      if (items.length >= query.limit || scanned >= query.scanMax) return { items, next: (sorted[at - 1] as T).span };
      scanned++;
      if (query.keep === undefined || query.keep(item)) items.push(item);
    }
    return { items, next: undefined };
  }

  /** Every item in order, for tests. */
  toArray(): T[] {
    this.settle();
    return this.sorted.slice();
  }

  /** The first index whose span is above `span` (or at it, when `inclusive`). */
  private firstAbove(span: Span, inclusive: boolean): number {
    let low = 0;
    let high = this.sorted.length;
    while (low < high) {
      const mid = (low + high) >>> 1;
      const order = compareSpans((this.sorted[mid] as T).span, span);
      if (order < 0 || (order === 0 && !inclusive)) low = mid + 1;
      else high = mid;
    }
    return low;
  }

  private settle(): void {
    if (this.added.length === 0 && this.removed.size === 0) return;
    if (this.added.length + this.removed.size <= spanOrderSpliceMax) {
      for (const item of this.removed) {
        const at = this.sorted.indexOf(item, this.firstAbove(item.span, true));
        if (at >= 0) this.sorted.splice(at, 1);
      }
      for (const item of this.added) this.sorted.splice(this.firstAbove(item.span, true), 0, item);
    } else {
      const added = this.added.sort((a, b) => compareSpans(a.span, b.span));
      const merged: T[] = new Array<T>();
      let i = 0;
      let j = 0;
      const old = this.sorted;
      while (i < old.length || j < added.length) {
        const left = old[i];
        const right = added[j];
        if (left !== undefined && (right === undefined || compareSpans(left.span, right.span) <= 0)) {
          i++;
          if (!this.removed.has(left)) merged.push(left);
        } else if (right !== undefined) {
          j++;
          if (!this.removed.has(right)) merged.push(right);
        }
      }
      this.sorted = merged;
    }
    this.added = [];
    this.removed.clear();
  }
}

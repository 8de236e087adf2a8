/**
 * The owner's book of per-span progress: entries by span, taken only from the span's
 * current primary; the slowest k as an exact merge of the captures' lists, with their
 * latest values; captures and removed spans forgotten.
 */
import { describe, expect, it } from 'vitest';
import type { SpanProgress } from '../../src/core/messages.ts';
import { SpanProgressBook } from '../../src/core/span-progress.ts';
import type { Span } from '../../src/core/span.ts';

const span = (start: string): Span => ({ table: 't', start, end: `${start}~` });
const progress = (start: string, checkpointTs: bigint, eventsPerSecond = 0): SpanProgress => ({ span: span(start), checkpointTs, resolvedTs: checkpointTs + 5n, eventsPerSecond });

describe('span progress book', () => {
  it('keeps the latest report of each span, from the capture that sent it', () => {
    const book = new SpanProgressBook();
    book.apply('c1', { slowest: [progress('a', 10n)], slice: [progress('b', 20n, 7)] }, 1_000);
    expect(book.get(span('b'), 'c1')).toMatchObject({ checkpointTs: 20n, resolvedTs: 25n, eventsPerSecond: 7, atMs: 1_000 });
    // Another primary now: the old entry says nothing about it.
    expect(book.get(span('b'), 'c2')).toBeUndefined();
    book.apply('c1', { slowest: [], slice: [progress('b', 30n)] }, 2_000);
    expect(book.get(span('b'), 'c1')).toMatchObject({ checkpointTs: 30n, atMs: 2_000 });
    expect(book.size).toBe(2);
  });

  it('merges the captures\' slowest lists exactly, with the latest values, skipping spans that moved', () => {
    const book = new SpanProgressBook();
    book.apply('c1', { slowest: [progress('a', 10n), progress('c', 30n), progress('e', 50n)], slice: [] }, 0);
    book.apply('c2', { slowest: [progress('b', 20n), progress('d', 40n)], slice: [] }, 0);
    const all = () => true;
    expect(book.slowest(3, all).map((e) => e.span.start)).toEqual(['a', 'b', 'c']);
    expect(book.slowest(10, all).map((e) => e.span.start)).toEqual(['a', 'b', 'c', 'd', 'e']);
    // A slice with a newer value of a listed span counts.
    book.apply('c1', { slowest: [progress('a', 10n), progress('c', 30n), progress('e', 50n)], slice: [progress('a', 45n)] }, 1);
    expect(book.slowest(2, all).map((e) => [e.span.start, e.checkpointTs])).toEqual([['b', 20n], ['c', 30n]]);
    // Span b moved to c3 (the predicate says c2 is no longer its primary).
    expect(book.slowest(2, (e) => e.span.start !== 'b').map((e) => e.span.start)).toEqual(['c', 'd']);
    // Reported by another capture since: c2's list entry for it no longer counts.
    book.apply('c3', { slowest: [], slice: [progress('b', 60n)] }, 2);
    expect(book.slowest(10, all).map((e) => e.span.start)).toEqual(['c', 'd', 'a', 'e']);
  });

  it('forgets a capture\'s list and the spans a table update removed', () => {
    const book = new SpanProgressBook();
    book.apply('c1', { slowest: [progress('a', 10n)], slice: [progress('b', 20n)] }, 0);
    book.apply('c2', { slowest: [progress('c', 5n)], slice: [] }, 0);
    book.forgetCapture('c2');
    expect(book.slowest(5, () => true).map((e) => e.span.start)).toEqual(['a']);
    book.retain((s) => s.start !== 'a');
    expect(book.get(span('a'), 'c1')).toBeUndefined();
    expect(book.slowest(5, () => true)).toEqual([]);
    expect(book.get(span('b'), 'c1')).toBeDefined();
  });
});

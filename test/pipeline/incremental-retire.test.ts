/**
 * The range one page of an incremental backfill retires (the runner performs it, the
 * simulator checks the sink it leaves).
 */
import { describe, expect, it } from 'vitest';
import { incrementalRetireRange } from '../../src/pipeline/backfill.ts';

const span = { table: 't', start: 'b', end: 'm' };

describe('incremental retire range', () => {
  it('runs from the span start through the last key on a first page that is not the last', () => {
    expect(incrementalRetireRange(span, undefined, 'd', false)).toEqual({ start: 'b', end: 'd\u0000' });
  });
  it('runs from just past the lower bound to the span end on the last page', () => {
    expect(incrementalRetireRange(span, 'd', 'k', true)).toEqual({ start: 'd\u0000', end: 'm' });
  });
  it('covers the whole span for a single page, and to the end of an unbounded span', () => {
    expect(incrementalRetireRange(span, undefined, 'k', true)).toEqual({ start: 'b', end: 'm' });
    expect(incrementalRetireRange({ table: 't', start: '', end: '' }, 'x', undefined, false)).toEqual({ start: 'x\u0000', end: '' });
  });
});

/**
 * When spans that keep failing fail their changefeed: a window of failures without the
 * checkpoint moving; progress or a quiet spell ends it.
 */
import { describe, expect, it } from 'vitest';
import { FailureWindow } from '../../src/core/failure-window.ts';

const limits = { windowTicks: 10, quietTicks: 3 };

describe('failure window', () => {
  it('expires after windowTicks of failures with no progress, with the last error', () => {
    const window = new FailureWindow(limits);
    expect(window.observe({ tick: 1, failingSpans: 0, error: undefined, checkpointTs: 100n })).toEqual({ kind: 'ok' });
    expect(window.observe({ tick: 2, failingSpans: 2, error: 'sink down', checkpointTs: 100n })).toEqual({ kind: 'failing', forTicks: 0, error: 'sink down' });
    expect(window.observe({ tick: 8, failingSpans: 1, error: 'sink still down', checkpointTs: 100n })).toEqual({ kind: 'failing', forTicks: 6, error: 'sink still down' });
    // A moment without a failing span (a span given back, placed again) does not end it.
    expect(window.observe({ tick: 10, failingSpans: 0, error: undefined, checkpointTs: 100n })).toEqual({ kind: 'failing', forTicks: 8, error: 'sink still down' });
    expect(window.observe({ tick: 12, failingSpans: 1, error: undefined, checkpointTs: 100n })).toEqual({ kind: 'expired', forTicks: 10, error: 'sink still down' });
  });

  it('starts again when the checkpoint moves', () => {
    const window = new FailureWindow(limits);
    window.observe({ tick: 1, failingSpans: 1, error: 'e', checkpointTs: 100n });
    expect(window.observe({ tick: 9, failingSpans: 1, error: 'e', checkpointTs: 100n })).toMatchObject({ kind: 'failing', forTicks: 8 });
    // Progress: the window counts from here, at the new checkpoint.
    expect(window.observe({ tick: 10, failingSpans: 1, error: 'e', checkpointTs: 120n })).toMatchObject({ kind: 'failing', forTicks: 0 });
    expect(window.observe({ tick: 19, failingSpans: 1, error: 'e', checkpointTs: 120n })).toMatchObject({ kind: 'failing', forTicks: 9 });
    expect(window.observe({ tick: 20, failingSpans: 1, error: 'e', checkpointTs: 120n })).toMatchObject({ kind: 'expired', forTicks: 10 });
  });

  it('ends after quietTicks without a failing span, so a later outage starts afresh', () => {
    const window = new FailureWindow(limits);
    window.observe({ tick: 1, failingSpans: 1, error: 'e', checkpointTs: 100n });
    expect(window.observe({ tick: 3, failingSpans: 0, error: undefined, checkpointTs: 100n })).toMatchObject({ kind: 'failing' });
    expect(window.observe({ tick: 4, failingSpans: 0, error: undefined, checkpointTs: 100n })).toEqual({ kind: 'ok' });
    // An upstream gone quiet (checkpoint still) and a new outage: counted from its start.
    expect(window.observe({ tick: 50, failingSpans: 1, error: 'again', checkpointTs: 100n })).toEqual({ kind: 'failing', forTicks: 0, error: 'again' });
  });
});

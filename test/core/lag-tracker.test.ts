import { describe, expect, it } from 'vitest';
import { LagTracker } from '../../src/server/lag-tracker.ts';

describe('lag tracker (revision timestamps)', () => {
  it('measures the checkpoint lag from when the resolved-ts reached it', () => {
    const lag = new LagTracker(4);
    expect(lag.checkpointLagMs(5n, 1_000)).toBeUndefined();
    lag.observeResolved(10n, 1_000);
    lag.observeResolved(10n, 1_500); // not an increase: ignored
    lag.observeResolved(20n, 2_000);
    lag.observeResolved(30n, 3_000);
    expect(lag.checkpointLagMs(15n, 3_500)).toBe(1_500);
    expect(lag.checkpointLagMs(20n, 3_500)).toBe(1_500);
    expect(lag.checkpointLagMs(30n, 3_500)).toBe(500);
    expect(lag.checkpointLagMs(40n, 3_500)).toBe(0);
    expect(lag.resolvedLagMs(3_500)).toBe(500);
  });

  it('keeps a bounded number of samples, oldest dropped first', () => {
    const lag = new LagTracker(2);
    lag.observeResolved(1n, 100);
    lag.observeResolved(2n, 200);
    lag.observeResolved(3n, 300);
    // The sample for 1 is gone: the oldest kept one (2, at 200) answers for it.
    expect(lag.checkpointLagMs(1n, 1_000)).toBe(800);
  });
});

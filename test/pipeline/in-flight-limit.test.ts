/**
 * The sinks' shared bound on calls in flight: never more than `max` run, waiters start in
 * order as slots free, and a failed call frees its slot too.
 */
import { describe, expect, it } from 'vitest';
import { InFlightLimit } from '../../src/pipeline/sinks/in-flight-limit.ts';

describe('InFlightLimit', () => {
  it('runs at most max calls at once, the rest in order as slots free', async () => {
    const limit = new InFlightLimit(2);
    const started: number[] = [];
    const finish: (() => void)[] = [];
    let peak = 0;
    const calls = [0, 1, 2, 3, 4].map((i) =>
      limit.run(async () => {
        started.push(i);
        peak = Math.max(peak, limit.inFlight);
        await new Promise<void>((resolve) => finish.push(resolve));
        return i;
      }),
    );
    await new Promise((resolve) => setImmediate(resolve));
    expect(started).toEqual([0, 1]);
    finish.shift()?.();
    await new Promise((resolve) => setImmediate(resolve));
    expect(started).toEqual([0, 1, 2]);
    while (finish.length > 0 || started.length < 5) {
      finish.shift()?.();
      await new Promise((resolve) => setImmediate(resolve));
    }
    expect(await Promise.all(calls)).toEqual([0, 1, 2, 3, 4]);
    expect(peak).toBe(2);
    expect(limit.inFlight).toBe(0);
  });

  it('frees the slot of a call that fails', async () => {
    const limit = new InFlightLimit(1);
    await expect(limit.run(() => Promise.reject(new Error('boom')))).rejects.toThrow('boom');
    expect(await limit.run(async () => 'next')).toBe('next');
    expect(limit.inFlight).toBe(0);
  });

  it('refuses a bound that is not a positive integer', () => {
    expect(() => new InFlightLimit(0)).toThrow(RangeError);
    expect(() => new InFlightLimit(1.5)).toThrow(RangeError);
  });
});

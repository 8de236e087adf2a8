/**
 * The event-loop delay monitor: a blocked loop shows in the closed window's figures, the
 * next window starts from nothing, and the metrics export the three quantiles.
 */
import { describe, expect, it } from 'vitest';
import { EventLoopDelayMonitor } from '../../src/server/event-loop-delay.ts';
import { Metrics } from '../../src/server/metrics.ts';
import { parseServerConfig } from '../../src/server/server-config.ts';

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

function block(ms: number): void {
  const until = Date.now() + ms;
  while (Date.now() < until) {
    // Busy on purpose: the loop cannot run its timers.
  }
}

describe('EventLoopDelayMonitor', () => {
  it('shows a blocked loop in the closed window, and the next window starts empty', async () => {
    const monitor = new EventLoopDelayMonitor(600_000, 5);
    try {
      await sleep(30);
      block(120);
      await sleep(30);
      monitor.rotate();
      const blocked = monitor.current();
      expect(blocked.windowMs).toBe(600_000);
      expect(blocked.maxMs).toBeGreaterThanOrEqual(100);
      expect(blocked.p99Ms).toBeGreaterThanOrEqual(blocked.p50Ms);
      expect(blocked.maxMs).toBeGreaterThanOrEqual(blocked.p99Ms);
      // Nothing sampled since the rotation: the window reads 0, not NaN or a sentinel.
      monitor.rotate();
      expect(monitor.current().maxMs).toBeLessThan(100);
    } finally {
      monitor.stop();
    }
  });

  it('is exported as spanfeed_event_loop_delay_seconds with quantiles 0.5, 0.99 and 1', async () => {
    const metrics = new Metrics({ changefeeds: () => [], spansHeld: () => new Map(), eventLoopDelay: () => ({ p50Ms: 1.5, p99Ms: 20, maxMs: 250, windowMs: 10_000 }) });
    const text = await metrics.registry.metrics();
    expect(text).toContain('spanfeed_event_loop_delay_seconds{quantile="0.5"} 0.0015');
    expect(text).toContain('spanfeed_event_loop_delay_seconds{quantile="0.99"} 0.02');
    expect(text).toContain('spanfeed_event_loop_delay_seconds{quantile="1"} 0.25');
  });

  it('takes its window from --event-loop-delay-window-ms (or SPANFEED_EVENT_LOOP_DELAY_WINDOW_MS), 1000-600000, default 10000', () => {
    expect(parseServerConfig([], {}).eventLoopDelayWindowMs).toBe(10_000);
    expect(parseServerConfig(['--event-loop-delay-window-ms', '2000'], {}).eventLoopDelayWindowMs).toBe(2_000);
    expect(parseServerConfig([], { SPANFEED_EVENT_LOOP_DELAY_WINDOW_MS: '3000' }).eventLoopDelayWindowMs).toBe(3_000);
    expect(() => parseServerConfig(['--event-loop-delay-window-ms', '5'], {})).toThrow('--event-loop-delay-window-ms must be an integer from 1000 to 600000, got "5"');
  });
});

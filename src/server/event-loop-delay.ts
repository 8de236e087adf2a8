/**
 * The event-loop delay of this process, measured by `perf_hooks.monitorEventLoopDelay`
 * (a libuv timer that notes how late it fires), in rolling windows: a timer closes a
 * window every `windowMs` (default 10 s) and keeps its p50, p99 and max; the metrics and
 * GET /api/v1/status show the last closed window. Windows are rotated by the clock, not
 * by scrapes, so several scrapers (or the API) see the same figures and no reader
 * resets what another one reads. Lease keepalives and session checks run on this loop:
 * a p99 near the lease TTL means the session is at risk (issue 11).
 */
import { monitorEventLoopDelay } from 'node:perf_hooks';
import type { IntervalHistogram } from 'node:perf_hooks';

/** One window's figures in milliseconds. */
export interface EventLoopDelay {
  readonly p50Ms: number;
  readonly p99Ms: number;
  readonly maxMs: number;
  /** The window's length: figures are over the last closed window this long. */
  readonly windowMs: number;
}

/** The default window; the sampling resolution of the monitor. */
export const eventLoopDelayDefaults = { windowMs: 10_000, resolutionMs: 10 } as const;

export class EventLoopDelayMonitor {
  private readonly histogram: IntervalHistogram;
  private readonly timer: NodeJS.Timeout;
  private last: EventLoopDelay | undefined;

  constructor(
    private readonly windowMs: number = eventLoopDelayDefaults.windowMs,
    resolutionMs: number = eventLoopDelayDefaults.resolutionMs,
  ) {
    this.histogram = monitorEventLoopDelay({ resolution: resolutionMs });
    this.histogram.enable();
    this.timer = setInterval(() => this.rotate(), windowMs);
    this.timer.unref();
  }

  /** The last closed window; before the first one closes, the window so far. */
  current(): EventLoopDelay {
    return this.last ?? this.figures();
  }

  /** Closes the window now (the timer does it every `windowMs`; tests call it). */
  rotate(): void {
    this.last = this.figures();
    this.histogram.reset();
  }

  stop(): void {
    clearInterval(this.timer);
    this.histogram.disable();
  }

  private figures(): EventLoopDelay {
    // The histogram is in nanoseconds; an empty one answers NaN or huge sentinels.
    const ms = (ns: number): number => (Number.isFinite(ns) && this.histogram.count > 0 ? Math.round(ns / 1e3) / 1e3 : 0);
    return { p50Ms: ms(this.histogram.percentile(50)), p99Ms: ms(this.histogram.percentile(99)), maxMs: ms(this.histogram.max), windowMs: this.windowMs };
  }
}

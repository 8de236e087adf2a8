/**
 * A bound on calls in flight, shared by every caller of one sink: a sink written by many
 * span pipelines at once keeps its own bound however many of them write, instead of one
 * bound per write that multiplies with the spans.
 */
export class InFlightLimit {
  private running = 0;
  /** Callers waiting for a slot, first come first served. */
  private readonly waiting: (() => void)[] = [];

  constructor(readonly max: number) {
    if (!Number.isSafeInteger(max) || max < 1) throw new RangeError(`an in-flight limit must be a positive integer, not ${max}`);
  }

  /** Runs `call` once fewer than `max` others run; its slot is freed when it settles. */
  async run<T>(call: () => Promise<T>): Promise<T> {
    if (this.running >= this.max) await new Promise<void>((resolve) => this.waiting.push(resolve));
    else this.running++;
    try {
      return await call();
    } finally {
      // The slot passes straight to the next waiter, so `running` never drops below the bound while some wait.
      const next = this.waiting.shift();
      if (next === undefined) this.running--;
      else next();
    }
  }

  /** Calls running now (for tests). */
  get inFlight(): number {
    return this.running;
  }
}

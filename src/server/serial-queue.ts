/**
 * Runs async jobs one at a time, in the order they came, with a bound on how many may wait:
 * the owner's read-check-write sequences (drains, changefeed info) must not interleave.
 */
export class SerialQueue {
  private tail: Promise<unknown> = Promise.resolve();
  private queued = 0;

  constructor(private readonly maxQueued: number) {}

  /** The job's result once the jobs before it are done; undefined when `maxQueued` are already waiting. */
  run<T>(job: () => Promise<T>): Promise<T> | undefined {
    if (this.queued >= this.maxQueued) return undefined;
    this.queued++;
    const result = this.tail.then(job).finally(() => {
      this.queued--;
    });
    this.tail = result.catch(() => undefined);
    return result;
  }
}

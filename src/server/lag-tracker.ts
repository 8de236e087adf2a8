/**
 * Lag in milliseconds for sources whose timestamps are not times (etcd revisions). The
 * owner notes when the changefeed's resolved-ts first reached each value; the checkpoint
 * lag is how long ago the resolved-ts first reached the checkpoint (the data at the
 * checkpoint has been received for that long), and the resolved lag is how long ago the
 * resolved-ts last moved. Bounded: the oldest samples are dropped first.
 */
export class LagTracker {
  private readonly samples: { ts: bigint; atMs: number }[] = [];

  constructor(private readonly samplesMax = 2_000) {}

  /** Notes the resolved-ts seen at `nowMs` (only increases are kept). */
  observeResolved(ts: bigint, nowMs: number): void {
    const last = this.samples.at(-1);
    if (last !== undefined && ts <= last.ts) return;
    this.samples.push({ ts, atMs: nowMs });
    if (this.samples.length > this.samplesMax) this.samples.splice(0, this.samples.length - this.samplesMax);
  }

  /** Milliseconds since the resolved-ts first reached `checkpointTs`; undefined before any sample. */
  checkpointLagMs(checkpointTs: bigint, nowMs: number): number | undefined {
    if (this.samples.length === 0) return undefined;
    // The first sample at or past the checkpoint: binary search over increasing ts.
    let lo = 0;
    let hi = this.samples.length - 1;
    if ((this.samples[hi] as { ts: bigint }).ts < checkpointTs) return 0;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if ((this.samples[mid] as { ts: bigint }).ts >= checkpointTs) hi = mid;
      else lo = mid + 1;
    }
    return Math.max(0, nowMs - (this.samples[lo] as { atMs: number }).atMs);
  }

  /** Milliseconds since the resolved-ts last moved; undefined before any sample. */
  resolvedLagMs(nowMs: number): number | undefined {
    const last = this.samples.at(-1);
    return last === undefined ? undefined : Math.max(0, nowMs - last.atMs);
  }
}

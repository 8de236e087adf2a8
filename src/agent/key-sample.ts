/**
 * A small sample of the keys a span pipeline wrote recently, from which the capture
 * names a split key for a hot span (issue 12, item 3): the owner's split policy cuts the
 * span there, so each half takes about half of its recent writes.
 *
 * The sample is a reservoir of at most `max` keys over one rate window of the pipeline
 * (algorithm R: every written key of the window is in it with the same probability),
 * started afresh each window, so it follows where the writes go now, not where they
 * went an hour ago. Pure: the reservoir's choices come from a seeded generator the
 * pipeline passes in (seeded from its span, so a replay makes the same choices).
 */
import { SeededRandom } from '../core/rng.ts';
import { spanKeyHashes } from '../core/span-digest.ts';

/** What one closed window's sample says about where to split. */
export interface SplitKeyEstimate {
  /**
   * The median of the sampled keys, or, when the median is the span's first key (one
   * hot key at the start), the next sampled key above it; undefined when no sampled key
   * lies strictly after the span's start.
   */
  readonly splitKey: string | undefined;
  /** Distinct keys in the sample. */
  readonly distinctKeys: number;
  /** Keys written in the window (the sample holds at most `max` of them). */
  readonly written: number;
}

/** A reservoir of recently written keys. */
export class KeySample {
  private readonly keys: string[] = [];
  private seen = 0;
  private readonly rng: SeededRandom;

  /** `max`: the reservoir's size (0 samples nothing); `seedKey`: what seeds its choices (the span's key). */
  constructor(
    private readonly max: number,
    seedKey: string,
  ) {
    this.rng = new SeededRandom(spanKeyHashes(seedKey)[0]);
  }

  /** Takes the keys of one written batch. O(batch). */
  add(keys: readonly string[]): void {
    if (this.max <= 0) return;
    for (const key of keys) {
      this.seen++;
      if (this.keys.length < this.max) {
        this.keys.push(key);
        continue;
      }
      const slot = this.rng.int(this.seen);
      if (slot < this.max) this.keys[slot] = key;
    }
  }

  /** Ends the window: the estimate from its sample, and an empty reservoir for the next. O(max log max). */
  close(spanStart: string): SplitKeyEstimate {
    const sorted = this.keys.sort();
    const written = this.seen;
    const estimate = { splitKey: splitKeyOf(sorted, spanStart), distinctKeys: countDistinct(sorted), written };
    this.keys.length = 0;
    this.seen = 0;
    return estimate;
  }
}

/** The split key of a sorted sample (see {@link SplitKeyEstimate.splitKey}). */
export function splitKeyOf(sorted: readonly string[], spanStart: string): string | undefined {
  if (sorted.length === 0) return undefined;
  for (let i = sorted.length >>> 1; i < sorted.length; i++) {
    const key = sorted[i] as string;
    if (key > spanStart) return key;
  }
  return undefined;
}

function countDistinct(sorted: readonly string[]): number {
  let distinct = 0;
  for (let i = 0; i < sorted.length; i++) if (i === 0 || sorted[i] !== sorted[i - 1]) distinct++;
  return distinct;
}

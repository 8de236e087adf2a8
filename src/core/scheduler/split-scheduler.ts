/**
 * split: with `autoSplit` on for a changefeed, splits spans that keep writing fast and
 * merges adjacent quiet ones (DESIGN.md §6; issue 12, item 3). It runs below drain and
 * move and above rebalance and balance; what it decides are split and merge operations
 * (`span-operation.ts`), started through the coordinator's own checks, not tasks.
 *
 * What it looks at: the per-span progress captures send with their reports (events
 * written a second and, for spans at or above the capture's split-key rate, a split key
 * from a sample of recent keys), kept here by tick as each accepted report arrives.
 *
 * ```
 *                rate > splitRateMin                      for splitAfterTicks, a split key
 *  (reported) ──────────────────────► hot (since tick h) ─────────────────────────────────► split at the key
 *      │  ▲           rate <= splitRateMin: not hot       strictly inside, >= splitSampleKeysMin
 *      │  └──────────────────────────────────────────────  distinct keys, table under spansPerTableMax
 *      │  rate < mergeRateMax
 *      └──────────────────► quiet (since tick q) ── it and its next span on the same capture quiet
 *                                                   for mergeAfterTicks, combined < mergeRateMax,
 *                                                   both older than coolDownTicks ──► merge
 * ```
 *
 * Hysteresis: `mergeRateMax` is at most half of `splitRateMin` (the coordinator asserts
 * it). The halves of a span split at rate r > splitRateMin together still write r, so
 * they never merge back while the traffic stays; a merged pair writes less than
 * mergeRateMax, so the union is far from being split again. "Combined rate stays below"
 * is checked as: each of the two stayed below mergeRateMax for mergeAfterTicks, and the
 * sum of their latest rates is below it.
 *
 * A rate counts only when it was reported by the span's current primary at most
 * `rateReportAgeMaxTicks` ago (a span that moved or stopped being reported is not judged
 * on an old pipeline's figure). Spans are judged only once the policy has seen them for
 * `coolDownTicks` (before a pipeline measured its first window it reports 0 a second,
 * which must not read as quiet); a span an operation made has a new key, so its history
 * and cool-down start at its first report, after the split or merge that made it.
 *
 * Work per tick is bounded: the hot spans (few, by construction) and at most
 * `mergeCandidatesPerTickMax` quiet ones, round-robin; memory is one entry per span
 * reported while the policy is on. Pure: ticks in, decisions out; no clock.
 */
import type { CaptureId, ProgressReport, SpanProgress } from '../messages.ts';
import type { ReplicationSet } from '../replication-set.ts';
import type { Span } from '../span.ts';
import { endBefore, spanKey } from '../span.ts';

/** The split policy's thresholds and bounds; all in the coordinator's limits. */
export interface SplitPolicyLimits {
  /** A span writing more events a second than this, for `splitAfterTicks`, is split. */
  readonly splitRateMin: number;
  readonly splitAfterTicks: number;
  /** Two adjacent spans on one capture writing less than this together, for `mergeAfterTicks`, merge. */
  readonly mergeRateMax: number;
  readonly mergeAfterTicks: number;
  /** Ticks a span must exist (seen by the policy, or since the operation that made it) before it merges. */
  readonly coolDownTicks: number;
  /** The policy does not split a table that has this many spans. */
  readonly spansPerTableMax: number;
  /** The fewest distinct keys a span's sample must hold to be split (one hot key cannot be). */
  readonly splitSampleKeysMin: number;
  /** The oldest a span's reported rate may be for the policy to act on it. */
  readonly rateReportAgeMaxTicks: number;
  /** Quiet spans looked at per tick for a merge. */
  readonly mergeCandidatesPerTickMax: number;
}

/** What the policy may look at, from the coordinator. */
export interface SplitView {
  readonly tick: number;
  /** Splits and merges that may still start this tick. */
  readonly operationSlots: number;
  /** The set of a span, by key, when it is still tracked. */
  setOf(key: string): ReplicationSet | undefined;
  /** True while the span of the set is wanted (not being removed). */
  isWanted(set: ReplicationSet): boolean;
  /** True for a capture that is draining or shutting down (it takes no new spans). */
  isLeaving(capture: CaptureId): boolean;
  /** Spans the table has now (every state). */
  spansOfTable(table: string): number;
}

/** One decision: the coordinator starts it, with its checks, or refuses it. */
export type SplitDecision =
  | { readonly kind: 'split'; readonly set: ReplicationSet; readonly at: string; readonly eventsPerSecond: number }
  | { readonly kind: 'merge'; readonly first: ReplicationSet; readonly second: ReplicationSet; readonly eventsPerSecond: number };

/** What the policy knows of one span. */
interface Track {
  readonly span: Span;
  readonly key: string;
  /** The capture that reported it last (its primary then). */
  capture: CaptureId;
  eventsPerSecond: number;
  splitKey: string | undefined;
  sampleKeys: number;
  reportedTick: number;
  /** The tick the policy first saw the span (or an operation made it). */
  readonly sinceTick: number;
  /** Since when its rate is above splitRateMin (undefined: it is not). */
  hotSinceTick: number | undefined;
  /** Since when its rate is below mergeRateMax (undefined: it is not). */
  quietSinceTick: number | undefined;
}

export class SplitScheduler {
  readonly name = 'split';
  private readonly tracks = new Map<string, Track>();
  /** The latest track of each (table, start): where a merge finds a span's next one. */
  private readonly byStart = new Map<string, Track>();
  private readonly hot = new Set<Track>();
  private readonly quiet = new Set<Track>();
  /** Where the round-robin walk of quiet spans goes on. */
  private quietCursor: IterableIterator<Track> | undefined;

  constructor(private readonly limits: SplitPolicyLimits) {}

  /** Spans the policy knows of (for tests and bounds). */
  get size(): number {
    return this.tracks.size;
  }

  /** Takes the progress of one accepted report from `capture` at `tick`. O(entries). */
  observe(capture: CaptureId, progress: ProgressReport, tick: number): void {
    for (const entry of progress.slowest) this.put(capture, entry, tick);
    for (const entry of progress.slice) this.put(capture, entry, tick);
  }

  /**
   * An operation started: its old spans are forgotten. Its new spans have new keys, so
   * their history (and cool-down) starts at their first report, after the operation.
   */
  noteOperation(old: readonly Span[]): void {
    for (const span of old) this.forget(spanKey(span));
  }

  /** Keeps only the spans `keep` accepts (after the changefeed's tables changed). O(spans known). */
  retain(keep: (key: string) => boolean): void {
    for (const key of [...this.tracks.keys()]) if (!keep(key)) this.forget(key);
  }

  /** Up to `view.operationSlots` splits (first) and merges to start now. */
  plan(view: SplitView): SplitDecision[] {
    const decisions: SplitDecision[] = [];
    if (view.operationSlots <= 0) return decisions;
    const chosen = new Set<string>();
    const limits = this.limits;
    const plannedPerTable = new Map<string, number>();
    for (const track of [...this.hot]) {
      if (decisions.length >= view.operationSlots) return decisions;
      const set = this.current(track, view);
      if (set === undefined) continue;
      if (track.hotSinceTick === undefined || view.tick - track.hotSinceTick < limits.splitAfterTicks) continue;
      const at = track.splitKey;
      // The key must cut the span in two non-empty halves.
      if (at === undefined || !(at > track.span.start) || !endBefore(at, track.span.end)) continue;
      if (track.sampleKeys < limits.splitSampleKeysMin) continue;
      const table = track.span.table;
      const planned = plannedPerTable.get(table) ?? 0;
      if (view.spansOfTable(table) + planned + 1 > limits.spansPerTableMax) continue;
      plannedPerTable.set(table, planned + 1);
      chosen.add(track.key);
      decisions.push({ kind: 'split', set, at, eventsPerSecond: track.eventsPerSecond });
    }
    this.planMerges(view, decisions, chosen);
    return decisions;
  }

  private planMerges(view: SplitView, decisions: SplitDecision[], chosen: Set<string>): void {
    const limits = this.limits;
    if (this.quiet.size === 0) return;
    for (let looked = 0; looked < limits.mergeCandidatesPerTickMax && looked < this.quiet.size && decisions.length < view.operationSlots; looked++) {
      let next = this.quietCursor?.next();
      if (next === undefined || next.done === true) {
        this.quietCursor = this.quiet.values();
        next = this.quietCursor.next();
        if (next.done === true) return;
      }
      const first = next.value;
      if (first.span.end === '' || chosen.has(first.key)) continue;
      const second = this.byStart.get(startKey(first.span.table, first.span.end));
      if (second === undefined || chosen.has(second.key)) continue;
      const firstSet = this.mergeable(first, view);
      const secondSet = firstSet === undefined ? undefined : this.mergeable(second, view);
      if (firstSet === undefined || secondSet === undefined || firstSet.primary !== secondSet.primary) continue;
      const combined = first.eventsPerSecond + second.eventsPerSecond;
      if (combined >= limits.mergeRateMax) continue;
      chosen.add(first.key);
      chosen.add(second.key);
      decisions.push({ kind: 'merge', first: firstSet, second: secondSet, eventsPerSecond: combined });
    }
  }

  /** The set of a quiet span that may merge now: current, quiet long enough, cooled down. */
  private mergeable(track: Track, view: SplitView): ReplicationSet | undefined {
    const set = this.current(track, view);
    if (set === undefined) return undefined;
    const limits = this.limits;
    if (track.quietSinceTick === undefined || view.tick - track.quietSinceTick < limits.mergeAfterTicks) return undefined;
    if (view.tick - track.sinceTick < limits.coolDownTicks) return undefined;
    return set;
  }

  /**
   * The span's set when the policy may act on it: tracked, wanted, replicating with no
   * task or operation, its rate from its current primary (which is staying) and fresh.
   * A span whose set is gone is forgotten.
   */
  private current(track: Track, view: SplitView): ReplicationSet | undefined {
    const set = view.setOf(track.key);
    if (set === undefined) {
      this.forget(track.key);
      return undefined;
    }
    if (!view.isWanted(set) || set.state !== 'replicating' || set.task !== undefined || set.operation !== undefined) return undefined;
    if (set.primary === undefined || set.primary !== track.capture || view.isLeaving(set.primary)) return undefined;
    if (view.tick - track.reportedTick > this.limits.rateReportAgeMaxTicks) return undefined;
    return set;
  }

  private put(capture: CaptureId, entry: SpanProgress, tick: number): void {
    const key = spanKey(entry.span);
    let track = this.tracks.get(key);
    if (track === undefined || track.capture !== capture) {
      // New to the policy, or another capture's pipeline now: its history starts over.
      const sinceTick = track?.sinceTick ?? tick;
      if (track !== undefined) this.forget(key);
      track = { span: entry.span, key, capture, eventsPerSecond: 0, splitKey: undefined, sampleKeys: 0, reportedTick: tick, sinceTick, hotSinceTick: undefined, quietSinceTick: undefined };
      this.tracks.set(key, track);
    }
    this.byStart.set(startKey(entry.span.table, entry.span.start), track);
    track.eventsPerSecond = entry.eventsPerSecond;
    track.splitKey = entry.splitKey;
    track.sampleKeys = entry.sampleKeys ?? 0;
    track.reportedTick = tick;
    if (entry.eventsPerSecond > this.limits.splitRateMin) {
      track.hotSinceTick ??= tick;
      this.hot.add(track);
    } else {
      track.hotSinceTick = undefined;
      this.hot.delete(track);
    }
    if (entry.eventsPerSecond < this.limits.mergeRateMax) {
      track.quietSinceTick ??= tick;
      this.quiet.add(track);
    } else {
      track.quietSinceTick = undefined;
      this.quiet.delete(track);
    }
  }

  private forget(key: string): void {
    const track = this.tracks.get(key);
    if (track === undefined) return;
    this.tracks.delete(key);
    this.hot.delete(track);
    this.quiet.delete(track);
    const at = startKey(track.span.table, track.span.start);
    if (this.byStart.get(at) === track) this.byStart.delete(at);
  }
}

function startKey(table: string, start: string): string {
  return `${table}\u0000${start}`;
}

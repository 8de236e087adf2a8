/**
 * The scheduling policies' common interface (DESIGN.md §6). Each policy is one small
 * file; the coordinator runs them in priority order and the first that yields tasks wins
 * the tick. A policy only reads the {@link SchedulerView} and its own state, and takes
 * randomness from the seeded generator in the view, so it is a pure function of
 * (spans, captures, sets, seed).
 */
import type { CaptureId } from '../messages.ts';
import type { CaptureSpans } from '../replication-manager.ts';
import type { ReplicationSet } from '../replication-set.ts';
import type { SeededRandom } from '../rng.ts';
import type { Task } from '../task.ts';

/** What a policy may look at. */
export interface SchedulerView {
  /** Initialised live captures, sorted by id. */
  readonly captures: readonly CaptureId[];
  /** True for a capture that is draining or shutting down: it receives no new spans. */
  isLeaving(capture: CaptureId): boolean;
  /** The spans a capture holds (primaries, secondaries, load). */
  spansOf(capture: CaptureId): CaptureSpans;
  readonly absentSets: ReadonlySet<ReplicationSet>;
  readonly unwantedSets: ReadonlySet<ReplicationSet>;
  readonly spanCount: number;
  /** Moves that may still start this tick. */
  readonly moveSlots: number;
  /** Adds or removes that may still start this tick. */
  readonly addSlots: number;
  readonly rng: SeededRandom;
  readonly tick: number;
}

/** One scheduling policy. */
export interface Scheduler {
  readonly name: string;
  schedule(view: SchedulerView): Task[];
}

/** Captures that may receive spans: initialised and not leaving. */
export function targetCaptures(view: SchedulerView): CaptureId[] {
  return view.captures.filter((capture) => !view.isLeaving(capture));
}

/** The capture with the lowest settled load (plus `extra` planned this tick), ties by id order. */
export function leastLoaded(view: SchedulerView, targets: readonly CaptureId[], extra: ReadonlyMap<CaptureId, number>, exclude?: CaptureId): CaptureId | undefined {
  let best: CaptureId | undefined;
  let bestLoad = Infinity;
  for (const capture of targets) {
    if (capture === exclude) continue;
    const load = view.spansOf(capture).settledLoad + (extra.get(capture) ?? 0);
    if (load < bestLoad) {
      best = capture;
      bestLoad = load;
    }
  }
  return best;
}

/** True for a set a policy may move now: replicating with no task running. */
export function movable(set: ReplicationSet): boolean {
  return set.state === 'replicating' && set.task === undefined && set.operation === undefined;
}

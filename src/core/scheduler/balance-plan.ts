/**
 * The balancing rule shared by the rebalance and balance policies: move spans from every
 * capture holding more than ceil(spans / captures) to the least loaded ones. Counts are
 * "settled" ones (as if the moves in flight had finished), so rounds that start while
 * moves are running never overshoot. Spans to move are picked at random (seeded) so
 * repeated rounds spread the work.
 */
import type { CaptureId } from '../messages.ts';
import type { Task } from '../task.ts';
import type { SchedulerView } from './scheduler.ts';
import { leastLoaded, movable, targetCaptures } from './scheduler.ts';

/** How many random picks to try in a capture's list before scanning it. */
const randomPicksMax = 8;

/** Whether every target capture holds at most its fair share of primaries. */
export function isBalanced(view: SchedulerView): boolean {
  const targets = targetCaptures(view);
  if (targets.length === 0) return true;
  const upper = Math.ceil(view.spanCount / targets.length);
  return targets.every((capture) => view.spansOf(capture).settledLoad <= upper);
}

/** Up to `movesMax` moves towards balance. */
export function planBalanceMoves(view: SchedulerView, movesMax: number): Task[] {
  const tasks: Task[] = [];
  const targets = targetCaptures(view);
  if (targets.length < 2 || movesMax <= 0) return tasks;
  const upper = Math.ceil(view.spanCount / targets.length);
  const planned = new Map<CaptureId, number>();
  const chosen = new Set<string>();
  for (const from of targets) {
    const primaries = view.spansOf(from).primaries;
    let excess = view.spansOf(from).settledLoad - upper;
    while (excess > 0 && tasks.length < movesMax) {
      const to = leastLoaded(view, targets, planned, from);
      if (to === undefined || view.spansOf(to).settledLoad + (planned.get(to) ?? 0) >= upper) return tasks;
      let picked: string | undefined;
      for (let attempt = 0; attempt < randomPicksMax && picked === undefined; attempt++) {
        const set = primaries.at(view.rng.int(primaries.length));
        if (set !== undefined && movable(set) && !chosen.has(set.key)) picked = set.key;
      }
      if (picked === undefined) {
        for (const set of primaries.values()) {
          if (movable(set) && !chosen.has(set.key)) {
            picked = set.key;
            break;
          }
        }
      }
      if (picked === undefined) break;
      chosen.add(picked);
      planned.set(to, (planned.get(to) ?? 0) + 1);
      tasks.push({ kind: 'move', key: picked, capture: to });
      excess--;
    }
  }
  return tasks;
}

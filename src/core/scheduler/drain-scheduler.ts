/**
 * drain: moves the primaries of captures that are draining (or shutting down) to the
 * least loaded other captures, bounded by the moves that may start.
 */
import type { CaptureId } from '../messages.ts';
import type { Task } from '../task.ts';
import type { Scheduler, SchedulerView } from './scheduler.ts';
import { leastLoaded, movable, targetCaptures } from './scheduler.ts';

export class DrainScheduler implements Scheduler {
  readonly name = 'drain';

  schedule(view: SchedulerView): Task[] {
    const tasks: Task[] = [];
    if (view.moveSlots <= 0) return tasks;
    const leaving = view.captures.filter((capture) => view.isLeaving(capture));
    if (leaving.length === 0) return tasks;
    const targets = targetCaptures(view);
    if (targets.length === 0) return tasks;
    const planned = new Map<CaptureId, number>();
    for (const capture of leaving) {
      for (const set of view.spansOf(capture).primaries.values()) {
        if (tasks.length >= view.moveSlots) return tasks;
        if (!movable(set)) continue;
        const to = leastLoaded(view, targets, planned);
        if (to === undefined) return tasks;
        planned.set(to, (planned.get(to) ?? 0) + 1);
        tasks.push({ kind: 'move', key: set.key, capture: to });
      }
    }
    return tasks;
  }
}

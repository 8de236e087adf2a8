/**
 * basic: adds every absent span (round-robin over captures that are not leaving, a
 * bounded batch per tick) and removes spans that are no longer wanted. When every live
 * capture is leaving, spans still go to them: replicating on a draining capture beats
 * not replicating at all, and the drain policy moves them once a target exists.
 */
import type { Task } from '../task.ts';
import type { Scheduler, SchedulerView } from './scheduler.ts';
import { targetCaptures } from './scheduler.ts';

export class BasicScheduler implements Scheduler {
  readonly name = 'basic';
  private cursor = 0;

  schedule(view: SchedulerView): Task[] {
    const tasks: Task[] = [];
    let slots = view.addSlots;
    if (slots <= 0) return tasks;
    for (const set of view.unwantedSets) {
      if (slots <= 0) break;
      if (set.task !== undefined) continue;
      tasks.push({ kind: 'remove', key: set.key });
      slots--;
    }
    const preferred = targetCaptures(view);
    const targets = preferred.length > 0 ? preferred : view.captures;
    if (targets.length === 0) return tasks;
    for (const set of view.absentSets) {
      if (slots <= 0) break;
      if (set.task !== undefined) continue;
      const capture = targets[this.cursor % targets.length];
      if (capture === undefined) break;
      this.cursor = (this.cursor + 1) % targets.length;
      tasks.push({ kind: 'add', key: set.key, capture });
      slots--;
    }
    return tasks;
  }
}

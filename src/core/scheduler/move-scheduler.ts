/**
 * move: explicit moves of one span to one capture, requested through the API. The
 * coordinator validates a request before it is queued; the queue is bounded.
 */
import type { CaptureId } from '../messages.ts';
import type { Task } from '../task.ts';
import type { Scheduler, SchedulerView } from './scheduler.ts';

export class MoveScheduler implements Scheduler {
  readonly name = 'move';
  private queue: { key: string; capture: CaptureId }[] = [];
  private readonly queuedMax: number;

  constructor(queuedMax: number) {
    this.queuedMax = queuedMax;
  }

  /** Queues a move; false when the queue is full. */
  request(key: string, capture: CaptureId): boolean {
    if (this.queue.length >= this.queuedMax) return false;
    this.queue.push({ key, capture });
    return true;
  }

  /** The capture a queued move of `key` goes to, if one is queued. O(queued), bounded. */
  queuedTarget(key: string): CaptureId | undefined {
    return this.queue.find((move) => move.key === key)?.capture;
  }

  /** Moves waiting for a slot. */
  get queued(): number {
    return this.queue.length;
  }

  schedule(view: SchedulerView): Task[] {
    const take = Math.min(view.moveSlots, this.queue.length);
    if (take <= 0) return [];
    const batch = this.queue.slice(0, take);
    this.queue = this.queue.slice(take);
    return batch.map(({ key, capture }) => ({ kind: 'move', key, capture }));
  }
}

/**
 * rebalance: a manual trigger (API) that keeps moving spans, a bounded number per tick,
 * until every capture holds at most ceil(spans / captures) primaries.
 */
import type { Task } from '../task.ts';
import { isBalanced, planBalanceMoves } from './balance-plan.ts';
import type { Scheduler, SchedulerView } from './scheduler.ts';

export class RebalanceScheduler implements Scheduler {
  readonly name = 'rebalance';
  private requested = false;

  /** Starts a rebalance; it runs until balanced. */
  request(): void {
    this.requested = true;
  }

  /** True while a requested rebalance is still running. */
  get active(): boolean {
    return this.requested;
  }

  schedule(view: SchedulerView): Task[] {
    if (!this.requested) return [];
    if (isBalanced(view)) {
      this.requested = false;
      return [];
    }
    return planBalanceMoves(view, view.moveSlots);
  }
}

/**
 * balance: every `intervalTicks`, one bounded round of the rebalance rule, so captures
 * that joined later receive their share without an operator asking.
 */
import type { Task } from '../task.ts';
import { planBalanceMoves } from './balance-plan.ts';
import type { Scheduler, SchedulerView } from './scheduler.ts';

export class BalanceScheduler implements Scheduler {
  readonly name = 'balance';
  private readonly intervalTicks: number;
  private readonly movesPerRoundMax: number;
  private nextTick: number;

  constructor(intervalTicks: number, movesPerRoundMax: number, firstTick: number) {
    this.intervalTicks = intervalTicks;
    this.movesPerRoundMax = movesPerRoundMax;
    this.nextTick = firstTick + intervalTicks;
  }

  schedule(view: SchedulerView): Task[] {
    if (this.intervalTicks <= 0 || view.tick < this.nextTick) return [];
    this.nextTick = view.tick + this.intervalTicks;
    return planBalanceMoves(view, Math.min(view.moveSlots, this.movesPerRoundMax));
  }
}

/**
 * The simulated network between the owner and the captures: every message is delivered
 * after a random delay (so messages reorder), or dropped, or delivered twice, as the
 * seeded generator decides. Once faults stop it delivers everything, in order, next step.
 */
import type { Message } from '../../src/core/messages.ts';
import type { SeededRandom } from '../../src/core/rng.ts';

/** How unreliable the network is while faults are on. */
export interface NetworkFaults {
  readonly dropProbability: number;
  readonly duplicateProbability: number;
  readonly delayStepsMax: number;
}

interface InFlight {
  readonly deliverAt: number;
  readonly order: number;
  readonly message: Message;
}

export class SimNetwork {
  private inFlight: InFlight[] = [];
  private order = 0;
  private readonly rng: SeededRandom;
  faults: NetworkFaults | undefined;
  sent = 0;
  dropped = 0;
  duplicated = 0;

  constructor(rng: SeededRandom, faults: NetworkFaults) {
    this.rng = rng;
    this.faults = faults;
  }

  /** Sends a message at `step`. */
  send(message: Message, step: number): void {
    this.sent++;
    const faults = this.faults;
    if (faults === undefined) {
      this.inFlight.push({ deliverAt: step + 1, order: this.order++, message });
      return;
    }
    if (this.rng.chance(faults.dropProbability)) {
      this.dropped++;
      return;
    }
    const copies = this.rng.chance(faults.duplicateProbability) ? 2 : 1;
    if (copies === 2) this.duplicated++;
    for (let i = 0; i < copies; i++) {
      const deliverAt = step + 1 + this.rng.int(faults.delayStepsMax + 1);
      this.inFlight.push({ deliverAt, order: this.order++, message });
    }
  }

  /** Takes every message due at `step`, ordered by due step, then by send order. */
  deliver(step: number): Message[] {
    const due = this.inFlight.filter((m) => m.deliverAt <= step);
    if (due.length === 0) return [];
    this.inFlight = this.inFlight.filter((m) => m.deliverAt > step);
    due.sort((a, b) => a.deliverAt - b.deliverAt || a.order - b.order);
    return due.map((m) => m.message);
  }
}

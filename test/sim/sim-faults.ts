/**
 * What the simulated etcd does with one request of an owner: whether it lands, whether its
 * answer comes back, and how many steps it takes. The metadata and the drains store model
 * the same unreliable client, so they draw their requests here.
 */
import type { SeededRandom } from '../../src/core/rng.ts';

/** How often a request to etcd goes wrong, and how slow it can be, while faults are on. */
export interface MetadataFaults {
  readonly failProbability: number;
  readonly lostProbability: number;
  readonly slowProbability: number;
  readonly slowStepsMax: number;
}

/**
 * ok: applied and answered; fail-before: not applied, answered failed; fail-after: applied,
 * answered failed; lost: not applied, never answered; lost-applied: applied, never answered.
 */
export type RequestFate = 'ok' | 'fail-before' | 'fail-after' | 'lost-applied' | 'lost';

/**
 * Draws one request's fate and the steps until etcd sees it (1 or 2, plus up to
 * `slowStepsMax` when slow); without faults every request is ok. The generator is called
 * in the same order for every request, so a seed replays the same run.
 */
export function drawRequest(rng: SeededRandom, faults: MetadataFaults | undefined): { fate: RequestFate; delaySteps: number } {
  let fate: RequestFate = 'ok';
  let delaySteps = 1 + rng.int(2);
  if (faults !== undefined) {
    if (rng.chance(faults.failProbability)) fate = rng.chance(0.5) ? 'fail-before' : 'fail-after';
    else if (rng.chance(faults.lostProbability)) fate = rng.chance(0.5) ? 'lost' : 'lost-applied';
    if (rng.chance(faults.slowProbability)) delaySteps += rng.int(faults.slowStepsMax);
  }
  return { fate, delaySteps };
}

/** Whether a request with this fate reaches etcd (whatever its answer says). */
export function lands(fate: RequestFate): boolean {
  return fate === 'ok' || fate === 'fail-after' || fate === 'lost-applied';
}

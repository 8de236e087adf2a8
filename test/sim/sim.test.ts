import { describe, expect, it } from 'vitest';
import { runSeeds } from './run-seeds.ts';

// A short run of the deterministic simulator in every `npm test`; the long run is
// `npm run sim -- --seeds 1000 --steps 2000`. SIM_SEED replays a failing range.
const firstSeed = process.env.SIM_SEED !== undefined ? Number(process.env.SIM_SEED) : 1;

describe('simulated cluster under faults', () => {
  it('keeps every invariant and recovers, over 120 seeds', () => {
    const failures: string[] = [];
    const stats: Record<string, number> = {};
    const summary = runSeeds({ firstSeed, seeds: 120, steps: 500, spans: 16, captures: 4, livenessStepsMax: 200 }, (result) => {
      failures.push(`seed ${result.seed}: ${[...result.violations.slice(0, 3), result.livenessFailure ?? ''].join(' | ')}`);
    }, stats);
    expect(failures).toEqual([]);
    expect(summary).toMatchObject({ seeds: 120, violations: 0, livenessFailures: 0, firstFailingSeed: null });
    // Splits and merges ran under the faults: done, aborted, and adopted by new owners.
    expect(stats.operationsDone ?? 0).toBeGreaterThan(0);
    expect(stats.operationsAborted ?? 0).toBeGreaterThan(0);
    expect(stats.tilingsAdopted ?? 0).toBeGreaterThan(0);
    // The split policy (on even seeds) split and merged spans of its own.
    expect(stats.autoSplits ?? 0).toBeGreaterThan(0);
    expect(stats.autoMerges ?? 0).toBeGreaterThan(0);
  });
});

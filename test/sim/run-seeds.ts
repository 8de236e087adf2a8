/**
 * Runs the simulator over a range of seeds and summarises the verdicts.
 */
import type { SimResult } from './sim-cluster.ts';
import { SimCluster } from './sim-cluster.ts';

/** What a batch of seeds is run with. */
export interface RunOptions {
  readonly firstSeed: number;
  readonly seeds: number;
  readonly steps: number;
  readonly spans: number;
  readonly captures: number;
  readonly livenessStepsMax: number;
  readonly trace?: string;
}

/** The JSON line the simulator prints last. */
export interface RunSummary {
  readonly seeds: number;
  readonly steps: number;
  readonly violations: number;
  readonly livenessFailures: number;
  readonly firstFailingSeed: number | null;
}

/** What the faults and requests of a run added up to (printed to stderr). */
export type RunStats = Record<string, number>;

/** Runs every seed; `onFailure` hears each failing seed's result. */
export function runSeeds(options: RunOptions, onFailure?: (result: SimResult) => void, stats: RunStats = {}): RunSummary {
  let steps = 0;
  let violations = 0;
  let livenessFailures = 0;
  let firstFailingSeed: number | null = null;
  for (let i = 0; i < options.seeds; i++) {
    const seed = (options.firstSeed + i) >>> 0;
    const result = new SimCluster({
      seed,
      steps: options.steps,
      spans: options.spans,
      captures: options.captures,
      livenessStepsMax: options.livenessStepsMax,
      ...(options.trace === undefined ? {} : { trace: options.trace }),
    }).run();
    steps += result.steps;
    for (const [name, value] of Object.entries(result.stats)) stats[name] = (stats[name] ?? 0) + value;
    violations += result.violations.length;
    if (result.livenessFailure !== undefined) livenessFailures++;
    if (result.violations.length > 0 || result.livenessFailure !== undefined) {
      firstFailingSeed ??= seed;
      onFailure?.(result);
    }
  }
  return { seeds: options.seeds, steps, violations, livenessFailures, firstFailingSeed };
}

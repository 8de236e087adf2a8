/**
 * The simulator's command line:
 *
 *   npm run sim -- --seeds N --steps M [--seed S] [--spans K] [--captures C] [--liveness-steps L]
 *
 * Runs seeds S..S+N-1 (a random S when omitted, printed first), prints each failing
 * seed's violations to stderr, and as its last line a JSON summary. Exits 1 when any seed
 * broke an invariant or failed to recover. `--seeds 1 --seed S` replays one seed exactly.
 */
import { parseArgs } from 'node:util';
import { randomInt } from 'node:crypto';
import { runSeeds } from './run-seeds.ts';

function positiveInt(name: string, value: string | undefined, fallback: number, min = 1): number {
  if (value === undefined) return fallback;
  if (!/^\d+$/.test(value) || Number(value) < min || !Number.isSafeInteger(Number(value))) {
    throw new Error(`--${name} must be an integer >= ${min}, got ${JSON.stringify(value)}`);
  }
  return Number(value);
}

function main(): number {
  const { values } = parseArgs({
    options: {
      seeds: { type: 'string' },
      steps: { type: 'string' },
      seed: { type: 'string' },
      spans: { type: 'string' },
      captures: { type: 'string' },
      'liveness-steps': { type: 'string' },
      trace: { type: 'string' },
    },
    strict: true,
  });
  const seeds = positiveInt('seeds', values.seeds, 100);
  const steps = positiveInt('steps', values.steps, 1000);
  const firstSeed = positiveInt('seed', values.seed, process.env.SIM_SEED !== undefined ? Number(process.env.SIM_SEED) : randomInt(2 ** 31), 0);
  const spans = positiveInt('spans', values.spans, 24);
  const captures = positiveInt('captures', values.captures, 4);
  const livenessStepsMax = positiveInt('liveness-steps', values['liveness-steps'], Math.min(300, Math.floor(steps / 2)));
  process.stderr.write(`sim: seeds ${firstSeed}..${firstSeed + seeds - 1}, ${steps} steps, ${spans} spans, ${captures} captures (replay one with --seeds 1 --seed S)\n`);
  const trace = values.trace;
  const stats: Record<string, number> = {};
  const summary = runSeeds({ firstSeed, seeds, steps, spans, captures, livenessStepsMax, ...(trace === undefined ? {} : { trace }) }, (result) => {
    process.stderr.write(`seed ${result.seed} failed:\n`);
    for (const violation of result.violations.slice(0, 5)) process.stderr.write(`  violation: ${violation}\n`);
    if (result.livenessFailure !== undefined) process.stderr.write(`  liveness: ${result.livenessFailure}\n`);
  }, stats);
  process.stderr.write(`sim: faults and requests exercised: ${JSON.stringify(stats)}\n`);
  process.stdout.write(`${JSON.stringify(summary)}\n`);
  return summary.violations > 0 || summary.livenessFailures > 0 ? 1 : 0;
}

try {
  process.exitCode = main();
} catch (error) {
  process.stderr.write(`sim: ${(error as Error).message}\n`);
  process.exitCode = 2;
}

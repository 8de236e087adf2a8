/**
 * The step limits both span pipeline tests are written against: their expected effects
 * and timings (pages of 2 keys, batches of 10 events, 4 retries backing off from 100 to
 * 300 ms, a 1 s step deadline) follow from these numbers.
 */
import type { SpanPipelineLimits } from '../../src/agent/span-pipeline.ts';

/** One pipeline's limits in the span pipeline tests. */
export const pipelineLimits: SpanPipelineLimits = {
  batchEventsMax: 10,
  pageKeysMax: 2,
  stepRetriesMax: 4,
  retryBackoffMinMs: 100,
  retryBackoffMaxMs: 300,
  stepDeadlineMs: 1_000,
  keySampleMax: 8,
};

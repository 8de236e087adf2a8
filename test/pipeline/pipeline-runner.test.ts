/**
 * The span pipeline runner tells the resolved-ts even while its sink hangs (once the
 * hung write passes its deadline, as a failed step): the owner needs it to tell a
 * stalled checkpoint (something to flush, nothing flushed) from a quiet source. A real
 * runner and datagen source, a sink whose write never returns until the test lets it.
 */
import { pino } from 'pino';
import { describe, expect, it } from 'vitest';
import type { PipelineEvent } from '../../src/agent/pipeline.ts';
import type { Span } from '../../src/core/span.ts';
import { spanKey } from '../../src/core/span.ts';
import { waitFor } from '../../src/dev/local-cluster.ts';
import { PipelineRunner, pipelineDefaults } from '../../src/pipeline/pipeline-runner.ts';
import type { Sink } from '../../src/pipeline/sink.ts';
import { DatagenSource } from '../../src/pipeline/sources/datagen.ts';

describe('pipeline runner', () => {
  it('reports the resolved-ts past an unchanged checkpoint while a sink write hangs', async () => {
    let release: () => void = () => undefined;
    const gate = new Promise<void>((resolve) => (release = resolve));
    let writes = 0;
    // The first write lands; every later one hangs until the test ends.
    const sink: Sink = {
      write: async () => {
        writes++;
        if (writes > 1) await gate;
      },
      flush: async () => undefined,
      retire: async () => undefined,
      close: async () => undefined,
    };
    const events: PipelineEvent[] = [];
    const runner = new PipelineRunner(new DatagenSource({ rate: 100, keys: 10, seed: 1 }), sink, (es) => events.push(...es), { ...pipelineDefaults, intervalMs: 10, stepDeadlineMs: 200 }, pino({ level: 'silent' }));
    const span: Span = { table: 't', start: '', end: '' };
    const key = spanKey(span);
    const startTs = BigInt(Date.now() - 1_000);
    runner.start();
    try {
      runner.apply([{ kind: 'prepare', span, key, checkpointTs: startTs }]);
      await waitFor('prepared', () => (events.some((e) => e.kind === 'prepared') ? true : undefined), 5_000, 10);
      runner.apply([{ kind: 'promote', span, key, checkpointTs: startTs }]);
      await waitFor('the second write to hang', () => (writes === 2 ? true : undefined), 5_000, 10);
      await waitFor('the hung write to pass its deadline', () => (events.some((e) => e.kind === 'retrying') ? true : undefined), 5_000, 10);
      const progress = events.filter((e): e is PipelineEvent & { kind: 'progress' } => e.kind === 'progress');
      const flushed = progress.reduce((max, e) => (e.checkpointTs > max ? e.checkpointTs : max), startTs);
      // The first write moved the checkpoint; the hanging one did not, but said how far
      // the source is resolved.
      expect(flushed).toBeGreaterThan(startTs);
      expect(progress.at(-1)?.checkpointTs).toBe(flushed);
      expect(progress.at(-1)?.resolvedTs).toBeGreaterThan(flushed);
    } finally {
      release();
      await runner.close();
    }
  });
});

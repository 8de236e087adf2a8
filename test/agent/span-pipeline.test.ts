/**
 * One span pipeline, step by step: every input (a tick at a given time, an outcome, a
 * command) is followed by the exact effects and events it produced and the state after
 * it, including lost (deadline), late, duplicated and reordered outcomes.
 */
import { describe, expect, it } from 'vitest';
import { SpanPipeline } from '../../src/agent/span-pipeline.ts';
import type {
  BackfillGeneration,
  BackfillProgress,
  PipelineContext,
  PipelineEffect,
  PipelineOutcome,
  PipelineOutput,
} from '../../src/agent/span-pipeline.ts';
import type { PipelineEvent } from '../../src/agent/pipeline.ts';
import type { Span } from '../../src/core/span.ts';
import { spanKey } from '../../src/core/span.ts';
import { maxTs } from '../../src/core/ts.ts';
import { pipelineLimits } from './pipeline-fixtures.ts';

const span: Span = { table: 't', start: 'a', end: 'm' };
const key = spanKey(span);

/** The shell around one pipeline: the clock, the barrier, the generation, the backfill slots and the ids. */
class Shell {
  nowMs = 0;
  barrierTs = maxTs;
  generation: BackfillGeneration = 'none';
  backfillSlotsMax = 1;
  backfillSlotsUsed = 0;
  private lastId = 0;
  readonly pipeline: SpanPipeline;

  constructor(startTs: bigint) {
    this.pipeline = new SpanPipeline(span, key, startTs, pipelineLimits);
  }

  /** Ids the next effects will get, for readable expectations. */
  get nextId(): number {
    return this.lastId + 1;
  }

  tick(nowMs = this.nowMs): PipelineOutput {
    this.nowMs = nowMs;
    return this.checked(this.pipeline.tick(this.context()));
  }

  answer(outcome: PipelineOutcome): PipelineOutput {
    return this.checked(this.pipeline.onOutcome(outcome, this.context()));
  }

  stop(): PipelineOutput {
    return this.checked(this.pipeline.stop(this.context()));
  }

  private context(): PipelineContext {
    return {
      nowMs: this.nowMs,
      barrierTs: this.barrierTs,
      generation: this.generation,
      sinceTs: undefined,
      takeBackfillSlot: () => {
        if (this.backfillSlotsUsed >= this.backfillSlotsMax) return false;
        this.backfillSlotsUsed++;
        return true;
      },
      releaseBackfillSlot: () => {
        this.backfillSlotsUsed--;
      },
      nextId: () => ++this.lastId,
    };
  }

  /** Invariants after every input. */
  private checked(out: PipelineOutput): PipelineOutput {
    const p = this.pipeline;
    expect(this.backfillSlotsUsed).toBeGreaterThanOrEqual(0);
    expect(this.backfillSlotsUsed).toBeLessThanOrEqual(this.backfillSlotsMax);
    // At most one effect per step: the pipeline never has two calls of its span running.
    expect(out.effects.filter((e) => e.kind !== 'release').length).toBeLessThanOrEqual(1);
    if (p.phase === 'gone') {
      expect(p.busy).toBe(false);
      expect(this.backfillSlotsUsed).toBe(0);
    }
    return out;
  }
}

const nothing: PipelineOutput = { effects: [], events: [] };

const resolve = (id: number, afterTs: bigint): PipelineEffect => ({ kind: 'resolve', id, key, span, afterTs });
const stream = (id: number, afterTs: bigint, uptoTs: bigint): PipelineEffect => ({ kind: 'stream', id, key, span, afterTs, uptoTs, limit: pipelineLimits.batchEventsMax });
const release = (id: number): PipelineEffect => ({ kind: 'release', id, key, span });
const loadBackfill = (id: number): PipelineEffect => ({ kind: 'load-backfill', id, key, span });
const countKeys = (id: number, snapshotTs: bigint): PipelineEffect => ({ kind: 'count-keys', id, key, span, snapshotTs });
const copyPage = (id: number, snapshotTs: bigint, afterKey: string | undefined): PipelineEffect => ({
  kind: 'copy-page',
  id,
  key,
  span,
  snapshotTs,
  afterKey,
  limit: pipelineLimits.pageKeysMax,
  sinceTs: undefined,
});
const saveBackfill = (id: number, progress: BackfillProgress): PipelineEffect => ({ kind: 'save-backfill', id, key, span, progress });

const resolved = (id: number, resolvedTs: bigint): PipelineOutcome => ({ kind: 'resolved', id, resolvedTs });
const streamed = (id: number, events: number, readUpToTs: bigint): PipelineOutcome => ({ kind: 'streamed', id, events, readUpToTs });
const failed = (id: number, error: string, retryable = true): PipelineOutcome => ({ kind: 'failed', id, error, retryable });
const loaded = (id: number, progress: BackfillProgress | undefined): PipelineOutcome => ({ kind: 'backfill-loaded', id, progress });
const counted = (id: number, keys: number): PipelineOutcome => ({ kind: 'keys-counted', id, keys });
const copied = (id: number, keys: number, nextAfterKey: string | undefined): PipelineOutcome => ({ kind: 'page-copied', id, keys, nextAfterKey });
const saved = (id: number): PipelineOutcome => ({ kind: 'backfill-saved', id });

const prepared = (resolvedTs: bigint): PipelineEvent => ({ kind: 'prepared', key, resolvedTs });
const progress = (checkpointTs: bigint, resolvedTs: bigint): PipelineEvent => ({ kind: 'progress', key, checkpointTs, resolvedTs });
const stopped = (checkpointTs: bigint): PipelineEvent => ({ kind: 'stopped', key, checkpointTs });
const retrying = (error: string): PipelineEvent => ({ kind: 'retrying', key, error });
const recovered: PipelineEvent = { kind: 'recovered', key };
const gaveUp = (error: string, retryable: boolean): PipelineEvent => ({ kind: 'failed', key, error, retryable });

const out = (effects: PipelineEffect[], events: PipelineEvent[] = []): PipelineOutput => ({ effects, events });

/** A pipeline prepared at `startTs` whose source answered `resolvedTs`, then promoted at `promoteTs`. */
function writing(startTs: bigint, resolvedTs: bigint, promoteTs = startTs, generation: BackfillGeneration = 'none'): Shell {
  const s = new Shell(startTs);
  s.generation = generation;
  const first = s.tick();
  expect(first.effects).toHaveLength(1);
  s.answer(resolved((first.effects[0] as PipelineEffect).id, resolvedTs));
  s.pipeline.promote(promoteTs);
  expect(s.pipeline.phase).toBe('writing');
  return s;
}

describe('span pipeline: rates and the split key', () => {
  it('reports events and bytes a second and the split key of each whole window, from the keys it wrote', () => {
    const s = writing(100n, 10_000n);
    s.nowMs = 0;
    let id = s.nextId;
    expect(s.tick()).toEqual(out([resolve(id, 100n)]));
    expect(s.answer(resolved(id, 10_000n))).toEqual(out([stream(id + 1, 100n, 10_000n)]));
    // The first window is not whole yet: no rate, no key.
    expect(s.answer({ kind: 'streamed', id: id + 1, events: 4, readUpToTs: 110n, keys: ['b', 'c', 'd', 'e'], bytes: 40 })).toEqual(out([], [progress(110n, 10_000n)]));
    // A second later: 4 + 4 events over 1 s (all in the reservoir of 8), the sample's median strictly after the start 'a'.
    s.nowMs = 1_000;
    id = s.nextId;
    s.tick();
    s.answer(resolved(id, 10_000n));
    const keys = ['a', 'a', 'a', 'a'];
    expect(s.answer({ kind: 'streamed', id: id + 1, events: 4, readUpToTs: 120n, keys, bytes: 40 })).toEqual(
      out([], [{ kind: 'progress', key, checkpointTs: 120n, resolvedTs: 10_000n, eventsPerSecond: 8, bytesPerSecond: 80, splitKey: 'b', sampleKeys: 5 }]),
    );
    // The next window wrote only the span's first key: no key to split at, the rate goes on.
    s.nowMs = 2_500;
    id = s.nextId;
    s.tick();
    s.answer(resolved(id, 10_000n));
    expect(s.answer({ kind: 'streamed', id: id + 1, events: 3, readUpToTs: 130n, keys: ['a', 'a', 'a'], bytes: 30 })).toEqual(
      out([], [{ kind: 'progress', key, checkpointTs: 130n, resolvedTs: 10_000n, eventsPerSecond: 2, bytesPerSecond: 20 }]),
    );
  });
});

describe('span pipeline: prepare, promote, stream', () => {
  it('reports prepared once the source answers, then streams from the promote checkpoint up to the resolved-ts', () => {
    const s = new Shell(100n);
    expect(s.pipeline.phase).toBe('preparing');
    expect(s.pipeline.checkpointTs).toBe(100n);

    expect(s.tick()).toEqual(out([resolve(1, 100n)]));
    expect(s.pipeline.busy).toBe(true);
    // One effect at a time.
    expect(s.tick()).toEqual(nothing);

    expect(s.answer(resolved(1, 150n))).toEqual(out([], [prepared(150n), progress(100n, 150n)]));
    expect(s.pipeline.phase).toBe('prepared');
    expect(s.pipeline.resolvedTs).toBe(150n);

    // A prepared pipeline only reads: it asks the source again and reports its start.
    expect(s.tick()).toEqual(out([resolve(2, 100n)]));
    expect(s.answer(resolved(2, 160n))).toEqual(out([], [progress(100n, 160n)]));

    s.pipeline.promote(120n);
    expect(s.pipeline.phase).toBe('writing');
    expect(s.pipeline.checkpointTs).toBe(120n);

    expect(s.tick()).toEqual(out([resolve(3, 120n)]));
    expect(s.answer(resolved(3, 200n))).toEqual(out([stream(4, 120n, 200n)]));
    // Nothing moves until the sink flushed.
    expect(s.pipeline.checkpointTs).toBe(120n);
    expect(s.tick()).toEqual(nothing);

    // The batch limit stopped the read at 180: the checkpoint moves to there only.
    expect(s.answer(streamed(4, 10, 180n))).toEqual(out([], [progress(180n, 200n)]));
    expect(s.pipeline.checkpointTs).toBe(180n);
    expect(s.pipeline.busy).toBe(false);

    expect(s.tick()).toEqual(out([resolve(5, 180n)]));
    expect(s.answer(resolved(5, 200n))).toEqual(out([stream(6, 180n, 200n)]));
    expect(s.answer(streamed(6, 3, 200n))).toEqual(out([], [progress(200n, 200n)]));

    // Caught up: the step resolves and has nothing to stream.
    expect(s.tick()).toEqual(out([resolve(7, 200n)]));
    expect(s.answer(resolved(7, 200n))).toEqual(out([], [progress(200n, 200n)]));
  });

  it('a promote before the source answered writes from the step after prepared', () => {
    const s = new Shell(100n);
    expect(s.tick()).toEqual(out([resolve(1, 100n)]));
    s.pipeline.promote(100n);
    expect(s.pipeline.phase).toBe('preparing');
    expect(s.answer(resolved(1, 130n))).toEqual(out([], [prepared(130n), progress(100n, 130n)]));
    expect(s.pipeline.phase).toBe('writing');
    expect(s.tick()).toEqual(out([resolve(2, 100n)]));
    expect(s.answer(resolved(2, 130n))).toEqual(out([stream(3, 100n, 130n)]));
  });

  it('a stream that read up to its position or below does not move the checkpoint', () => {
    const s = writing(100n, 200n, 150n);
    expect(s.tick()).toEqual(out([resolve(2, 150n)]));
    expect(s.answer(resolved(2, 200n))).toEqual(out([stream(3, 150n, 200n)]));
    expect(s.answer(streamed(3, 0, 150n))).toEqual(out([], [progress(150n, 200n)]));
    expect(s.tick()).toEqual(out([resolve(4, 150n)]));
    expect(s.answer(resolved(4, 200n))).toEqual(out([stream(5, 150n, 200n)]));
    // A source that answers below the position (it must not, but the checkpoint never goes back).
    expect(s.answer(streamed(5, 0, 120n))).toEqual(out([], [progress(150n, 200n)]));
    expect(s.pipeline.checkpointTs).toBe(150n);
  });

  it('the barrier caps what a stream may read, and a pipeline at the barrier does not stream', () => {
    const s = writing(100n, 200n);
    s.barrierTs = 150n;
    expect(s.tick()).toEqual(out([resolve(2, 100n)]));
    expect(s.answer(resolved(2, 250n))).toEqual(out([stream(3, 100n, 150n)]));
    expect(s.answer(streamed(3, 4, 150n))).toEqual(out([], [progress(150n, 250n)]));
    expect(s.tick()).toEqual(out([resolve(4, 150n)]));
    expect(s.answer(resolved(4, 260n))).toEqual(out([], [progress(150n, 260n)]));
    // The barrier lifts: it streams on.
    s.barrierTs = maxTs;
    expect(s.tick()).toEqual(out([resolve(5, 150n)]));
    expect(s.answer(resolved(5, 260n))).toEqual(out([stream(6, 150n, 260n)]));
  });
});

describe('span pipeline: backfill', () => {
  const G = 50n;

  it('copies the snapshot page by page; the checkpoint stays below the snapshot until the last page is saved', () => {
    // A changefeed created with a backfill at 50: the spans start at 49.
    const s = writing(49n, 60n, 49n, G);
    expect(s.tick()).toEqual(out([resolve(2, 49n)]));
    expect(s.answer(resolved(2, 60n))).toEqual(out([loadBackfill(3)]));
    expect(s.answer(loaded(3, undefined))).toEqual(out([countKeys(4, G)]));
    expect(s.pipeline.backfilling).toBe(true);
    expect(s.pipeline.checkpointTs).toBe(49n);
    expect(s.answer(counted(4, 3))).toEqual(out([copyPage(5, G, undefined)]));
    expect(s.backfillSlotsUsed).toBe(1);

    const first: BackfillProgress = { generation: G, snapshotTs: G, afterKey: 'b', keysDone: 2, keysTotal: 3, done: false, sinceTs: undefined, startedAtMs: 0, finishedAtMs: undefined };
    expect(s.answer(copied(5, 2, 'b'))).toEqual(out([saveBackfill(6, first)]));
    expect(s.backfillSlotsUsed).toBe(0);
    expect(s.pipeline.backfillProgress).toEqual(first);
    expect(s.answer(saved(6))).toEqual(out([], [progress(49n, 60n)]));

    // The next step goes on at the token, without counting again.
    expect(s.tick()).toEqual(out([resolve(7, 49n)]));
    expect(s.answer(resolved(7, 70n))).toEqual(out([copyPage(8, G, 'b')]));
    const last: BackfillProgress = { generation: G, snapshotTs: G, afterKey: undefined, keysDone: 3, keysTotal: 3, done: true, sinceTs: undefined, startedAtMs: 0, finishedAtMs: 0 };
    expect(s.answer(copied(8, 1, undefined))).toEqual(out([saveBackfill(9, last)]));
    // Copied but its record not saved yet: still below the snapshot.
    expect(s.pipeline.checkpointTs).toBe(49n);
    expect(s.pipeline.backfilling).toBe(false);

    expect(s.answer(saved(9))).toEqual(out([], [progress(G, 70n)]));
    expect(s.pipeline.checkpointTs).toBe(G);
    expect(s.pipeline.backfillProgress).toBeUndefined();

    // Then it streams after the snapshot.
    expect(s.tick()).toEqual(out([resolve(10, G)]));
    expect(s.answer(resolved(10, 70n))).toEqual(out([stream(11, G, 70n)]));
    expect(s.answer(streamed(11, 5, 70n))).toEqual(out([], [progress(70n, 70n)]));
  });

  it('saves a last page whose save failed again, without copying it again', () => {
    const s = writing(49n, 60n, 49n, G);
    s.tick();
    s.answer(resolved(2, 60n));
    s.answer(loaded(3, undefined));
    s.answer(counted(4, 1));
    const last: BackfillProgress = { generation: G, snapshotTs: G, afterKey: undefined, keysDone: 1, keysTotal: 1, done: true, sinceTs: undefined, startedAtMs: 0, finishedAtMs: 0 };
    expect(s.answer(copied(5, 1, undefined))).toEqual(out([saveBackfill(6, last)]));

    expect(s.answer(failed(6, 'etcd unavailable'))).toEqual(out([release(7)], [retrying('etcd unavailable'), progress(s.pipeline.checkpointTs, s.pipeline.resolvedTs)]));
    expect(s.pipeline.checkpointTs).toBe(49n);
    expect(s.pipeline.failures).toBe(1);
    expect(s.tick(99)).toEqual(nothing);

    expect(s.tick(100)).toEqual(out([resolve(8, 49n)]));
    expect(s.answer(resolved(8, 60n))).toEqual(out([saveBackfill(9, last)]));
    expect(s.backfillSlotsUsed).toBe(0);
    expect(s.answer(saved(9))).toEqual(out([], [recovered, progress(G, 60n)]));
    expect(s.pipeline.failures).toBe(0);
  });

  it('a done record of the current generation skips the copy and streams after its snapshot', () => {
    const s = writing(49n, 60n, 49n, G);
    expect(s.tick()).toEqual(out([resolve(2, 49n)]));
    expect(s.answer(resolved(2, 60n))).toEqual(out([loadBackfill(3)]));
    const done: BackfillProgress = { generation: G, snapshotTs: G, afterKey: undefined, keysDone: 7, keysTotal: 7, done: true, sinceTs: undefined, startedAtMs: 0, finishedAtMs: 0 };
    expect(s.answer(loaded(3, done))).toEqual(out([stream(4, G, 60n)]));
    expect(s.pipeline.checkpointTs).toBe(G);
    expect(s.answer(streamed(4, 2, 60n))).toEqual(out([], [progress(60n, 60n)]));
  });

  it('decides again when the generation of its table changes under it (an info copy that was behind)', () => {
    const s = writing(49n, 60n, 49n, G);
    s.tick();
    s.answer(resolved(2, 60n));
    const done: BackfillProgress = { generation: G, snapshotTs: G, afterKey: undefined, keysDone: 7, keysTotal: 7, done: true, sinceTs: undefined, startedAtMs: 0, finishedAtMs: 0 };
    expect(s.answer(loaded(3, done))).toEqual(out([stream(4, G, 60n)]));
    expect(s.answer(streamed(4, 2, 60n))).toEqual(out([], [progress(60n, 60n)]));
    // The capture reads the info: the table was removed and added back, backfilled at 90.
    s.generation = 90n;
    expect(s.tick()).toEqual(out([resolve(5, 89n)]));
    expect(s.answer(resolved(5, 95n))).toEqual(out([loadBackfill(6)]));
    expect(s.answer(loaded(6, undefined))).toEqual(out([countKeys(7, 90n)]));
    expect(s.pipeline.checkpointTs).toBe(60n);
  });

  it('a record of another generation is ignored: the backfill starts over at the generation', () => {
    const s = writing(49n, 60n, 49n, G);
    s.tick();
    expect(s.answer(resolved(2, 60n))).toEqual(out([loadBackfill(3)]));
    const earlier: BackfillProgress = { generation: 30n, snapshotTs: 30n, afterKey: undefined, keysDone: 7, keysTotal: 7, done: true, sinceTs: undefined, startedAtMs: 0, finishedAtMs: 0 };
    expect(s.answer(loaded(3, earlier))).toEqual(out([countKeys(4, G)]));
    expect(s.pipeline.checkpointTs).toBe(49n);

    // And one of another generation under way does not give its token either.
    const t = writing(49n, 60n, 49n, G);
    t.tick();
    t.answer(resolved(2, 60n));
    const underWay: BackfillProgress = { generation: 40n, snapshotTs: 55n, afterKey: 'k', keysDone: 2, keysTotal: 9, done: false, sinceTs: undefined, startedAtMs: 0, finishedAtMs: undefined };
    expect(t.answer(loaded(3, underWay))).toEqual(out([countKeys(4, G)]));
    expect(t.answer(counted(4, 3))).toEqual(out([copyPage(5, G, undefined)]));
  });

  it('a record under way resumes at its token, its snapshot and its counts', () => {
    const s = writing(49n, 60n, 49n, G);
    s.tick();
    s.answer(resolved(2, 60n));
    const underWay: BackfillProgress = { generation: G, snapshotTs: G, afterKey: 'f', keysDone: 4, keysTotal: 5, done: false, sinceTs: undefined, startedAtMs: 0, finishedAtMs: undefined };
    expect(s.answer(loaded(3, underWay))).toEqual(out([copyPage(4, G, 'f')]));
    expect(s.pipeline.backfillProgress).toEqual(underWay);
    expect(s.answer(copied(4, 1, undefined))).toEqual(
      out([saveBackfill(5, { generation: G, snapshotTs: G, afterKey: undefined, keysDone: 5, keysTotal: 5, done: true, sinceTs: undefined, startedAtMs: 0, finishedAtMs: 0 })]),
    );
    expect(s.answer(saved(5))).toEqual(out([], [progress(G, 60n)]));
  });

  it('a span past the generation copies at its own position and reports just below it meanwhile', () => {
    // A table added (backfill revision 50) while the changefeed's checkpoint moved on to 80.
    const s = writing(80n, 90n, 80n, G);
    expect(s.pipeline.checkpointTs).toBe(80n);
    expect(s.tick()).toEqual(out([resolve(2, 80n)]));
    expect(s.answer(resolved(2, 90n))).toEqual(out([loadBackfill(3)]));
    expect(s.answer(loaded(3, undefined))).toEqual(out([countKeys(4, 80n)]));
    // min(position, snapshot - 1): one below the promote checkpoint (the agent keeps the max).
    expect(s.pipeline.checkpointTs).toBe(79n);
    expect(s.answer(counted(4, 0))).toEqual(out([copyPage(5, 80n, undefined)]));
    expect(s.answer(copied(5, 0, undefined))).toEqual(
      out([saveBackfill(6, { generation: G, snapshotTs: 80n, afterKey: undefined, keysDone: 0, keysTotal: 0, done: true, sinceTs: undefined, startedAtMs: 0, finishedAtMs: 0 })]),
    );
    expect(s.answer(saved(6))).toEqual(out([], [progress(80n, 90n)]));
    expect(s.tick()).toEqual(out([resolve(7, 80n)]));
    expect(s.answer(resolved(7, 90n))).toEqual(out([stream(8, 80n, 90n)]));
  });

  it('a record of the generation whose snapshot the span has passed is not resumed', () => {
    const s = writing(80n, 90n, 80n, G);
    s.tick();
    s.answer(resolved(2, 90n));
    const behind: BackfillProgress = { generation: G, snapshotTs: 60n, afterKey: 'k', keysDone: 2, keysTotal: 4, done: false, sinceTs: undefined, startedAtMs: 0, finishedAtMs: undefined };
    expect(s.answer(loaded(3, behind))).toEqual(out([countKeys(4, 80n)]));
  });

  it('a span below the generation resolves after generation - 1, reports its position until the snapshot is in, then jumps to it', () => {
    // A resume with backfill at 50 of a changefeed whose checkpoint was 30 (compacted since).
    const s = new Shell(30n);
    s.generation = G;
    expect(s.tick()).toEqual(out([resolve(1, 49n)]));
    expect(s.answer(resolved(1, 60n))).toEqual(out([], [prepared(60n), progress(30n, 60n)]));
    s.pipeline.promote(30n);
    expect(s.tick()).toEqual(out([resolve(2, 49n)]));
    expect(s.answer(resolved(2, 60n))).toEqual(out([loadBackfill(3)]));
    expect(s.answer(loaded(3, undefined))).toEqual(out([countKeys(4, G)]));
    expect(s.pipeline.checkpointTs).toBe(30n);
    expect(s.answer(counted(4, 1))).toEqual(out([copyPage(5, G, undefined)]));
    expect(s.answer(copied(5, 1, undefined))).toEqual(
      out([saveBackfill(6, { generation: G, snapshotTs: G, afterKey: undefined, keysDone: 1, keysTotal: 1, done: true, sinceTs: undefined, startedAtMs: 0, finishedAtMs: 0 })]),
    );
    expect(s.answer(saved(6))).toEqual(out([], [progress(G, 60n)]));
    expect(s.tick()).toEqual(out([resolve(7, G)]));
    expect(s.answer(resolved(7, 60n))).toEqual(out([stream(8, G, 60n)]));
  });

  it('waits while the table is unknown: no lookup, no stream, until the generation is known', () => {
    const s = writing(80n, 90n, 80n, 'unknown-table');
    expect(s.tick()).toEqual(out([resolve(2, 80n)]));
    expect(s.answer(resolved(2, 95n))).toEqual(out([], [progress(80n, 95n)]));
    expect(s.tick()).toEqual(out([resolve(3, 80n)]));
    expect(s.answer(resolved(3, 99n))).toEqual(out([], [progress(80n, 99n)]));
    s.generation = 85n;
    expect(s.tick()).toEqual(out([resolve(4, 84n)]));
    expect(s.answer(resolved(4, 99n))).toEqual(out([loadBackfill(5)]));
    expect(s.answer(loaded(5, undefined))).toEqual(out([countKeys(6, 85n)]));
    expect(s.pipeline.checkpointTs).toBe(80n);
  });

  it('a table learned to be unbackfilled after the unknown wait streams', () => {
    const s = writing(80n, 90n, 80n, 'unknown-table');
    s.tick();
    expect(s.answer(resolved(2, 95n))).toEqual(out([], [progress(80n, 95n)]));
    s.generation = 'none';
    expect(s.tick()).toEqual(out([resolve(3, 80n)]));
    expect(s.answer(resolved(3, 95n))).toEqual(out([stream(4, 80n, 95n)]));
  });

  it('waits for a backfill slot: the step ends without a page and the next one takes it', () => {
    const s = writing(49n, 60n, 49n, G);
    s.backfillSlotsUsed = 1;
    s.tick();
    s.answer(resolved(2, 60n));
    s.answer(loaded(3, undefined));
    expect(s.answer(counted(4, 4))).toEqual(out([], [progress(49n, 60n)]));
    expect(s.pipeline.busy).toBe(false);
    s.backfillSlotsUsed = 0;
    expect(s.tick()).toEqual(out([resolve(5, 49n)]));
    expect(s.answer(resolved(5, 60n))).toEqual(out([copyPage(6, G, undefined)]));
    expect(s.backfillSlotsUsed).toBe(1);
  });

  it('a failed page gives its slot back and is copied again from the same token', () => {
    const s = writing(49n, 60n, 49n, G);
    s.tick();
    s.answer(resolved(2, 60n));
    s.answer(loaded(3, { generation: G, snapshotTs: G, afterKey: 'c', keysDone: 2, keysTotal: 4, done: false, sinceTs: undefined, startedAtMs: 0, finishedAtMs: undefined }));
    expect(s.backfillSlotsUsed).toBe(1);
    expect(s.answer(failed(4, 'sink down'))).toEqual(out([release(5)], [retrying('sink down'), progress(s.pipeline.checkpointTs, s.pipeline.resolvedTs)]));
    expect(s.backfillSlotsUsed).toBe(0);
    expect(s.tick(100)).toEqual(out([resolve(6, 49n)]));
    expect(s.answer(resolved(6, 60n))).toEqual(out([copyPage(7, G, 'c')]));
  });
});

describe('span pipeline: retries', () => {
  it('retries a failed step after 100, 200, 300 (capped) ms, and reports recovered once a step goes through', () => {
    const s = writing(100n, 200n);
    expect(s.tick(0)).toEqual(out([resolve(2, 100n)]));
    expect(s.answer(resolved(2, 200n))).toEqual(out([stream(3, 100n, 200n)]));
    expect(s.answer(failed(3, 'sink down'))).toEqual(out([release(4)], [retrying('sink down'), progress(s.pipeline.checkpointTs, s.pipeline.resolvedTs)]));
    expect(s.pipeline.failures).toBe(1);
    expect(s.pipeline.checkpointTs).toBe(100n);
    expect(s.tick(99)).toEqual(nothing);

    expect(s.tick(100)).toEqual(out([resolve(5, 100n)]));
    expect(s.answer(resolved(5, 200n))).toEqual(out([stream(6, 100n, 200n)]));
    expect(s.answer(failed(6, 'sink down'))).toEqual(out([release(7)], [retrying('sink down'), progress(s.pipeline.checkpointTs, s.pipeline.resolvedTs)]));
    expect(s.tick(299)).toEqual(nothing);

    expect(s.tick(300)).toEqual(out([resolve(8, 100n)]));
    expect(s.answer(failed(8, 'source down'))).toEqual(out([release(9)], [retrying('source down'), progress(s.pipeline.checkpointTs, s.pipeline.resolvedTs)]));
    expect(s.pipeline.failures).toBe(3);
    // 400 capped at retryBackoffMaxMs.
    expect(s.tick(599)).toEqual(nothing);

    expect(s.tick(600)).toEqual(out([resolve(10, 100n)]));
    expect(s.answer(resolved(10, 200n))).toEqual(out([stream(11, 100n, 200n)]));
    expect(s.answer(streamed(11, 10, 170n))).toEqual(out([], [recovered, progress(170n, 200n)]));
    expect(s.pipeline.failures).toBe(0);
    // No backoff any more.
    expect(s.tick(601)).toEqual(out([resolve(12, 170n)]));
  });

  it('a step that only resolves proves nothing for a writing pipeline: no recovered, failures kept', () => {
    const s = writing(100n, 100n);
    expect(s.tick(0)).toEqual(out([resolve(2, 100n)]));
    expect(s.answer(failed(2, 'source down'))).toEqual(out([release(3)], [retrying('source down'), progress(s.pipeline.checkpointTs, s.pipeline.resolvedTs)]));
    expect(s.tick(100)).toEqual(out([resolve(4, 100n)]));
    expect(s.answer(resolved(4, 100n))).toEqual(out([], [progress(100n, 100n)]));
    expect(s.pipeline.failures).toBe(1);
    // A failed write still reports how far the source got: the owner tells a stalled
    // checkpoint from a quiet source by it.
    expect(s.tick(300)).toEqual(out([resolve(5, 100n)]));
    expect(s.answer(resolved(5, 150n))).toEqual(out([stream(6, 100n, 150n)]));
    expect(s.answer(failed(6, 'sink down'))).toEqual(out([release(7)], [retrying('sink down'), progress(100n, 150n)]));
  });

  it('a pipeline that only reads recovers once the source answers', () => {
    const s = new Shell(100n);
    expect(s.tick(0)).toEqual(out([resolve(1, 100n)]));
    // Not prepared yet: nothing to say of where it is.
    expect(s.answer(failed(1, 'source down'))).toEqual(out([release(2)], [retrying('source down')]));
    expect(s.tick(100)).toEqual(out([resolve(3, 100n)]));
    expect(s.answer(resolved(3, 110n))).toEqual(out([], [prepared(110n), recovered, progress(100n, 110n)]));
  });

  it('gives the span back after stepRetriesMax retries of failures in a row', () => {
    const s = writing(100n, 200n);
    let at = 0;
    for (const backoffMs of [100, 200, 300, 300]) {
      const [effect] = s.tick(at).effects;
      expect(effect).toEqual(resolve(s.nextId - 1, 100n));
      expect(s.answer(failed((effect as PipelineEffect).id, 'sink down'))).toEqual(out([release(s.nextId - 1)], [retrying('sink down'), progress(s.pipeline.checkpointTs, s.pipeline.resolvedTs)]));
      expect(s.tick(at + backoffMs - 1)).toEqual(nothing);
      at += backoffMs;
    }
    expect(s.pipeline.failures).toBe(pipelineLimits.stepRetriesMax);
    expect(s.tick(at)).toEqual(out([resolve(10, 100n)]));
    expect(s.answer(failed(10, 'sink down'))).toEqual(out([release(11)], [gaveUp('sink down', true)]));
    expect(s.pipeline.phase).toBe('gone');
    expect(s.tick(at + 10_000)).toEqual(nothing);
    expect(s.stop()).toEqual(nothing);
  });

  it('fails at once with retryable false on an error retrying cannot fix', () => {
    const s = writing(100n, 200n);
    s.tick(0);
    expect(s.answer(resolved(2, 200n))).toEqual(out([stream(3, 100n, 200n)]));
    expect(s.answer(failed(3, 'revision 100 compacted', false))).toEqual(out([release(4)], [gaveUp('revision 100 compacted', false)]));
    expect(s.pipeline.phase).toBe('gone');
    expect(s.tick(1)).toEqual(nothing);
  });

  it('a non-retryable failure during retries fails at once too', () => {
    const s = writing(100n, 200n);
    s.tick(0);
    expect(s.answer(failed(2, 'sink down'))).toEqual(out([release(3)], [retrying('sink down'), progress(s.pipeline.checkpointTs, s.pipeline.resolvedTs)]));
    expect(s.tick(100)).toEqual(out([resolve(4, 100n)]));
    expect(s.answer(failed(4, 'revision 100 compacted', false))).toEqual(out([release(5)], [gaveUp('revision 100 compacted', false)]));
  });
});

describe('span pipeline: deadlines', () => {
  it('counts an effect without an outcome by its deadline as a failure, issues none while it hangs, and ignores its late outcome', () => {
    const s = writing(100n, 200n);
    expect(s.tick(0)).toEqual(out([resolve(2, 100n)]));
    expect(s.answer(resolved(2, 200n))).toEqual(out([stream(3, 100n, 200n)]));
    expect(s.tick(999)).toEqual(nothing);

    const hung = 'stream did not return within 1000 ms';
    expect(s.tick(1_000)).toEqual(out([release(4)], [retrying(hung), progress(s.pipeline.checkpointTs, s.pipeline.resolvedTs)]));
    expect(s.pipeline.busy).toBe(false);
    expect(s.tick(1_099)).toEqual(nothing);
    // The abandoned call still runs: the retry counts a failure and issues nothing.
    const stillHung = `a step that failed with: ${hung} has not returned`;
    expect(s.tick(1_100)).toEqual(out([release(5)], [retrying(stillHung), progress(s.pipeline.checkpointTs, s.pipeline.resolvedTs)]));
    expect(s.tick(1_299)).toEqual(nothing);
    expect(s.tick(1_300)).toEqual(out([release(6)], [retrying(stillHung), progress(s.pipeline.checkpointTs, s.pipeline.resolvedTs)]));
    expect(s.pipeline.failures).toBe(3);

    // Its outcome comes late: ignored (the position does not move, no step starts).
    expect(s.answer(streamed(3, 10, 150n))).toEqual(nothing);
    expect(s.pipeline.checkpointTs).toBe(100n);
    expect(s.tick(1_599)).toEqual(nothing);

    // The next retry issues a new effect, and reads the same events again.
    expect(s.tick(1_600)).toEqual(out([resolve(7, 100n)]));
    expect(s.answer(resolved(7, 200n))).toEqual(out([stream(8, 100n, 200n)]));
    expect(s.answer(streamed(8, 10, 150n))).toEqual(out([], [recovered, progress(150n, 200n)]));
  });

  it('a late failure of the abandoned effect is ignored too', () => {
    const s = writing(100n, 200n);
    s.tick(0);
    expect(s.tick(1_000)).toEqual(out([release(3)], [retrying('resolve did not return within 1000 ms'), progress(s.pipeline.checkpointTs, s.pipeline.resolvedTs)]));
    expect(s.answer(failed(2, 'late error', false))).toEqual(nothing);
    expect(s.pipeline.phase).toBe('writing');
    expect(s.tick(1_100)).toEqual(out([resolve(4, 100n)]));
  });

  it('gives a hung span back after its retries', () => {
    const s = writing(100n, 200n);
    expect(s.tick(0)).toEqual(out([resolve(2, 100n)]));
    const hung = 'resolve did not return within 1000 ms';
    const stillHung = `a step that failed with: ${hung} has not returned`;
    expect(s.tick(1_000)).toEqual(out([release(3)], [retrying(hung), progress(s.pipeline.checkpointTs, s.pipeline.resolvedTs)]));
    expect(s.tick(1_100)).toEqual(out([release(4)], [retrying(stillHung), progress(s.pipeline.checkpointTs, s.pipeline.resolvedTs)]));
    expect(s.tick(1_300)).toEqual(out([release(5)], [retrying(stillHung), progress(s.pipeline.checkpointTs, s.pipeline.resolvedTs)]));
    expect(s.tick(1_600)).toEqual(out([release(6)], [retrying(stillHung), progress(s.pipeline.checkpointTs, s.pipeline.resolvedTs)]));
    expect(s.pipeline.failures).toBe(pipelineLimits.stepRetriesMax);
    expect(s.tick(1_900)).toEqual(out([release(7)], [gaveUp(stillHung, true)]));
    expect(s.pipeline.phase).toBe('gone');
    expect(s.answer(resolved(2, 300n))).toEqual(nothing);
    expect(s.tick(5_000)).toEqual(nothing);
  });

  it('a page past its deadline gives its backfill slot back', () => {
    const s = writing(49n, 60n, 49n, 50n);
    s.tick(0);
    s.answer(resolved(2, 60n));
    s.answer(loaded(3, undefined));
    expect(s.answer(counted(4, 2))).toEqual(out([copyPage(5, 50n, undefined)]));
    expect(s.backfillSlotsUsed).toBe(1);
    expect(s.tick(1_000)).toEqual(out([release(6)], [retrying('copy-page did not return within 1000 ms'), progress(s.pipeline.checkpointTs, s.pipeline.resolvedTs)]));
    expect(s.backfillSlotsUsed).toBe(0);
    // Its late outcome gives nothing back twice and moves no token.
    expect(s.answer(copied(5, 2, undefined))).toEqual(nothing);
    expect(s.backfillSlotsUsed).toBe(0);
    expect(s.pipeline.backfillProgress).toEqual({ generation: 50n, snapshotTs: 50n, afterKey: undefined, keysDone: 0, keysTotal: 2, done: false, sinceTs: undefined, startedAtMs: 0, finishedAtMs: undefined });
    expect(s.tick(1_100)).toEqual(out([resolve(7, 49n)]));
    expect(s.answer(resolved(7, 60n))).toEqual(out([copyPage(8, 50n, undefined)]));
  });
});

describe('span pipeline: stop', () => {
  it('stops at once when idle, with its start when it never wrote', () => {
    const fresh = new Shell(100n);
    expect(fresh.stop()).toEqual(out([release(1)], [stopped(100n)]));
    expect(fresh.pipeline.phase).toBe('gone');
    expect(fresh.tick()).toEqual(nothing);

    const s = new Shell(100n);
    s.tick();
    s.answer(resolved(1, 150n));
    expect(s.stop()).toEqual(out([release(2)], [stopped(100n)]));
    expect(s.stop()).toEqual(nothing);
  });

  it('stops at once when idle and writing, with the durable checkpoint', () => {
    const s = writing(100n, 200n);
    s.tick();
    s.answer(resolved(2, 200n));
    s.answer(streamed(3, 5, 160n));
    expect(s.stop()).toEqual(out([release(4)], [stopped(160n)]));
  });

  it('waits for the effect in flight; a streamed answer raises the final checkpoint', () => {
    const s = writing(100n, 200n);
    s.tick();
    expect(s.answer(resolved(2, 200n))).toEqual(out([stream(3, 100n, 200n)]));
    expect(s.stop()).toEqual(nothing);
    expect(s.pipeline.phase).toBe('stopping');
    expect(s.tick(500)).toEqual(nothing);
    expect(s.answer(streamed(3, 10, 180n))).toEqual(out([release(4)], [stopped(180n)]));
    expect(s.pipeline.phase).toBe('gone');
    // Duplicated and later outcomes are ignored.
    expect(s.answer(streamed(3, 10, 190n))).toEqual(nothing);
    expect(s.tick(5_000)).toEqual(nothing);
  });

  it('a resolve answered while stopping starts nothing', () => {
    const s = writing(100n, 200n);
    expect(s.tick()).toEqual(out([resolve(2, 100n)]));
    expect(s.stop()).toEqual(nothing);
    expect(s.answer(resolved(2, 300n))).toEqual(out([release(3)], [stopped(100n)]));
  });

  it('a failure while stopping stops with the checkpoint durable before', () => {
    const s = writing(100n, 200n);
    s.tick();
    s.answer(resolved(2, 200n));
    s.stop();
    expect(s.answer(failed(3, 'sink down'))).toEqual(out([release(4)], [stopped(100n)]));
  });

  it('a deadline while stopping stops with the checkpoint durable before, and the late answer is ignored', () => {
    const s = writing(100n, 200n);
    s.tick(0);
    s.answer(resolved(2, 200n));
    expect(s.stop()).toEqual(nothing);
    expect(s.tick(999)).toEqual(nothing);
    expect(s.tick(1_000)).toEqual(out([release(4)], [stopped(100n)]));
    expect(s.pipeline.phase).toBe('gone');
    expect(s.answer(streamed(3, 10, 180n))).toEqual(nothing);
  });

  it('a page in flight when stopping gives its slot back with its answer', () => {
    const s = writing(49n, 60n, 49n, 50n);
    s.tick(0);
    s.answer(resolved(2, 60n));
    s.answer(loaded(3, undefined));
    s.answer(counted(4, 2));
    expect(s.backfillSlotsUsed).toBe(1);
    expect(s.stop()).toEqual(nothing);
    expect(s.answer(copied(5, 2, undefined))).toEqual(out([release(6)], [stopped(49n)]));
    expect(s.backfillSlotsUsed).toBe(0);
  });

  it('stops at once during a backoff, and while an abandoned effect hangs', () => {
    const s = writing(100n, 200n);
    s.tick(0);
    s.answer(failed(2, 'sink down'));
    expect(s.stop()).toEqual(out([release(4)], [stopped(100n)]));

    const t = writing(100n, 200n);
    t.tick(0);
    expect(t.tick(1_000)).toEqual(out([release(3)], [retrying('resolve did not return within 1000 ms'), progress(t.pipeline.checkpointTs, t.pipeline.resolvedTs)]));
    expect(t.stop()).toEqual(out([release(4)], [stopped(100n)]));
    expect(t.answer(resolved(2, 300n))).toEqual(nothing);
  });

  it('ignores promote after stop', () => {
    const s = writing(100n, 200n);
    s.stop();
    s.pipeline.promote(500n);
    expect(s.pipeline.phase).toBe('gone');
  });
});

describe('span pipeline: duplicated and reordered outcomes', () => {
  it('ignores a duplicated outcome and one of an earlier effect', () => {
    const s = writing(100n, 200n);
    s.tick();
    expect(s.answer(resolved(2, 200n))).toEqual(out([stream(3, 100n, 200n)]));
    // The resolve's answer again: no second stream.
    expect(s.answer(resolved(2, 200n))).toEqual(nothing);
    expect(s.answer(streamed(3, 5, 150n))).toEqual(out([], [progress(150n, 200n)]));
    expect(s.answer(streamed(3, 5, 150n))).toEqual(nothing);

    expect(s.tick()).toEqual(out([resolve(4, 150n)]));
    expect(s.answer(resolved(4, 200n))).toEqual(out([stream(5, 150n, 200n)]));
    // An answer of an earlier stream, delivered again after the next one started.
    expect(s.answer(streamed(3, 5, 199n))).toEqual(nothing);
    expect(s.answer(failed(3, 'old'))).toEqual(nothing);
    expect(s.pipeline.checkpointTs).toBe(150n);
    expect(s.answer(streamed(5, 5, 200n))).toEqual(out([], [progress(200n, 200n)]));
  });

  it('ignores an outcome of an unknown id', () => {
    const s = new Shell(100n);
    s.tick();
    expect(s.answer(resolved(42, 500n))).toEqual(nothing);
    expect(s.pipeline.phase).toBe('preparing');
    expect(s.answer(resolved(1, 150n))).toEqual(out([], [prepared(150n), progress(100n, 150n)]));
  });
});

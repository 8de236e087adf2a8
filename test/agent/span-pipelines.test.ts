/**
 * The span pipelines of one changefeed on one capture, step by step: the agent's
 * commands, the bound on effects in flight (round-robin), the bound on backfill pages in
 * flight and every way a slot comes back, and replaced or cleared pipelines whose
 * outcomes come late.
 */
import { describe, expect, it } from 'vitest';
import { SpanPipelines } from '../../src/agent/span-pipelines.ts';
import type { SpanPipelinesLimits } from '../../src/agent/span-pipelines.ts';
import type { BackfillGeneration, PipelineEffect, PipelineOutcome, PipelineOutput } from '../../src/agent/span-pipeline.ts';
import type { PipelineCommand, PipelineEvent } from '../../src/agent/pipeline.ts';
import type { Span } from '../../src/core/span.ts';
import { spanKey } from '../../src/core/span.ts';
import { a, b, c, keyA, keyC } from './fake-owner.ts';
import { pipelineLimits } from './pipeline-fixtures.ts';

const limits: SpanPipelinesLimits = { ...pipelineLimits, stepsInFlightMax: 2, backfillsInFlightMax: 1 };

/** The pipelines and the shell's clock and backfill generation. */
class Shell {
  nowMs = 0;
  generation: BackfillGeneration = 'none';
  readonly pipelines: SpanPipelines;

  constructor(overrides: Partial<SpanPipelinesLimits> = {}) {
    this.pipelines = new SpanPipelines({ ...limits, ...overrides });
  }

  private readonly generationOf = (): BackfillGeneration => this.generation;

  apply(...commands: PipelineCommand[]): PipelineOutput {
    return this.checked(this.pipelines.apply(commands, this.nowMs, this.generationOf));
  }

  tick(nowMs = this.nowMs): PipelineOutput {
    this.nowMs = nowMs;
    return this.checked(this.pipelines.tick(nowMs, this.generationOf));
  }

  answer(outcome: PipelineOutcome): PipelineOutput {
    return this.checked(this.pipelines.onOutcome(outcome, this.nowMs, this.generationOf));
  }

  clear(): void {
    this.pipelines.clear();
    this.checked({ effects: [], events: [] });
  }

  /** Invariants after every input: both bounds hold, and the busy pipelines are what they say. */
  private checked(out: PipelineOutput): PipelineOutput {
    const all = [...this.pipelines.values()];
    expect(all.filter((p) => p.busy).length).toBeLessThanOrEqual(limits.stepsInFlightMax);
    expect(this.pipelines.backfillsInFlight).toBeGreaterThanOrEqual(0);
    expect(this.pipelines.backfillsInFlight).toBeLessThanOrEqual(limits.backfillsInFlightMax);
    for (const p of all) expect(p.phase).not.toBe('gone');
    return out;
  }
}

const nothing: PipelineOutput = { effects: [], events: [] };
const out = (effects: PipelineEffect[], events: PipelineEvent[] = []): PipelineOutput => ({ effects, events });

const prepare = (span: Span, checkpointTs: bigint): PipelineCommand => ({ kind: 'prepare', span, key: spanKey(span), checkpointTs });
const promote = (span: Span, checkpointTs: bigint): PipelineCommand => ({ kind: 'promote', span, key: spanKey(span), checkpointTs });
const stop = (span: Span): PipelineCommand => ({ kind: 'stop', span, key: spanKey(span) });

const resolve = (id: number, span: Span, afterTs: bigint): PipelineEffect => ({ kind: 'resolve', id, key: spanKey(span), span, afterTs });
const stream = (id: number, span: Span, afterTs: bigint, uptoTs: bigint): PipelineEffect => ({
  kind: 'stream',
  id,
  key: spanKey(span),
  span,
  afterTs,
  uptoTs,
  limit: limits.batchEventsMax,
});
const release = (id: number, span: Span): PipelineEffect => ({ kind: 'release', id, key: spanKey(span), span });
const loadBackfill = (id: number, span: Span): PipelineEffect => ({ kind: 'load-backfill', id, key: spanKey(span), span });
const countKeys = (id: number, span: Span, snapshotTs: bigint): PipelineEffect => ({ kind: 'count-keys', id, key: spanKey(span), span, snapshotTs });
const copyPage = (id: number, span: Span, snapshotTs: bigint, afterKey: string | undefined): PipelineEffect => ({
  kind: 'copy-page',
  id,
  key: spanKey(span),
  span,
  snapshotTs,
  afterKey,
  limit: limits.pageKeysMax,
  sinceTs: undefined,
});

const resolved = (id: number, resolvedTs: bigint): PipelineOutcome => ({ kind: 'resolved', id, resolvedTs });

const prepared = (span: Span, resolvedTs: bigint): PipelineEvent => ({ kind: 'prepared', key: spanKey(span), resolvedTs });
const progress = (span: Span, checkpointTs: bigint, resolvedTs: bigint): PipelineEvent => ({ kind: 'progress', key: spanKey(span), checkpointTs, resolvedTs });
const stopped = (span: Span, checkpointTs: bigint): PipelineEvent => ({ kind: 'stopped', key: spanKey(span), checkpointTs });
const retrying = (span: Span, error: string): PipelineEvent => ({ kind: 'retrying', key: spanKey(span), error });
/** Where a span's pipeline is now: what it reports after a failed step. */
const here = (s: { pipelines: SpanPipelines }, span: Span): [bigint, bigint] => {
  const pipeline = s.pipelines.get(spanKey(span));
  return [pipeline?.checkpointTs ?? -1n, pipeline?.resolvedTs ?? -1n];
};

describe('span pipelines: commands', () => {
  it('prepares, promotes, applies the barrier and stops one pipeline per key', () => {
    const s = new Shell();
    expect(s.apply(prepare(a, 10n))).toEqual(nothing);
    expect(s.pipelines.size).toBe(1);
    expect(s.tick()).toEqual(out([resolve(1, a, 10n)]));
    expect(s.answer(resolved(1, 30n))).toEqual(out([], [prepared(a, 30n), progress(a, 10n, 30n)]));
    expect(s.apply(promote(a, 10n), { kind: 'barrier', barrierTs: 20n })).toEqual(nothing);
    expect(s.pipelines.get(keyA)?.phase).toBe('writing');
    expect(s.tick()).toEqual(out([resolve(2, a, 10n)]));
    expect(s.answer(resolved(2, 30n))).toEqual(out([stream(3, a, 10n, 20n)]));
    expect(s.answer({ kind: 'streamed', id: 3, events: 2, readUpToTs: 20n })).toEqual(out([], [progress(a, 20n, 30n)]));
    expect(s.apply(stop(a))).toEqual(out([release(4, a)], [stopped(a, 20n)]));
    expect(s.pipelines.size).toBe(0);
    expect(s.pipelines.get(keyA)).toBeUndefined();
    // Commands for a key without a pipeline do nothing.
    expect(s.apply(stop(a), promote(a, 50n))).toEqual(nothing);
    expect(s.tick()).toEqual(nothing);
  });

  it('a pipeline that gives its span back leaves the collection', () => {
    const s = new Shell();
    s.apply(prepare(a, 10n));
    s.tick();
    expect(s.answer({ kind: 'failed', id: 1, error: 'revision 10 compacted', retryable: false })).toEqual(
      out([release(2, a)], [{ kind: 'failed', key: keyA, error: 'revision 10 compacted', retryable: false }]),
    );
    expect(s.pipelines.size).toBe(0);
  });

  it('a prepare of an existing key replaces its pipeline; the old one\'s outcomes are ignored', () => {
    const s = new Shell();
    s.apply(prepare(a, 10n));
    expect(s.tick()).toEqual(out([resolve(1, a, 10n)]));
    expect(s.apply(prepare(a, 40n))).toEqual(nothing);
    expect(s.pipelines.size).toBe(1);
    expect(s.pipelines.get(keyA)?.startTs).toBe(40n);
    expect(s.pipelines.get(keyA)?.busy).toBe(false);
    // The new one steps at once; the old one's answer comes after and is dropped.
    expect(s.tick()).toEqual(out([resolve(2, a, 40n)]));
    expect(s.answer(resolved(1, 99n))).toEqual(nothing);
    expect(s.pipelines.get(keyA)?.phase).toBe('preparing');
    expect(s.answer(resolved(2, 50n))).toEqual(out([], [prepared(a, 50n), progress(a, 40n, 50n)]));
  });
});

describe('span pipelines: effects in flight', () => {
  it('bounds busy pipelines by stepsInFlightMax and goes on where the round stopped', () => {
    const s = new Shell();
    s.apply(prepare(a, 10n), prepare(b, 10n), prepare(c, 10n));
    expect(s.tick()).toEqual(out([resolve(1, a, 10n), resolve(2, b, 10n)]));
    expect(s.tick()).toEqual(nothing);
    expect(s.answer(resolved(1, 20n))).toEqual(out([], [prepared(a, 20n), progress(a, 10n, 20n)]));
    // The round starts at c, which the bound cut off; a is then cut off in its turn.
    expect(s.tick()).toEqual(out([resolve(3, c, 10n)]));
    expect(s.answer(resolved(2, 20n))).toEqual(out([], [prepared(b, 20n), progress(b, 10n, 20n)]));
    expect(s.tick()).toEqual(out([resolve(4, a, 10n)]));
    expect(s.answer(resolved(3, 20n))).toEqual(out([], [prepared(c, 20n), progress(c, 10n, 20n)]));
    expect(s.answer(resolved(4, 20n))).toEqual(out([], [progress(a, 10n, 20n)]));
    expect(s.tick()).toEqual(out([resolve(5, b, 10n), resolve(6, c, 10n)]));
  });

  it('checks the deadlines of busy pipelines even when the bound is full, and the freed place goes to the next in line', () => {
    const s = new Shell({ stepsInFlightMax: 1 });
    s.apply(prepare(a, 10n), prepare(b, 10n));
    expect(s.tick(0)).toEqual(out([resolve(1, a, 10n)]));
    expect(s.tick(999)).toEqual(nothing);
    // a's call is abandoned and no longer counts: b, waiting in line, gets the place in the same tick.
    expect(s.tick(1_000)).toEqual(out([release(2, a), resolve(3, b, 10n)], [retrying(a, 'resolve did not return within 1000 ms')]));
    // a's retry waits for b's call (the bound), and then goes first.
    expect(s.tick(1_100)).toEqual(nothing);
    expect(s.answer(resolved(3, 20n))).toEqual(out([], [prepared(b, 20n), progress(b, 10n, 20n)]));
    expect(s.tick(1_100)).toEqual(
      out([release(4, a), resolve(5, b, 10n)], [retrying(a, 'a step that failed with: resolve did not return within 1000 ms has not returned')]),
    );
  });

  it('serves pipelines not prepared yet before the others', () => {
    const s = new Shell({ stepsInFlightMax: 1 });
    s.apply(prepare(a, 10n));
    expect(s.tick()).toEqual(out([resolve(1, a, 10n)]));
    expect(s.answer(resolved(1, 20n))).toEqual(out([], [prepared(a, 20n), progress(a, 10n, 20n)]));
    s.apply(prepare(b, 10n), prepare(c, 10n));
    // a waits in line behind b and c, which the owner waits for.
    expect(s.tick()).toEqual(out([resolve(2, b, 10n)]));
    expect(s.answer(resolved(2, 20n))).toEqual(out([], [prepared(b, 20n), progress(b, 10n, 20n)]));
    expect(s.tick()).toEqual(out([resolve(3, c, 10n)]));
    expect(s.answer(resolved(3, 20n))).toEqual(out([], [prepared(c, 20n), progress(c, 10n, 20n)]));
    expect(s.tick()).toEqual(out([resolve(4, a, 10n)]));
  });

  it('a tick visits the busy pipelines and the front of the line, not every pipeline', () => {
    const s = new Shell({ stepsInFlightMax: 2 });
    const many = Array.from({ length: 1_000 }, (_, i) => ({ table: 't', start: `k${String(i).padStart(4, '0')}`, end: `k${String(i).padStart(4, '0')}~` }));
    s.apply(...many.map((span) => prepare(span, 10n)));
    let visited = 0;
    const generation = () => {
      visited++;
      return 'none' as const;
    };
    s.pipelines.tick(0, generation);
    expect(visited).toBe(2);
    visited = 0;
    s.pipelines.tick(1, generation);
    // Two busy (deadline checks), and none started: the bound is full.
    expect(visited).toBe(2);
  });

  it('a step of several effects stays one effect in flight', () => {
    const s = new Shell({ stepsInFlightMax: 1 });
    s.generation = 50n;
    s.apply(prepare(a, 49n), prepare(b, 49n));
    s.tick();
    s.answer(resolved(1, 60n));
    s.apply(promote(a, 49n));
    expect(s.tick()).toEqual(out([resolve(2, b, 49n)]));
    s.answer(resolved(2, 60n));
    expect(s.tick()).toEqual(out([resolve(3, a, 49n)]));
    expect(s.answer(resolved(3, 60n))).toEqual(out([loadBackfill(4, a)]));
    expect(s.tick()).toEqual(nothing);
    expect(s.answer({ kind: 'backfill-loaded', id: 4, progress: undefined })).toEqual(out([countKeys(5, a, 50n)]));
    expect(s.tick()).toEqual(nothing);
  });
});

describe('span pipelines: backfill pages in flight', () => {
  /** a and b promoted at 49 with generation 50, their counts in: a copies a page, b waits for the slot. */
  function twoBackfilling(): Shell {
    const s = new Shell();
    s.generation = 50n;
    s.apply(prepare(a, 49n), prepare(b, 49n));
    expect(s.tick()).toEqual(out([resolve(1, a, 49n), resolve(2, b, 49n)]));
    s.answer(resolved(1, 60n));
    s.answer(resolved(2, 60n));
    s.apply(promote(a, 49n), promote(b, 49n));
    expect(s.tick()).toEqual(out([resolve(3, a, 49n), resolve(4, b, 49n)]));
    expect(s.answer(resolved(3, 60n))).toEqual(out([loadBackfill(5, a)]));
    expect(s.answer(resolved(4, 60n))).toEqual(out([loadBackfill(6, b)]));
    expect(s.answer({ kind: 'backfill-loaded', id: 5, progress: undefined })).toEqual(out([countKeys(7, a, 50n)]));
    expect(s.answer({ kind: 'backfill-loaded', id: 6, progress: undefined })).toEqual(out([countKeys(8, b, 50n)]));
    expect(s.answer({ kind: 'keys-counted', id: 7, keys: 4 })).toEqual(out([copyPage(9, a, 50n, undefined)]));
    expect(s.pipelines.backfillsInFlight).toBe(1);
    // No slot for b: its step ends without a page.
    expect(s.answer({ kind: 'keys-counted', id: 8, keys: 4 })).toEqual(out([], [progress(b, 49n, 60n)]));
    expect(s.pipelines.backfillsInFlight).toBe(1);
    return s;
  }

  it('gives the slot back with the page\'s outcome', () => {
    const s = twoBackfilling();
    // b's next step finds no slot either.
    expect(s.tick()).toEqual(out([resolve(10, b, 49n)]));
    expect(s.answer(resolved(10, 60n))).toEqual(out([], [progress(b, 49n, 60n)]));
    const savedA = { generation: 50n, snapshotTs: 50n, afterKey: 'x', keysDone: 2, keysTotal: 4, done: false, sinceTs: undefined, startedAtMs: 0, finishedAtMs: undefined };
    expect(s.answer({ kind: 'page-copied', id: 9, keys: 2, nextAfterKey: 'x' })).toEqual(
      out([{ kind: 'save-backfill', id: 11, key: keyA, span: a, progress: savedA }]),
    );
    expect(s.pipelines.backfillsInFlight).toBe(0);
    expect(s.tick()).toEqual(out([resolve(12, b, 49n)]));
    expect(s.answer(resolved(12, 60n))).toEqual(out([copyPage(13, b, 50n, undefined)]));
    expect(s.pipelines.backfillsInFlight).toBe(1);
  });

  it('gives the slot back at the page\'s deadline, not again with its late outcome', () => {
    const s = twoBackfilling();
    expect(s.tick(1_000)).toEqual(out([release(10, a), resolve(11, b, 49n)], [retrying(a, 'copy-page did not return within 1000 ms'), progress(a, ...here(s, a))]));
    expect(s.pipelines.backfillsInFlight).toBe(0);
    expect(s.answer(resolved(11, 60n))).toEqual(out([copyPage(12, b, 50n, undefined)]));
    expect(s.pipelines.backfillsInFlight).toBe(1);
    expect(s.answer({ kind: 'page-copied', id: 9, keys: 2, nextAfterKey: 'x' })).toEqual(nothing);
    expect(s.pipelines.backfillsInFlight).toBe(1);
  });

  it('gives the slot back when a prepare replaces the pipeline, not again with its late outcome', () => {
    const s = twoBackfilling();
    expect(s.apply(prepare(a, 49n))).toEqual(nothing);
    expect(s.pipelines.backfillsInFlight).toBe(0);
    expect(s.answer({ kind: 'page-copied', id: 9, keys: 2, nextAfterKey: 'x' })).toEqual(nothing);
    expect(s.pipelines.backfillsInFlight).toBe(0);
    // The new a goes first: a pipeline not prepared yet is served before the others.
    expect(s.tick()).toEqual(out([resolve(10, a, 49n), resolve(11, b, 49n)]));
    expect(s.answer(resolved(11, 60n))).toEqual(out([copyPage(12, b, 50n, undefined)]));
    expect(s.pipelines.backfillsInFlight).toBe(1);
  });

  it('gives the slot back when a stop waits for the page', () => {
    const s = twoBackfilling();
    expect(s.apply(stop(a))).toEqual(nothing);
    expect(s.pipelines.size).toBe(2);
    expect(s.answer({ kind: 'page-copied', id: 9, keys: 2, nextAfterKey: 'x' })).toEqual(out([release(10, a)], [stopped(a, 49n)]));
    expect(s.pipelines.size).toBe(1);
    expect(s.pipelines.backfillsInFlight).toBe(0);
  });

  it('gives every slot back when cleared, and ignores the outcomes after', () => {
    const s = twoBackfilling();
    s.clear();
    expect(s.pipelines.size).toBe(0);
    expect(s.pipelines.backfillsInFlight).toBe(0);
    expect(s.answer({ kind: 'page-copied', id: 9, keys: 2, nextAfterKey: 'x' })).toEqual(nothing);
    expect(s.pipelines.backfillsInFlight).toBe(0);
    expect(s.tick(5_000)).toEqual(nothing);
    // A prepare after the clear starts afresh, with the slot free.
    s.apply(prepare(c, 49n));
    expect(s.tick()).toEqual(out([resolve(10, c, 49n)]));
  });

  it('a duplicated page outcome gives nothing back twice', () => {
    const s = twoBackfilling();
    s.answer({ kind: 'page-copied', id: 9, keys: 2, nextAfterKey: 'x' });
    expect(s.pipelines.backfillsInFlight).toBe(0);
    expect(s.answer({ kind: 'page-copied', id: 9, keys: 2, nextAfterKey: 'x' })).toEqual(nothing);
    expect(s.pipelines.backfillsInFlight).toBe(0);
    expect(s.pipelines.get(keyC)).toBeUndefined();
  });
});

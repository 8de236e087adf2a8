/**
 * Bulk checks of quiet spans (src/agent/quiet-spans.ts): a streaming span between steps
 * waits in the quiet line and moves on by a check's answer, without a call; an event
 * next, a failed or hung check, a stop, a promote or a new backfill generation send it
 * back to steps; the barrier still holds; checks are bounded in size and number.
 */
import { describe, expect, it } from 'vitest';
import { SpanPipelines } from '../../src/agent/span-pipelines.ts';
import type { BackfillGeneration, PipelineEffect, PipelineOutput } from '../../src/agent/span-pipeline.ts';
import type { PipelineEvent } from '../../src/agent/pipeline.ts';
import type { QuietCheck } from '../../src/agent/quiet-spans.ts';
import type { Span } from '../../src/core/span.ts';
import { spanKey } from '../../src/core/span.ts';
import { a, b, c } from './fake-owner.ts';
import { pipelineLimits } from './pipeline-fixtures.ts';

const intervalMs = 200;

class Shell {
  nowMs = 0;
  generation: BackfillGeneration = 'none';
  readonly pipelines: SpanPipelines;
  readonly events: PipelineEvent[] = [];
  effects: PipelineEffect[] = [];
  checks: QuietCheck[] = [];

  constructor(batch = 8, inFlight = 2) {
    this.pipelines = new SpanPipelines({ ...pipelineLimits, stepsInFlightMax: 8, backfillsInFlightMax: 1, quietBatchMax: batch, quietChecksInFlightMax: inFlight, quietIntervalMs: intervalMs });
  }

  private readonly generationOf = (): BackfillGeneration => this.generation;

  take(out: PipelineOutput): void {
    this.effects.push(...out.effects.filter((e) => e.kind !== 'release'));
    this.checks.push(...(out.quietChecks ?? []));
    this.events.push(...out.events);
  }

  writing(span: Span, at: bigint): void {
    this.take(this.pipelines.apply([{ kind: 'prepare', span, key: spanKey(span), checkpointTs: at }, { kind: 'promote', span, key: spanKey(span), checkpointTs: at }], this.nowMs, this.generationOf));
  }

  stop(span: Span): void {
    this.take(this.pipelines.apply([{ kind: 'stop', span, key: spanKey(span) }], this.nowMs, this.generationOf));
  }

  barrier(barrierTs: bigint): void {
    this.take(this.pipelines.apply([{ kind: 'barrier', barrierTs }], this.nowMs, this.generationOf));
  }

  tick(advanceMs = 0): void {
    this.nowMs += advanceMs;
    this.take(this.pipelines.tick(this.nowMs, this.generationOf));
  }

  /** Answers every effect in flight: resolves to `resolvedTs`, streams with no events up to their bound. */
  settle(resolvedTs: bigint): void {
    while (this.effects.length > 0) {
      const effect = this.effects.shift() as PipelineEffect;
      if (effect.kind === 'resolve') this.take(this.pipelines.onOutcome({ kind: 'resolved', id: effect.id, resolvedTs }, this.nowMs, this.generationOf));
      else if (effect.kind === 'stream') this.take(this.pipelines.onOutcome({ kind: 'streamed', id: effect.id, events: 0, readUpToTs: effect.uptoTs }, this.nowMs, this.generationOf));
      else throw new Error(`unexpected effect ${effect.kind}`);
    }
  }

  answer(check: QuietCheck, quietTs: (span: Span) => bigint, needsStep: (span: Span) => boolean = () => false): void {
    this.take(this.pipelines.onQuietOutcome({ kind: 'quiet-checked', id: check.id, answers: check.requests.map((r) => ({ quietTs: quietTs(r.span), needsStep: needsStep(r.span) })) }, this.nowMs, this.generationOf));
  }

  takeCheck(): QuietCheck {
    const check = this.checks.shift();
    if (check === undefined) throw new Error('no quiet check');
    return check;
  }

  /** The last checkpoint each span reported (progress or stopped). */
  checkpointOf(span: Span): bigint | undefined {
    const key = spanKey(span);
    const last = this.events.filter((e) => (e.kind === 'progress' || e.kind === 'stopped') && e.key === key).at(-1);
    return last !== undefined && 'checkpointTs' in last ? last.checkpointTs : undefined;
  }
}

/** A shell with `spans` writing and streamed up to 20: quiet from now on. */
function quietShell(spans: readonly Span[], batch?: number, inFlight?: number): Shell {
  const shell = new Shell(batch, inFlight);
  for (const span of spans) shell.writing(span, 10n);
  // The first step finds the source (prepared), the second streams.
  for (let round = 0; round < 2; round++) {
    shell.tick();
    shell.settle(20n);
  }
  for (const span of spans) expect(shell.checkpointOf(span)).toBe(20n);
  expect(shell.checks).toEqual([]);
  return shell;
}

describe('quiet spans', () => {
  it('move on by one bulk check, without a source or sink call, once they waited the interval', () => {
    const shell = quietShell([a, b]);
    shell.tick(intervalMs - 1);
    expect(shell.checks).toEqual([]);
    expect(shell.effects).toEqual([]);
    shell.tick(1);
    const check = shell.takeCheck();
    expect(check.requests).toEqual([{ span: a, afterTs: 20n }, { span: b, afterTs: 20n }]);
    shell.answer(check, () => 50n);
    expect(shell.checkpointOf(a)).toBe(50n);
    expect(shell.checkpointOf(b)).toBe(50n);
    // Still quiet: no call, and the next check only after another interval.
    shell.tick(intervalMs - 1);
    expect(shell.effects).toEqual([]);
    expect(shell.checks).toEqual([]);
    shell.tick(1);
    expect(shell.takeCheck().requests).toEqual([{ span: a, afterTs: 50n }, { span: b, afterTs: 50n }]);
  });

  it('sends a span with an event next to a step, from where the check left it', () => {
    const shell = quietShell([a, b]);
    shell.tick(intervalMs);
    shell.answer(shell.takeCheck(), (span) => (span === a ? 29n : 60n), (span) => span === a);
    expect(shell.checkpointOf(a)).toBe(29n);
    expect(shell.checkpointOf(b)).toBe(60n);
    shell.tick();
    expect(shell.effects.map((e) => [e.kind, e.key])).toEqual([['resolve', spanKey(a)]]);
    expect(shell.effects[0]).toMatchObject({ afterTs: 29n });
  });

  it('never moves past the barrier, and waits at it without steps', () => {
    const shell = quietShell([a]);
    shell.barrier(40n);
    shell.tick(intervalMs);
    shell.answer(shell.takeCheck(), () => 90n, () => true);
    expect(shell.checkpointOf(a)).toBe(40n);
    shell.tick();
    expect(shell.effects).toEqual([]);
  });

  it('a failed, mismatched or hung check sends its spans to steps; a late answer changes nothing', () => {
    const shell = quietShell([a, b, c], 1, 3);
    shell.tick(intervalMs);
    const [first, second, third] = [shell.takeCheck(), shell.takeCheck(), shell.takeCheck()];
    expect([first, second, third].map((k) => k.requests.map((r) => r.span))).toEqual([[a], [b], [c]]);
    shell.take(shell.pipelines.onQuietOutcome({ kind: 'failed', id: first.id, error: 'source down' }, shell.nowMs, () => 'none'));
    shell.take(shell.pipelines.onQuietOutcome({ kind: 'quiet-checked', id: second.id, answers: [] }, shell.nowMs, () => 'none'));
    shell.tick(pipelineLimits.stepDeadlineMs);
    expect(shell.effects.map((e) => e.key).sort()).toEqual([spanKey(a), spanKey(b), spanKey(c)].sort());
    shell.answer(third, () => 99n);
    expect(shell.checkpointOf(c)).toBe(20n);
  });

  it('a stop while a check is in flight reports what was durable, and ignores the answer', () => {
    const shell = quietShell([a]);
    shell.tick(intervalMs);
    const check = shell.takeCheck();
    shell.stop(a);
    expect(shell.events.at(-1)).toEqual({ kind: 'stopped', key: spanKey(a), checkpointTs: 20n });
    shell.answer(check, () => 70n);
    expect(shell.checkpointOf(a)).toBe(20n);
    expect(shell.pipelines.size).toBe(0);
  });

  it('a promote or a new backfill generation takes a step instead of a quiet move', () => {
    const shell = quietShell([a, b]);
    shell.tick(intervalMs);
    const check = shell.takeCheck();
    shell.take(shell.pipelines.apply([{ kind: 'promote', span: a, key: spanKey(a), checkpointTs: 25n }], shell.nowMs, () => 'none'));
    shell.answer(check, () => 70n);
    expect(shell.checkpointOf(a)).toBe(20n);
    expect(shell.checkpointOf(b)).toBe(70n);
    shell.tick();
    expect(shell.effects.map((e) => e.key)).toEqual([spanKey(a)]);
    shell.settle(80n);
    // The table gets a backfill: at their next check neither is quiet any more; both take a step.
    shell.generation = 75n;
    shell.tick(intervalMs);
    expect(shell.checks).toEqual([]);
    expect(shell.effects.map((e) => [e.kind, e.key]).sort()).toEqual([['resolve', spanKey(a)], ['resolve', spanKey(b)]].sort());
  });

  it('bounds the spans per check and the checks in flight', () => {
    const spans = Array.from({ length: 7 }, (_, i): Span => ({ table: 't', start: `k${i}`, end: `k${i}~` }));
    const shell = quietShell(spans, 2, 2);
    shell.tick(intervalMs);
    expect(shell.checks.map((k) => k.requests.length)).toEqual([2, 2]);
    shell.answer(shell.takeCheck(), () => 30n);
    shell.tick();
    expect(shell.checks.map((k) => k.requests.length)).toEqual([2, 2]);
  });
});

/**
 * The split policy (issue 12, item 3) driven through the coordinator with hand-built
 * reports that carry per-span progress: a span above splitRateMin for splitAfterTicks is
 * split at its reported key (not a tick before; a dip starts the count over), bad keys,
 * thin samples, stale rates, full tables and autoSplit off split nothing; quiet
 * neighbours on one capture merge only after mergeAfterTicks and the cool-down, never
 * across captures nor above mergeRateMax together; the halves of a split never merge
 * back (hysteresis); splitsInFlightMax holds. Invariants are checked after every tick.
 */
import { describe, expect, it } from 'vitest';
import type { CoordinatorLimits, TickInput, TickOutput } from '../../src/core/coordinator.ts';
import { Coordinator } from '../../src/core/coordinator.ts';
import type { CoordinatorEvent } from '../../src/core/events.ts';
import type { ReportMessage, SpanProgress } from '../../src/core/messages.ts';
import type { Span } from '../../src/core/span.ts';
import { CF, CF_EPOCH, FakeCapture, OWNER, REVISION, s0, s1, s2, s3, spans, table } from './fake-capture.ts';

const policy: Partial<CoordinatorLimits> = {
  splitRateMin: 100,
  splitAfterTicks: 5,
  mergeRateMax: 40,
  mergeAfterTicks: 5,
  coolDownTicks: 10,
  rateReportAgeMaxTicks: 3,
  spansPerTableMax: 6,
  splitSampleKeysMin: 2,
};

function step(co: Coordinator, input: TickInput): TickOutput {
  const out = co.tick(input);
  co.checkInvariants();
  return out;
}

const ofType = <T extends CoordinatorEvent['type']>(out: TickOutput, type: T): Extract<CoordinatorEvent, { type: T }>[] =>
  out.events.filter((e): e is Extract<CoordinatorEvent, { type: T }> => e.type === type);

/** A running changefeed with autoSplit: s0, s1, s3 on A, s2 on B, all replicating. */
function running(limits: Partial<CoordinatorLimits> = {}, autoSplit = true): { co: Coordinator; A: FakeCapture; B: FakeCapture } {
  const co = new Coordinator({
    changefeed: CF,
    changefeedEpoch: CF_EPOCH,
    ownerId: OWNER,
    ownerRevision: REVISION,
    checkpointTs: 100n,
    seed: 7,
    autoSplit,
    limits: { heartbeatIntervalTicks: 1, balanceIntervalTicks: 0, collectRetryTicks: 1, ...policy, ...limits },
  });
  co.setSpans([table], spans);
  const A = new FakeCapture('A', 11n);
  const B = new FakeCapture('B', 22n);
  let out = step(co, { captures: ['A', 'B'], reports: [] });
  const idA = A.collectAsked(out.outbox);
  const idB = B.collectAsked(out.outbox);
  A.hold(s0, 'replicating', 150n, 160n);
  A.hold(s1, 'replicating', 150n, 160n);
  A.hold(s3, 'replicating', 150n, 160n);
  B.hold(s2, 'replicating', 150n, 160n);
  out = step(co, { reports: [...A.collect(idA), ...B.collect(idB)] });
  A.receive(out.outbox);
  B.receive(out.outbox);
  expect(co.phase).toBe('running');
  return { co, A, B };
}

/** One span's progress entry. */
const rate = (span: Span, eventsPerSecond: number, splitKey?: string, sampleKeys = 8): SpanProgress => ({
  span,
  checkpointTs: 150n,
  resolvedTs: 160n,
  eventsPerSecond,
  ...(splitKey === undefined ? {} : { splitKey, sampleKeys }),
});

/** A heartbeat answer of `capture` carrying `entries` as its progress slice. */
const progress = (capture: FakeCapture, entries: SpanProgress[]): ReportMessage => ({ ...capture.report(), progress: { slowest: [], slice: entries } });

/** Ticks with the same reports each tick until an operation starts or `ticks` run out; returns the ticks it took (Infinity: none started). */
function ticksUntilOperation(co: Coordinator, reports: () => ReportMessage[], ticks: number, captures: FakeCapture[]): { ticks: number; out: TickOutput | undefined } {
  for (let i = 1; i <= ticks; i++) {
    const out = step(co, { reports: reports() });
    for (const c of captures) c.receive(out.outbox);
    if (ofType(out, 'operation-started').length > 0) return { ticks: i, out };
  }
  return { ticks: Infinity, out: undefined };
}

/** Drives a split of `from` into `halves` on A to done, the halves replicating at 170. */
function finishSplit(co: Coordinator, A: FakeCapture, from: Span, halves: readonly Span[]): void {
  let out = step(co, { reports: [A.report(halves.map((h) => A.hold(h, 'prepared', 150n)))] });
  A.receive(out.outbox);
  out = step(co, { reports: [A.report([A.hold(from, 'stopped', 170n)])] });
  expect(ofType(out, 'operation-done')).toHaveLength(1);
  A.receive(out.outbox);
  out = step(co, { reports: [A.report(halves.map((h) => A.hold(h, 'replicating', 170n, 180n)))] });
  A.receive(out.outbox);
  expect(co.operations()).toEqual([]);
}

describe('split policy: splits', () => {
  it('splits a span at its reported key once its rate stayed above splitRateMin for splitAfterTicks, not a tick before', () => {
    const { co, A, B } = running();
    // The first report starts the count: 5 ticks later (the 6th report) it splits.
    const { ticks, out } = ticksUntilOperation(co, () => [progress(A, [rate(s0, 150, 'd'), rate(s1, 50), rate(s3, 50)])], 20, [A, B]);
    expect(ticks).toBe(6);
    expect(co.operations()).toMatchObject([{ kind: 'split', from: [s0], to: [{ table: 't', start: 'a', end: 'd' }, { table: 't', start: 'd', end: 'g' }], targets: ['A', 'A'] }]);
    expect(ofType(out as TickOutput, 'split-policy-decided')).toEqual([{ type: 'split-policy-decided', kind: 'split', spans: [s0], at: 'd', eventsPerSecond: 150, operation: 1 }]);
  });

  it('starts the count over when the rate dips to the threshold', () => {
    const { co, A, B } = running();
    const hot = (): ReportMessage[] => [progress(A, [rate(s1, 101, 'k')])];
    expect(ticksUntilOperation(co, hot, 4, [A, B]).ticks).toBe(Infinity);
    // Exactly at splitRateMin is not above it.
    expect(ticksUntilOperation(co, () => [progress(A, [rate(s1, 100, 'k')])], 1, [A, B]).ticks).toBe(Infinity);
    expect(ticksUntilOperation(co, hot, 5, [A, B]).ticks).toBe(Infinity);
    expect(ticksUntilOperation(co, hot, 1, [A, B]).ticks).toBe(1);
    expect(co.operations()[0]?.from).toEqual([s1]);
  });

  it('splits nothing with autoSplit off, and starts once it is turned on', () => {
    const { co, A, B } = running({}, false);
    const hot = (): ReportMessage[] => [progress(A, [rate(s0, 500, 'd')])];
    expect(ticksUntilOperation(co, hot, 20, [A, B]).ticks).toBe(Infinity);
    co.setAutoSplit(true);
    expect(co.autoSplit).toBe(true);
    expect(ticksUntilOperation(co, hot, 20, [A, B]).ticks).toBe(6);
  });

  it('skips a key not strictly inside the span, a sample of too few distinct keys, no key, and stale rates', () => {
    for (const entry of [rate(s0, 500, 'a'), rate(s0, 500, 'g'), rate(s0, 500, 'h'), rate(s0, 500, 'd', 1), rate(s0, 500)]) {
      const { co, A, B } = running();
      expect(ticksUntilOperation(co, () => [progress(A, [entry])], 20, [A, B]).ticks, `${entry.splitKey} ${entry.sampleKeys}`).toBe(Infinity);
    }
    // A rate reported once, then nothing: older than rateReportAgeMaxTicks when its time comes.
    const { co, A, B } = running();
    expect(ticksUntilOperation(co, () => [progress(A, [rate(s0, 500, 'd')])], 1, [A, B]).ticks).toBe(Infinity);
    expect(ticksUntilOperation(co, () => [A.report()], 20, [A, B]).ticks).toBe(Infinity);
    // A rate reported by a capture that is not the span's primary counts for nothing.
    expect(ticksUntilOperation(co, () => [progress(B, [rate(s0, 500, 'd')])], 20, [A, B]).ticks).toBe(Infinity);
  });

  it('keeps a table under spansPerTableMax and splitsInFlightMax operations in flight', () => {
    // Four spans, at most five: one split may start, the other hot span waits.
    const { co, A, B } = running({ spansPerTableMax: 5 });
    const hot = (): ReportMessage[] => [progress(A, [rate(s0, 500, 'd'), rate(s1, 500, 'k')]), progress(B, [rate(s2, 500, 'q')])];
    expect(ticksUntilOperation(co, hot, 20, [A, B]).ticks).toBe(6);
    for (let i = 0; i < 20; i++) {
      const out = step(co, { reports: hot() });
      A.receive(out.outbox);
      B.receive(out.outbox);
    }
    expect(co.operations()).toHaveLength(1);

    // Three hot spans, one operation at a time.
    const one = running({ splitsInFlightMax: 1 });
    const hotOne = (): ReportMessage[] => [progress(one.A, [rate(s0, 500, 'd'), rate(s1, 500, 'k')]), progress(one.B, [rate(s2, 500, 'q')])];
    expect(ticksUntilOperation(one.co, hotOne, 20, [one.A, one.B]).ticks).toBe(6);
    for (let i = 0; i < 20; i++) {
      const out = step(one.co, { reports: hotOne() });
      one.A.receive(out.outbox);
      one.B.receive(out.outbox);
      expect(one.co.operations()).toHaveLength(1);
    }
  });

  it('refuses a policy whose merge threshold is not well below the split threshold', () => {
    expect(() => running({ splitRateMin: 100, mergeRateMax: 51 })).toThrow(/mergeRateMax must be at most half of splitRateMin/);
  });
});

describe('split policy: merges and hysteresis', () => {
  it('merges quiet neighbours on one capture after mergeAfterTicks and the cool-down, never across captures or above mergeRateMax together', () => {
    // s0 and s1 on A write 15 a second each; s1|s2 and s2|s3 are on different captures.
    const { co, A, B } = running();
    const quiet = (): ReportMessage[] => [progress(A, [rate(s0, 15), rate(s1, 15), rate(s3, 0)]), progress(B, [rate(s2, 0)])];
    // First seen at the first report: the cool-down (10 ticks) is the longer wait.
    const { ticks, out } = ticksUntilOperation(co, quiet, 30, [A, B]);
    expect(ticks).toBe(11);
    expect(co.operations()).toMatchObject([{ kind: 'merge', from: [s0, s1], to: [{ table: 't', start: 'a', end: 'n' }], targets: ['A'] }]);
    expect(ofType(out as TickOutput, 'split-policy-decided')).toMatchObject([{ kind: 'merge', spans: [s0, s1], eventsPerSecond: 30 }]);
    // Nothing else merges: s3 has no neighbour on A, s2 is on B.
    expect(ticksUntilOperation(co, quiet, 30, [A, B]).ticks).toBe(Infinity);

    // Each below mergeRateMax, together not: no merge.
    const busy = running();
    expect(ticksUntilOperation(busy.co, () => [progress(busy.A, [rate(s0, 25), rate(s1, 25)])], 40, [busy.A, busy.B]).ticks).toBe(Infinity);
  });

  it('a rise above mergeRateMax starts the quiet count over', () => {
    const { co, A, B } = running({ coolDownTicks: 0 });
    const quiet = (): ReportMessage[] => [progress(A, [rate(s0, 5), rate(s1, 5)])];
    expect(ticksUntilOperation(co, quiet, 4, [A, B]).ticks).toBe(Infinity);
    expect(ticksUntilOperation(co, () => [progress(A, [rate(s0, 5), rate(s1, 60)])], 1, [A, B]).ticks).toBe(Infinity);
    expect(ticksUntilOperation(co, quiet, 5, [A, B]).ticks).toBe(Infinity);
    expect(ticksUntilOperation(co, quiet, 1, [A, B]).ticks).toBe(1);
  });

  it('never merges the halves of a split back while the traffic stays, and merges them after their cool-down once it is gone', () => {
    const { co, A, B } = running();
    const left: Span = { table: 't', start: 'a', end: 'd' };
    const right: Span = { table: 't', start: 'd', end: 'g' };
    expect(ticksUntilOperation(co, () => [progress(A, [rate(s0, 150, 'd')])], 20, [A, B]).ticks).toBe(6);
    finishSplit(co, A, s0, [left, right]);
    // The halves share the 150 a second: each 75, above mergeRateMax, so they stay.
    expect(ticksUntilOperation(co, () => [progress(A, [rate(left, 75), rate(right, 75)])], 60, [A, B]).ticks).toBe(Infinity);
    // The traffic is gone: quiet from the next report on, they merge mergeAfterTicks later (the cool-down is long over).
    const { ticks } = ticksUntilOperation(co, () => [progress(A, [rate(left, 1), rate(right, 1)])], 60, [A, B]);
    expect(ticks).toBe(6);
    expect(co.operations()).toMatchObject([{ kind: 'merge', from: [left, right], to: [s0] }]);
  });

  it('a freshly split half waits out the cool-down before it merges', () => {
    const { co, A, B } = running({ mergeAfterTicks: 1 });
    const left: Span = { table: 't', start: 'a', end: 'd' };
    const right: Span = { table: 't', start: 'd', end: 'g' };
    expect(ticksUntilOperation(co, () => [progress(A, [rate(s0, 150, 'd')])], 20, [A, B]).ticks).toBe(6);
    finishSplit(co, A, s0, [left, right]);
    // Quiet from their first report: the cool-down of 10 ticks decides, not mergeAfterTicks.
    expect(ticksUntilOperation(co, () => [progress(A, [rate(left, 1), rate(right, 1)])], 60, [A, B]).ticks).toBe(11);
  });
});

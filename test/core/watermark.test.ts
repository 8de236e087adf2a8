/**
 * computeWatermark: every cannot-proceed reason, in priority order, and the advancing
 * case (min over captures' aggregates, barrier clamp, checkpoint <= resolved).
 */
import { describe, expect, it } from 'vitest';
import type { CaptureId, CaptureWatermark } from '../../src/core/messages.ts';
import type { StateCounts } from '../../src/core/replication-manager.ts';
import { CaptureSpans } from '../../src/core/replication-manager.ts';
import type { Span } from '../../src/core/span.ts';
import { spanKey, splitTable } from '../../src/core/span.ts';
import type { SpanDigest } from '../../src/core/span-digest.ts';
import { MutableDigest, emptyDigest } from '../../src/core/span-digest.ts';
import { maxTs } from '../../src/core/ts.ts';
import type { WatermarkInput } from '../../src/core/watermark.ts';
import { computeWatermark, describeReason } from '../../src/core/watermark.ts';

const spans = splitTable({ name: 't', start: 'a', end: 'z' }, ['e', 'i', 'm', 'q', 'u']);

/** The owner's index of a capture replicating `held` as primary. */
function spansOf(held: readonly Span[]): CaptureSpans {
  const spans = new CaptureSpans();
  for (const span of held) spans.replicatingDigest.add(spanKey(span));
  return spans;
}

function digestOf(held: readonly Span[]): SpanDigest {
  const digest = new MutableDigest();
  for (const span of held) digest.add(spanKey(span));
  return digest.snapshot();
}

const agg = (held: readonly Span[], checkpointTs: bigint, resolvedTs: bigint): CaptureWatermark => ({ checkpointTs, resolvedTs, digest: digestOf(held) });

const allReplicating = (n: number): StateCounts => ({ absent: 0, prepare: 0, commit: 0, replicating: n, removing: 0 });

type Entry = readonly [CaptureId, CaptureSpans, CaptureWatermark | undefined];

function input(captures: Entry[], extra: Partial<WatermarkInput> = {}): WatermarkInput {
  return {
    uninitialized: [],
    coverage: undefined,
    spanCount: spans.length,
    stateCounts: allReplicating(spans.length),
    captures,
    barrierTs: maxTs,
    ...extra,
  };
}

const [p0, p1, p2, p3, p4, p5] = spans as [Span, Span, Span, Span, Span, Span];
const onA = [p0, p1, p2];
const onB = [p3, p4];
const onC = [p5];

/** Three captures with current aggregates. */
function healthy(a: [bigint, bigint] = [100n, 200n], b: [bigint, bigint] = [120n, 180n], c: [bigint, bigint] = [110n, 190n]): Entry[] {
  return [
    ['A', spansOf(onA), agg(onA, ...a)],
    ['B', spansOf(onB), agg(onB, ...b)],
    ['C', spansOf(onC), agg(onC, ...c)],
  ];
}

describe('computeWatermark: cannot proceed', () => {
  it('capture-not-initialized comes first, listing the captures', () => {
    const w = computeWatermark(
      input(healthy(), {
        uninitialized: ['B', 'C'],
        spanCount: 0,
        coverage: { kind: 'gap', table: 't', after: 'a', before: 'z' },
      }),
    );
    expect(w).toEqual({ state: 'cannot-proceed', reason: { code: 'capture-not-initialized', captures: ['B', 'C'] } });
    if (w.state === 'cannot-proceed') expect(describeReason(w.reason)).toBe('waiting for the first heartbeat answer of B, C');
  });

  it('no-spans when the changefeed has none', () => {
    const w = computeWatermark(input([], { spanCount: 0, stateCounts: allReplicating(0) }));
    expect(w).toEqual({ state: 'cannot-proceed', reason: { code: 'no-spans' } });
  });

  it('span-coverage with the problem', () => {
    const problem = { kind: 'gap', table: 't', after: 'm', before: 'z' } as const;
    const w = computeWatermark(input(healthy(), { coverage: problem }));
    expect(w).toEqual({ state: 'cannot-proceed', reason: { code: 'span-coverage', problem } });
    if (w.state === 'cannot-proceed') expect(describeReason(w.reason)).toBe('spans do not cover table t exactly (gap)');
  });

  it('span-not-replicating with the counters, before any aggregate is looked at', () => {
    const w = computeWatermark(
      input([['A', spansOf(onA), undefined]], { stateCounts: { absent: 1, prepare: 2, commit: 0, replicating: 2, removing: 1 } }),
    );
    expect(w).toEqual({ state: 'cannot-proceed', reason: { code: 'span-not-replicating', absent: 1, prepare: 2, commit: 0, removing: 1 } });
    if (w.state === 'cannot-proceed') expect(describeReason(w.reason)).toBe('spans in flight: 1 absent, 2 preparing, 0 committing, 1 removing');
  });

  it('capture-watermark-stale when a capture has sent no aggregate yet', () => {
    const entries = healthy();
    entries[1] = ['B', spansOf(onB), undefined];
    expect(computeWatermark(input(entries))).toEqual({ state: 'cannot-proceed', reason: { code: 'capture-watermark-stale', captures: ['B'] } });
  });

  it('capture-watermark-stale when the aggregate covers other spans (stale digest, same count)', () => {
    const entries = healthy();
    // B's aggregate is over {p3, p5}: two spans, but not the ones the owner expects.
    entries[1] = ['B', spansOf(onB), agg([p3, p5], 500n, 500n)];
    expect(computeWatermark(input(entries))).toEqual({ state: 'cannot-proceed', reason: { code: 'capture-watermark-stale', captures: ['B'] } });
  });

  it('capture-watermark-stale when the aggregate is behind or ahead by a span', () => {
    const behind = healthy();
    behind[0] = ['A', spansOf(onA), agg([p0, p1], 100n, 200n)];
    expect(computeWatermark(input(behind))).toEqual({ state: 'cannot-proceed', reason: { code: 'capture-watermark-stale', captures: ['A'] } });
    const ahead = healthy();
    ahead[2] = ['C', spansOf(onC), agg([p5, p4], 100n, 200n)];
    expect(computeWatermark(input(ahead))).toEqual({ state: 'cannot-proceed', reason: { code: 'capture-watermark-stale', captures: ['C'] } });
  });

  it('lists at most five stale captures', () => {
    const entries: Entry[] = spans.map((span, i) => [`c${i}`, spansOf([span]), agg([], 1n, 1n)]);
    const w = computeWatermark(input(entries));
    expect(w).toEqual({ state: 'cannot-proceed', reason: { code: 'capture-watermark-stale', captures: ['c0', 'c1', 'c2', 'c3', 'c4'] } });
  });

  it('no-spans when every span counts as replicating but no capture replicates any (no aggregate to take)', () => {
    const w = computeWatermark(input([['A', new CaptureSpans(), undefined]]));
    expect(w).toEqual({ state: 'cannot-proceed', reason: { code: 'no-spans' } });
  });
});

describe('computeWatermark: advancing', () => {
  it('takes the min checkpoint and the min resolved over the captures', () => {
    expect(computeWatermark(input(healthy()))).toEqual({ state: 'advancing', checkpointTs: 100n, resolvedTs: 180n });
  });

  it('ignores the aggregate of a capture that replicates nothing as primary', () => {
    const entries = healthy();
    entries.push(['D', new CaptureSpans(), { checkpointTs: 1n, resolvedTs: 1n, digest: emptyDigest }]);
    entries.push(['E', new CaptureSpans(), undefined]);
    expect(computeWatermark(input(entries))).toEqual({ state: 'advancing', checkpointTs: 100n, resolvedTs: 180n });
  });

  it('clamps both to the barrier', () => {
    expect(computeWatermark(input(healthy(), { barrierTs: 150n }))).toEqual({ state: 'advancing', checkpointTs: 100n, resolvedTs: 150n });
    expect(computeWatermark(input(healthy(), { barrierTs: 90n }))).toEqual({ state: 'advancing', checkpointTs: 90n, resolvedTs: 90n });
    expect(computeWatermark(input(healthy(), { barrierTs: 100n }))).toEqual({ state: 'advancing', checkpointTs: 100n, resolvedTs: 100n });
  });

  it('keeps checkpoint <= resolved when the mins come from different captures', () => {
    // Min checkpoint 150 (from A), min resolved 130 (from B): checkpoint clamps to 130.
    const w = computeWatermark(input(healthy([150n, 400n], [300n, 130n], [200n, 500n])));
    expect(w).toEqual({ state: 'advancing', checkpointTs: 130n, resolvedTs: 130n });
  });

  it('a single capture holding every span', () => {
    const w = computeWatermark(input([['A', spansOf(spans), agg(spans, 42n, 43n)]]));
    expect(w).toEqual({ state: 'advancing', checkpointTs: 42n, resolvedTs: 43n });
  });

  it('the digest is order-independent: the same spans added in another order match', () => {
    const w = computeWatermark(input([['A', spansOf(spans), agg([...spans].reverse(), 42n, 43n)]]));
    expect(w.state).toBe('advancing');
  });
});

/**
 * Stall detection: the pure detector step by step, the bounded search for the spans and
 * captures holding a checkpoint back, and the coordinator's stalled watermark through a
 * stall's life (start, the collection it asks for, cannot-proceed taking precedence, the
 * end), with time passed in as `nowMs`.
 */
import { describe, expect, it } from 'vitest';
import type { Coordinator, CoordinatorLimits } from '../../src/core/coordinator.ts';
import type { CaptureWatermark } from '../../src/core/messages.ts';
import { CaptureSpans } from '../../src/core/replication-manager.ts';
import { ReplicationSet } from '../../src/core/replication-set.ts';
import type { Span } from '../../src/core/span.ts';
import { StallDetector, describeStall, findStallHolders } from '../../src/core/stall-detector.ts';
import { maxTs } from '../../src/core/ts.ts';
import { FakeCapture, newCoordinator, s0, s1, s2, s3 } from './fake-capture.ts';

const at = (nowMs: number, checkpointTs: bigint, resolvedTs: bigint, barrierTs = maxTs) => ({ nowMs, checkpointTs, resolvedTs, barrierTs });

describe('StallDetector', () => {
  it('is stalled once the checkpoint stood still behind the resolved-ts for stallAfterMs, and not once it moves', () => {
    const detector = new StallDetector(1_000);
    expect(detector.observe(at(0, 100n, 100n))).toEqual({ stalled: false });
    // Behind from 50 ms on.
    expect(detector.observe(at(50, 100n, 120n))).toEqual({ stalled: false });
    expect(detector.observe(at(1_049, 100n, 300n))).toEqual({ stalled: false });
    expect(detector.observe(at(1_050, 100n, 400n))).toEqual({ stalled: true, sinceMs: 50, stalledForMs: 1_000 });
    expect(detector.observe(at(4_050, 100n, 500n))).toEqual({ stalled: true, sinceMs: 50, stalledForMs: 4_000 });
    // The checkpoint moves: behind again from now, not stalled.
    expect(detector.observe(at(4_100, 101n, 500n))).toEqual({ stalled: false });
    expect(detector.observe(at(5_099, 101n, 600n))).toEqual({ stalled: false });
    expect(detector.observe(at(5_100, 101n, 600n))).toEqual({ stalled: true, sinceMs: 4_100, stalledForMs: 1_000 });
  });

  it('is not stalled while nothing is past the checkpoint, however long (a quiet upstream)', () => {
    const detector = new StallDetector(1_000);
    expect(detector.observe(at(0, 100n, 100n))).toEqual({ stalled: false });
    expect(detector.observe(at(3_600_000, 100n, 100n))).toEqual({ stalled: false });
    // A write after an hour of quiet is not a stall until it waited stallAfterMs.
    expect(detector.observe(at(3_600_050, 100n, 101n))).toEqual({ stalled: false });
    expect(detector.observe(at(3_601_049, 100n, 101n))).toEqual({ stalled: false });
    expect(detector.observe(at(3_601_050, 100n, 101n))).toMatchObject({ stalled: true, sinceMs: 3_600_050 });
  });

  it('is not stalled at the barrier (target-ts reached), and never with stallAfterMs 0', () => {
    const done = new StallDetector(1_000);
    expect(done.observe(at(0, 100n, 200n, 100n))).toEqual({ stalled: false });
    expect(done.observe(at(5_000, 100n, 200n, 100n))).toEqual({ stalled: false });
    const off = new StallDetector(0);
    expect(off.observe(at(0, 100n, 200n))).toEqual({ stalled: false });
    expect(off.observe(at(1e9, 100n, 200n))).toEqual({ stalled: false });
  });

  it('never reports a negative or shrinking duration when the clock goes back', () => {
    const detector = new StallDetector(1_000);
    detector.observe(at(1_000, 100n, 200n));
    expect(detector.observe(at(3_000, 100n, 200n))).toEqual({ stalled: true, sinceMs: 1_000, stalledForMs: 2_000 });
    expect(detector.observe(at(500, 100n, 200n))).toEqual({ stalled: true, sinceMs: 1_000, stalledForMs: 2_000 });
  });
});

/** A capture's index with replicating primaries at the given checkpoints. */
function captureWith(spans: readonly [Span, bigint][]): CaptureSpans {
  const index = new CaptureSpans();
  for (const [span, checkpointTs] of spans) {
    const set = new ReplicationSet(span, checkpointTs);
    set.state = 'replicating';
    index.primaries.add(set);
    index.replicatingDigest.add(set.key);
  }
  return index;
}

const aggregate = (checkpointTs: bigint, index: CaptureSpans): CaptureWatermark => ({ checkpointTs, resolvedTs: checkpointTs + 100n, digest: index.replicatingDigest.snapshot() });
const spanAt = (start: string, end: string): Span => ({ table: 't', start, end });

describe('findStallHolders', () => {
  it('lists the spans at the checkpoint of the captures at it, bounded and in span order, and counts all', () => {
    const a = captureWith([
      [spanAt('m', 'n'), 100n],
      [spanAt('c', 'd'), 100n],
      [spanAt('x', 'y'), 150n],
      [spanAt('a', 'b'), 90n],
      [spanAt('k', 'l'), 100n],
    ]);
    const b = captureWith([[spanAt('b', 'c'), 100n]]);
    // Its spans look old to the owner, but its own aggregate is past the checkpoint: not a holder.
    const c = captureWith([[spanAt('d', 'e'), 80n]]);
    const empty = new CaptureSpans();
    const holders = findStallHolders(
      100n,
      [
        ['cap-b', b, aggregate(100n, b)],
        ['cap-a', a, aggregate(90n, a)],
        ['cap-c', c, aggregate(120n, c)],
        ['cap-empty', empty, undefined],
      ],
      3,
    );
    expect(holders).toEqual({
      spans: [
        { span: spanAt('a', 'b'), capture: 'cap-a', checkpointTs: 90n },
        { span: spanAt('b', 'c'), capture: 'cap-b', checkpointTs: 100n },
        { span: spanAt('c', 'd'), capture: 'cap-a', checkpointTs: 100n },
      ],
      spanCount: 5,
      captures: ['cap-a', 'cap-b'],
      captureCount: 2,
    });
    expect(findStallHolders(100n, [['cap-a', a, aggregate(90n, a)], ['cap-b', b, aggregate(100n, b)]], 1)).toMatchObject({ captures: ['cap-a'], captureCount: 2 });
    expect(describeStall(holders)).toBe('the checkpoint stands still while the resolved-ts is past it; held back by 5 spans on cap-a, cap-b');
    expect(describeStall({ ...holders, captures: ['cap-a'] })).toContain('on cap-a and 1 more');
  });

  it('skips spans that are not replicating', () => {
    const a = captureWith([[spanAt('a', 'b'), 100n]]);
    const moving = a.primaries.at(0) as ReplicationSet;
    moving.state = 'prepare';
    expect(findStallHolders(100n, [['cap-a', a, aggregate(100n, a)]], 10)).toMatchObject({ spans: [], spanCount: 0, captureCount: 1 });
  });
});

// ---- the coordinator's stalled watermark ----

/** A running coordinator: c1 replicates s0 and s1, c2 s2 and s3, all at 100. */
function running(limits: Partial<CoordinatorLimits> = {}): [Coordinator, FakeCapture, FakeCapture] {
  const coordinator = newCoordinator({ collectIntervalTicks: 10_000, stallAfterMs: 1_000, stallHoldersRefreshMs: 500, ...limits });
  const c1 = new FakeCapture('c1', 11n);
  const c2 = new FakeCapture('c2', 22n);
  for (const span of [s0, s1]) c1.hold(span, 'replicating', 100n);
  for (const span of [s2, s3]) c2.hold(span, 'replicating', 100n);
  const first = coordinator.tick({ captures: ['c1', 'c2'], reports: [] });
  coordinator.tick({ reports: [...c1.collect(c1.collectAsked(first.outbox)), ...c2.collect(c2.collectAsked(first.outbox))] });
  expect(coordinator.phase).toBe('running');
  return [coordinator, c1, c2];
}

describe('coordinator: stalled watermark', () => {
  it('turns stalled when one span holds the checkpoint behind the resolved-ts, names it, and ends when it moves', () => {
    const [coordinator, c1, c2] = running();
    c1.hold(s0, 'replicating', 110n, 120n);
    c1.hold(s1, 'replicating', 110n, 120n);
    c2.hold(s2, 'replicating', 110n, 120n);
    c2.hold(s3, 'replicating', 110n, 120n);
    let out = coordinator.tick({ reports: [c1.report(), c2.report()], nowMs: 0 });
    expect(out.watermark).toEqual({ state: 'advancing', checkpointTs: 110n, resolvedTs: 120n });

    // s0 stops at 110; everything else goes on.
    c1.hold(s1, 'replicating', 150n, 200n);
    c2.hold(s2, 'replicating', 150n, 200n);
    c2.hold(s3, 'replicating', 150n, 200n);
    c1.hold(s0, 'replicating', 110n, 200n);
    out = coordinator.tick({ reports: [c1.report(), c2.report()], nowMs: 999 });
    expect(out.watermark).toEqual({ state: 'advancing', checkpointTs: 110n, resolvedTs: 200n });
    expect(c1.collectAsked(out.outbox)).toBe(0);

    out = coordinator.tick({ reports: [], nowMs: 1_000 });
    // The owner last heard 100 for both spans of c1 (the bootstrap collection): both count until c1's collection.
    expect(out.watermark).toEqual({
      state: 'stalled',
      checkpointTs: 110n,
      resolvedTs: 200n,
      stalledForMs: 1_000,
      heldBy: {
        spans: [
          { span: s0, capture: 'c1', checkpointTs: 100n },
          { span: s1, capture: 'c1', checkpointTs: 100n },
        ],
        spanCount: 2,
        captures: ['c1'],
        captureCount: 1,
      },
    });
    expect(out.events).toContainEqual({ type: 'stall-started', checkpointTs: 110n, resolvedTs: 200n, stalledForMs: 1_000, spanCount: 2, captures: ['c1'] });
    coordinator.checkInvariants();

    // The stall asked c1 (only) for a collection at its next heartbeat.
    out = coordinator.tick({ reports: [], nowMs: 1_050 });
    const collectId = c1.collectAsked(out.outbox);
    expect(collectId).toBeGreaterThan(0);
    expect(c2.collectAsked(out.outbox)).toBe(0);
    expect(out.watermark).toMatchObject({ state: 'stalled', stalledForMs: 1_050, heldBy: { spanCount: 2 } });

    // Its answer makes the holders exact at once (no wait for the refresh interval).
    out = coordinator.tick({ reports: c1.collect(collectId), nowMs: 1_100 });
    expect(out.watermark).toMatchObject({ state: 'stalled', heldBy: { spans: [{ span: s0, capture: 'c1', checkpointTs: 110n }], spanCount: 1, captures: ['c1'], captureCount: 1 } });
    coordinator.checkInvariants();

    // s0 moves: advancing again, and the stall is said to be over.
    c1.hold(s0, 'replicating', 150n, 210n);
    out = coordinator.tick({ reports: [c1.report()], nowMs: 2_000 });
    expect(out.watermark).toEqual({ state: 'advancing', checkpointTs: 150n, resolvedTs: 200n });
    expect(out.events).toContainEqual({ type: 'stall-ended', checkpointTs: 150n, stalledForMs: 2_000 });
  });

  it('lets cannot-proceed take precedence, and is stalled again (same start) once the spans replicate', () => {
    const [coordinator, c1, c2] = running();
    c1.hold(s0, 'replicating', 100n, 200n);
    c1.hold(s1, 'replicating', 150n, 200n);
    c2.hold(s2, 'replicating', 150n, 200n);
    c2.hold(s3, 'replicating', 150n, 200n);
    coordinator.tick({ reports: [c1.report(), c2.report()], nowMs: 0 });
    expect(coordinator.tick({ reports: [], nowMs: 1_000 }).watermark.state).toBe('stalled');
    // c2 dies: its spans are re-added, nothing can proceed meanwhile.
    const out = coordinator.tick({ captures: ['c1'], reports: [], nowMs: 1_500 });
    expect(out.watermark).toMatchObject({ state: 'cannot-proceed', reason: { code: 'span-not-replicating' } });
    coordinator.checkInvariants();
    c1.collectAsked(out.outbox);
    // c1 takes s2 and s3 and replicates them from the checkpoint; the checkpoint still stands.
    c1.hold(s2, 'replicating', 100n, 200n);
    c1.hold(s3, 'replicating', 100n, 200n);
    const back = coordinator.tick({ reports: [c1.report([...c1.held.values()])], nowMs: 2_000 });
    expect(back.watermark).toMatchObject({ state: 'stalled', checkpointTs: 100n, stalledForMs: 2_000, heldBy: { captures: ['c1'] } });
  });

  it('is not stalled at the target-ts, nor without nowMs', () => {
    const [coordinator, c1, c2] = running();
    for (const span of [s0, s1]) c1.hold(span, 'replicating', 110n, 200n);
    for (const span of [s2, s3]) c2.hold(span, 'replicating', 110n, 200n);
    coordinator.tick({ reports: [c1.report(), c2.report()], barrierTs: 110n, nowMs: 0 });
    expect(coordinator.tick({ reports: [], nowMs: 60_000 }).watermark).toEqual({ state: 'advancing', checkpointTs: 110n, resolvedTs: 110n });

    const [untimed, d1, d2] = running();
    d1.hold(s0, 'replicating', 100n, 200n);
    d2.hold(s2, 'replicating', 150n, 200n);
    untimed.tick({ reports: [d1.report(), d2.report()] });
    expect(untimed.tick({ reports: [] }).watermark.state).toBe('advancing');
  });

  it('bounds the spans it names', () => {
    const [coordinator, c1, c2] = running({ stallHoldersListedMax: 1 });
    for (const span of [s0, s1]) c1.hold(span, 'replicating', 100n, 200n);
    for (const span of [s2, s3]) c2.hold(span, 'replicating', 100n, 200n);
    coordinator.tick({ reports: [c1.report(), c2.report()], nowMs: 0 });
    const out = coordinator.tick({ reports: [], nowMs: 1_000 });
    expect(out.watermark).toMatchObject({ state: 'stalled', heldBy: { spans: [{ span: s0 }], spanCount: 4, captures: ['c1'], captureCount: 2 } });
    coordinator.checkInvariants();
  });
});

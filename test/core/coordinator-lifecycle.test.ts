import { describe, expect, it } from 'vitest';
import type { Coordinator } from '../../src/core/coordinator.ts';
import type { DispatchMessage, HeartbeatMessage, OwnerMessage } from '../../src/core/messages.ts';
import type { Span } from '../../src/core/span.ts';
import { spanKey } from '../../src/core/span.ts';
import { FakeCapture, newCoordinator, s0, s1, s2, s3, spans } from './fake-capture.ts';

const heartbeats = (messages: OwnerMessage[]): HeartbeatMessage[] => messages.filter((m): m is HeartbeatMessage => m.kind === 'heartbeat');
const dispatches = (messages: OwnerMessage[]): DispatchMessage[] => messages.filter((m): m is DispatchMessage => m.kind === 'dispatch');

/** Bootstraps a coordinator over the given captures, returning the last outbox. */
function bootstrap(coordinator: Coordinator, captures: FakeCapture[]): OwnerMessage[] {
  const first = coordinator.tick({ captures: captures.map((c) => c.id), reports: [] });
  const reports = captures.flatMap((c) => {
    const hb = heartbeats(c.receive(first.outbox))[0];
    if (hb === undefined || hb.collectId === 0) throw new Error(`no collection asked of ${c.id}`);
    return c.collect(hb.collectId);
  });
  const out = coordinator.tick({ reports });
  for (const c of captures) c.receive(out.outbox);
  coordinator.checkInvariants();
  return out.outbox;
}

describe('coordinator: bootstrap', () => {
  it('waits for every capture collection before doing anything, then rebuilds', () => {
    const coordinator = newCoordinator();
    const c1 = new FakeCapture('c1', 11n);
    const c2 = new FakeCapture('c2', 22n);
    c1.hold(s0, 'replicating', 150n);
    const first = coordinator.tick({ captures: ['c1', 'c2'], reports: [] });
    expect(dispatches(first.outbox)).toEqual([]);
    expect(heartbeats(first.outbox).map((h) => [h.header.to, h.collectId > 0, h.spansComplete])).toEqual([
      ['c1', true, false],
      ['c2', true, false],
    ]);
    expect(first.watermark).toMatchObject({ state: 'cannot-proceed', reason: { code: 'capture-not-initialized' } });

    // Only c1 answered: still bootstrapping, nothing scheduled.
    const hb1 = heartbeats(c1.receive(first.outbox))[0] as HeartbeatMessage;
    const partial = coordinator.tick({ reports: c1.collect(hb1.collectId) });
    expect(coordinator.phase).toBe('bootstrapping');
    expect(dispatches(partial.outbox)).toEqual([]);
    expect(partial.watermark).toMatchObject({ state: 'cannot-proceed', reason: { code: 'capture-not-initialized', captures: ['c2'] } });

    const hb2 = heartbeats(c2.receive(partial.outbox))[0] as HeartbeatMessage;
    const ready = coordinator.tick({ reports: c2.collect(hb2.collectId) });
    expect(coordinator.phase).toBe('running');
    expect(ready.events).toContainEqual({ type: 'rebuilt', sets: 4, captures: 2 });
    // s0 stays where it replicates; the three others are added round-robin.
    const set0 = coordinator.setOf(s0);
    expect(set0?.state).toBe('replicating');
    expect(set0?.primary).toBe('c1');
    const adds = dispatches(ready.outbox).flatMap((d) => d.adds.map((a) => [d.header.to, a.span.start, a.secondary, a.checkpointTs]));
    // One dispatch per capture, spans in round-robin order.
    expect(adds).toEqual([
      ['c1', 'g', false, 100n],
      ['c1', 't', false, 100n],
      ['c2', 'n', false, 100n],
    ]);
    coordinator.checkInvariants();
  });

  it('fails the changefeed when two captures both replicate a span', () => {
    const coordinator = newCoordinator();
    const c1 = new FakeCapture('c1', 11n);
    const c2 = new FakeCapture('c2', 22n);
    c1.hold(s1, 'replicating');
    c2.hold(s1, 'replicating');
    bootstrap(coordinator, [c1, c2]);
    expect(coordinator.phase).toBe('failed');
    expect(coordinator.failure).toContain('two primaries');
    expect(coordinator.tick({ reports: [] }).watermark).toMatchObject({ state: 'cannot-proceed', reason: { code: 'failed' } });
  });
});

describe('coordinator: fatal span errors', () => {
  it('fails the changefeed with the error a capture reports', () => {
    const coordinator = newCoordinator();
    const c1 = new FakeCapture('c1', 11n);
    bootstrap(coordinator, [c1]);
    const report = c1.report([{ span: s0, state: 'stopped', checkpointTs: 100n, resolvedTs: 100n, fatalError: 'revision 101 was compacted' }]);
    const out = coordinator.tick({ reports: [report] });
    expect(coordinator.phase).toBe('failed');
    expect(coordinator.failure).toContain('revision 101 was compacted');
    expect(out.watermark).toMatchObject({ state: 'cannot-proceed', reason: { code: 'failed' } });
  });
});

describe('coordinator: placement and watermark', () => {
  it('withholds the watermark while adds are in flight, then advances to the min of the aggregates', () => {
    const coordinator = newCoordinator();
    const c1 = new FakeCapture('c1', 11n);
    const c2 = new FakeCapture('c2', 22n);
    const out = bootstrap(coordinator, [c1, c2]);
    expect(coordinator.manager.stateCounts).toMatchObject({ prepare: 4 });

    // With no span held, adds go round-robin: c1, c2, c1, c2.
    const toC1 = dispatches(out).filter((d) => d.header.to === 'c1').flatMap((d) => d.adds.map((a) => a.span));
    const toC2 = dispatches(out).filter((d) => d.header.to === 'c2').flatMap((d) => d.adds.map((a) => a.span));
    expect(toC1.map((s) => s.start)).toEqual(['a', 'n']);
    expect(toC2.map((s) => s.start)).toEqual(['g', 't']);

    // c1 replicates both; c2 only one so far.
    for (const span of toC1) c1.hold(span, 'replicating', 100n);
    c2.hold(toC2[0] as Span, 'replicating', 100n);
    c2.hold(toC2[1] as Span, 'preparing', 100n);
    const mid = coordinator.tick({ reports: [c1.report([...c1.held.values()]), c2.report([...c2.held.values()])] });
    expect(mid.watermark).toMatchObject({ state: 'cannot-proceed', reason: { code: 'span-not-replicating', prepare: 1 } });
    expect(mid.advanced).toBeUndefined();

    c2.hold(toC2[1] as Span, 'replicating', 100n);
    c1.hold(toC1[0] as Span, 'replicating', 130n, 140n);
    c1.hold(toC1[1] as Span, 'replicating', 120n, 150n);
    c2.hold(toC2[0] as Span, 'replicating', 125n, 135n);
    c2.hold(toC2[1] as Span, 'replicating', 128n, 160n);
    const done = coordinator.tick({ reports: [c1.report([]), c2.report([...c2.held.values()])] });
    expect(done.watermark).toEqual({ state: 'advancing', checkpointTs: 120n, resolvedTs: 135n });
    expect(done.advanced).toEqual({ checkpointTs: 120n, resolvedTs: 135n });
    coordinator.checkInvariants();

    // An aggregate that does not cover what the owner expects is stale: cannot proceed.
    c1.hold(toC1[1] as Span, 'absent');
    const stale = coordinator.tick({ reports: [c1.report([])] });
    expect(stale.watermark).toMatchObject({ state: 'cannot-proceed', reason: { code: 'capture-watermark-stale', captures: ['c1'] } });
    // The persisted checkpoint never goes down.
    expect(coordinator.checkpointTs).toBe(120n);
  });
});

describe('coordinator: fencing of reports', () => {
  it('drops stale seq, another owner, and a changed capture epoch', () => {
    const coordinator = newCoordinator();
    const c1 = new FakeCapture('c1', 11n);
    bootstrap(coordinator, [c1]);
    const good = c1.report([]);
    const older = { ...good, header: { ...good.header, seq: good.header.seq - 1 } };
    const otherOwner = c1.report([], { header: { ownerRevision: 2n } });
    const wrongEpoch = { ...c1.report([]), header: { ...c1.report([]).header, captureEpoch: 99n } };
    const out = coordinator.tick({ reports: [good, older, otherOwner, wrongEpoch] });
    const drops = out.events.filter((e) => e.type === 'message-dropped').map((e) => (e.type === 'message-dropped' ? e.reason : ''));
    expect(drops).toEqual(['stale-seq', 'wrong-owner', 'wrong-epoch']);
  });
});

describe('coordinator: capture death', () => {
  it('re-adds the spans of a dead capture on the others from their checkpoint', () => {
    const coordinator = newCoordinator();
    const c1 = new FakeCapture('c1', 11n);
    const c2 = new FakeCapture('c2', 22n);
    for (const span of [s0, s1]) c1.hold(span, 'replicating', 200n);
    for (const span of [s2, s3]) c2.hold(span, 'replicating', 210n);
    bootstrap(coordinator, [c1, c2]);
    expect(coordinator.manager.stateCounts.replicating).toBe(4);
    const out = coordinator.tick({ captures: ['c2'], reports: [] });
    expect(out.events).toContainEqual({ type: 'capture-gone', capture: 'c1', spansAffected: 2 });
    const adds = dispatches(out.outbox).flatMap((d) => d.adds.map((a) => [d.header.to, a.span.start, a.checkpointTs]));
    expect(adds).toEqual([
      ['c2', 'a', 200n],
      ['c2', 'g', 200n],
    ]);
    coordinator.checkInvariants();
  });
});

describe('coordinator: operator requests', () => {
  function running(): [Coordinator, FakeCapture, FakeCapture] {
    const coordinator = newCoordinator({ moveTasksInFlightMax: 2 });
    const c1 = new FakeCapture('c1', 11n);
    const c2 = new FakeCapture('c2', 22n);
    for (const span of spans) c1.hold(span, 'replicating', 100n);
    bootstrap(coordinator, [c1, c2]);
    return [coordinator, c1, c2];
  }

  it('validates moves', () => {
    const [coordinator] = running();
    expect(coordinator.requestMove('nope', 'c2')).toMatchObject({ ok: false, code: 'unknown-span' });
    expect(coordinator.requestMove(spanKey(s0), 'c9')).toMatchObject({ ok: false, code: 'unknown-capture' });
    expect(coordinator.requestMove(spanKey(s0), 'c1')).toMatchObject({ ok: false, code: 'span-already-there' });
    expect(coordinator.requestMove(spanKey(s0), 'c2')).toEqual({ ok: true });
    const out = coordinator.tick({ reports: [] });
    expect(dispatches(out.outbox).flatMap((d) => d.adds.map((a) => [d.header.to, a.span.start, a.secondary]))).toEqual([['c2', 'a', true]]);
    expect(out.watermark).toMatchObject({ state: 'cannot-proceed', reason: { code: 'span-not-replicating', prepare: 1 } });
    expect(coordinator.requestMove(spanKey(s0), 'c2')).toMatchObject({ ok: false, code: 'span-not-replicating' });
  });

  it('drains a capture but never the last one, and reports what remains', () => {
    const [coordinator] = running();
    expect(coordinator.requestDrain('c9')).toMatchObject({ ok: false, code: 'unknown-capture' });
    expect(coordinator.requestDrain('c1')).toEqual({ ok: true, remainingSpans: 4 });
    expect(coordinator.requestDrain('c2')).toMatchObject({ ok: false, code: 'last-capture' });
    expect(coordinator.requestMove(spanKey(s0), 'c1')).toMatchObject({ ok: false, code: 'capture-draining' });
    const out = coordinator.tick({ reports: [] });
    // Bounded by moveTasksInFlightMax = 2.
    expect(dispatches(out.outbox).flatMap((d) => d.adds.map((a) => [d.header.to, a.span.start, a.secondary]))).toEqual([
      ['c2', 'a', true],
      ['c2', 'g', true],
    ]);
    coordinator.checkInvariants();
  });

  it('rebalances until each capture holds at most its share', () => {
    const [coordinator] = running();
    expect(coordinator.requestRebalance()).toEqual({ ok: true });
    const out = coordinator.tick({ reports: [] });
    expect(dispatches(out.outbox).flatMap((d) => d.adds.map((a) => d.header.to))).toEqual(['c2', 'c2']);
    expect(coordinator.manager.tasksInFlight.move).toBe(2);
  });
});

/**
 * The Coordinator driven through `tick({captures, reports})` with hand-built reports:
 * bootstrapping and rebuild, placement, the watermark, fencing, capture death, operator
 * requests and their refusals, the never-decreasing checkpoint, and failure on two
 * primaries. Invariants are checked after every tick.
 */
import { describe, expect, it } from 'vitest';
import type { Coordinator, CoordinatorLimits, TickInput, TickOutput } from '../../src/core/coordinator.ts';
import type { CoordinatorEvent } from '../../src/core/events.ts';
import type { CaptureWatermark, DispatchMessage, HeartbeatMessage, ReportMessage, SpanStatus } from '../../src/core/messages.ts';
import type { Span } from '../../src/core/span.ts';
import { spanKey } from '../../src/core/span.ts';
import { emptyDigest } from '../../src/core/span-digest.ts';
import { maxTs } from '../../src/core/ts.ts';
import { CF, CF_EPOCH, FakeCapture, OWNER, REVISION, digestOf, newCoordinator, s0, s1, s2, s3, spans } from './fake-capture.ts';

const k = spanKey;

function step(co: Coordinator, input: TickInput): TickOutput {
  const out = co.tick(input);
  co.checkInvariants();
  return out;
}

const heartbeatTo = (out: TickOutput, to: string): HeartbeatMessage => {
  const found = out.outbox.filter((m): m is HeartbeatMessage => m.kind === 'heartbeat' && m.header.to === to);
  expect(found).toHaveLength(1);
  return found[0] as HeartbeatMessage;
};
const dispatchesTo = (out: TickOutput, to: string): DispatchMessage[] =>
  out.outbox.filter((m): m is DispatchMessage => m.kind === 'dispatch' && m.header.to === to);
const dispatches = (out: TickOutput): { to: string; adds: DispatchMessage['adds']; removes: DispatchMessage['removes'] }[] =>
  out.outbox.filter((m): m is DispatchMessage => m.kind === 'dispatch').map((m) => ({ to: m.header.to, adds: m.adds, removes: m.removes }));
const ofType = <T extends CoordinatorEvent['type']>(out: TickOutput, type: T): Extract<CoordinatorEvent, { type: T }>[] =>
  out.events.filter((e): e is Extract<CoordinatorEvent, { type: T }> => e.type === type);
const addReq = (span: Span, secondary: boolean, checkpointTs: bigint) => ({ span, secondary, checkpointTs });

/**
 * Bootstraps A (holding s0 replicating at 150/160) and B (empty), places the absent spans
 * (s1, s3 on A; s2 on B), and lets them all replicate: the checkpoint advances to 110/115.
 */
function running(limits: Partial<CoordinatorLimits> = {}): { co: Coordinator; A: FakeCapture; B: FakeCapture; last: TickOutput } {
  const co = newCoordinator(limits);
  const A = new FakeCapture('A', 11n);
  const B = new FakeCapture('B', 22n);
  A.hold(s0, 'replicating', 150n, 160n);
  let out = step(co, { captures: ['A', 'B'], reports: [] });
  A.receive(out.outbox);
  B.receive(out.outbox);
  const idA = heartbeatTo(out, 'A').collectId;
  const idB = heartbeatTo(out, 'B').collectId;
  out = step(co, { reports: [...A.collect(idA), ...B.collect(idB)] });
  expect(co.phase).toBe('running');
  A.receive(out.outbox);
  B.receive(out.outbox);
  expect(dispatches(out)).toEqual([
    { to: 'A', adds: [addReq(s1, false, 100n), addReq(s3, false, 100n)], removes: [] },
    { to: 'B', adds: [addReq(s2, false, 100n)], removes: [] },
  ]);
  const a1 = A.hold(s1, 'replicating', 120n, 125n);
  const a3 = A.hold(s3, 'replicating', 110n, 115n);
  const b2 = B.hold(s2, 'replicating', 130n, 140n);
  out = step(co, { reports: [A.report([a1, a3]), B.report([b2])] });
  expect(out.watermark).toEqual({ state: 'advancing', checkpointTs: 110n, resolvedTs: 115n });
  expect(out.advanced).toEqual({ checkpointTs: 110n, resolvedTs: 115n });
  A.receive(out.outbox);
  B.receive(out.outbox);
  return { co, A, B, last: out };
}

describe('Coordinator: bootstrapping and rebuild', () => {
  it('waits for every capture full collection (multi-part), rebuilds, keeps replicating spans in place and places the rest', () => {
    const co = newCoordinator();
    const A = new FakeCapture('A', 11n);
    const B = new FakeCapture('B', 22n);
    A.hold(s0, 'replicating', 150n, 160n);

    // Tick 1: both join; each heartbeat asks for a collection.
    let out = step(co, { captures: ['A', 'B'], reports: [] });
    expect(co.phase).toBe('bootstrapping');
    expect(ofType(out, 'capture-joined').map((e) => e.capture)).toEqual(['A', 'B']);
    expect(out.outbox.map((m) => m.kind)).toEqual(['heartbeat', 'heartbeat']);
    const hbA = heartbeatTo(out, 'A');
    const hbB = heartbeatTo(out, 'B');
    expect(hbA).toEqual({
      kind: 'heartbeat',
      header: { changefeed: CF, ownerRevision: REVISION, changefeedEpoch: CF_EPOCH, captureEpoch: 0n, from: OWNER, to: 'A', seq: 1, ackSeq: 0 },
      spans: [],
      spansComplete: false,
      primaryDigest: emptyDigest,
      draining: false,
      barrierTs: maxTs,
      collectId: hbA.collectId,
    });
    expect(hbA.collectId).not.toBe(0);
    expect(hbB.collectId).not.toBe(0);
    expect(hbB.collectId).not.toBe(hbA.collectId);
    expect(out.watermark).toEqual({ state: 'cannot-proceed', reason: { code: 'capture-not-initialized', captures: ['A', 'B'] } });
    A.receive(out.outbox);
    B.receive(out.outbox);

    // Tick 2: A answers; B has not: nothing is scheduled.
    out = step(co, { reports: A.collect(hbA.collectId) });
    expect(ofType(out, 'capture-initialized')).toEqual([{ type: 'capture-initialized', capture: 'A', spans: 1 }]);
    expect(co.phase).toBe('bootstrapping');
    expect(dispatches(out)).toEqual([]);
    expect(heartbeatTo(out, 'A').collectId).toBe(0);
    expect(heartbeatTo(out, 'A').header.captureEpoch).toBe(11n);
    expect(heartbeatTo(out, 'B').collectId).toBe(hbB.collectId);
    expect(out.watermark).toEqual({ state: 'cannot-proceed', reason: { code: 'capture-not-initialized', captures: ['B'] } });
    expect(co.manager.sets.size).toBe(0);
    A.receive(out.outbox);
    B.receive(out.outbox);

    // B answers in two parts with consecutive seq; the first alone is not enough.
    B.hold(s2, 'stopped'); // nothing held
    const [part0, part1] = B.collect(hbB.collectId, 2) as [ReportMessage, ReportMessage];
    expect(part1.header.seq).toBe(part0.header.seq + 1);
    out = step(co, { reports: [part0] });
    expect(co.phase).toBe('bootstrapping');
    expect(ofType(out, 'capture-initialized')).toEqual([]);
    expect(dispatches(out)).toEqual([]);

    out = step(co, { reports: [part1] });
    expect(co.phase).toBe('running');
    expect(ofType(out, 'capture-initialized')).toEqual([{ type: 'capture-initialized', capture: 'B', spans: 0 }]);
    expect(ofType(out, 'rebuilt')).toEqual([{ type: 'rebuilt', sets: 4, captures: 2 }]);
    // s0 stays on A: no add for it. The rest go round-robin over [A, B].
    expect(co.setOf(s0)?.state).toBe('replicating');
    expect(co.setOf(s0)?.primary).toBe('A');
    expect(co.setOf(s0)?.checkpointTs).toBe(150n);
    expect(dispatches(out)).toEqual([
      { to: 'A', adds: [addReq(s1, false, 100n), addReq(s3, false, 100n)], removes: [] },
      { to: 'B', adds: [addReq(s2, false, 100n)], removes: [] },
    ]);
    expect(ofType(out, 'task-started').map((e) => [e.kind, e.span.start, e.capture, e.scheduler])).toEqual([
      ['add', 'g', 'A', 'basic'],
      ['add', 'n', 'B', 'basic'],
      ['add', 't', 'A', 'basic'],
    ]);
    // Dispatches first, then heartbeats that list the spans in transition.
    expect(out.outbox.map((m) => `${m.kind}:${m.header.to}`)).toEqual(['dispatch:A', 'dispatch:B', 'heartbeat:A', 'heartbeat:B']);
    const hbA4 = heartbeatTo(out, 'A');
    expect(hbA4.spans).toEqual([s1, s3]);
    expect(hbA4.spansComplete).toBe(true);
    expect(hbA4.primaryDigest).toEqual(digestOf([s0]));
    expect(hbA4.collectId).toBe(0);
    expect(heartbeatTo(out, 'B').spans).toEqual([s2]);
    expect(heartbeatTo(out, 'B').primaryDigest).toEqual(emptyDigest);
    // Header seqs increase per capture: 3 heartbeats before, then the dispatch and a heartbeat.
    expect(dispatchesTo(out, 'A')[0]?.header.seq).toBe(4);
    expect(hbA4.header.seq).toBe(5);
    expect(hbA4.header.ackSeq).toBe(A.seq);
    expect(out.watermark).toEqual({ state: 'cannot-proceed', reason: { code: 'span-not-replicating', absent: 0, prepare: 3, commit: 0, removing: 0 } });
    expect(out.advanced).toBeUndefined();
  });

  it('a capture that has not answered yet blocks the rebuild however long it takes', () => {
    const co = newCoordinator();
    const A = new FakeCapture('A', 11n);
    let out = step(co, { captures: ['A', 'B'], reports: [] });
    out = step(co, { reports: A.collect(heartbeatTo(out, 'A').collectId) });
    for (let i = 0; i < 5; i++) {
      out = step(co, { reports: [] });
      expect(co.phase).toBe('bootstrapping');
      expect(dispatches(out)).toEqual([]);
    }
    // B dies without answering: A alone completes the bootstrap and gets every span.
    out = step(co, { captures: ['A'], reports: [] });
    expect(co.phase).toBe('running');
    expect(dispatches(out)).toEqual([{ to: 'A', adds: spans.map((s) => addReq(s, false, 100n)), removes: [] }]);
  });

  it('a capture whose collection predates the owner (wrong collect id) is dropped as stale-collect', () => {
    const co = newCoordinator();
    const A = new FakeCapture('A', 11n);
    const out = step(co, { captures: ['A'], reports: [] });
    const id = heartbeatTo(out, 'A').collectId;
    const next = step(co, { reports: A.collect(id + 100) });
    expect(ofType(next, 'message-dropped')).toEqual([{ type: 'message-dropped', reason: 'stale-collect', from: 'A', seq: 1 }]);
    expect(co.phase).toBe('bootstrapping');
    step(co, { reports: A.collect(id) });
    expect(co.phase).toBe('running');
  });

  it('parts of two different snapshots are never combined; a fresh complete snapshot is', () => {
    const co = newCoordinator();
    const A = new FakeCapture('A', 11n);
    A.hold(s0, 'replicating', 150n);
    A.hold(s1, 'replicating', 150n);
    const out = step(co, { captures: ['A'], reports: [] });
    const id = heartbeatTo(out, 'A').collectId;
    const [first0] = A.collect(id, 2) as [ReportMessage, ReportMessage]; // part 1 lost
    const [, second1] = A.collect(id, 2) as [ReportMessage, ReportMessage]; // part 0 lost
    step(co, { reports: [first0, second1] });
    expect(co.phase).toBe('bootstrapping');
    step(co, { reports: A.collect(id, 2) });
    expect(co.phase).toBe('running');
    expect(co.setOf(s0)?.primary).toBe('A');
    expect(co.setOf(s1)?.primary).toBe('A');
  });

  it('two captures both reporting a span replicating -> failed, and stays failed', () => {
    const co = newCoordinator();
    const A = new FakeCapture('A', 11n);
    const B = new FakeCapture('B', 22n);
    A.hold(s0, 'replicating', 150n);
    B.hold(s0, 'replicating', 160n);
    let out = step(co, { captures: ['A', 'B'], reports: [] });
    const reports = [...A.collect(heartbeatTo(out, 'A').collectId), ...B.collect(heartbeatTo(out, 'B').collectId)];
    out = co.tick({ reports });
    expect(co.phase).toBe('failed');
    expect(co.failure).toMatch(/two primaries .*: A and B/);
    expect(out.outbox).toEqual([]);
    expect(out.advanced).toBeUndefined();
    expect(out.watermark).toEqual({ state: 'cannot-proceed', reason: { code: 'failed', message: co.failure } });
    expect(ofType(out, 'invariant-violation')).toHaveLength(1);

    out = co.tick({ reports: [A.report([A.hold(s0, 'replicating', 200n)])] });
    expect(out.outbox).toEqual([]);
    expect(out.watermark.state).toBe('cannot-proceed');
    expect(co.checkpointTs).toBe(100n);
    expect(co.requestRebalance()).toMatchObject({ ok: false, code: 'not-ready' });
  });
});

describe('Coordinator: collections are not multiplied', () => {
  it('asks for a collection again only after collectRetryTicks without a part, never while parts keep coming', () => {
    const co = newCoordinator({ collectRetryTicks: 5 });
    const A = new FakeCapture('A', 11n);
    A.hold(s0, 'replicating', 150n, 160n);
    A.hold(s1, 'replicating', 150n, 160n);
    A.hold(s2, 'replicating', 150n, 160n);
    let out = step(co, { captures: ['A'], reports: [] });
    const id = heartbeatTo(out, 'A').collectId;
    expect(id).not.toBe(0);
    A.receive(out.outbox);
    // The answer is slow: the next heartbeats do not ask again until 5 ticks have passed.
    const asked: number[] = [];
    for (let tick = 2; tick <= 7; tick++) {
      out = step(co, { reports: [] });
      asked.push(heartbeatTo(out, 'A').collectId);
      A.receive(out.outbox);
    }
    expect(asked).toEqual([0, 0, 0, 0, id, 0]);
    // Parts arriving one a tick keep it from being asked again, however long it takes.
    const parts = A.collect(id, 3);
    for (const part of parts.slice(0, 2)) {
      for (let i = 0; i < 4; i++) {
        out = step(co, { reports: i === 0 ? [part] : [] });
        expect(heartbeatTo(out, 'A').collectId).toBe(0);
        A.receive(out.outbox);
      }
    }
    expect(co.phase).toBe('bootstrapping');
    out = step(co, { reports: [parts[2] as ReportMessage] });
    expect(co.phase).toBe('running');
    expect(ofType(out, 'capture-initialized')).toEqual([{ type: 'capture-initialized', capture: 'A', spans: 3 }]);
  });
});

describe('Coordinator: placement and the watermark', () => {
  it('cannot proceed while an add is in flight, then advances to the min of the aggregates', () => {
    const co = newCoordinator();
    const A = new FakeCapture('A', 11n);
    const B = new FakeCapture('B', 22n);
    A.hold(s0, 'replicating', 150n, 160n);
    let out = step(co, { captures: ['A', 'B'], reports: [] });
    A.receive(out.outbox);
    B.receive(out.outbox);
    out = step(co, { reports: [...A.collect(heartbeatTo(out, 'A').collectId), ...B.collect(heartbeatTo(out, 'B').collectId)] });
    A.receive(out.outbox);
    B.receive(out.outbox);

    // A promotes its adds itself; B is still preparing s2.
    const a1 = A.hold(s1, 'replicating', 120n, 125n);
    const a3 = A.hold(s3, 'replicating', 110n, 115n);
    const b2 = B.hold(s2, 'preparing', 100n);
    out = step(co, { reports: [A.report([a1, a3]), B.report([b2])] });
    expect(out.watermark).toEqual({ state: 'cannot-proceed', reason: { code: 'span-not-replicating', absent: 0, prepare: 1, commit: 0, removing: 0 } });
    expect(dispatches(out)).toEqual([]);
    expect(heartbeatTo(out, 'A').primaryDigest).toEqual(digestOf([s0, s1, s3]));
    expect(heartbeatTo(out, 'A').spans).toEqual([]);
    expect(heartbeatTo(out, 'B').spans).toEqual([s2]);
    A.receive(out.outbox);
    B.receive(out.outbox);

    // B's preparing is duplicated: nothing changes.
    out = step(co, { reports: [B.report([b2])] });
    expect(dispatches(out)).toEqual([]);
    expect(co.checkpointTs).toBe(100n);

    const b2r = B.hold(s2, 'replicating', 130n, 140n);
    out = step(co, { reports: [B.report([b2r])] });
    expect(out.watermark).toEqual({ state: 'advancing', checkpointTs: 110n, resolvedTs: 115n });
    expect(out.advanced).toEqual({ checkpointTs: 110n, resolvedTs: 115n });
    expect(ofType(out, 'checkpoint-advanced')).toEqual([{ type: 'checkpoint-advanced', checkpointTs: 110n, resolvedTs: 115n }]);
    expect(co.checkpointTs).toBe(110n);
    expect(co.manager.floorTs).toBe(110n);

    // No change: nothing to persist.
    out = step(co, { reports: [] });
    expect(out.watermark.state).toBe('advancing');
    expect(out.advanced).toBeUndefined();
  });

  it('a capture aggregate that does not cover the expected spans holds the watermark (stale digest)', () => {
    const { co, A, B } = running();
    // A's aggregate forgets s3: stale.
    const stale: CaptureWatermark = { checkpointTs: 500n, resolvedTs: 500n, digest: digestOf([s0, s1]) };
    let out = step(co, { reports: [A.report([], { watermark: stale })] });
    expect(out.watermark).toEqual({ state: 'cannot-proceed', reason: { code: 'capture-watermark-stale', captures: ['A'] } });
    expect(out.advanced).toBeUndefined();
    // A current one again: advances with the min over A and B.
    for (const s of [s0, s1, s3]) A.hold(s, 'replicating', 300n, 310n);
    B.hold(s2, 'replicating', 280n, 290n);
    out = step(co, { reports: [A.report([]), B.report([])] });
    expect(out.watermark).toEqual({ state: 'advancing', checkpointTs: 280n, resolvedTs: 290n });
  });

  it('clamps to the barrier and never persists a lower checkpoint', () => {
    const { co, A, B } = running();
    expect(co.checkpointTs).toBe(110n);
    for (const s of [s0, s1, s3]) A.hold(s, 'replicating', 300n, 320n);
    B.hold(s2, 'replicating', 310n, 330n);
    let out = step(co, { reports: [A.report([]), B.report([])], barrierTs: 250n });
    expect(out.watermark).toEqual({ state: 'advancing', checkpointTs: 250n, resolvedTs: 250n });
    expect(out.advanced).toEqual({ checkpointTs: 250n, resolvedTs: 250n });
    expect(heartbeatTo(out, 'A').barrierTs).toBe(250n);

    // A capture reports a lower aggregate (e.g. after a restart from an older position):
    // the watermark says 200, but the persisted checkpoint stays 250.
    for (const s of [s0, s1, s3]) A.hold(s, 'replicating', 200n, 205n);
    out = step(co, { reports: [A.report([])], barrierTs: maxTs });
    expect(out.watermark).toEqual({ state: 'advancing', checkpointTs: 200n, resolvedTs: 205n });
    expect(out.advanced).toBeUndefined();
    expect(co.checkpointTs).toBe(250n);
    expect(co.resolvedTs).toBe(250n);

    for (const s of [s0, s1, s3]) A.hold(s, 'replicating', 400n, 405n);
    out = step(co, { reports: [A.report([])] });
    expect(out.watermark).toEqual({ state: 'advancing', checkpointTs: 310n, resolvedTs: 330n });
    expect(out.advanced).toEqual({ checkpointTs: 310n, resolvedTs: 330n });
  });

  it('the persisted checkpoint never decreases over a whole run with capture death and re-adds', () => {
    const { co, A, B } = running();
    let last = co.checkpointTs;
    const check = (out: TickOutput): void => {
      expect(co.checkpointTs >= last).toBe(true);
      expect(co.checkpointTs <= co.resolvedTs).toBe(true);
      if (out.advanced !== undefined) expect(out.advanced.checkpointTs >= last).toBe(true);
      last = co.checkpointTs;
    };
    for (const s of [s0, s1, s3]) A.hold(s, 'replicating', 200n);
    B.hold(s2, 'replicating', 190n);
    check(step(co, { reports: [A.report([]), B.report([])] }));
    expect(co.checkpointTs).toBe(190n);
    // B dies; s2 is re-added on A from its own checkpoint (190), which is the floor too.
    let out = step(co, { captures: ['A'], reports: [] });
    check(out);
    expect(dispatches(out)).toEqual([{ to: 'A', adds: [addReq(s2, false, 190n)], removes: [] }]);
    A.receive(out.outbox);
    // A restarts s2 at the floor and reports a lower position for it than before.
    out = step(co, { reports: [A.report([A.hold(s2, 'replicating', 190n)])] });
    check(out);
    expect(out.watermark).toEqual({ state: 'advancing', checkpointTs: 190n, resolvedTs: 190n });
  });
});

describe('Coordinator: fencing', () => {
  it('drops stale-seq, wrong-owner, wrong-epoch, wrong-changefeed and unknown-capture reports without acting on them', () => {
    const { co, A } = running();
    const dropped = (report: ReportMessage): CoordinatorEvent[] => {
      const out = step(co, { reports: [report] });
      expect(co.setOf(s0)?.state).toBe('replicating');
      expect(dispatches(out)).toEqual([]);
      return ofType(out, 'message-dropped');
    };
    const stopped0: SpanStatus = { span: s0, state: 'stopped', checkpointTs: 999n, resolvedTs: 999n };
    const seq = A.seq;
    expect(dropped(A.report([stopped0], { header: { seq } }))).toEqual([{ type: 'message-dropped', reason: 'stale-seq', from: 'A', seq }]);
    expect(dropped(A.report([stopped0], { header: { seq: seq - 1 } }))).toEqual([{ type: 'message-dropped', reason: 'stale-seq', from: 'A', seq: seq - 1 }]);
    expect(dropped(A.report([stopped0], { header: { to: 'other-owner', seq: seq + 1 } }))[0]?.type).toBe('message-dropped');
    expect(dropped(A.report([stopped0], { header: { to: 'other-owner', seq: seq + 1 } }))).toEqual([{ type: 'message-dropped', reason: 'wrong-owner', from: 'A', seq: seq + 1 }]);
    expect(dropped(A.report([stopped0], { header: { ownerRevision: 2n, seq: seq + 1 } }))).toEqual([{ type: 'message-dropped', reason: 'wrong-owner', from: 'A', seq: seq + 1 }]);
    expect(dropped(A.report([stopped0], { header: { changefeedEpoch: 2n, seq: seq + 1 } }))).toEqual([{ type: 'message-dropped', reason: 'wrong-epoch', from: 'A', seq: seq + 1 }]);
    // A restarted agent (another capture epoch) under the same id.
    expect(dropped(A.report([stopped0], { header: { captureEpoch: 99n, seq: seq + 1 } }))).toEqual([{ type: 'message-dropped', reason: 'wrong-epoch', from: 'A', seq: seq + 1 }]);
    expect(dropped(A.report([stopped0], { header: { changefeed: 'other', seq: seq + 1 } }))).toEqual([{ type: 'message-dropped', reason: 'wrong-changefeed', from: 'A', seq: seq + 1 }]);
    expect(dropped(A.report([stopped0], { header: { from: 'Z', seq: seq + 1 } }))).toEqual([{ type: 'message-dropped', reason: 'unknown-capture', from: 'Z', seq: seq + 1 }]);
    // None of the dropped reports consumed a seq: seq + 1 is still accepted.
    const out = step(co, { reports: [A.report([A.hold(s0, 'replicating', 170n)], { header: { seq: seq + 1 } })] });
    expect(ofType(out, 'message-dropped')).toEqual([]);
    expect(co.setOf(s0)?.checkpointTs).toBe(170n);
  });

  it('reordered reports: the older one is dropped as stale-seq, the newer one carries the current state', () => {
    const { co, A, B } = running();
    expect(co.requestMove(k(s0), 'B')).toEqual({ ok: true });
    let out = step(co, { reports: [] });
    expect(dispatches(out)).toEqual([{ to: 'B', adds: [addReq(s0, true, 150n)], removes: [] }]);
    B.receive(out.outbox);
    // B reports preparing then prepared; they arrive swapped.
    const early = B.report([B.hold(s0, 'preparing', 150n)]);
    const late = B.report([B.hold(s0, 'prepared', 150n)]);
    out = step(co, { reports: [late, early] });
    expect(ofType(out, 'message-dropped')).toEqual([{ type: 'message-dropped', reason: 'stale-seq', from: 'B', seq: early.header.seq }]);
    expect(co.setOf(s0)?.state).toBe('commit');
    expect(dispatches(out)).toEqual([{ to: 'A', adds: [], removes: [s0] }]);
    // A's stopping and stopped also arrive swapped: the stopped one alone completes the step.
    const stopping = A.report([A.hold(s0, 'stopping', 151n)]);
    const stopped = A.report([A.hold(s0, 'stopped', 152n)]);
    out = step(co, { reports: [stopped, stopping] });
    expect(ofType(out, 'message-dropped').map((e) => e.seq)).toEqual([stopping.header.seq]);
    expect(dispatches(out)).toEqual([{ to: 'B', adds: [addReq(s0, false, 152n)], removes: [] }]);
  });
});

describe('Coordinator: a move, lost dispatches, capture death', () => {
  it('move: add secondary -> prepared -> remove old primary (lost, re-sent) -> stopped -> promote at its final checkpoint', () => {
    const { co, A, B } = running();
    expect(co.requestMove(k(s0), 'B')).toEqual({ ok: true });
    let out = step(co, { reports: [] });
    expect(dispatches(out)).toEqual([{ to: 'B', adds: [addReq(s0, true, 150n)], removes: [] }]);
    expect(ofType(out, 'task-started').map((e) => [e.kind, e.capture, e.scheduler])).toEqual([['move', 'B', 'move']]);
    expect(out.watermark).toEqual({ state: 'cannot-proceed', reason: { code: 'span-not-replicating', absent: 0, prepare: 1, commit: 0, removing: 0 } });
    expect(heartbeatTo(out, 'A').spans).toEqual([s0]);
    expect(heartbeatTo(out, 'B').spans).toEqual([s0]);
    // While the move runs, a second one for the same span is refused.
    expect(co.requestMove(k(s0), 'B')).toMatchObject({ ok: false, code: 'span-not-replicating' });
    B.receive(out.outbox);

    out = step(co, { reports: [B.report([B.hold(s0, 'prepared', 150n, 180n)])] });
    expect(co.setOf(s0)?.state).toBe('commit');
    expect(dispatches(out)).toEqual([{ to: 'A', adds: [], removes: [s0] }]);
    // The remove is lost: A never receives it and reports s0 replicating again.
    out = step(co, { reports: [A.report([A.hold(s0, 'replicating', 160n, 170n)])] });
    expect(dispatches(out)).toEqual([{ to: 'A', adds: [], removes: [s0] }]);
    expect(co.setOf(s0)?.checkpointTs).toBe(160n);
    A.receive(out.outbox);

    out = step(co, { reports: [A.report([A.hold(s0, 'stopping', 165n)])] });
    expect(dispatches(out)).toEqual([]);
    out = step(co, { reports: [A.report([A.hold(s0, 'stopped', 168n)])] });
    expect(dispatches(out)).toEqual([{ to: 'B', adds: [addReq(s0, false, 168n)], removes: [] }]);
    // B's report made before it received the promotion is ignored (not a lost add).
    out = step(co, { reports: [B.report([B.hold(s0, 'prepared', 150n)])] });
    expect(dispatches(out)).toEqual([]);
    B.receive(out.outbox);
    out = step(co, { reports: [B.report([B.hold(s0, 'replicating', 168n, 185n)])] });
    expect(co.setOf(s0)?.state).toBe('replicating');
    expect(co.setOf(s0)?.primary).toBe('B');
    expect(heartbeatTo(out, 'B').primaryDigest).toEqual(digestOf([s0, s2]));
    expect(heartbeatTo(out, 'A').primaryDigest).toEqual(digestOf([s1, s3]));
    expect(out.watermark).toEqual({ state: 'advancing', checkpointTs: 110n, resolvedTs: 115n });
  });

  it('a lost add is re-sent when the capture answers absent to a heartbeat', () => {
    const co = newCoordinator();
    const A = new FakeCapture('A', 11n);
    let out = step(co, { captures: ['A'], reports: [] });
    A.receive(out.outbox);
    out = step(co, { reports: A.collect(heartbeatTo(out, 'A').collectId) });
    expect(dispatches(out)).toEqual([{ to: 'A', adds: spans.map((s) => addReq(s, false, 100n)), removes: [] }]);
    // The dispatch is lost; A only gets the heartbeat that asks about the four spans.
    const hb = heartbeatTo(out, 'A');
    expect(hb.spans).toEqual(spans);
    A.ack = hb.header.seq;
    const absent = spans.map((span): SpanStatus => ({ span, state: 'absent', checkpointTs: 0n, resolvedTs: 0n }));
    out = step(co, { reports: [A.report(absent)] });
    expect(dispatches(out)).toEqual([{ to: 'A', adds: spans.map((s) => addReq(s, false, 100n)), removes: [] }]);
  });

  it('capture death re-adds its spans elsewhere and the watermark recovers', () => {
    const { co, A } = running();
    let out = step(co, { captures: ['A'], reports: [] });
    expect(ofType(out, 'capture-gone')).toEqual([{ type: 'capture-gone', capture: 'B', spansAffected: 1 }]);
    expect(co.setOf(s2)?.state).toBe('prepare');
    expect(dispatches(out)).toEqual([{ to: 'A', adds: [addReq(s2, false, 130n)], removes: [] }]);
    expect(out.outbox.some((m) => m.header.to === 'B')).toBe(false);
    expect(out.watermark).toEqual({ state: 'cannot-proceed', reason: { code: 'span-not-replicating', absent: 0, prepare: 1, commit: 0, removing: 0 } });
    expect(co.checkpointTs).toBe(110n);
    A.receive(out.outbox);
    out = step(co, { reports: [A.report([A.hold(s2, 'replicating', 130n, 135n)])] });
    expect(out.watermark).toEqual({ state: 'advancing', checkpointTs: 110n, resolvedTs: 115n });
    expect(co.remainingSpans('A')).toBe(4);
    expect(co.remainingSpans('B')).toBe(0);
  });

  it('the last capture dying leaves every span absent until a new capture joins and is initialised', () => {
    const { co } = running();
    let out = step(co, { captures: [], reports: [] });
    expect(co.manager.stateCounts.absent).toBe(4);
    expect(out.outbox).toEqual([]);
    out = step(co, { captures: ['C'], reports: [] });
    // C must answer its collection before anything is scheduled.
    expect(dispatches(out)).toEqual([]);
    expect(out.watermark).toEqual({ state: 'cannot-proceed', reason: { code: 'capture-not-initialized', captures: ['C'] } });
    const C = new FakeCapture('C', 33n);
    out = step(co, { reports: C.collect(heartbeatTo(out, 'C').collectId) });
    // Absent in the order the captures' spans were given up: A's primaries, then B's.
    expect(dispatches(out)).toEqual([
      { to: 'C', adds: [addReq(s0, false, 150n), addReq(s1, false, 120n), addReq(s3, false, 110n), addReq(s2, false, 130n)], removes: [] },
    ]);
  });

  it('a collection that misses a span the owner placed there reconciles it to absent and re-adds it', () => {
    const { co, A, B } = running({ digestMismatchCollectTicks: 2 });
    // A silently lost s1: its aggregate no longer covers it.
    A.hold(s1, 'absent');
    let out = step(co, { reports: [A.report([])] });
    expect(out.watermark).toEqual({ state: 'cannot-proceed', reason: { code: 'capture-watermark-stale', captures: ['A'] } });
    let collectId = 0;
    for (let i = 0; i < 5 && collectId === 0; i++) {
      out = step(co, { reports: [] });
      collectId = heartbeatTo(out, 'A').collectId;
    }
    expect(collectId).not.toBe(0);
    A.receive(out.outbox);
    B.receive(out.outbox);
    out = step(co, { reports: A.collect(collectId) });
    expect(ofType(out, 'span-state-changed').map((e) => [e.span.start, e.from, e.to])).toEqual([
      ['g', 'replicating', 'absent'],
      ['g', 'absent', 'prepare'],
    ]);
    expect(dispatches(out)).toHaveLength(1);
    expect(dispatches(out)[0]?.adds).toEqual([addReq(s1, false, 120n)]);
  });
});

describe('Coordinator: operator requests', () => {
  it('refuses everything but drain before it runs', () => {
    const co = newCoordinator();
    step(co, { captures: ['A', 'B'], reports: [] });
    expect(co.requestMove(k(s0), 'B')).toMatchObject({ ok: false, code: 'not-ready' });
    expect(co.requestRebalance()).toMatchObject({ ok: false, code: 'not-ready' });
    expect(co.requestDrain('Z')).toMatchObject({ ok: false, code: 'unknown-capture' });
  });

  it('requestDrain: the remaining spans are unknown until the capture answered its first collection', () => {
    const co = newCoordinator();
    const A = new FakeCapture('A', 11n);
    const B = new FakeCapture('B', 22n);
    A.hold(s0, 'replicating', 150n, 160n);
    const out = step(co, { captures: ['A', 'B'], reports: [] });
    // A holds s0, but the owner has not heard it yet: not 0, unknown.
    expect(co.remainingSpans('A')).toBeUndefined();
    expect(co.requestDrain('A')).toEqual({ ok: true, remainingSpans: undefined });
    const idA = heartbeatTo(out, 'A').collectId;
    const idB = heartbeatTo(out, 'B').collectId;
    step(co, { reports: [...A.collect(idA), ...B.collect(idB)] });
    expect(co.remainingSpans('A')).toBe(1);
    expect(co.requestDrain('A')).toEqual({ ok: true, remainingSpans: 1 });
  });

  it('requestMove: a span with a move queued is refused, and a queued move refused when it runs is said', () => {
    const { co } = running();
    expect(co.requestMove(k(s0), 'B')).toEqual({ ok: true });
    expect(co.requestMove(k(s0), 'B')).toMatchObject({ ok: false, code: 'move-queued' });
    expect(co.requestMove(k(s1), 'B')).toEqual({ ok: true });
    expect(co.movesQueued).toBe(2);
    // B is drained before the moves' turn: they cannot go there any more.
    expect(co.requestDrain('B')).toMatchObject({ ok: true });
    for (let i = 0; i < 5 && co.movesQueued > 0; i++) step(co, { reports: [] });
    expect(co.movesQueued).toBe(0);
    expect(co.moveRefusals.map((r) => ({ span: r.span, capture: r.capture, reason: r.reason }))).toEqual([
      { span: s0, capture: 'B', reason: 'capture B is gone or draining' },
      { span: s1, capture: 'B', reason: 'capture B is gone or draining' },
    ]);
  });

  it('requestMove validation codes', () => {
    const { co, A, B } = running({ moveRequestsQueuedMax: 1 });
    expect(co.requestMove('nope', 'B')).toMatchObject({ ok: false, code: 'unknown-span' });
    expect(co.requestMove(k(s0), 'Z')).toMatchObject({ ok: false, code: 'unknown-capture' });
    expect(co.requestMove(k(s0), 'A')).toMatchObject({ ok: false, code: 'span-already-there' });
    expect(co.requestMove(k(s0), 'B')).toEqual({ ok: true });
    expect(co.requestMove(k(s1), 'B')).toMatchObject({ ok: false, code: 'queue-full' });
    const out = step(co, { reports: [] });
    expect(dispatches(out)).toEqual([{ to: 'B', adds: [addReq(s0, true, 150n)], removes: [] }]);
    expect(co.requestMove(k(s0), 'B')).toMatchObject({ ok: false, code: 'span-not-replicating' });
    expect(co.requestMove(k(s1), 'B')).toEqual({ ok: true });
    // A capture that joined but is not initialised is not a valid target.
    step(co, { captures: ['A', 'B', 'C'], reports: [] });
    expect(co.requestMove(k(s3), 'C')).toMatchObject({ ok: false, code: 'unknown-capture' });
    void A;
    void B;
  });

  it('requestDrain: last-capture refusal, remaining spans, no moves to a draining capture, drain completes', () => {
    const { co, A, B } = running();
    expect(co.requestDrain('Z')).toMatchObject({ ok: false, code: 'unknown-capture' });
    expect(co.requestDrain('A')).toEqual({ ok: true, remainingSpans: 3 });
    expect(co.requestDrain('B')).toMatchObject({ ok: false, code: 'last-capture' });
    // Asking again for a capture already draining reports progress.
    expect(co.requestDrain('A')).toEqual({ ok: true, remainingSpans: 3 });
    expect(co.requestMove(k(s2), 'A')).toMatchObject({ ok: false, code: 'capture-draining' });

    let out = step(co, { reports: [] });
    expect(heartbeatTo(out, 'A').draining).toBe(true);
    expect(heartbeatTo(out, 'B').draining).toBe(false);
    const moves = dispatches(out);
    expect(moves).toEqual([{ to: 'B', adds: [addReq(s0, true, 150n), addReq(s1, true, 120n), addReq(s3, true, 110n)], removes: [] }]);
    expect(ofType(out, 'task-started').every((e) => e.scheduler === 'drain' && e.capture === 'B')).toBe(true);
    B.receive(out.outbox);
    for (let round = 0; round < 10 && co.manager.stateCounts.replicating < 4; round++) {
      const reports: ReportMessage[] = [];
      const bStatuses: SpanStatus[] = [];
      const aStatuses: SpanStatus[] = [];
      for (const span of [s0, s1, s3]) {
        const set = co.setOf(span);
        if (set === undefined) continue;
        if (set.state === 'prepare') bStatuses.push(B.hold(span, 'prepared', set.checkpointTs));
        if (set.state === 'commit' && set.primary === 'A') aStatuses.push(A.hold(span, 'stopped', set.checkpointTs));
        if (set.state === 'commit' && set.primary === undefined) bStatuses.push(B.hold(span, 'replicating', set.checkpointTs));
      }
      if (aStatuses.length > 0) reports.push(A.report(aStatuses));
      if (bStatuses.length > 0) reports.push(B.report(bStatuses));
      out = step(co, { reports });
      A.receive(out.outbox);
      B.receive(out.outbox);
      // A holds nothing once it stopped, even before B is promoted.
      if (co.manager.stateCounts.commit > 0 && [s0, s1, s3].every((span) => co.setOf(span)?.primary !== 'A')) expect(co.remainingSpans('A')).toBe(0);
    }
    expect(co.remainingSpans('A')).toBe(0);
    expect(co.requestDrain('A')).toEqual({ ok: true, remainingSpans: 0 });
    expect([s0, s1, s2, s3].map((s) => co.setOf(s)?.primary)).toEqual(['B', 'B', 'B', 'B']);
  });

  it('cancelDrain: the capture is a target again, and later drains are possible', () => {
    const { co } = running();
    expect(co.cancelDrain('Z')).toMatchObject({ ok: false, code: 'unknown-capture' });
    expect(co.requestDrain('A')).toEqual({ ok: true, remainingSpans: 3 });
    expect(co.requestMove(k(s2), 'A')).toMatchObject({ ok: false, code: 'capture-draining' });
    expect(co.cancelDrain('A')).toEqual({ ok: true });
    expect(co.cancelDrain('A')).toEqual({ ok: true });
    // No drain moves start, the heartbeat says so, and A takes a move again.
    const out = step(co, { reports: [] });
    expect(heartbeatTo(out, 'A').draining).toBe(false);
    expect(ofType(out, 'task-started').filter((e) => e.scheduler === 'drain')).toEqual([]);
    expect(co.requestMove(k(s2), 'A')).toEqual({ ok: true });
    // B may be drained now that A stays.
    expect(co.requestDrain('B')).toMatchObject({ ok: true });
  });

  it('requestRebalance moves spans until each capture holds at most ceil(spans / captures)', () => {
    const { co, A, B } = running();
    const C = new FakeCapture('C', 33n);
    let out = step(co, { captures: ['A', 'B', 'C'], reports: [] });
    out = step(co, { reports: C.collect(heartbeatTo(out, 'C').collectId) });
    expect(dispatches(out)).toEqual([]);
    expect(co.requestRebalance()).toEqual({ ok: true });
    const captures = { A, B, C };
    for (let round = 0; round < 20; round++) {
      out = step(co, { reports: [] });
      const byCapture = new Map<FakeCapture, SpanStatus[]>();
      for (const fake of Object.values(captures)) fake.receive(out.outbox);
      for (const set of co.manager.sets.values()) {
        const push = (fake: FakeCapture, status: SpanStatus): void => {
          byCapture.set(fake, [...(byCapture.get(fake) ?? []), status]);
        };
        const get = (id: string | undefined): FakeCapture | undefined => (id === undefined ? undefined : captures[id as keyof typeof captures]);
        const secondary = get(set.secondary);
        const primary = get(set.primary);
        if (set.state === 'prepare' && secondary) push(secondary, secondary.hold(set.span, 'prepared', set.checkpointTs));
        if (set.state === 'commit' && primary) push(primary, primary.hold(set.span, 'stopped', set.checkpointTs));
        if (set.state === 'commit' && !primary && secondary) push(secondary, secondary.hold(set.span, 'replicating', set.checkpointTs));
      }
      if (byCapture.size === 0 && co.manager.tasksInFlight.move === 0 && round > 0) break;
      step(co, { reports: [...byCapture].map(([fake, statuses]) => fake.report(statuses)) });
    }
    const upper = Math.ceil(4 / 3);
    for (const id of ['A', 'B', 'C']) expect(co.manager.captureSpans(id)?.primaries.length).toBeLessThanOrEqual(upper);
    expect(co.manager.captureSpans('C')?.primaries.length).toBeGreaterThan(0);
    expect(co.manager.stateCounts.replicating).toBe(4);
  });
});

describe('Coordinator: limits on messages', () => {
  it('splits dispatches at spansPerMessageMax and rotates heartbeat span lists that do not fit', () => {
    const co = newCoordinator({ spansPerMessageMax: 3 });
    const A = new FakeCapture('A', 11n);
    let out = step(co, { captures: ['A'], reports: [] });
    out = step(co, { reports: A.collect(heartbeatTo(out, 'A').collectId) });
    expect(dispatches(out)).toEqual([
      { to: 'A', adds: [s0, s1, s2].map((s) => addReq(s, false, 100n)), removes: [] },
      { to: 'A', adds: [addReq(s3, false, 100n)], removes: [] },
    ]);
    let hb = heartbeatTo(out, 'A');
    expect(hb.spans).toEqual([s0, s1, s2]);
    expect(hb.spansComplete).toBe(false);
    out = step(co, { reports: [] });
    hb = heartbeatTo(out, 'A');
    expect(hb.spans).toEqual([s3, s0, s1]);
    expect(hb.spansComplete).toBe(false);
  });

  it('messagesPerTickMax: what does not fit is dropped (outbox-overflow) and recovered level-triggered', () => {
    const co = newCoordinator({ spansPerMessageMax: 2, messagesPerTickMax: 1 });
    const A = new FakeCapture('A', 11n);
    let out = step(co, { captures: ['A'], reports: [] });
    out = step(co, { reports: A.collect(heartbeatTo(out, 'A').collectId) });
    expect(dispatches(out)).toEqual([{ to: 'A', adds: [addReq(s0, false, 100n), addReq(s1, false, 100n)], removes: [] }]);
    expect(out.outbox).toHaveLength(1);
    expect(ofType(out, 'outbox-overflow')).toEqual([{ type: 'outbox-overflow', dropped: 2 }]);
    A.receive(out.outbox);
    // The heartbeat skipped last tick goes out now; A answers what it asks about.
    out = step(co, { reports: [A.report([A.hold(s0, 'replicating', 100n), A.hold(s1, 'replicating', 100n)])] });
    expect(dispatches(out)).toEqual([]);
    const hb = heartbeatTo(out, 'A');
    expect(hb.spans).toEqual([s2, s3]);
    A.receive(out.outbox);
    const absent = [s2, s3].map((span): SpanStatus => ({ span, state: 'absent', checkpointTs: 0n, resolvedTs: 0n }));
    out = step(co, { reports: [A.report(absent)] });
    expect(dispatches(out)).toEqual([{ to: 'A', adds: [addReq(s2, false, 100n), addReq(s3, false, 100n)], removes: [] }]);
  });
});

describe('Coordinator: a capture shutting down by itself', () => {
  it('liveness stopping drains it: its spans move to the others, and it no longer counts as a drain target', () => {
    const { co, A, B } = running();
    const out = step(co, { reports: [B.report([], { liveness: 'stopping' })] });
    expect(heartbeatTo(out, 'B').draining).toBe(true);
    expect(dispatches(out)).toEqual([{ to: 'A', adds: [addReq(s2, true, 130n)], removes: [] }]);
    expect(ofType(out, 'task-started').map((e) => [e.kind, e.scheduler, e.capture])).toEqual([['move', 'drain', 'A']]);
    expect(co.requestDrain('A')).toMatchObject({ ok: false, code: 'last-capture' });
    expect(co.requestMove(k(s0), 'B')).toMatchObject({ ok: false, code: 'capture-draining' });
    void A;
  });
});

describe('Coordinator: determinism', () => {
  it('the same seed and inputs give the same outboxes and events', () => {
    const run = (): unknown[] => {
      const { co, A, B } = running();
      const C = new FakeCapture('C', 33n);
      const trace: unknown[] = [];
      let out = step(co, { captures: ['A', 'B', 'C'], reports: [] });
      trace.push(out);
      out = step(co, { reports: C.collect(heartbeatTo(out, 'C').collectId) });
      trace.push(out);
      co.requestRebalance();
      for (let i = 0; i < 3; i++) trace.push(step(co, { reports: [] }));
      void A;
      void B;
      return trace;
    };
    expect(run()).toEqual(run());
  });
});

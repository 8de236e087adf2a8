/**
 * Split and merge as two-phase operations, driven through the coordinator with
 * hand-built reports: the happy paths (exact dispatches, start positions, events, the
 * withheld watermark, the tiling after), lost and duplicated messages, an abort on every
 * capture death before the commit, the forward-only path after it, refused requests, and
 * a new owner settling a half-done operation. Invariants are checked after every tick.
 */
import { describe, expect, it } from 'vitest';
import type { Coordinator, CoordinatorLimits, TickInput, TickOutput } from '../../src/core/coordinator.ts';
import type { CoordinatorEvent } from '../../src/core/events.ts';
import type { DispatchMessage, HeartbeatMessage } from '../../src/core/messages.ts';
import type { Span } from '../../src/core/span.ts';
import { compareSpans, spanKey } from '../../src/core/span.ts';
import { FakeCapture, newCoordinator, s0, s1, s2, s3, spans } from './fake-capture.ts';

function step(co: Coordinator, input: TickInput): TickOutput {
  const out = co.tick(input);
  co.checkInvariants();
  return out;
}

const dispatches = (out: TickOutput): { to: string; adds: DispatchMessage['adds']; removes: DispatchMessage['removes'] }[] =>
  out.outbox.filter((m): m is DispatchMessage => m.kind === 'dispatch').map((m) => ({ to: m.header.to, adds: m.adds, removes: m.removes }));
const ofType = <T extends CoordinatorEvent['type']>(out: TickOutput, type: T): Extract<CoordinatorEvent, { type: T }>[] =>
  out.events.filter((e): e is Extract<CoordinatorEvent, { type: T }> => e.type === type);
const addReq = (span: Span, secondary: boolean, checkpointTs: bigint) => ({ span, secondary, checkpointTs });
const sorted = (list: readonly Span[]): Span[] => [...list].sort(compareSpans);

const left: Span = { table: 't', start: 'a', end: 'd' };
const right: Span = { table: 't', start: 'd', end: 'g' };
const union12: Span = { table: 't', start: 'g', end: 't' };

/**
 * A running changefeed: s0 (150/160) and s1 (120/125) and s3 (110/115) on A, s2 (130/140)
 * on B, checkpoint 110.
 */
function running(limits: Partial<CoordinatorLimits> = {}): { co: Coordinator; A: FakeCapture; B: FakeCapture } {
  const co = newCoordinator(limits);
  const A = new FakeCapture('A', 11n);
  const B = new FakeCapture('B', 22n);
  A.hold(s0, 'replicating', 150n, 160n);
  let out = step(co, { captures: ['A', 'B'], reports: [] });
  const idA = A.collectAsked(out.outbox);
  const idB = B.collectAsked(out.outbox);
  out = step(co, { reports: [...A.collect(idA), ...B.collect(idB)] });
  A.receive(out.outbox);
  B.receive(out.outbox);
  const a1 = A.hold(s1, 'replicating', 120n, 125n);
  const a3 = A.hold(s3, 'replicating', 110n, 115n);
  const b2 = B.hold(s2, 'replicating', 130n, 140n);
  out = step(co, { reports: [A.report([a1, a3]), B.report([b2])] });
  expect(out.watermark).toEqual({ state: 'advancing', checkpointTs: 110n, resolvedTs: 115n });
  A.receive(out.outbox);
  B.receive(out.outbox);
  return { co, A, B };
}

describe('split', () => {
  it('prepares both halves from the span checkpoint, stops the span once both are prepared, promotes them at its final checkpoint', () => {
    const { co, A } = running();
    const result = co.requestSplit('t', 'a', 'd');
    expect(result).toMatchObject({ ok: true, operation: { kind: 'split', phase: 'prepare', from: [s0], to: [left, right], targets: ['A', 'A'] } });
    expect(co.operations()).toHaveLength(1);

    // The halves are prepared as secondaries (held) from s0's checkpoint; s0 keeps writing.
    let out = step(co, { reports: [] });
    expect(ofType(out, 'operation-started')).toHaveLength(1);
    expect(dispatches(out)).toEqual([{ to: 'A', adds: [addReq(left, true, 150n), addReq(right, true, 150n)], removes: [] }]);
    expect(out.watermark).toEqual({ state: 'cannot-proceed', reason: { code: 'span-operation', operations: 1 } });
    A.receive(out.outbox);

    // One half prepared, the other's add was lost (the capture lacks it): re-sent, still held.
    out = step(co, { reports: [A.report([A.hold(left, 'prepared', 150n), { span: right, state: 'absent', checkpointTs: 0n, resolvedTs: 0n }])] });
    expect(dispatches(out)).toEqual([{ to: 'A', adds: [addReq(right, true, 150n)], removes: [] }]);
    expect(co.operations()[0]?.phase).toBe('prepare');
    A.receive(out.outbox);

    // Both prepared (one report duplicated): commit, s0 is asked to stop; nothing is promoted.
    const prepared = A.report([A.hold(right, 'prepared', 150n), A.hold(left, 'prepared', 150n)]);
    out = step(co, { reports: [prepared, prepared] });
    expect(ofType(out, 'operation-changed').map((e) => [e.from, e.to])).toEqual([['prepare', 'commit']]);
    expect(dispatches(out)).toEqual([{ to: 'A', adds: [], removes: [s0] }]);
    A.receive(out.outbox);

    // Still replicating (the remove is on its way): asked again; halves still held.
    out = step(co, { reports: [A.report([A.hold(s0, 'replicating', 165n, 170n), A.hold(left, 'prepared', 150n)])] });
    expect(dispatches(out)).toEqual([{ to: 'A', adds: [], removes: [s0] }]);
    A.receive(out.outbox);

    // s0 stopped at 170: the operation is done, both halves are promoted at 170.
    out = step(co, { reports: [A.report([A.hold(s0, 'stopped', 170n)])] });
    const done = ofType(out, 'operation-done');
    expect(done).toEqual([expect.objectContaining({ table: 't', replaced: [s0], by: [left, right] })]);
    expect(dispatches(out)).toEqual([{ to: 'A', adds: [addReq(left, false, 170n), addReq(right, false, 170n)], removes: [] }]);
    expect(co.operations()).toEqual([]);
    expect(sorted(co.tiling())).toEqual(sorted([left, right, s1, s2, s3]));
    A.receive(out.outbox);

    out = step(co, { reports: [A.report([A.hold(left, 'replicating', 175n, 180n), A.hold(right, 'replicating', 172n, 180n)])] });
    expect(out.watermark).toMatchObject({ state: 'advancing', checkpointTs: 110n });
  });

  it('aborts when a prepare target dies: the other half is stopped, the span keeps writing', () => {
    const { co, A, B } = running();
    expect(co.requestSplit('t', 'a', 'd', ['A', 'B']).ok).toBe(true);
    let out = step(co, { reports: [] });
    expect(dispatches(out)).toEqual([
      { to: 'A', adds: [addReq(left, true, 150n)], removes: [] },
      { to: 'B', adds: [addReq(right, true, 150n)], removes: [] },
    ]);
    A.receive(out.outbox);
    B.receive(out.outbox);
    out = step(co, { reports: [A.report([A.hold(left, 'prepared', 150n)])] });
    // B dies: its spans are given back (s2 absent, re-added on A), the split is aborted.
    out = step(co, { captures: ['A'], reports: [] });
    const aborted = ofType(out, 'operation-aborted');
    expect(aborted).toHaveLength(1);
    expect(aborted[0]?.reason).toMatch(/stopped or died/);
    expect(dispatches(out)).toEqual([{ to: 'A', adds: [addReq(s2, false, 130n)], removes: [left] }]);
    expect(co.operations()).toEqual([]);
    A.receive(out.outbox);
    // The dropped half is waited for until A says it stopped; then only the old tiling is left.
    out = step(co, { reports: [A.report([A.hold(left, 'stopped', 150n), A.hold(s2, 'replicating', 130n)])] });
    expect(co.setOf(left)).toBeUndefined();
    expect(co.setOf(s0)?.state).toBe('replicating');
    expect(sorted(co.tiling())).toEqual(sorted(spans));
    expect(out.watermark).toMatchObject({ state: 'advancing' });
  });

  it('aborts when the span capture dies before the commit: the normal path re-adds the span from its checkpoint', () => {
    const { co, A, B } = running();
    expect(co.requestSplit('t', 'a', 'd', ['B', 'B']).ok).toBe(true);
    let out = step(co, { reports: [] });
    B.receive(out.outbox);
    out = step(co, { reports: [B.report([B.hold(left, 'prepared', 150n)])] });
    out = step(co, { captures: ['B'], reports: [] });
    expect(ofType(out, 'operation-aborted')).toHaveLength(1);
    // The halves are stopped on B, A's other spans are added to B from their checkpoints;
    // s0 waits until B said its halves stopped (they share its keys).
    const toB = dispatches(out).filter((d) => d.to === 'B');
    expect(toB.flatMap((d) => d.removes)).toEqual([left, right]);
    expect(toB.flatMap((d) => d.adds).map((a) => [spanKey(a.span), a.checkpointTs])).toEqual([[spanKey(s1), 120n], [spanKey(s3), 110n]]);
    expect(co.setOf(s0)?.state).toBe('absent');
    B.receive(out.outbox);
    out = step(co, { reports: [B.report([B.hold(left, 'stopped', 150n), B.hold(right, 'stopped', 150n)])] });
    expect(dispatches(out).flatMap((d) => d.adds)).toEqual([addReq(s0, false, 150n)]);
    void A;
  });

  it('after the commit, a dead span capture gives the halves its last reported checkpoint', () => {
    const { co, A, B } = running();
    expect(co.requestSplit('t', 'a', 'd', ['B', 'B']).ok).toBe(true);
    let out = step(co, { reports: [] });
    B.receive(out.outbox);
    out = step(co, { reports: [A.report([A.hold(s0, 'replicating', 158n, 160n)]), B.report([B.hold(left, 'prepared', 150n), B.hold(right, 'prepared', 150n)])] });
    expect(dispatches(out)).toEqual([{ to: 'A', adds: [], removes: [s0] }]);
    // A dies before it stopped s0: 158 is the last position it reported durable.
    out = step(co, { captures: ['B'], reports: [] });
    expect(ofType(out, 'operation-done')).toHaveLength(1);
    const adds = dispatches(out).filter((d) => d.to === 'B').flatMap((d) => d.adds);
    expect(adds).toEqual(expect.arrayContaining([addReq(left, false, 158n), addReq(right, false, 158n)]));
  });

  it('after the commit, a dead half is re-added from the final checkpoint like any absent span', () => {
    const { co, A, B } = running();
    expect(co.requestSplit('t', 'a', 'd', ['A', 'B']).ok).toBe(true);
    let out = step(co, { reports: [] });
    A.receive(out.outbox);
    B.receive(out.outbox);
    out = step(co, { reports: [A.report([A.hold(left, 'prepared', 150n)]), B.report([B.hold(right, 'prepared', 150n)])] });
    A.receive(out.outbox);
    out = step(co, { captures: ['A'], reports: [] });
    // B died in commit: the split goes on; s2 is re-added; the right half waits (absent, held).
    expect(co.operations()[0]?.phase).toBe('commit');
    expect(dispatches(out).flatMap((d) => d.adds).map((a) => a.span)).toEqual([s2]);
    A.receive(out.outbox);
    out = step(co, { reports: [A.report([A.hold(s0, 'stopped', 171n)])] });
    expect(ofType(out, 'operation-done')).toHaveLength(1);
    // Released: the left half is promoted at 171, the right one added from 171.
    expect(dispatches(out).flatMap((d) => d.adds)).toEqual(expect.arrayContaining([addReq(left, false, 171n), addReq(right, false, 171n)]));
  });
});

describe('merge', () => {
  it('prepares the union from the lower checkpoint, stops both, promotes it at the lower final checkpoint', () => {
    const { co, A, B } = running();
    const result = co.requestMerge('t', 'g', 'B');
    expect(result).toMatchObject({ ok: true, operation: { kind: 'merge', from: [s1, s2], to: [union12], targets: ['B'] } });
    let out = step(co, { reports: [] });
    // min(120 for s1, 130 for s2)
    expect(dispatches(out)).toEqual([{ to: 'B', adds: [addReq(union12, true, 120n)], removes: [] }]);
    B.receive(out.outbox);
    out = step(co, { reports: [B.report([B.hold(union12, 'prepared', 120n)])] });
    expect(dispatches(out)).toEqual([
      { to: 'A', adds: [], removes: [s1] },
      { to: 'B', adds: [], removes: [s2] },
    ]);
    A.receive(out.outbox);
    B.receive(out.outbox);
    out = step(co, { reports: [A.report([A.hold(s1, 'stopped', 150n)])] });
    expect(co.operations()[0]?.phase).toBe('commit');
    expect(dispatches(out)).toEqual([]);
    out = step(co, { reports: [B.report([B.hold(s2, 'stopped', 140n)])] });
    // The union starts at 140: s2's keys up to 140 are durable, s1's up to 150 (replayed).
    expect(ofType(out, 'operation-done')).toEqual([expect.objectContaining({ replaced: [s1, s2], by: [union12] })]);
    expect(dispatches(out)).toEqual([{ to: 'B', adds: [addReq(union12, false, 140n)], removes: [] }]);
    expect(sorted(co.tiling())).toEqual(sorted([s0, union12, s3]));
  });

  it('aborts when an old span loses its capture before the commit', () => {
    const { co, B } = running();
    expect(co.requestMerge('t', 'g', 'B').ok).toBe(true);
    let out = step(co, { reports: [] });
    B.receive(out.outbox);
    out = step(co, { captures: ['B'], reports: [] });
    expect(ofType(out, 'operation-aborted')).toHaveLength(1);
    expect(dispatches(out).flatMap((d) => d.removes)).toEqual([union12]);
    expect(co.setOf(s1)?.operation).toBeUndefined();
  });
});

describe('the shell changes the spans under an operation', () => {
  const other = { name: 'o', start: 'a', end: 'z' };
  const otherSpan: Span = { table: 'o', start: 'a', end: 'z' };

  it('in prepare, the operation is aborted', () => {
    const { co, A } = running();
    expect(co.requestSplit('t', 'a', 'd').ok).toBe(true);
    let out = step(co, { reports: [] });
    A.receive(out.outbox);
    co.setSpans([other], [otherSpan]);
    out = step(co, { reports: [] });
    expect(ofType(out, 'operation-aborted')).toEqual([expect.objectContaining({ reason: "the changefeed's spans changed" })]);
    expect(co.operations()).toEqual([]);
  });

  it('in commit, the old spans still stop, the new ones are dropped, the listed spans take over', () => {
    const { co, A } = running();
    expect(co.requestSplit('t', 'a', 'd').ok).toBe(true);
    let out = step(co, { reports: [] });
    A.receive(out.outbox);
    out = step(co, { reports: [A.report([A.hold(left, 'prepared', 150n), A.hold(right, 'prepared', 150n)])] });
    expect(dispatches(out)).toEqual([{ to: 'A', adds: [], removes: [s0] }]);
    A.receive(out.outbox);
    // The table is cut anew in two: [a,m) overlaps s0, which may still write, so it waits.
    const cut = [{ table: 't', start: 'a', end: 'm' }, { table: 't', start: 'm', end: 'z' }];
    co.setSpans([{ name: 't', start: 'a', end: 'z' }], cut);
    out = step(co, { reports: [] });
    expect(dispatches(out).flatMap((d) => d.adds)).toEqual([]);
    out = step(co, { reports: [A.report([A.hold(s0, 'stopped', 170n)])] });
    expect(ofType(out, 'operation-aborted')).toEqual([expect.objectContaining({ reason: "the changefeed's spans changed after the commit" })]);
    expect(dispatches(out).flatMap((d) => d.removes)).toEqual(expect.arrayContaining([left, right]));
    expect(co.operations()).toEqual([]);
    expect(sorted(co.tiling())).toEqual(sorted(cut));
  });
});

describe('refused requests', () => {
  it('says why, and changes nothing', () => {
    const { co } = running({ splitsInFlightMax: 1 });
    expect(co.requestSplit('t', 'b', 'c')).toMatchObject({ ok: false, code: 'unknown-span' });
    expect(co.requestSplit('nope', 'a', 'c')).toMatchObject({ ok: false, code: 'unknown-span' });
    expect(co.requestSplit('t', 'a', 'a')).toMatchObject({ ok: false, code: 'bad-split-key' });
    expect(co.requestSplit('t', 'a', 'g')).toMatchObject({ ok: false, code: 'bad-split-key' });
    expect(co.requestSplit('t', 'a', 'd', ['A', 'Z'])).toMatchObject({ ok: false, code: 'unknown-capture' });
    expect(co.requestMerge('t', 't')).toMatchObject({ ok: false, code: 'not-adjacent' });
    expect(co.operations()).toEqual([]);
    expect(co.requestSplit('t', 'a', 'd').ok).toBe(true);
    expect(co.requestSplit('t', 'a', 'b')).toMatchObject({ ok: false, code: 'span-in-transition' });
    expect(co.requestMerge('t', 'a')).toMatchObject({ ok: false, code: 'span-in-transition' });
    expect(co.requestSplit('t', 'n', 'p')).toMatchObject({ ok: false, code: 'operations-bound' });
    expect(co.requestDrain('B').ok).toBe(true);
    expect(co.requestMerge('t', 'g', 'B')).toMatchObject({ ok: false, code: 'operations-bound' });
    expect(co.operations()).toHaveLength(1);
  });

  it('before the rebuild, not ready', () => {
    const co = newCoordinator();
    expect(co.requestSplit('t', 'a', 'd')).toMatchObject({ ok: false, code: 'not-ready' });
    expect(co.requestMerge('t', 'a')).toMatchObject({ ok: false, code: 'not-ready' });
  });
});

describe('owner rebuild', () => {
  function rebuilt(held: (A: FakeCapture, B: FakeCapture) => void): { co: Coordinator; out: TickOutput; A: FakeCapture; B: FakeCapture } {
    const co = newCoordinator();
    const A = new FakeCapture('A', 11n);
    const B = new FakeCapture('B', 22n);
    held(A, B);
    let out = step(co, { captures: ['A', 'B'], reports: [] });
    const idA = A.collectAsked(out.outbox);
    const idB = B.collectAsked(out.outbox);
    out = step(co, { reports: [...A.collect(idA), ...B.collect(idB)] });
    expect(co.phase).toBe('running');
    return { co, out, A, B };
  }

  it('adopts a split the old owner finished but did not persist, and fills a half nobody holds', () => {
    const { co, out } = rebuilt((A, B) => {
      A.hold(left, 'replicating', 170n);
      B.hold(s1, 'replicating', 120n);
      B.hold(s2, 'replicating', 130n);
      B.hold(s3, 'replicating', 110n);
    });
    expect(ofType(out, 'tiling-adopted')).toEqual([{ type: 'tiling-adopted', table: 't', spans: [left, right, s1, s2, s3] }]);
    expect(co.setOf(s0)).toBeUndefined();
    expect(co.setOf(left)?.state).toBe('replicating');
    // The half nobody holds starts from the checkpoint, like any absent span.
    expect(dispatches(out).flatMap((d) => d.adds)).toEqual([addReq(right, false, 100n)]);
  });

  it('falls back to the persisted tiling while the old span is held: the prepared halves are stopped, never promoted', () => {
    const { co, out, A } = rebuilt((A, B) => {
      A.hold(s0, 'replicating', 150n);
      B.hold(left, 'prepared', 150n);
      B.hold(right, 'preparing', 150n);
      B.hold(s1, 'replicating', 120n);
      B.hold(s2, 'replicating', 130n);
      B.hold(s3, 'replicating', 110n);
    });
    expect(ofType(out, 'tiling-adopted')).toEqual([]);
    expect(dispatches(out)).toEqual([{ to: 'B', adds: [], removes: [left, right] }]);
    expect(co.setOf(s0)?.state).toBe('replicating');
    void A;
  });

  it('falls back when the old span is still stopping: the halves are stopped, the span re-added once it stopped', () => {
    const { co, out, A, B } = rebuilt((A, B) => {
      A.hold(s0, 'stopping', 160n);
      B.hold(left, 'prepared', 150n);
      B.hold(right, 'prepared', 150n);
      B.hold(s1, 'replicating', 120n);
      B.hold(s2, 'replicating', 130n);
      B.hold(s3, 'replicating', 110n);
    });
    expect(dispatches(out)).toEqual([{ to: 'B', adds: [], removes: [left, right] }]);
    A.receive(out.outbox);
    B.receive(out.outbox);
    let next = step(co, { reports: [A.report([A.hold(s0, 'stopped', 165n)])] });
    // The halves have not said they stopped: s0 waits, or B's pipelines could still write its keys.
    expect(dispatches(next).flatMap((d) => d.adds)).toEqual([]);
    next = step(co, { reports: [B.report([B.hold(left, 'stopped', 150n), B.hold(right, 'stopped', 150n)])] });
    expect(dispatches(next).flatMap((d) => d.adds)).toEqual([expect.objectContaining({ span: s0, secondary: false, checkpointTs: 165n })]);
  });
});

describe('heartbeats during an operation', () => {
  it('ask the target about the held halves', () => {
    const { co, A } = running();
    expect(co.requestSplit('t', 'a', 'd').ok).toBe(true);
    const out = step(co, { reports: [] });
    const heartbeat = out.outbox.find((m): m is HeartbeatMessage => m.kind === 'heartbeat' && m.header.to === 'A');
    expect(heartbeat?.spans.map(spanKey).sort()).toEqual([left, right].map(spanKey).sort());
    void A;
  });
});

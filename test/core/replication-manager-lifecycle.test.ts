/**
 * ReplicationManager driven step by step: counters per state, the absent and unwanted
 * work queues, task bounds, one task per span, capture removal, reconcile, desired-span
 * changes and coverage. `checkInvariants()` runs after every step.
 */
import { describe, expect, it } from 'vitest';
import type { AgentSpanState, CaptureId, SpanStatus } from '../../src/core/messages.ts';
import type { PendingDispatch, ReplicationLimits, StateCounts } from '../../src/core/replication-manager.ts';
import { ReplicationManager } from '../../src/core/replication-manager.ts';
import type { ReplicationSet } from '../../src/core/replication-set.ts';
import type { Span, TableRange } from '../../src/core/span.ts';
import { spanKey, splitTable } from '../../src/core/span.ts';
import { MutableDigest } from '../../src/core/span-digest.ts';
import type { Task } from '../../src/core/task.ts';

const tableT: TableRange = { name: 't', start: 'a', end: 'z' };
const tableU: TableRange = { name: 'u', start: 'a', end: 'z' };
const spansT = splitTable(tableT, ['g', 'n', 't']);
const [s0, s1, s2, s3] = spansT as [Span, Span, Span, Span];
const k = spanKey;

const roomy: ReplicationLimits = { moveTasksInFlightMax: 10, addRemoveTasksInFlightMax: 100, addBatchPerTickMax: 100 };

/** A manager with a controllable outgoing seq per capture; invariants checked by `step`. */
class Harness {
  readonly seqOut = new Map<CaptureId, number>();
  readonly m: ReplicationManager;

  constructor(limits: ReplicationLimits = roomy, floorTs = 100n) {
    this.m = new ReplicationManager(limits, floorTs, (capture) => this.seqOut.get(capture) ?? 0);
    this.m.checkInvariants();
  }

  step<T>(fn: (m: ReplicationManager) => T): T {
    const result = fn(this.m);
    this.m.checkInvariants();
    return result;
  }

  status(from: CaptureId, span: Span, state: AgentSpanState, checkpointTs = 100n, ackSeq = 1_000_000, resolvedTs = checkpointTs): void {
    const status: SpanStatus = { span, state, checkpointTs, resolvedTs };
    this.step((m) => m.handleStatus(from, status, ackSeq));
  }

  tasks(tasks: Task[], isTarget: (c: CaptureId) => boolean = () => true): Task[] {
    return this.step((m) => m.handleTasks(tasks, isTarget, 'test'));
  }

  pending(): Record<CaptureId, PendingDispatch> {
    return Object.fromEntries(this.step((m) => m.takePending()));
  }

  counts(): StateCounts {
    return { ...this.m.stateCounts };
  }

  set(span: Span): ReplicationSet {
    const set = this.m.sets.get(k(span));
    if (set === undefined) throw new Error(`no set for ${k(span)}`);
    return set;
  }

  /** Adds `span` on `capture` and drives it to replicating, emptying pending and events. */
  replicate(span: Span, capture: CaptureId, checkpointTs = 100n): void {
    expect(this.tasks([{ kind: 'add', key: k(span), capture }])).toHaveLength(1);
    this.status(capture, span, 'replicating', checkpointTs);
    expect(this.set(span).state).toBe('replicating');
    this.m.takePending();
    this.m.takeEvents();
  }
}

const counts = (c: Partial<StateCounts>): StateCounts => ({ absent: 0, prepare: 0, commit: 0, replicating: 0, removing: 0, ...c });
const addReq = (span: Span, secondary: boolean, checkpointTs = 100n) => ({ span, secondary, checkpointTs });
const keysOf = (sets: Iterable<ReplicationSet>): string[] => [...sets].map((s) => s.key);

describe('ReplicationManager: counters, queues and the add lifecycle', () => {
  it('counts sets per state and keeps the absent queue through add -> commit -> replicating', () => {
    const h = new Harness();
    h.step((m) => m.setDesiredSpans([tableT], spansT));
    expect(h.counts()).toEqual(counts({ absent: 4 }));
    expect(keysOf(h.m.absentSets)).toEqual(spansT.map(k));
    expect(h.m.unwantedSets.size).toBe(0);
    expect(h.m.coverageProblem()).toBeUndefined();

    h.step((m) => m.addCapture('A'));
    h.step((m) => m.addCapture('B'));
    h.step((m) => m.addCapture('A')); // idempotent

    const started = h.tasks([
      { kind: 'add', key: k(s0), capture: 'A' },
      { kind: 'add', key: k(s1), capture: 'B' },
      { kind: 'add', key: k(s2), capture: 'A' },
    ]);
    expect(started).toHaveLength(3);
    expect(h.counts()).toEqual(counts({ absent: 1, prepare: 3 }));
    expect(h.m.tasksInFlight).toEqual({ add: 3, move: 0, remove: 0 });
    expect(keysOf(h.m.absentSets)).toEqual([k(s3)]);
    expect(h.m.captureSpans('A')?.secondaryCount).toBe(2);
    expect(h.m.captureSpans('A')?.load).toBe(2);
    expect(h.m.captureSpans('A')?.inTransition.size).toBe(2);
    expect(h.pending()).toEqual({
      A: { adds: [addReq(s0, false), addReq(s2, false)], removes: [] },
      B: { adds: [addReq(s1, false)], removes: [] },
    });
    const events = h.m.takeEvents();
    expect(events.filter((e) => e.type === 'task-started')).toHaveLength(3);
    expect(events.filter((e) => e.type === 'span-state-changed')).toEqual([
      { type: 'span-state-changed', span: s0, from: 'absent', to: 'prepare', primary: undefined },
      { type: 'span-state-changed', span: s1, from: 'absent', to: 'prepare', primary: undefined },
      { type: 'span-state-changed', span: s2, from: 'absent', to: 'prepare', primary: undefined },
    ]);
    expect(h.pending()).toEqual({});

    h.status('A', s0, 'prepared');
    expect(h.counts()).toEqual(counts({ absent: 1, prepare: 2, commit: 1 }));
    expect(h.pending()).toEqual({ A: { adds: [addReq(s0, false)], removes: [] } });

    h.status('A', s0, 'replicating', 120n);
    expect(h.counts()).toEqual(counts({ absent: 1, prepare: 2, replicating: 1 }));
    expect(h.m.tasksInFlight).toEqual({ add: 2, move: 0, remove: 0 });
    const a = h.m.captureSpans('A');
    expect(a?.primaries.length).toBe(1);
    expect(a?.secondaryCount).toBe(1);
    expect(a?.inTransition.size).toBe(1);
    const expected = new MutableDigest();
    expected.add(k(s0));
    expect(a?.replicatingDigest.snapshot()).toEqual(expected.snapshot());

    // Duplicated: nothing changes, nothing is sent.
    h.status('A', s0, 'replicating', 120n);
    expect(h.counts()).toEqual(counts({ absent: 1, prepare: 2, replicating: 1 }));
    expect(h.pending()).toEqual({});

    h.status('B', s1, 'replicating');
    h.status('A', s2, 'replicating');
    expect(h.counts()).toEqual(counts({ absent: 1, replicating: 3 }));
    expect(h.m.tasksInFlight).toEqual({ add: 0, move: 0, remove: 0 });
  });

  it('adds from the floor checkpoint when it is above the set checkpoint', () => {
    const h = new Harness(roomy, 100n);
    h.step((m) => m.setDesiredSpans([tableT], spansT));
    h.step((m) => m.addCapture('A'));
    h.m.floorTs = 250n;
    h.tasks([{ kind: 'add', key: k(s0), capture: 'A' }]);
    expect(h.pending()).toEqual({ A: { adds: [addReq(s0, false, 250n)], removes: [] } });
    expect(h.set(s0).checkpointTs).toBe(250n);
  });

  it('ignores a secondary report made before the add was received (ackSeq not above the seq at send time)', () => {
    const h = new Harness();
    h.step((m) => m.setDesiredSpans([tableT], spansT));
    h.step((m) => m.addCapture('A'));
    h.seqOut.set('A', 7);
    h.tasks([{ kind: 'add', key: k(s0), capture: 'A' }]);
    expect(h.set(s0).secondaryAddSeq).toBe(7);
    h.pending();
    h.status('A', s0, 'absent', 0n, 7);
    expect(h.pending()).toEqual({});
    expect(h.set(s0).state).toBe('prepare');
    h.status('A', s0, 'absent', 0n, 8);
    expect(h.pending()).toEqual({ A: { adds: [addReq(s0, false)], removes: [] } });
  });

  it('a status for a span the owner does not track stops it if the capture runs it', () => {
    const h = new Harness();
    h.step((m) => m.setDesiredSpans([tableT], spansT));
    h.step((m) => m.addCapture('A'));
    const stray: Span = { table: 'zz', start: '', end: '' };
    h.status('A', stray, 'replicating');
    h.status('A', stray, 'stopped');
    h.status('A', stray, 'prepared');
    expect(h.pending()).toEqual({ A: { adds: [], removes: [stray, stray] } });
    expect(h.m.sets.size).toBe(4);
  });

  it('records a fatal error reported with a stopped span', () => {
    const h = new Harness();
    h.step((m) => m.setDesiredSpans([tableT], spansT));
    h.step((m) => m.addCapture('A'));
    h.replicate(s0, 'A');
    h.step((m) => m.handleStatus('A', { span: s0, state: 'stopped', checkpointTs: 100n, resolvedTs: 100n, fatalError: 'compacted' }, 1_000));
    expect(h.m.fatalErrors).toEqual([`t["a","g"): compacted`]);
    expect(h.set(s0).state).toBe('absent');
  });
});

describe('ReplicationManager: task validation and bounds', () => {
  it('addBatchPerTickMax: adds per tick are bounded until takePending starts a new tick', () => {
    const h = new Harness({ ...roomy, addBatchPerTickMax: 2 });
    h.step((m) => m.setDesiredSpans([tableT], spansT));
    h.step((m) => m.addCapture('A'));
    const all: Task[] = spansT.map((s) => ({ kind: 'add', key: k(s), capture: 'A' }));
    expect(h.tasks(all).map((t) => t.key)).toEqual([k(s0), k(s1)]);
    expect(h.tasks(all)).toEqual([]);
    expect(h.counts()).toEqual(counts({ absent: 2, prepare: 2 }));
    h.pending();
    expect(h.tasks(all).map((t) => t.key)).toEqual([k(s2), k(s3)]);
    expect(h.counts()).toEqual(counts({ prepare: 4 }));
  });

  it('addRemoveTasksInFlightMax bounds adds and removes together', () => {
    const h = new Harness({ ...roomy, addRemoveTasksInFlightMax: 2 });
    h.step((m) => m.setDesiredSpans([tableT], spansT));
    h.step((m) => m.addCapture('A'));
    const all: Task[] = spansT.map((s) => ({ kind: 'add', key: k(s), capture: 'A' }));
    expect(h.tasks(all).map((t) => t.key)).toEqual([k(s0), k(s1)]);
    h.pending();
    expect(h.tasks(all)).toEqual([]);
    h.status('A', s0, 'replicating');
    expect(h.m.tasksInFlight.add).toBe(1);
    expect(h.tasks(all).map((t) => t.key)).toEqual([k(s2)]);
    h.pending();
    h.status('A', s1, 'replicating');
    h.status('A', s2, 'replicating');
    // A remove takes a slot from the same budget.
    h.step((m) => m.setDesiredSpans([tableT], [s1, s2, s3]));
    expect(h.tasks([{ kind: 'remove', key: k(s0) }]).map((t) => t.kind)).toEqual(['remove']);
    expect(h.m.tasksInFlight).toEqual({ add: 0, move: 0, remove: 1 });
    expect(h.tasks([{ kind: 'add', key: k(s3), capture: 'A' }])).toHaveLength(1);
    h.pending();
    expect(h.tasks([{ kind: 'remove', key: k(s1) }])).toEqual([]);
  });

  it('moveTasksInFlightMax bounds moves', () => {
    const h = new Harness({ ...roomy, moveTasksInFlightMax: 1 });
    h.step((m) => m.setDesiredSpans([tableT], spansT));
    h.step((m) => m.addCapture('A'));
    h.step((m) => m.addCapture('B'));
    h.replicate(s0, 'A');
    h.replicate(s1, 'A');
    const moves: Task[] = [
      { kind: 'move', key: k(s0), capture: 'B' },
      { kind: 'move', key: k(s1), capture: 'B' },
    ];
    expect(h.tasks(moves).map((t) => t.key)).toEqual([k(s0)]);
    expect(h.m.tasksInFlight.move).toBe(1);
    expect(h.pending()).toEqual({ B: { adds: [addReq(s0, true)], removes: [] } });
    expect(h.m.captureSpans('A')?.movingOutCount).toBe(1);
    expect(h.m.captureSpans('A')?.settledLoad).toBe(1);
    expect(h.m.captureSpans('B')?.settledLoad).toBe(1);

    h.status('B', s0, 'prepared');
    expect(h.pending()).toEqual({ A: { adds: [], removes: [s0] } });
    expect(h.counts()).toEqual(counts({ absent: 2, commit: 1, replicating: 1 }));
    h.status('A', s0, 'stopped', 130n);
    expect(h.pending()).toEqual({ B: { adds: [addReq(s0, false, 130n)], removes: [] } });
    h.status('B', s0, 'replicating', 130n);
    expect(h.m.tasksInFlight.move).toBe(0);
    expect(h.set(s0).primary).toBe('B');
    expect(h.m.captureSpans('A')?.movingOutCount).toBe(0);
    expect(h.tasks(moves).map((t) => t.key)).toEqual([k(s1)]);
  });

  it('one task per span, and every invalid task is skipped', () => {
    const h = new Harness();
    h.step((m) => m.setDesiredSpans([tableT], spansT));
    h.step((m) => m.addCapture('A'));
    h.step((m) => m.addCapture('B'));
    const notTarget = (c: CaptureId): boolean => c !== 'X';
    // Two adds for the same span in one call: only the first starts.
    expect(
      h.tasks(
        [
          { kind: 'add', key: k(s0), capture: 'A' },
          { kind: 'add', key: k(s0), capture: 'B' },
        ],
        notTarget,
      ),
    ).toEqual([{ kind: 'add', key: k(s0), capture: 'A' }]);
    // A span with a task in flight takes no other task.
    expect(h.tasks([{ kind: 'move', key: k(s0), capture: 'B' }], notTarget)).toEqual([]);
    expect(h.tasks([{ kind: 'remove', key: k(s0) }], notTarget)).toEqual([]);
    // Unknown span, non-target capture.
    expect(h.tasks([{ kind: 'add', key: 'nope', capture: 'A' }], notTarget)).toEqual([]);
    expect(h.tasks([{ kind: 'add', key: k(s1), capture: 'X' }], notTarget)).toEqual([]);
    // Move and remove of a span that is not replicating.
    expect(h.tasks([{ kind: 'move', key: k(s1), capture: 'A' }], notTarget)).toEqual([]);
    expect(h.tasks([{ kind: 'remove', key: k(s1) }], notTarget)).toEqual([]);
    h.status('A', s0, 'replicating');
    // Move to its own primary, or to a non-target.
    expect(h.tasks([{ kind: 'move', key: k(s0), capture: 'A' }], notTarget)).toEqual([]);
    expect(h.tasks([{ kind: 'move', key: k(s0), capture: 'X' }], notTarget)).toEqual([]);
    // Add of a span that is not absent.
    expect(h.tasks([{ kind: 'add', key: k(s0), capture: 'B' }], notTarget)).toEqual([]);
    expect(h.m.tasksInFlight).toEqual({ add: 0, move: 0, remove: 0 });
    expect(h.counts()).toEqual(counts({ absent: 3, replicating: 1 }));
  });

  it('an add of an unwanted absent span is skipped (it was deleted)', () => {
    const h = new Harness();
    h.step((m) => m.setDesiredSpans([tableT], spansT));
    h.step((m) => m.addCapture('A'));
    h.step((m) => m.setDesiredSpans([tableT], [s0, s1, s2]));
    expect(h.m.sets.has(k(s3))).toBe(false);
    expect(h.tasks([{ kind: 'add', key: k(s3), capture: 'A' }])).toEqual([]);
  });
});

describe('ReplicationManager: removeCapture', () => {
  it('a dead capture: its primaries go absent, its moves promote elsewhere or abort, its adds go absent', () => {
    const h = new Harness();
    h.step((m) => m.setDesiredSpans([tableT], spansT));
    for (const c of ['A', 'B']) h.step((m) => m.addCapture(c));
    h.replicate(s0, 'A', 110n);
    h.replicate(s1, 'A', 120n);
    h.replicate(s2, 'A', 130n);
    h.tasks([{ kind: 'move', key: k(s2), capture: 'B' }]);
    h.tasks([{ kind: 'add', key: k(s3), capture: 'B' }]);
    h.pending();
    h.m.takeEvents();
    expect(h.counts()).toEqual(counts({ replicating: 2, prepare: 2 }));

    expect(h.step((m) => m.removeCapture('A'))).toBe(3);
    expect(h.m.captureSpans('A')).toBeUndefined();
    expect(h.counts()).toEqual(counts({ absent: 2, commit: 1, prepare: 1 }));
    expect(keysOf(h.m.absentSets)).toEqual([k(s0), k(s1)]);
    expect(h.set(s0).checkpointTs).toBe(110n);
    expect(h.set(s1).checkpointTs).toBe(120n);
    // The move's primary died: the target is promoted at once.
    expect(h.pending()).toEqual({ B: { adds: [addReq(s2, false, 130n)], removes: [] } });
    expect(h.m.tasksInFlight).toEqual({ add: 1, move: 1, remove: 0 });
    const changes = h.m.takeEvents().filter((e) => e.type === 'span-state-changed');
    expect(changes.map((e) => (e.type === 'span-state-changed' ? [e.span.start, e.from, e.to] : []))).toEqual([
      ['a', 'replicating', 'absent'],
      ['g', 'replicating', 'absent'],
      ['n', 'prepare', 'commit'],
    ]);

    h.status('B', s2, 'replicating', 130n);
    expect(h.counts()).toEqual(counts({ absent: 2, replicating: 1, prepare: 1 }));
    expect(h.m.tasksInFlight).toEqual({ add: 1, move: 0, remove: 0 });

    expect(h.step((m) => m.removeCapture('B'))).toBe(2);
    expect(h.counts()).toEqual(counts({ absent: 4 }));
    expect(h.m.tasksInFlight).toEqual({ add: 0, move: 0, remove: 0 });
    expect(keysOf(h.m.absentSets)).toEqual([k(s0), k(s1), k(s2), k(s3)]);
    expect(h.pending()).toEqual({});
    expect(h.step((m) => m.removeCapture('nobody'))).toBe(0);
  });

  it('a dead move target: the move aborts and the span stays on its primary', () => {
    const h = new Harness();
    h.step((m) => m.setDesiredSpans([tableT], spansT));
    for (const c of ['A', 'B']) h.step((m) => m.addCapture(c));
    h.replicate(s0, 'A');
    h.tasks([{ kind: 'move', key: k(s0), capture: 'B' }]);
    h.status('B', s0, 'prepared');
    h.pending();
    expect(h.step((m) => m.removeCapture('B'))).toBe(1);
    expect(h.set(s0).state).toBe('commit');
    // The primary's next report: it never stopped, so it stays the writer.
    h.status('A', s0, 'replicating', 140n);
    expect(h.set(s0).state).toBe('replicating');
    expect(h.set(s0).primary).toBe('A');
    expect(h.m.tasksInFlight.move).toBe(0);
    expect(h.pending()).toEqual({});
  });

  it('drops the commands still pending for a dead capture', () => {
    const h = new Harness();
    h.step((m) => m.setDesiredSpans([tableT], spansT));
    for (const c of ['A', 'B']) h.step((m) => m.addCapture(c));
    h.tasks([{ kind: 'add', key: k(s0), capture: 'A' }, { kind: 'add', key: k(s1), capture: 'B' }]);
    h.step((m) => m.removeCapture('A'));
    expect(h.pending()).toEqual({ B: { adds: [addReq(s1, false)], removes: [] } });
  });
});

describe('ReplicationManager: reconcile', () => {
  it('a span the capture did not list becomes absent; a stale listing does not abort an add', () => {
    const h = new Harness();
    h.step((m) => m.setDesiredSpans([tableT], spansT));
    h.step((m) => m.addCapture('A'));
    h.replicate(s0, 'A');
    h.replicate(s1, 'A', 150n);
    h.seqOut.set('A', 5);
    h.tasks([{ kind: 'add', key: k(s2), capture: 'A' }]);
    h.pending();

    // The collection was taken when A had seen seq 5: it predates the add of s2.
    h.step((m) => m.reconcile('A', new Set([k(s0)]), 5));
    expect(h.set(s1).state).toBe('absent');
    expect(h.set(s1).checkpointTs).toBe(150n);
    expect(h.set(s2).state).toBe('prepare');
    expect(h.pending()).toEqual({});
    expect(h.counts()).toEqual(counts({ absent: 2, prepare: 1, replicating: 1 }));
    expect(h.m.captureSpans('A')?.primaries.length).toBe(1);

    // A later collection still lacks s2: the add was lost, re-send it.
    h.step((m) => m.reconcile('A', new Set([k(s0)]), 6));
    expect(h.pending()).toEqual({ A: { adds: [addReq(s2, false)], removes: [] } });
    expect(h.set(s2).state).toBe('prepare');
    // A listing with everything changes nothing.
    h.step((m) => m.reconcile('A', new Set([k(s0), k(s2)]), 7));
    expect(h.pending()).toEqual({});
    h.step((m) => m.reconcile('nobody', new Set(), 7));
  });
});

/** Tables t (one span) and u (two), with t and u's first span replicating on A. */
function twoTablesOnA(): { h: Harness; wholeT: Span; spansU: Span[]; u0: Span; u1: Span } {
  const h = new Harness();
  const spansU = splitTable(tableU, ['m']);
  const [u0, u1] = spansU as [Span, Span];
  const wholeT: Span = { table: 't', start: 'a', end: 'z' };
  h.step((m) => m.setDesiredSpans([tableT, tableU], [wholeT, ...spansU]));
  h.step((m) => m.addCapture('A'));
  h.replicate(wholeT, 'A');
  h.replicate(u0, 'A');
  return { h, wholeT, spansU, u0, u1 };
}

describe('ReplicationManager: desired spans and coverage', () => {
  it('removing a table: absent spans go at once, replicating ones are queued, removed, then deleted', () => {
    const { h, wholeT, u0, u1 } = twoTablesOnA();
    h.tasks([{ kind: 'add', key: k(u1), capture: 'A' }]);
    h.pending();
    expect(h.m.coverageProblem()).toBeUndefined();

    h.step((m) => m.setDesiredSpans([tableT], [wholeT]));
    expect(h.m.sets.size).toBe(3);
    // u0 is replicating and unwanted; u1 still has its add in flight.
    expect(keysOf(h.m.unwantedSets)).toEqual([k(u0)]);
    expect(h.m.absentSets.size).toBe(0);
    expect(h.m.isWanted(h.set(u0))).toBe(false);
    expect(h.m.coverageProblem()).toEqual({ kind: 'unknown-table', table: 'u' });

    h.status('A', u1, 'replicating');
    expect(keysOf(h.m.unwantedSets)).toEqual([k(u0), k(u1)]);

    expect(h.tasks([{ kind: 'remove', key: k(u0) }, { kind: 'remove', key: k(u1) }])).toHaveLength(2);
    expect(h.m.unwantedSets.size).toBe(0);
    expect(h.counts()).toEqual(counts({ replicating: 1, removing: 2 }));
    expect(h.pending()).toEqual({ A: { adds: [], removes: [u0, u1] } });

    h.status('A', u0, 'stopped', 160n);
    expect(h.m.sets.has(k(u0))).toBe(false);
    expect(h.counts()).toEqual(counts({ replicating: 1, removing: 1 }));
    expect(h.m.tasksInFlight.remove).toBe(1);

    h.status('A', u1, 'replicating');
    expect(h.pending()).toEqual({ A: { adds: [], removes: [u1] } });
    h.status('A', u1, 'stopped');
    expect(h.m.sets.size).toBe(1);
    expect(h.counts()).toEqual(counts({ replicating: 1 }));
    expect(h.m.tasksInFlight).toEqual({ add: 0, move: 0, remove: 0 });
    expect(h.m.coverageProblem()).toBeUndefined();

    // A late stop from the removed span: unknown now, and not running: nothing sent.
    h.status('A', u1, 'stopped');
    expect(h.pending()).toEqual({});
  });

  it('a table added back while its spans are being removed: they start anew once the remove ends', () => {
    const { h, wholeT, spansU, u0, u1 } = twoTablesOnA();
    h.replicate(u1, 'A');
    h.step((m) => m.setDesiredSpans([tableT], [wholeT]));
    expect(h.tasks([{ kind: 'remove', key: k(u0) }, { kind: 'remove', key: k(u1) }])).toHaveLength(2);
    // The table comes back before the removes finish.
    h.step((m) => m.setDesiredSpans([tableT, tableU], [wholeT, ...spansU]));
    h.status('A', u0, 'stopped', 160n);
    h.status('A', u1, 'stopped', 160n);
    // Before, the finished remove deleted the sets for good: table u had a gap forever.
    expect(h.m.sets.has(k(u0)) && h.m.sets.has(k(u1))).toBe(true);
    expect(h.set(u0).state).toBe('absent');
    expect(keysOf(h.m.absentSets).sort()).toEqual([k(u0), k(u1)].sort());
    expect(h.m.coverageProblem()).toBeUndefined();
  });

  it('an absent unwanted span is deleted at once; a re-wanted replicating one leaves the unwanted queue', () => {
    const h = new Harness();
    h.step((m) => m.setDesiredSpans([tableT], spansT));
    h.step((m) => m.addCapture('A'));
    h.replicate(s0, 'A');
    h.step((m) => m.setDesiredSpans([tableT], [s2, s3]));
    expect(h.m.sets.has(k(s1))).toBe(false);
    expect(keysOf(h.m.unwantedSets)).toEqual([k(s0)]);
    expect(keysOf(h.m.absentSets)).toEqual([k(s2), k(s3)]);
    h.step((m) => m.setDesiredSpans([tableT], spansT));
    expect(h.m.unwantedSets.size).toBe(0);
    expect(keysOf(h.m.absentSets)).toEqual([k(s2), k(s3), k(s1)]);
    expect(h.counts()).toEqual(counts({ absent: 3, replicating: 1 }));
  });

  it('coverageProblem for a half-split table: a gap, then an overlap while the old span is removed', () => {
    const h = new Harness();
    const whole: Span = { table: 't', start: 'a', end: 'z' };
    const [left, right] = splitTable(tableT, ['m']) as [Span, Span];

    h.step((m) => m.setDesiredSpans([tableT], [left]));
    expect(h.m.coverageProblem()).toEqual({ kind: 'gap', table: 't', after: 'm', before: 'z' });

    h.step((m) => m.setDesiredSpans([tableT], [whole]));
    expect(h.m.coverageProblem()).toBeUndefined();
    h.step((m) => m.addCapture('A'));
    h.replicate(whole, 'A');

    // Split into two: the new halves exist alongside the old whole span.
    h.step((m) => m.setDesiredSpans([tableT], [left, right]));
    expect(h.m.coverageProblem()).toEqual({ kind: 'overlap', table: 't', at: 'a' });
    expect(keysOf(h.m.unwantedSets)).toEqual([k(whole)]);
    // The halves are not added while the whole span may still write their keys.
    const adds: Task[] = [{ kind: 'add', key: k(left), capture: 'A' }, { kind: 'add', key: k(right), capture: 'A' }];
    expect(h.tasks([{ kind: 'remove', key: k(whole) }, ...adds]).map((t) => t.kind)).toEqual(['remove']);
    h.status('A', whole, 'stopped', 170n);
    expect(h.m.coverageProblem()).toBeUndefined();
    expect(h.tasks(adds)).toHaveLength(2);
    expect(h.counts()).toEqual(counts({ prepare: 2 }));
  });
});

describe('ReplicationManager: rebuild', () => {
  it('rebuilds from reports, then desired spans fill in the rest; undetermined holders settle', () => {
    const h = new Harness();
    const st = (span: Span, state: AgentSpanState, checkpointTs = 150n): SpanStatus => ({ span, state, checkpointTs, resolvedTs: checkpointTs });
    h.step((m) =>
      m.rebuild(
        new Map<CaptureId, SpanStatus[]>([
          ['A', [st(s0, 'replicating')]],
          ['B', [st(s1, 'prepared')]],
          ['C', [st(s2, 'stopping', 120n)]],
        ]),
      ),
    );
    expect(h.counts()).toEqual(counts({ replicating: 1, commit: 2 }));
    expect(h.m.captureSpans('C')?.inTransition.size).toBe(1);
    expect(h.m.coverageProblem()).toEqual({ kind: 'unknown-table', table: 't' });
    h.step((m) => m.setDesiredSpans([tableT], spansT));
    expect(h.counts()).toEqual(counts({ absent: 1, replicating: 1, commit: 2 }));
    expect(keysOf(h.m.absentSets)).toEqual([k(s3)]);
    expect(h.m.coverageProblem()).toBeUndefined();
    expect(h.m.tasksInFlight).toEqual({ add: 0, move: 0, remove: 0 });

    h.status('B', s1, 'prepared');
    expect(h.pending()).toEqual({ B: { adds: [addReq(s1, false)], removes: [] } });
    h.status('C', s2, 'stopped', 125n);
    expect(h.set(s2).state).toBe('absent');
    expect(h.set(s2).checkpointTs).toBe(125n);
    expect(h.m.captureSpans('C')?.inTransition.size).toBe(0);
    expect(keysOf(h.m.absentSets)).toEqual([k(s3), k(s2)]);
  });

  it('two primaries in the reports are recorded as a violation', () => {
    const h = new Harness();
    const st = (span: Span): SpanStatus => ({ span, state: 'replicating', checkpointTs: 150n, resolvedTs: 150n });
    h.step((m) => m.rebuild(new Map([['A', [st(s0)]], ['B', [st(s0)]]])));
    expect(h.m.violations).toHaveLength(1);
    expect(h.m.takeEvents().map((e) => e.type)).toEqual(['invariant-violation']);
  });
});

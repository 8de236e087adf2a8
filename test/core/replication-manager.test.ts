import { describe, expect, it } from 'vitest';
import type { AgentSpanState } from '../../src/core/messages.ts';
import { ReplicationManager } from '../../src/core/replication-manager.ts';
import type { Span, TableRange } from '../../src/core/span.ts';
import { findCoverageProblem, spanKey, splitTable } from '../../src/core/span.ts';

const table: TableRange = { name: 't', start: 'a', end: 'z' };
const spans = splitTable(table, ['c', 'e', 'g', 'i']);
const fresh = Number.MAX_SAFE_INTEGER;

function manager(limits: Partial<{ moveTasksInFlightMax: number; addRemoveTasksInFlightMax: number; addBatchPerTickMax: number }> = {}): ReplicationManager {
  const m = new ReplicationManager({ moveTasksInFlightMax: 2, addRemoveTasksInFlightMax: 100, addBatchPerTickMax: 100, ...limits }, 10n, () => 0);
  m.addCapture('c1');
  m.addCapture('c2');
  m.setDesiredSpans([table], spans);
  m.checkInvariants();
  return m;
}

const report = (m: ReplicationManager, capture: string, span: Span, state: AgentSpanState, checkpointTs = 10n): void => {
  m.handleStatus(capture, { span, state, checkpointTs, resolvedTs: checkpointTs }, fresh);
  m.checkInvariants();
};

function placeAll(m: ReplicationManager, capture = 'c1'): void {
  m.handleTasks(spans.map((span) => ({ kind: 'add', key: spanKey(span), capture })), () => true, 'test');
  for (const span of spans) report(m, capture, span, 'replicating');
  m.takePending();
}

describe('replication manager', () => {
  it('starts every span absent and counts states incrementally', () => {
    const m = manager();
    expect(m.stateCounts).toEqual({ absent: 5, prepare: 0, commit: 0, replicating: 0, removing: 0 });
    expect(m.absentSets.size).toBe(5);
    placeAll(m);
    expect(m.stateCounts).toEqual({ absent: 0, prepare: 0, commit: 0, replicating: 5, removing: 0 });
    expect(m.captureSpans('c1')?.primaries.length).toBe(5);
    expect(m.captureSpans('c1')?.replicatingDigest.count).toBe(5);
    expect(m.tasksInFlight).toEqual({ add: 0, move: 0, remove: 0 });
  });

  it('bounds adds per tick, adds and removes in flight, and moves in flight; one task per span', () => {
    const batch = manager({ addBatchPerTickMax: 2 });
    const adds = spans.map((span) => ({ kind: 'add' as const, key: spanKey(span), capture: 'c1' }));
    expect(batch.handleTasks(adds, () => true, 'test')).toHaveLength(2);
    batch.takePending();
    expect(batch.handleTasks(adds, () => true, 'test')).toHaveLength(2);
    batch.checkInvariants();

    const inFlight = manager({ addRemoveTasksInFlightMax: 3 });
    expect(inFlight.handleTasks(adds, () => true, 'test')).toHaveLength(3);
    inFlight.takePending();
    expect(inFlight.handleTasks(adds, () => true, 'test')).toHaveLength(0);

    const moves = manager();
    placeAll(moves);
    const moveTasks = spans.map((span) => ({ kind: 'move' as const, key: spanKey(span), capture: 'c2' }));
    expect(moves.handleTasks([...moveTasks, moveTasks[0]!], () => true, 'test')).toHaveLength(2);
    expect(moves.tasksInFlight.move).toBe(2);
    moves.checkInvariants();
  });

  it('refuses tasks on a span in the wrong state or to a capture that is not a target', () => {
    const m = manager();
    const key = spanKey(spans[0]!);
    expect(m.handleTasks([{ kind: 'move', key, capture: 'c2' }], () => true, 'test')).toEqual([]);
    expect(m.handleTasks([{ kind: 'add', key, capture: 'c2' }], () => false, 'test')).toEqual([]);
    expect(m.handleTasks([{ kind: 'add', key: 'no-such-span', capture: 'c2' }], () => true, 'test')).toEqual([]);
  });

  it('a dead capture sends its spans back to absent', () => {
    const m = manager();
    placeAll(m);
    expect(m.removeCapture('c1')).toBe(5);
    expect(m.stateCounts.absent).toBe(5);
    expect(m.captureSpans('c1')).toBeUndefined();
    m.checkInvariants();
  });

  it('reconciles a collection: a span the capture did not list is absent there', () => {
    const m = manager();
    placeAll(m);
    m.reconcile('c1', new Set(spans.slice(1).map(spanKey)), fresh);
    expect(m.stateCounts).toMatchObject({ absent: 1, replicating: 4 });
    m.checkInvariants();
  });

  it('removes the spans of a dropped table, then deletes their sets', () => {
    const m = manager();
    placeAll(m);
    m.setDesiredSpans([], []);
    expect(m.unwantedSets.size).toBe(5);
    m.handleTasks(spans.map((span) => ({ kind: 'remove', key: spanKey(span) })), () => true, 'test');
    expect(m.stateCounts.removing).toBe(5);
    for (const span of spans) report(m, 'c1', span, 'stopped', 12n);
    expect(m.sets.size).toBe(0);
    expect(m.tasksInFlight.remove).toBe(0);
  });

  it('reports a coverage problem for a half-split table', () => {
    const m = manager();
    placeAll(m);
    expect(m.coverageProblem()).toBeUndefined();
    const resplit = splitTable(table, ['c', 'd', 'e', 'g', 'i']);
    m.setDesiredSpans([table], resplit);
    // Old [c,e) and new [c,d), [d,e) overlap until the old one is removed.
    expect(m.coverageProblem()).toMatchObject({ kind: 'overlap', table: 't' });
  });
});

describe('span coverage', () => {
  it('finds gaps, overlaps, spans outside the range and unknown tables', () => {
    const t: TableRange = { name: 't', start: 'a', end: 'z' };
    expect(findCoverageProblem([t], splitTable(t, ['m']))).toBeUndefined();
    expect(findCoverageProblem([t], [{ table: 't', start: 'a', end: 'm' }])).toMatchObject({ kind: 'gap', after: 'm', before: 'z' });
    expect(findCoverageProblem([t], [{ table: 't', start: 'b', end: 'z' }])).toMatchObject({ kind: 'gap', after: 'a', before: 'b' });
    expect(
      findCoverageProblem([t], [
        { table: 't', start: 'a', end: 'n' },
        { table: 't', start: 'm', end: 'z' },
      ]),
    ).toMatchObject({ kind: 'overlap', at: 'm' });
    expect(findCoverageProblem([t], [{ table: 't', start: 'a', end: '' }])).toMatchObject({ kind: 'outside' });
    expect(findCoverageProblem([t], [{ table: 'u', start: 'a', end: 'z' }])).toMatchObject({ kind: 'unknown-table' });
    const open: TableRange = { name: 'o', start: '', end: '' };
    expect(findCoverageProblem([open], splitTable(open, ['k']))).toBeUndefined();
  });
});

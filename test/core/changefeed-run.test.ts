/**
 * The owner's run of one changefeed, step by step: level-triggered checkpoint writes
 * with compare-and-set, retried after failures, replaced when stuck, never below what
 * etcd holds; failures persisted until written, and final.
 */
import { describe, expect, it } from 'vitest';
import { ChangefeedRun } from '../../src/core/changefeed-run.ts';
import type { RunCommand } from '../../src/core/changefeed-run.ts';

const limits = { writeDeadlineTicks: 5, retryBackoffTicks: 2, writeIntervalTicks: 1 };

function started(checkpointTs = 100n, modRevision = 7n): ChangefeedRun {
  const run = new ChangefeedRun(limits);
  const [read] = run.tick({ tick: 1, checkpointTs: 100n, resolvedTs: 100n });
  expect(read).toEqual({ kind: 'read-status', id: 1 });
  run.onOutcome({ kind: 'status-read', id: 1, status: { checkpointTs, resolvedTs: checkpointTs, modRevision } });
  return run;
}

function write(commands: RunCommand[]): RunCommand & { kind: 'write-status' } {
  expect(commands).toHaveLength(1);
  const [command] = commands;
  expect(command?.kind).toBe('write-status');
  return command as RunCommand & { kind: 'write-status' };
}

describe('checkpoint writes', () => {
  it('reads the status first, then writes each advance over the revision it knows', () => {
    const run = started();
    expect(run.tick({ tick: 2, checkpointTs: 100n, resolvedTs: 100n })).toEqual([]);
    const first = write(run.tick({ tick: 3, checkpointTs: 150n, resolvedTs: 160n }));
    expect(first).toMatchObject({ checkpointTs: 150n, resolvedTs: 160n, expectedModRevision: 7n });
    // One write at a time: the next advance waits for the answer.
    expect(run.tick({ tick: 4, checkpointTs: 170n, resolvedTs: 170n })).toEqual([]);
    run.onOutcome({ kind: 'status-written', id: first.id, modRevision: 9n });
    expect(run.persisted).toEqual({ checkpointTs: 150n, resolvedTs: 160n, modRevision: 9n });
    expect(write(run.tick({ tick: 5, checkpointTs: 170n, resolvedTs: 170n }))).toMatchObject({ checkpointTs: 170n, expectedModRevision: 9n });
  });

  it('writes the last advance even when nothing advances after it (level-triggered)', () => {
    const run = started();
    const first = write(run.tick({ tick: 2, checkpointTs: 200n, resolvedTs: 200n }));
    // The write fails; the coordinator never advances again (target reached, quiet upstream).
    run.onOutcome({ kind: 'failed', id: first.id });
    expect(run.tick({ tick: 3, checkpointTs: 200n, resolvedTs: 200n })).toEqual([]);
    const again = write(run.tick({ tick: 4, checkpointTs: 200n, resolvedTs: 200n }));
    expect(again).toMatchObject({ checkpointTs: 200n, expectedModRevision: 7n });
    run.onOutcome({ kind: 'status-written', id: again.id, modRevision: 8n });
    expect(run.tick({ tick: 5, checkpointTs: 200n, resolvedTs: 200n })).toEqual([]);
  });

  it('reads again after a conflict and never writes below what etcd holds', () => {
    const run = started();
    const first = write(run.tick({ tick: 2, checkpointTs: 150n, resolvedTs: 150n }));
    run.onOutcome({ kind: 'status-conflict', id: first.id });
    expect(run.tick({ tick: 3, checkpointTs: 150n, resolvedTs: 150n })).toEqual([{ kind: 'read-status', id: 3 }]);
    // Someone (a stuck write of ours that landed late) put 300 meanwhile.
    run.onOutcome({ kind: 'status-read', id: 3, status: { checkpointTs: 300n, resolvedTs: 300n, modRevision: 12n } });
    expect(run.tick({ tick: 4, checkpointTs: 150n, resolvedTs: 150n })).toEqual([]);
    expect(run.tick({ tick: 5, checkpointTs: 300n, resolvedTs: 300n })).toEqual([]);
    expect(write(run.tick({ tick: 6, checkpointTs: 301n, resolvedTs: 301n }))).toMatchObject({ checkpointTs: 301n, expectedModRevision: 12n });
  });

  it('replaces a write stuck past its deadline with a newer one, and ignores the late answer', () => {
    const run = started();
    const stuck = write(run.tick({ tick: 2, checkpointTs: 150n, resolvedTs: 150n }));
    for (let tick = 3; tick < 7; tick++) expect(run.tick({ tick, checkpointTs: 180n, resolvedTs: 180n })).toEqual([]);
    const newer = write(run.tick({ tick: 7, checkpointTs: 180n, resolvedTs: 180n }));
    expect(newer).toMatchObject({ checkpointTs: 180n, expectedModRevision: 7n });
    expect(newer.id).not.toBe(stuck.id);
    // The stuck write's answer comes late: ignored (the newer one, same expected revision, will conflict if it landed).
    run.onOutcome({ kind: 'status-written', id: stuck.id, modRevision: 8n });
    expect(run.persisted?.modRevision).toBe(7n);
    run.onOutcome({ kind: 'status-conflict', id: newer.id });
    expect(run.tick({ tick: 8, checkpointTs: 180n, resolvedTs: 180n })).toMatchObject([{ kind: 'read-status' }]);
  });

  it('waits the write interval between two writes', () => {
    const run = new ChangefeedRun({ ...limits, writeIntervalTicks: 3 });
    run.tick({ tick: 1, checkpointTs: 1n, resolvedTs: 1n });
    run.onOutcome({ kind: 'status-read', id: 1, status: { checkpointTs: 1n, resolvedTs: 1n, modRevision: 2n } });
    const first = write(run.tick({ tick: 2, checkpointTs: 5n, resolvedTs: 5n }));
    run.onOutcome({ kind: 'status-written', id: first.id, modRevision: 3n });
    expect(run.tick({ tick: 3, checkpointTs: 6n, resolvedTs: 6n })).toEqual([]);
    expect(run.tick({ tick: 4, checkpointTs: 6n, resolvedTs: 6n })).toEqual([]);
    expect(write(run.tick({ tick: 5, checkpointTs: 6n, resolvedTs: 6n }))).toMatchObject({ checkpointTs: 6n });
  });
});

describe('failure', () => {
  it('retries the failure write until it is written, then stays failed', () => {
    const run = started();
    run.fail('invariant violation: two primaries');
    run.fail('a later error');
    expect(run.phase).toBe('failing');
    expect(run.error).toBe('invariant violation: two primaries');
    const [first] = run.tick({ tick: 2, checkpointTs: 500n, resolvedTs: 500n });
    expect(first).toEqual({ kind: 'write-failure', id: 2, error: 'invariant violation: two primaries' });
    run.onOutcome({ kind: 'failed', id: 2 });
    expect(run.tick({ tick: 3, checkpointTs: 500n, resolvedTs: 500n })).toEqual([]);
    const [second] = run.tick({ tick: 4, checkpointTs: 500n, resolvedTs: 500n });
    expect(second).toMatchObject({ kind: 'write-failure' });
    run.onOutcome({ kind: 'failure-written', id: (second as RunCommand).id });
    expect(run.phase).toBe('failed');
    // No checkpoint of a failed run is written any more.
    expect(run.tick({ tick: 10, checkpointTs: 900n, resolvedTs: 900n })).toEqual([]);
  });

  it('writes the failure again when its write never answers', () => {
    const run = started();
    run.fail('boom');
    const [first] = run.tick({ tick: 2, checkpointTs: 100n, resolvedTs: 100n });
    for (let tick = 3; tick < 7; tick++) expect(run.tick({ tick, checkpointTs: 100n, resolvedTs: 100n })).toEqual([]);
    const [second] = run.tick({ tick: 7, checkpointTs: 100n, resolvedTs: 100n });
    expect(second).toMatchObject({ kind: 'write-failure' });
    expect((second as RunCommand).id).not.toBe((first as RunCommand).id);
  });
});

import { describe, expect, it } from 'vitest';
import type { AgentSpanState, SpanStatus } from '../../src/core/messages.ts';
import type { SetEffects, SpanCommand } from '../../src/core/replication-set.ts';
import { ReplicationSet } from '../../src/core/replication-set.ts';
import type { Span } from '../../src/core/span.ts';

const span: Span = { table: 't', start: 'a', end: 'b' };

/** Records what a set's handlers send, and any violation. */
class Recorder implements SetEffects {
  sent: SpanCommand[] = [];
  violations: string[] = [];
  send(_set: ReplicationSet, command: SpanCommand): void {
    this.sent.push(command);
  }
  violation(_set: ReplicationSet, message: string): void {
    this.violations.push(message);
  }
  take(): SpanCommand[] {
    const sent = this.sent;
    this.sent = [];
    return sent;
  }
}

const status = (state: AgentSpanState, checkpointTs = 0n, resolvedTs = checkpointTs): SpanStatus => ({ span, state, checkpointTs, resolvedTs });

/** A fresh report: acknowledges everything the owner sent. */
const fresh = Number.MAX_SAFE_INTEGER;

function roles(set: ReplicationSet): Record<string, unknown> {
  return { state: set.state, primary: set.primary, secondary: set.secondary, undetermined: set.undetermined, checkpointTs: set.checkpointTs };
}

function replicatingOn(capture: string, fx: Recorder, checkpointTs = 10n): ReplicationSet {
  const set = new ReplicationSet(span, checkpointTs);
  set.add(capture, checkpointTs, fx);
  set.handleStatus(capture, status('replicating', checkpointTs), fresh, fx);
  fx.take();
  return set;
}

describe('replication set: add', () => {
  it('absent -> prepare -> commit -> replicating, re-sending the promotion level-triggered', () => {
    const fx = new Recorder();
    const set = new ReplicationSet(span, 5n);
    set.add('c1', 10n, fx);
    expect(roles(set)).toEqual({ state: 'prepare', primary: undefined, secondary: 'c1', undetermined: undefined, checkpointTs: 10n });
    expect(fx.take()).toEqual([{ kind: 'add', to: 'c1', secondary: false, checkpointTs: 10n }]);

    set.handleStatus('c1', status('preparing', 10n), fresh, fx);
    expect(set.state).toBe('prepare');
    expect(fx.take()).toEqual([]);

    set.handleStatus('c1', status('prepared', 10n), fresh, fx);
    expect(set.state).toBe('commit');
    expect(fx.take()).toEqual([{ kind: 'add', to: 'c1', secondary: false, checkpointTs: 10n }]);

    // A duplicate of the same status re-sends the same request: idempotent.
    set.handleStatus('c1', status('prepared', 10n), fresh, fx);
    expect(fx.take()).toEqual([{ kind: 'add', to: 'c1', secondary: false, checkpointTs: 10n }]);

    set.handleStatus('c1', status('replicating', 12n, 15n), fresh, fx);
    expect(roles(set)).toEqual({ state: 'replicating', primary: 'c1', secondary: undefined, undetermined: undefined, checkpointTs: 12n });
    expect(set.resolvedTs).toBe(15n);
  });

  it('accepts replicating straight from prepare (the agent promoted itself)', () => {
    const fx = new Recorder();
    const set = new ReplicationSet(span, 5n);
    set.add('c1', 5n, fx);
    fx.take();
    set.handleStatus('c1', status('replicating', 5n), fresh, fx);
    expect(roles(set)).toMatchObject({ state: 'replicating', primary: 'c1', secondary: undefined });
  });

  it('re-sends a lost add when the capture answers absent', () => {
    const fx = new Recorder();
    const set = new ReplicationSet(span, 5n);
    set.add('c1', 5n, fx);
    fx.take();
    set.handleStatus('c1', status('absent'), fresh, fx);
    expect(set.state).toBe('prepare');
    expect(fx.take()).toEqual([{ kind: 'add', to: 'c1', secondary: false, checkpointTs: 5n }]);
  });

  it('ignores a report the secondary made before it received the add', () => {
    const fx = new Recorder();
    const set = new ReplicationSet(span, 5n);
    set.add('c1', 5n, fx);
    set.secondaryAddSeq = 7;
    set.handleStatus('c1', status('stopped', 5n), 7, fx);
    expect(set.state).toBe('prepare');
    set.handleStatus('c1', status('stopped', 5n), 8, fx);
    expect(set.state).toBe('absent');
  });

  it('aborts when the secondary stops', () => {
    const fx = new Recorder();
    const set = new ReplicationSet(span, 5n);
    set.add('c1', 5n, fx);
    set.handleStatus('c1', status('stopped', 5n), fresh, fx);
    expect(roles(set)).toMatchObject({ state: 'absent', primary: undefined, secondary: undefined });
  });
});

describe('replication set: move', () => {
  it('prepares the target, stops the old primary, promotes at its final checkpoint', () => {
    const fx = new Recorder();
    const set = replicatingOn('c1', fx);
    set.move('c2', fx);
    expect(roles(set)).toMatchObject({ state: 'prepare', primary: 'c1', secondary: 'c2' });
    expect(fx.take()).toEqual([{ kind: 'add', to: 'c2', secondary: true, checkpointTs: 10n }]);

    // The old primary keeps writing while the target catches up.
    set.handleStatus('c1', status('replicating', 20n), fresh, fx);
    expect(set.checkpointTs).toBe(20n);
    set.handleStatus('c2', status('prepared', 10n), fresh, fx);
    expect(set.state).toBe('commit');
    expect(fx.take()).toEqual([{ kind: 'remove', to: 'c1' }]);

    // Level-triggered: the old primary still replicating gets the remove again.
    set.handleStatus('c1', status('replicating', 22n), fresh, fx);
    expect(fx.take()).toEqual([{ kind: 'remove', to: 'c1' }]);
    set.handleStatus('c1', status('stopping', 23n), fresh, fx);
    expect(fx.take()).toEqual([]);

    set.handleStatus('c1', status('stopped', 25n), fresh, fx);
    expect(roles(set)).toMatchObject({ state: 'commit', primary: undefined, secondary: 'c2', checkpointTs: 25n });
    expect(fx.take()).toEqual([{ kind: 'add', to: 'c2', secondary: false, checkpointTs: 25n }]);

    set.handleStatus('c2', status('replicating', 25n), fresh, fx);
    expect(roles(set)).toMatchObject({ state: 'replicating', primary: 'c2', secondary: undefined, checkpointTs: 25n });
  });

  it('never lowers the checkpoint', () => {
    const fx = new Recorder();
    const set = replicatingOn('c1', fx, 30n);
    set.handleStatus('c1', status('replicating', 20n), fresh, fx);
    expect(set.checkpointTs).toBe(30n);
  });
});

describe('replication set: remove', () => {
  it('replicating -> removing -> removed once the primary stopped', () => {
    const fx = new Recorder();
    const set = replicatingOn('c1', fx);
    set.remove(fx);
    expect(set.state).toBe('removing');
    expect(fx.take()).toEqual([{ kind: 'remove', to: 'c1' }]);
    set.handleStatus('c1', status('replicating', 11n), fresh, fx);
    expect(fx.take()).toEqual([{ kind: 'remove', to: 'c1' }]);
    set.handleStatus('c1', status('stopped', 12n), fresh, fx);
    expect(set.removed).toBe(true);
    expect(set.checkpointTs).toBe(12n);
  });
});

describe('replication set: capture death in every state', () => {
  it('prepare (add): the secondary dies -> absent', () => {
    const fx = new Recorder();
    const set = new ReplicationSet(span, 5n);
    set.add('c1', 5n, fx);
    set.handleCaptureGone('c1', fx);
    expect(roles(set)).toMatchObject({ state: 'absent', secondary: undefined });
  });

  it('prepare (move): the secondary dies -> back to replicating on the primary', () => {
    const fx = new Recorder();
    const set = replicatingOn('c1', fx);
    set.move('c2', fx);
    set.handleCaptureGone('c2', fx);
    expect(roles(set)).toMatchObject({ state: 'replicating', primary: 'c1', secondary: undefined });
  });

  it('prepare (move): the primary dies -> commit, promote the secondary', () => {
    const fx = new Recorder();
    const set = replicatingOn('c1', fx);
    set.move('c2', fx);
    fx.take();
    set.handleCaptureGone('c1', fx);
    expect(roles(set)).toMatchObject({ state: 'commit', primary: undefined, secondary: 'c2' });
    expect(fx.take()).toEqual([{ kind: 'add', to: 'c2', secondary: false, checkpointTs: 10n }]);
  });

  it('commit: the primary dies -> promote the secondary', () => {
    const fx = new Recorder();
    const set = replicatingOn('c1', fx);
    set.move('c2', fx);
    set.handleStatus('c2', status('prepared', 10n), fresh, fx);
    fx.take();
    set.handleCaptureGone('c1', fx);
    expect(fx.take()).toEqual([{ kind: 'add', to: 'c2', secondary: false, checkpointTs: 10n }]);
    set.handleStatus('c2', status('replicating', 10n), fresh, fx);
    expect(roles(set)).toMatchObject({ state: 'replicating', primary: 'c2' });
  });

  it('commit: the secondary dies -> waits for the primary, which keeps replicating', () => {
    const fx = new Recorder();
    const set = replicatingOn('c1', fx);
    set.move('c2', fx);
    set.handleStatus('c2', status('prepared', 10n), fresh, fx);
    set.handleCaptureGone('c2', fx);
    expect(roles(set)).toMatchObject({ state: 'commit', primary: 'c1', secondary: undefined });
    set.handleStatus('c1', status('replicating', 14n), fresh, fx);
    expect(roles(set)).toMatchObject({ state: 'replicating', primary: 'c1' });
  });

  it('commit: the secondary dies after the primary got the remove -> absent once it stopped', () => {
    const fx = new Recorder();
    const set = replicatingOn('c1', fx);
    set.move('c2', fx);
    set.handleStatus('c2', status('prepared', 10n), fresh, fx);
    set.handleCaptureGone('c2', fx);
    set.handleStatus('c1', status('stopped', 16n), fresh, fx);
    expect(roles(set)).toMatchObject({ state: 'absent', primary: undefined, checkpointTs: 16n });
  });

  it('replicating: the primary dies -> absent, keeping its checkpoint', () => {
    const fx = new Recorder();
    const set = replicatingOn('c1', fx, 33n);
    set.handleCaptureGone('c1', fx);
    expect(roles(set)).toMatchObject({ state: 'absent', primary: undefined, checkpointTs: 33n });
  });

  it('removing: the primary dies -> removed', () => {
    const fx = new Recorder();
    const set = replicatingOn('c1', fx);
    set.remove(fx);
    set.handleCaptureGone('c1', fx);
    expect(set.removed).toBe(true);
  });

  it('a capture with no role is ignored', () => {
    const fx = new Recorder();
    const set = replicatingOn('c1', fx);
    set.handleCaptureGone('c9', fx);
    expect(roles(set)).toMatchObject({ state: 'replicating', primary: 'c1' });
  });
});

describe('replication set: foreign reports', () => {
  it('a second capture replicating the span is a violation, and is told to stop', () => {
    const fx = new Recorder();
    const set = replicatingOn('c1', fx);
    set.handleStatus('c2', status('replicating', 10n), fresh, fx);
    expect(fx.violations).toHaveLength(1);
    expect(fx.take()).toEqual([{ kind: 'remove', to: 'c2' }]);
  });

  it('a capture preparing the span without a role is told to stop, without a violation', () => {
    const fx = new Recorder();
    const set = replicatingOn('c1', fx);
    set.handleStatus('c2', status('prepared', 10n), fresh, fx);
    expect(fx.violations).toEqual([]);
    expect(fx.take()).toEqual([{ kind: 'remove', to: 'c2' }]);
  });
});

describe('replication set: rebuild after an owner change', () => {
  const rebuild = (reports: [string, AgentSpanState, bigint][], floor = 0n): [ReplicationSet, Recorder] => {
    const fx = new Recorder();
    const set = ReplicationSet.rebuild(
      span,
      'key',
      reports.map(([capture, state, checkpointTs]) => ({ capture, status: status(state, checkpointTs) })),
      floor,
      fx,
    );
    return [set, fx];
  };

  it('replicating -> primary', () => {
    const [set] = rebuild([['c1', 'replicating', 40n]], 30n);
    expect(roles(set)).toEqual({ state: 'replicating', primary: 'c1', secondary: undefined, undetermined: undefined, checkpointTs: 40n });
  });

  it('the persisted checkpoint is a floor', () => {
    const [set] = rebuild([['c1', 'replicating', 20n]], 30n);
    expect(set.checkpointTs).toBe(30n);
  });

  it('preparing -> secondary in prepare; prepared -> secondary in commit', () => {
    expect(roles(rebuild([['c1', 'preparing', 5n]])[0])).toMatchObject({ state: 'prepare', secondary: 'c1' });
    expect(roles(rebuild([['c1', 'prepared', 5n]])[0])).toMatchObject({ state: 'commit', secondary: 'c1' });
  });

  it('primary and a prepared secondary -> commit, and the primary is asked to stop', () => {
    const [set, fx] = rebuild([
      ['c1', 'replicating', 40n],
      ['c2', 'prepared', 30n],
    ]);
    expect(roles(set)).toMatchObject({ state: 'commit', primary: 'c1', secondary: 'c2', checkpointTs: 40n });
    set.handleStatus('c1', status('replicating', 41n), fresh, fx);
    expect(fx.take()).toEqual([{ kind: 'remove', to: 'c1' }]);
  });

  it('stopping -> undetermined; promotion waits until it stopped', () => {
    const [set, fx] = rebuild([
      ['c1', 'stopping', 40n],
      ['c2', 'prepared', 30n],
    ]);
    expect(roles(set)).toMatchObject({ state: 'commit', primary: undefined, secondary: 'c2', undetermined: ['c1'] });
    set.handleStatus('c2', status('prepared', 30n), fresh, fx);
    expect(fx.take()).toEqual([]);
    set.handleStatus('c1', status('stopped', 45n), fresh, fx);
    expect(roles(set)).toMatchObject({ undetermined: undefined, checkpointTs: 45n });
    expect(fx.take()).toEqual([{ kind: 'add', to: 'c2', secondary: false, checkpointTs: 45n }]);
  });

  it('only stopping -> absent once it stopped', () => {
    const [set, fx] = rebuild([['c1', 'stopping', 40n]]);
    expect(set.state).toBe('commit');
    set.handleStatus('c1', status('stopped', 42n), fresh, fx);
    expect(roles(set)).toMatchObject({ state: 'absent', checkpointTs: 42n });
  });

  it('two primaries is a violation, never a guess', () => {
    const [, fx] = rebuild([
      ['c1', 'replicating', 40n],
      ['c2', 'replicating', 40n],
    ]);
    expect(fx.violations).toHaveLength(1);
    expect(fx.violations[0]).toContain('two primaries');
  });

  it('nothing reported -> absent', () => {
    expect(rebuild([['c1', 'stopped', 9n]])[0].state).toBe('absent');
  });
});

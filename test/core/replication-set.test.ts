/**
 * ReplicationSet driven directly: every lifecycle step asserts the exact commands sent,
 * the violations and the set's roles and state, including lost, duplicated and late
 * statuses and capture death in every state.
 */
import { describe, expect, it } from 'vitest';
import type { AgentSpanState, CaptureId, SpanStatus } from '../../src/core/messages.ts';
import type { CaptureReport, ReplicationState, SetEffects, SpanCommand } from '../../src/core/replication-set.ts';
import { ReplicationSet } from '../../src/core/replication-set.ts';
import type { Span } from '../../src/core/span.ts';
import { spanKey } from '../../src/core/span.ts';

const span: Span = { table: 't', start: 'a', end: 'm' };

/** A recording SetEffects: commands and violations pushed to arrays. */
function recorder(): SetEffects & { sent: SpanCommand[]; violations: string[]; take(): SpanCommand[] } {
  const fx = {
    sent: [] as SpanCommand[],
    violations: [] as string[],
    send(_set: ReplicationSet, command: SpanCommand): void {
      fx.sent.push(command);
    },
    violation(_set: ReplicationSet, message: string): void {
      fx.violations.push(message);
    },
    take(): SpanCommand[] {
      const sent = fx.sent;
      fx.sent = [];
      return sent;
    },
  };
  return fx;
}

type Fx = ReturnType<typeof recorder>;

const st = (state: AgentSpanState, checkpointTs = 0n, resolvedTs = checkpointTs): SpanStatus => ({ span, state, checkpointTs, resolvedTs });

/** The set was created directly, so its secondaryAddSeq is 0: any ackSeq >= 1 is fresh. */
const ACK = 1;

interface Roles {
  state: ReplicationState;
  primary: CaptureId | undefined;
  secondary: CaptureId | undefined;
  undetermined: CaptureId[] | undefined;
  checkpointTs: bigint;
  resolvedTs: bigint;
  removed: boolean;
}

function roles(set: ReplicationSet): Roles {
  return {
    state: set.state,
    primary: set.primary,
    secondary: set.secondary,
    undetermined: set.undetermined,
    checkpointTs: set.checkpointTs,
    resolvedTs: set.resolvedTs,
    removed: set.removed,
  };
}

function expectRoles(set: ReplicationSet, expected: Partial<Roles>): void {
  const base: Roles = { state: 'absent', primary: undefined, secondary: undefined, undetermined: undefined, checkpointTs: 0n, resolvedTs: 0n, removed: false };
  const want = { ...base, ...expected };
  if (expected.resolvedTs === undefined) want.resolvedTs = set.resolvedTs;
  expect(roles(set)).toEqual(want);
}

const add = (to: CaptureId, secondary: boolean, checkpointTs: bigint): SpanCommand => ({ kind: 'add', to, secondary, checkpointTs });
const remove = (to: CaptureId): SpanCommand => ({ kind: 'remove', to });

/** A set replicating on `primary` at `checkpointTs`, with the recorder emptied. */
function replicating(primary: CaptureId, checkpointTs: bigint, fx: Fx): ReplicationSet {
  const set = new ReplicationSet(span, checkpointTs);
  set.add(primary, checkpointTs, fx);
  set.handleStatus(primary, st('replicating', checkpointTs), ACK, fx);
  expect(set.state).toBe('replicating');
  fx.take();
  return set;
}

/** A set in the middle of a move from `from` to `to`, in prepare. */
function moving(from: CaptureId, to: CaptureId, checkpointTs: bigint, fx: Fx): ReplicationSet {
  const set = replicating(from, checkpointTs, fx);
  set.move(to, fx);
  expect(fx.take()).toEqual([add(to, true, checkpointTs)]);
  return set;
}

describe('ReplicationSet: plain add', () => {
  it('absent -> prepare (add secondary:false) -> prepared -> commit re-sends the promote -> replicating', () => {
    const fx = recorder();
    const set = new ReplicationSet(span, 5n);
    expect(set.key).toBe(spanKey(span));
    expectRoles(set, { state: 'absent', checkpointTs: 5n, resolvedTs: 5n });

    set.add('A', 10n, fx);
    expect(fx.take()).toEqual([add('A', false, 10n)]);
    expectRoles(set, { state: 'prepare', secondary: 'A', checkpointTs: 10n, resolvedTs: 10n });
    expect(set.holders()).toEqual(['A']);
    expect(set.involves('A')).toBe(true);
    expect(set.involves('B')).toBe(false);

    set.handleStatus('A', st('preparing', 10n), ACK, fx);
    expect(fx.take()).toEqual([]);
    expectRoles(set, { state: 'prepare', secondary: 'A', checkpointTs: 10n });

    // A duplicate preparing changes nothing.
    set.handleStatus('A', st('preparing', 10n), ACK, fx);
    expect(fx.take()).toEqual([]);
    expectRoles(set, { state: 'prepare', secondary: 'A', checkpointTs: 10n });

    set.handleStatus('A', st('prepared', 10n, 14n), ACK, fx);
    expect(fx.take()).toEqual([add('A', false, 10n)]);
    expectRoles(set, { state: 'commit', secondary: 'A', checkpointTs: 10n });

    // Level-triggered: a duplicated prepared re-sends the same promotion, nothing else.
    set.handleStatus('A', st('prepared', 10n, 14n), ACK, fx);
    expect(fx.take()).toEqual([add('A', false, 10n)]);
    expectRoles(set, { state: 'commit', secondary: 'A', checkpointTs: 10n });

    set.handleStatus('A', st('replicating', 12n, 15n), ACK, fx);
    expect(fx.take()).toEqual([]);
    expectRoles(set, { state: 'replicating', primary: 'A', checkpointTs: 12n, resolvedTs: 15n });
    expect(fx.violations).toEqual([]);

    // Duplicated replicating reports are idempotent.
    set.handleStatus('A', st('replicating', 12n, 15n), ACK, fx);
    set.handleStatus('A', st('replicating', 12n, 15n), ACK, fx);
    expect(fx.take()).toEqual([]);
    expectRoles(set, { state: 'replicating', primary: 'A', checkpointTs: 12n, resolvedTs: 15n });
    expect(fx.violations).toEqual([]);
  });

  it('accepts replicating straight from prepare: the agent promoted itself', () => {
    const fx = recorder();
    const set = new ReplicationSet(span, 5n);
    set.add('A', 5n, fx);
    expect(fx.take()).toEqual([add('A', false, 5n)]);

    set.handleStatus('A', st('replicating', 7n, 9n), ACK, fx);
    expect(fx.take()).toEqual([]);
    expectRoles(set, { state: 'replicating', primary: 'A', checkpointTs: 7n, resolvedTs: 9n });
    expect(fx.violations).toEqual([]);
  });

  it('adds from the higher of the set checkpoint and the requested one', () => {
    const fx = recorder();
    const set = new ReplicationSet(span, 50n);
    set.add('A', 20n, fx);
    expect(fx.take()).toEqual([add('A', false, 50n)]);
    expectRoles(set, { state: 'prepare', secondary: 'A', checkpointTs: 50n });
  });

  it('lost add: the secondary reports absent -> the add is re-sent, in prepare and in commit', () => {
    const fx = recorder();
    const set = new ReplicationSet(span, 5n);
    set.add('A', 5n, fx);
    expect(fx.take()).toEqual([add('A', false, 5n)]);

    set.handleStatus('A', st('absent'), ACK, fx);
    expect(fx.take()).toEqual([add('A', false, 5n)]);
    expectRoles(set, { state: 'prepare', secondary: 'A', checkpointTs: 5n });

    // Duplicate absent: re-sent again (each status costs at most one add).
    set.handleStatus('A', st('absent'), ACK, fx);
    expect(fx.take()).toEqual([add('A', false, 5n)]);

    set.handleStatus('A', st('prepared', 5n), ACK, fx);
    expect(fx.take()).toEqual([add('A', false, 5n)]);
    expectRoles(set, { state: 'commit', secondary: 'A', checkpointTs: 5n });

    // The promotion itself was lost and the capture restarted the span: absent in commit.
    set.handleStatus('A', st('absent'), ACK, fx);
    expect(fx.take()).toEqual([add('A', false, 5n)]);
    expectRoles(set, { state: 'commit', secondary: 'A', checkpointTs: 5n });

    set.handleStatus('A', st('replicating', 6n), ACK, fx);
    expectRoles(set, { state: 'replicating', primary: 'A', checkpointTs: 6n });
    expect(fx.violations).toEqual([]);
  });

  it('ignores a report the secondary made before it received the latest add (ackSeq not above secondaryAddSeq)', () => {
    const fx = recorder();
    const set = new ReplicationSet(span, 5n);
    set.add('A', 5n, fx);
    fx.take();
    set.secondaryAddSeq = 7;

    // Reordered: a stale stopped/absent from before the add must not abort or re-add.
    set.handleStatus('A', st('stopped', 3n), 7, fx);
    set.handleStatus('A', st('absent'), 6, fx);
    expect(fx.take()).toEqual([]);
    expectRoles(set, { state: 'prepare', secondary: 'A', checkpointTs: 5n });

    set.handleStatus('A', st('absent'), 8, fx);
    expect(fx.take()).toEqual([add('A', false, 5n)]);
  });

  it('the secondary gives up while preparing (stopping, then stopped) -> back to absent', () => {
    const fx = recorder();
    const set = new ReplicationSet(span, 5n);
    set.add('A', 5n, fx);
    fx.take();
    set.handleStatus('A', st('stopping', 5n), ACK, fx);
    expect(fx.take()).toEqual([]);
    expectRoles(set, { state: 'prepare', secondary: 'A', checkpointTs: 5n });
    set.handleStatus('A', st('stopped', 5n), ACK, fx);
    expect(fx.take()).toEqual([]);
    expectRoles(set, { state: 'absent', checkpointTs: 5n });
    // A late duplicate from the former secondary is now a foreign, harmless report.
    set.handleStatus('A', st('stopped', 5n), ACK, fx);
    expect(fx.take()).toEqual([]);
    expect(fx.violations).toEqual([]);
  });
});

describe('ReplicationSet: move', () => {
  it('prepare on the target, stop the old primary (level-triggered), promote at its final checkpoint', () => {
    const fx = recorder();
    const set = replicating('A', 10n, fx);

    set.move('B', fx);
    expect(fx.take()).toEqual([add('B', true, 10n)]);
    expectRoles(set, { state: 'prepare', primary: 'A', secondary: 'B', checkpointTs: 10n });
    expect(set.holders()).toEqual(['A', 'B']);

    // The old primary keeps writing: its checkpoint still counts.
    set.handleStatus('A', st('replicating', 12n, 13n), ACK, fx);
    expect(fx.take()).toEqual([]);
    expectRoles(set, { state: 'prepare', primary: 'A', secondary: 'B', checkpointTs: 12n, resolvedTs: 13n });

    set.handleStatus('B', st('preparing', 10n), ACK, fx);
    expect(fx.take()).toEqual([]);
    expectRoles(set, { state: 'prepare', primary: 'A', secondary: 'B', checkpointTs: 12n });

    set.handleStatus('B', st('prepared', 10n, 20n), ACK, fx);
    expect(fx.take()).toEqual([remove('A')]);
    expectRoles(set, { state: 'commit', primary: 'A', secondary: 'B', checkpointTs: 12n });

    // The remove was lost: the old primary reports replicating again -> remove re-sent.
    set.handleStatus('A', st('replicating', 14n, 16n), ACK, fx);
    expect(fx.take()).toEqual([remove('A')]);
    expectRoles(set, { state: 'commit', primary: 'A', secondary: 'B', checkpointTs: 14n, resolvedTs: 16n });

    // Duplicated prepared from the target: re-sends the remove, nothing else.
    set.handleStatus('B', st('prepared', 10n, 20n), ACK, fx);
    expect(fx.take()).toEqual([remove('A')]);

    set.handleStatus('A', st('stopping', 15n), ACK, fx);
    expect(fx.take()).toEqual([]);
    expectRoles(set, { state: 'commit', primary: 'A', secondary: 'B', checkpointTs: 15n });

    set.handleStatus('A', st('stopped', 17n), ACK, fx);
    expect(fx.take()).toEqual([add('B', false, 17n)]);
    expectRoles(set, { state: 'commit', secondary: 'B', checkpointTs: 17n });

    // A duplicated stopped from the old primary is harmless now.
    set.handleStatus('A', st('stopped', 17n), ACK, fx);
    expect(fx.take()).toEqual([]);

    // The promotion was lost: the target's next prepared re-sends it.
    set.handleStatus('B', st('prepared', 10n, 20n), ACK, fx);
    expect(fx.take()).toEqual([add('B', false, 17n)]);

    set.handleStatus('B', st('replicating', 17n, 21n), ACK, fx);
    expect(fx.take()).toEqual([]);
    expectRoles(set, { state: 'replicating', primary: 'B', checkpointTs: 17n, resolvedTs: 21n });
    expect(fx.violations).toEqual([]);
  });

  it('the target loses the secondary add: absent re-sends it with secondary:true while the primary writes', () => {
    const fx = recorder();
    const set = moving('A', 'B', 10n, fx);
    set.handleStatus('B', st('absent'), ACK, fx);
    expect(fx.take()).toEqual([add('B', true, 10n)]);
    expectRoles(set, { state: 'prepare', primary: 'A', secondary: 'B', checkpointTs: 10n });

    set.handleStatus('B', st('prepared', 10n), ACK, fx);
    expect(fx.take()).toEqual([remove('A')]);
    // In commit with the primary still there, a lost add is re-sent as a secondary add too.
    set.handleStatus('B', st('absent'), ACK, fx);
    expect(fx.take()).toEqual([add('B', true, 10n)]);
    expectRoles(set, { state: 'commit', primary: 'A', secondary: 'B', checkpointTs: 10n });
  });

  it('the old primary loses the span (absent) in commit: the target is promoted at the set checkpoint', () => {
    const fx = recorder();
    const set = moving('A', 'B', 10n, fx);
    set.handleStatus('B', st('prepared', 10n), ACK, fx);
    expect(fx.take()).toEqual([remove('A')]);
    set.handleStatus('A', st('absent'), ACK, fx);
    expect(fx.take()).toEqual([add('B', false, 10n)]);
    expectRoles(set, { state: 'commit', secondary: 'B', checkpointTs: 10n });
  });

  it('the target replicating while the old primary still holds the span is a violation', () => {
    const fx = recorder();
    const set = moving('A', 'B', 10n, fx);
    set.handleStatus('B', st('replicating', 10n), ACK, fx);
    expect(fx.violations).toHaveLength(1);
    expect(fx.violations[0]).toMatch(/replicates .* while A is primary/);
    expectRoles(set, { state: 'prepare', primary: 'A', secondary: 'B', checkpointTs: 10n });
  });
});

describe('ReplicationSet: remove', () => {
  it('replicating -> removing -> primary stopped -> removed, re-sending the remove level-triggered', () => {
    const fx = recorder();
    const set = replicating('A', 10n, fx);

    set.remove(fx);
    expect(fx.take()).toEqual([remove('A')]);
    expectRoles(set, { state: 'removing', primary: 'A', checkpointTs: 10n });

    // Lost remove: the primary is still replicating -> re-sent, checkpoint taken.
    set.handleStatus('A', st('replicating', 11n), ACK, fx);
    expect(fx.take()).toEqual([remove('A')]);
    expectRoles(set, { state: 'removing', primary: 'A', checkpointTs: 11n });

    set.handleStatus('A', st('stopping', 12n), ACK, fx);
    expect(fx.take()).toEqual([]);
    expectRoles(set, { state: 'removing', primary: 'A', checkpointTs: 12n });

    set.handleStatus('A', st('stopped', 13n), ACK, fx);
    expect(fx.take()).toEqual([]);
    expectRoles(set, { state: 'absent', checkpointTs: 13n, removed: true });
    expect(set.holders()).toEqual([]);

    // A duplicated stopped after removal changes nothing.
    set.handleStatus('A', st('stopped', 13n), ACK, fx);
    expect(fx.take()).toEqual([]);
    expectRoles(set, { state: 'absent', checkpointTs: 13n, removed: true });
    expect(fx.violations).toEqual([]);
  });

  it('a primary that lost the span (absent) while removing also finishes the removal', () => {
    const fx = recorder();
    const set = replicating('A', 10n, fx);
    set.remove(fx);
    fx.take();
    set.handleStatus('A', st('absent'), ACK, fx);
    expectRoles(set, { state: 'absent', checkpointTs: 10n, removed: true });
  });
});

describe('ReplicationSet: capture death in every state (handleCaptureGone)', () => {
  it('a capture with no role: nothing happens', () => {
    const fx = recorder();
    const set = replicating('A', 10n, fx);
    set.handleCaptureGone('Z', fx);
    expect(fx.take()).toEqual([]);
    expectRoles(set, { state: 'replicating', primary: 'A', checkpointTs: 10n });
  });

  it('secondary dies in prepare during a plain add -> absent', () => {
    const fx = recorder();
    const set = new ReplicationSet(span, 5n);
    set.add('A', 5n, fx);
    fx.take();
    // Even with a high secondaryAddSeq: death is final, not a stale report.
    set.secondaryAddSeq = 1_000;
    set.handleCaptureGone('A', fx);
    expect(fx.take()).toEqual([]);
    expectRoles(set, { state: 'absent', checkpointTs: 5n });
  });

  it('secondary dies in prepare during a move -> abort, back to replicating on the old primary', () => {
    const fx = recorder();
    const set = moving('A', 'B', 10n, fx);
    set.handleCaptureGone('B', fx);
    expect(fx.take()).toEqual([]);
    expectRoles(set, { state: 'replicating', primary: 'A', checkpointTs: 10n });
    expect(fx.violations).toEqual([]);
  });

  it('primary dies in prepare during a move -> commit and promote the secondary', () => {
    const fx = recorder();
    const set = moving('A', 'B', 10n, fx);
    set.handleStatus('A', st('replicating', 12n), ACK, fx);
    set.handleCaptureGone('A', fx);
    expect(fx.take()).toEqual([add('B', false, 12n)]);
    expectRoles(set, { state: 'commit', secondary: 'B', checkpointTs: 12n });

    set.handleStatus('B', st('prepared', 10n), ACK, fx);
    expect(fx.take()).toEqual([add('B', false, 12n)]);
    set.handleStatus('B', st('replicating', 12n), ACK, fx);
    expect(fx.take()).toEqual([]);
    expectRoles(set, { state: 'replicating', primary: 'B', checkpointTs: 12n });
    expect(fx.violations).toEqual([]);
  });

  it('primary dies in commit -> promote the secondary', () => {
    const fx = recorder();
    const set = moving('A', 'B', 10n, fx);
    set.handleStatus('B', st('prepared', 10n), ACK, fx);
    expect(fx.take()).toEqual([remove('A')]);
    set.handleCaptureGone('A', fx);
    expect(fx.take()).toEqual([add('B', false, 10n)]);
    expectRoles(set, { state: 'commit', secondary: 'B', checkpointTs: 10n });
    set.handleStatus('B', st('replicating', 10n), ACK, fx);
    expectRoles(set, { state: 'replicating', primary: 'B', checkpointTs: 10n });
  });

  it('secondary dies in commit while the primary still replicates -> stays until the primary reports, then replicating', () => {
    const fx = recorder();
    const set = moving('A', 'B', 10n, fx);
    set.handleStatus('B', st('prepared', 10n), ACK, fx);
    expect(fx.take()).toEqual([remove('A')]);
    set.handleCaptureGone('B', fx);
    expect(fx.take()).toEqual([]);
    expectRoles(set, { state: 'commit', primary: 'A', checkpointTs: 10n });
    expect(set.holders()).toEqual(['A']);

    // The primary never got the remove: it keeps the span, nothing is sent.
    set.handleStatus('A', st('replicating', 11n), ACK, fx);
    expect(fx.take()).toEqual([]);
    expectRoles(set, { state: 'replicating', primary: 'A', checkpointTs: 11n });
    expect(fx.violations).toEqual([]);
  });

  it('secondary dies in commit and the primary had already stopped -> absent with its final checkpoint', () => {
    const fx = recorder();
    const set = moving('A', 'B', 10n, fx);
    set.handleStatus('B', st('prepared', 10n), ACK, fx);
    fx.take();
    set.handleCaptureGone('B', fx);
    set.handleStatus('A', st('stopped', 14n), ACK, fx);
    expect(fx.take()).toEqual([]);
    expectRoles(set, { state: 'absent', checkpointTs: 14n });
  });

  it('secondary dies in commit during a plain add -> absent', () => {
    const fx = recorder();
    const set = new ReplicationSet(span, 5n);
    set.add('A', 5n, fx);
    set.handleStatus('A', st('prepared', 5n), ACK, fx);
    fx.take();
    set.handleCaptureGone('A', fx);
    expect(fx.take()).toEqual([]);
    expectRoles(set, { state: 'absent', checkpointTs: 5n });
  });

  it('primary dies in replicating -> absent, keeping its checkpoint', () => {
    const fx = recorder();
    const set = replicating('A', 10n, fx);
    set.handleStatus('A', st('replicating', 15n, 18n), ACK, fx);
    set.handleCaptureGone('A', fx);
    expect(fx.take()).toEqual([]);
    expectRoles(set, { state: 'absent', checkpointTs: 15n, resolvedTs: 18n });
  });

  it('primary dies in removing -> removed', () => {
    const fx = recorder();
    const set = replicating('A', 10n, fx);
    set.remove(fx);
    fx.take();
    set.handleCaptureGone('A', fx);
    expect(fx.take()).toEqual([]);
    expectRoles(set, { state: 'absent', checkpointTs: 10n, removed: true });
  });

  it('an undetermined capture dies -> the set settles', () => {
    const fx = recorder();
    const set = ReplicationSet.rebuild(span, spanKey(span), [{ capture: 'A', status: st('stopping', 30n) }], 10n, fx);
    expectRoles(set, { state: 'commit', undetermined: ['A'], checkpointTs: 30n });
    set.handleCaptureGone('A', fx);
    expect(fx.take()).toEqual([]);
    expectRoles(set, { state: 'absent', checkpointTs: 30n });
  });
});

describe('ReplicationSet: checkpoint only rises', () => {
  it('a lower checkpoint report from the primary does not lower it, in any state', () => {
    const fx = recorder();
    const set = replicating('A', 10n, fx);
    set.handleStatus('A', st('replicating', 20n, 25n), ACK, fx);
    expectRoles(set, { state: 'replicating', primary: 'A', checkpointTs: 20n, resolvedTs: 25n });

    set.handleStatus('A', st('replicating', 15n, 16n), ACK, fx);
    expectRoles(set, { state: 'replicating', primary: 'A', checkpointTs: 20n, resolvedTs: 25n });

    set.move('B', fx);
    expect(fx.take()).toEqual([add('B', true, 20n)]);
    set.handleStatus('A', st('replicating', 18n), ACK, fx);
    expect(set.checkpointTs).toBe(20n);
    set.handleStatus('B', st('prepared', 5n), ACK, fx);
    expect(fx.take()).toEqual([remove('A')]);
    // A final checkpoint lower than the set's: the promotion still uses the higher one.
    set.handleStatus('A', st('stopped', 19n), ACK, fx);
    expect(fx.take()).toEqual([add('B', false, 20n)]);
    set.handleStatus('B', st('replicating', 17n, 17n), ACK, fx);
    expectRoles(set, { state: 'replicating', primary: 'B', checkpointTs: 20n, resolvedTs: 25n });
    expect(set.checkpointTs <= set.resolvedTs).toBe(true);
  });

  it('a secondary preparing from an old position does not move the checkpoint', () => {
    const fx = recorder();
    const set = moving('A', 'B', 10n, fx);
    set.handleStatus('B', st('preparing', 99n), ACK, fx);
    set.handleStatus('B', st('prepared', 99n, 120n), ACK, fx);
    expect(set.checkpointTs).toBe(10n);
  });

  it('the resolved follows a raised checkpoint so checkpoint <= resolved', () => {
    const fx = recorder();
    const set = replicating('A', 10n, fx);
    set.handleStatus('A', st('replicating', 30n, 20n), ACK, fx);
    expectRoles(set, { state: 'replicating', primary: 'A', checkpointTs: 30n, resolvedTs: 30n });
  });
});

describe('ReplicationSet: foreign captures and violations', () => {
  it('a foreign capture reporting replicating -> violation + remove, in replicating', () => {
    const fx = recorder();
    const set = replicating('A', 10n, fx);
    set.handleStatus('C', st('replicating', 50n), ACK, fx);
    expect(fx.take()).toEqual([remove('C')]);
    expect(fx.violations).toHaveLength(1);
    expect(fx.violations[0]).toMatch(/capture C replicates .* without a role/);
    // Its checkpoint is not taken: only the primary's counts.
    expectRoles(set, { state: 'replicating', primary: 'A', checkpointTs: 10n });
  });

  it('a foreign capture reporting replicating on an absent set -> violation + remove', () => {
    const fx = recorder();
    const set = new ReplicationSet(span, 10n);
    set.handleStatus('C', st('replicating', 50n), ACK, fx);
    expect(fx.take()).toEqual([remove('C')]);
    expect(fx.violations).toHaveLength(1);
    expectRoles(set, { state: 'absent', checkpointTs: 10n });
  });

  it('a foreign capture preparing or prepared is stopped without a violation; stopping/stopped/absent are ignored', () => {
    const fx = recorder();
    const set = moving('A', 'B', 10n, fx);
    set.handleStatus('C', st('preparing'), ACK, fx);
    set.handleStatus('C', st('prepared'), ACK, fx);
    expect(fx.take()).toEqual([remove('C'), remove('C')]);
    set.handleStatus('C', st('stopping'), ACK, fx);
    set.handleStatus('C', st('stopped'), ACK, fx);
    set.handleStatus('C', st('absent'), ACK, fx);
    expect(fx.take()).toEqual([]);
    expect(fx.violations).toEqual([]);
    expectRoles(set, { state: 'prepare', primary: 'A', secondary: 'B', checkpointTs: 10n });
  });

  it('a foreign capture reporting replicating during commit and removing -> violation + remove', () => {
    const fx = recorder();
    const set = moving('A', 'B', 10n, fx);
    set.handleStatus('B', st('prepared'), ACK, fx);
    fx.take();
    set.handleStatus('C', st('replicating'), ACK, fx);
    expect(fx.take()).toEqual([remove('C')]);
    expect(fx.violations).toHaveLength(1);

    const fx2 = recorder();
    const removing = replicating('A', 10n, fx2);
    removing.remove(fx2);
    fx2.take();
    removing.handleStatus('C', st('replicating'), ACK, fx2);
    expect(fx2.take()).toEqual([remove('C')]);
    expect(fx2.violations).toHaveLength(1);
  });

  it('the primary reporting preparing again without being asked is a violation', () => {
    const fx = recorder();
    const set = replicating('A', 10n, fx);
    set.handleStatus('A', st('preparing', 10n), ACK, fx);
    expect(fx.violations).toHaveLength(1);
    expect(fx.violations[0]).toMatch(/primary preparing/);
    expectRoles(set, { state: 'replicating', primary: 'A', checkpointTs: 10n });
  });
});

describe('ReplicationSet.rebuild', () => {
  const key = spanKey(span);
  const report = (capture: CaptureId, state: AgentSpanState, checkpointTs = 0n, resolvedTs = checkpointTs): CaptureReport => ({
    capture,
    status: st(state, checkpointTs, resolvedTs),
  });

  it('replicating -> replicating with that primary, checkpoint at least the floor', () => {
    const fx = recorder();
    const set = ReplicationSet.rebuild(span, key, [report('A', 'replicating', 30n, 35n)], 10n, fx);
    expectRoles(set, { state: 'replicating', primary: 'A', checkpointTs: 30n, resolvedTs: 35n });
    expect(fx.take()).toEqual([]);

    const floored = ReplicationSet.rebuild(span, key, [report('A', 'replicating', 30n, 35n)], 40n, fx);
    expect(floored.checkpointTs).toBe(40n);
    expect(floored.checkpointTs <= floored.resolvedTs).toBe(true);
  });

  it('no reports, absent or stopped -> absent (a stopped final checkpoint is kept)', () => {
    const fx = recorder();
    expectRoles(ReplicationSet.rebuild(span, key, [], 10n, fx), { state: 'absent', checkpointTs: 10n, resolvedTs: 10n });
    expectRoles(ReplicationSet.rebuild(span, key, [report('A', 'absent')], 10n, fx), { state: 'absent', checkpointTs: 10n });
    expectRoles(ReplicationSet.rebuild(span, key, [report('A', 'stopped', 44n)], 10n, fx), { state: 'absent', checkpointTs: 44n });
    expect(fx.take()).toEqual([]);
  });

  it('preparing -> prepare with a secondary; prepared later -> commit promotes', () => {
    const fx = recorder();
    const set = ReplicationSet.rebuild(span, key, [report('A', 'preparing', 10n)], 10n, fx);
    expectRoles(set, { state: 'prepare', secondary: 'A', checkpointTs: 10n });
    expect(fx.take()).toEqual([]);
    set.handleStatus('A', st('prepared', 10n), ACK, fx);
    expect(fx.take()).toEqual([add('A', false, 10n)]);
    expectRoles(set, { state: 'commit', secondary: 'A', checkpointTs: 10n });
  });

  it('prepared -> commit; the next status re-sends the promotion', () => {
    const fx = recorder();
    const set = ReplicationSet.rebuild(span, key, [report('A', 'prepared', 10n)], 10n, fx);
    expectRoles(set, { state: 'commit', secondary: 'A', checkpointTs: 10n });
    expect(fx.take()).toEqual([]);
    set.handleStatus('A', st('prepared', 10n), ACK, fx);
    expect(fx.take()).toEqual([add('A', false, 10n)]);
    set.handleStatus('A', st('replicating', 11n), ACK, fx);
    expectRoles(set, { state: 'replicating', primary: 'A', checkpointTs: 11n });
  });

  it('stopping -> undetermined in commit; stopping again waits; then stopped -> absent at its final checkpoint', () => {
    const fx = recorder();
    const set = ReplicationSet.rebuild(span, key, [report('A', 'stopping', 30n)], 10n, fx);
    expectRoles(set, { state: 'commit', undetermined: ['A'], checkpointTs: 30n });
    expect(set.holders()).toEqual(['A']);
    expect(fx.take()).toEqual([]);

    set.handleStatus('A', st('stopping', 32n), ACK, fx);
    expect(fx.take()).toEqual([]);
    expectRoles(set, { state: 'commit', undetermined: ['A'], checkpointTs: 32n });

    set.handleStatus('A', st('stopped', 35n), ACK, fx);
    expect(fx.take()).toEqual([]);
    expectRoles(set, { state: 'absent', checkpointTs: 35n });
    expect(set.holders()).toEqual([]);
  });

  it('stopping -> undetermined, then absent (the capture already forgot it) -> absent', () => {
    const fx = recorder();
    const set = ReplicationSet.rebuild(span, key, [report('A', 'stopping', 30n)], 10n, fx);
    set.handleStatus('A', st('absent'), ACK, fx);
    expectRoles(set, { state: 'absent', checkpointTs: 30n });
  });

  it('an undetermined capture reporting replicating is a violation + remove', () => {
    const fx = recorder();
    const set = ReplicationSet.rebuild(span, key, [report('A', 'stopping', 30n)], 10n, fx);
    set.handleStatus('A', st('replicating', 30n), ACK, fx);
    expect(fx.take()).toEqual([remove('A')]);
    expect(fx.violations).toHaveLength(1);
  });

  it('primary + prepared secondary -> commit; the next status sends remove to the primary, then promotes', () => {
    const fx = recorder();
    const set = ReplicationSet.rebuild(span, key, [report('A', 'replicating', 20n), report('B', 'prepared', 10n)], 10n, fx);
    expectRoles(set, { state: 'commit', primary: 'A', secondary: 'B', checkpointTs: 20n });
    expect(fx.take()).toEqual([]);

    set.handleStatus('A', st('replicating', 21n), ACK, fx);
    expect(fx.take()).toEqual([remove('A')]);
    expectRoles(set, { state: 'commit', primary: 'A', secondary: 'B', checkpointTs: 21n });

    set.handleStatus('B', st('prepared', 10n), ACK, fx);
    expect(fx.take()).toEqual([remove('A')]);

    set.handleStatus('A', st('stopped', 22n), ACK, fx);
    expect(fx.take()).toEqual([add('B', false, 22n)]);
    set.handleStatus('B', st('replicating', 22n), ACK, fx);
    expectRoles(set, { state: 'replicating', primary: 'B', checkpointTs: 22n });
    expect(fx.violations).toEqual([]);
  });

  it('primary + preparing secondary -> prepare (the move continues)', () => {
    const fx = recorder();
    const set = ReplicationSet.rebuild(span, key, [report('B', 'preparing', 10n), report('A', 'replicating', 20n)], 10n, fx);
    expectRoles(set, { state: 'prepare', primary: 'A', secondary: 'B', checkpointTs: 20n });
    set.handleStatus('B', st('prepared', 10n), ACK, fx);
    expect(fx.take()).toEqual([remove('A')]);
  });

  it('stopping old primary + prepared target (owner died mid-move) -> commit; old primary stopped -> promote at its final checkpoint', () => {
    const fx = recorder();
    const set = ReplicationSet.rebuild(span, key, [report('A', 'stopping', 40n), report('B', 'prepared', 10n)], 10n, fx);
    expectRoles(set, { state: 'commit', secondary: 'B', undetermined: ['A'], checkpointTs: 40n });
    expect(fx.take()).toEqual([]);
    // B is prepared but A may still flush: no promotion yet.
    set.handleStatus('B', st('prepared', 10n), ACK, fx);
    expect(fx.take()).toEqual([]);
    set.handleStatus('A', st('stopped', 42n), ACK, fx);
    expect(fx.take()).toEqual([add('B', false, 42n)]);
    expectRoles(set, { state: 'commit', secondary: 'B', checkpointTs: 42n });
    set.handleStatus('B', st('replicating', 42n), ACK, fx);
    expectRoles(set, { state: 'replicating', primary: 'B', checkpointTs: 42n });
    expect(fx.violations).toEqual([]);
  });

  it('two secondaries: one kept, the other stopped and waited for as undetermined', () => {
    const fx = recorder();
    const set = ReplicationSet.rebuild(span, key, [report('A', 'preparing', 10n), report('B', 'prepared', 10n)], 10n, fx);
    expect(fx.take()).toEqual([remove('B')]);
    expectRoles(set, { state: 'commit', secondary: 'A', undetermined: ['B'], checkpointTs: 10n });
    // While B is undetermined the promotion waits.
    set.handleStatus('A', st('prepared', 10n), ACK, fx);
    expect(fx.take()).toEqual([]);
    // B still prepared: the remove was lost, re-sent.
    set.handleStatus('B', st('prepared', 10n), ACK, fx);
    expect(fx.take()).toEqual([remove('B')]);
    set.handleStatus('B', st('stopped', 10n), ACK, fx);
    expect(fx.take()).toEqual([add('A', false, 10n)]);
    expectRoles(set, { state: 'commit', secondary: 'A', checkpointTs: 10n });
  });

  it('two replicating -> violation (the first stays primary)', () => {
    const fx = recorder();
    const set = ReplicationSet.rebuild(span, key, [report('A', 'replicating', 20n), report('B', 'replicating', 25n)], 10n, fx);
    expect(fx.violations).toHaveLength(1);
    expect(fx.violations[0]).toMatch(/two primaries .*: A and B/);
    expect(set.primary).toBe('A');
  });
});

describe('retire of an unwanted set whose plain add may have promoted itself', () => {
  it('stops a retired secondary that reports replicating (a remove may have been lost), without a violation, until it stops', () => {
    const fx = recorder();
    const set = new ReplicationSet(span, 5n);
    set.add('A', 10n, fx);
    fx.take();
    set.retire(fx);
    expect(fx.take()).toEqual([{ kind: 'remove', to: 'A' }]);
    expect(roles(set)).toMatchObject({ state: 'commit', secondary: undefined, undetermined: ['A'] });
    // A promoted itself before any remove reached it; each report asks again.
    set.handleStatus('A', st('replicating', 12n), ACK, fx);
    set.handleStatus('A', st('replicating', 13n), ACK + 5, fx);
    expect(fx.violations).toEqual([]);
    expect(fx.take()).toEqual([{ kind: 'remove', to: 'A' }, { kind: 'remove', to: 'A' }]);
    set.handleStatus('A', st('stopped', 13n), ACK + 6, fx);
    expect(roles(set)).toMatchObject({ state: 'absent', undetermined: undefined });
    expect(fx.violations).toEqual([]);
  });

  it('still counts a capture found stopping at a rebuild that reports replicating as a broken invariant', () => {
    const fx = recorder();
    const set = ReplicationSet.rebuild(span, spanKey(span), [{ capture: 'B', status: st('stopping', 8n) }], 5n, fx);
    set.handleStatus('B', st('replicating', 9n), ACK, fx);
    expect(fx.violations).toHaveLength(1);
  });
});

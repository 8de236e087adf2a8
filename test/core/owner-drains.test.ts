/**
 * The owner's drains, step by step: the set is read before anything is decided, changes
 * only after etcd took the change, one write at a time in the order asked; a write that
 * failed or never answered sends it back to reading (it may have landed); late,
 * duplicated and given-up-on outcomes are ignored; captures that left are cleaned up one
 * at a time; a drained owner resigns once, and again only after a failed resign.
 */
import { describe, expect, it } from 'vitest';
import { OwnerDrains } from '../../src/core/owner-drains.ts';
import type { DrainsOutcome, DrainsStep, DrainRequest, DrainsTickInput } from '../../src/core/owner-drains.ts';

const limits = { requestsQueuedMax: 3, readDeadlineTicks: 4, writeDeadlineTicks: 5, retryBackoffTicks: 2 };
const live = ['A', 'B', 'C'];
const none: DrainsStep = { commands: [], answers: [] };

/** Wraps the drains so every step is followed by its invariant check. */
class Driver {
  readonly drains: OwnerDrains;
  tickNow = 0;
  captures: string[] = [...live];
  ownerRemainingSpans: number | null = null;

  constructor(ownerId = 'A') {
    this.drains = new OwnerDrains(ownerId, limits);
  }

  tick(input: Partial<DrainsTickInput> = {}): DrainsStep {
    this.tickNow = input.tick ?? this.tickNow + 1;
    const step = this.drains.tick({ tick: this.tickNow, captures: input.captures ?? this.captures, ownerRemainingSpans: input.ownerRemainingSpans ?? this.ownerRemainingSpans });
    this.drains.checkInvariants();
    return step;
  }

  request(kind: DrainRequest['kind'], captureId: string): DrainsStep & { requestId: number } {
    const step = this.drains.request({ kind, captureId }, this.captures);
    this.drains.checkInvariants();
    return step;
  }

  outcome(outcome: DrainsOutcome): DrainsStep {
    const step = this.drains.onOutcome(outcome);
    this.drains.checkInvariants();
    return step;
  }
}

/** A driver whose drains read `ids` at guard revision 10. */
function loaded(ids: string[] = [], ownerId = 'A'): Driver {
  const d = new Driver(ownerId);
  expect(d.tick()).toEqual({ commands: [{ kind: 'read-drains', id: 1, moveGuard: false }], answers: [] });
  expect(d.outcome({ kind: 'drains-read', id: 1, captureIds: ids, guardRevision: 10n })).toEqual(none);
  expect(d.drains.loaded).toBe(true);
  return d;
}

const ok = { ok: true } as const;
const refused = (code: string) => ({ ok: false, code });

describe('loading', () => {
  it('answers requests drains-loading until the set is read; a failed read is made again after a backoff', () => {
    const d = new Driver();
    expect(d.drains.phase).toBe('loading');
    expect(d.request('drain', 'B')).toEqual({ requestId: 1, commands: [], answers: [{ requestId: 1, request: { kind: 'drain', captureId: 'B' }, answer: refused('drains-loading') }] });
    expect(d.tick().commands).toEqual([{ kind: 'read-drains', id: 1, moveGuard: false }]);
    // One read at a time.
    expect(d.tick()).toEqual(none);
    expect(d.outcome({ kind: 'failed', id: 1 })).toEqual(none);
    expect(d.tick()).toEqual(none);
    expect(d.tick().commands).toEqual([{ kind: 'read-drains', id: 2, moveGuard: false }]);
    expect(d.outcome({ kind: 'drains-read', id: 2, captureIds: ['B'], guardRevision: 12n })).toEqual(none);
    expect(d.drains.phase).toBe('loaded');
    expect([...d.drains.draining]).toEqual(['B']);
    expect(d.drains.guardRevision).toBe(12n);
  });

  it('gives up on a read that never answers and ignores its late answer', () => {
    const d = new Driver();
    expect(d.tick({ tick: 1 }).commands).toEqual([{ kind: 'read-drains', id: 1, moveGuard: false }]);
    for (let tick = 2; tick < 5; tick++) expect(d.tick({ tick })).toEqual(none);
    expect(d.tick({ tick: 5 }).commands).toEqual([{ kind: 'read-drains', id: 2, moveGuard: false }]);
    expect(d.outcome({ kind: 'drains-read', id: 1, captureIds: ['C'], guardRevision: 11n })).toEqual(none);
    expect(d.drains.loaded).toBe(false);
    expect(d.outcome({ kind: 'drains-read', id: 2, captureIds: [], guardRevision: 13n })).toEqual(none);
    expect(d.drains.loaded).toBe(true);
    expect([...d.drains.draining]).toEqual([]);
  });
});

describe('drain and undrain', () => {
  it('writes a drain over the guard revision it knows and changes the set only once etcd took it', () => {
    const d = loaded();
    const asked = d.request('drain', 'B');
    expect(asked).toEqual({ requestId: 1, commands: [{ kind: 'write-drain', id: 2, captureId: 'B', draining: true, expectedGuardRevision: 10n, departed: false }], answers: [] });
    expect(d.drains.draining.has('B')).toBe(false);
    expect(d.tick()).toEqual(none);
    const version = d.drains.version;
    expect(d.outcome({ kind: 'written', id: 2, guardRevision: 11n })).toEqual({ commands: [], answers: [{ requestId: 1, request: { kind: 'drain', captureId: 'B' }, answer: ok }] });
    expect([...d.drains.draining]).toEqual(['B']);
    expect(d.drains.guardRevision).toBe(11n);
    expect(d.drains.version).toBe(version + 1);
    // A duplicated answer changes nothing.
    expect(d.outcome({ kind: 'written', id: 2, guardRevision: 11n })).toEqual(none);
    // Asked again: already drained, answered at once without a write.
    expect(d.request('drain', 'B')).toEqual({ requestId: 2, commands: [], answers: [{ requestId: 2, request: { kind: 'drain', captureId: 'B' }, answer: ok }] });
    // The undrain deletes the key, over the new revision.
    expect(d.request('undrain', 'B').commands).toEqual([{ kind: 'write-drain', id: 3, captureId: 'B', draining: false, expectedGuardRevision: 11n, departed: false }]);
    expect(d.outcome({ kind: 'written', id: 3, guardRevision: 14n }).answers).toEqual([{ requestId: 3, request: { kind: 'undrain', captureId: 'B' }, answer: ok }]);
    expect([...d.drains.draining]).toEqual([]);
    // Undraining a capture that is not drained is ok at once.
    expect(d.request('undrain', 'C')).toMatchObject({ commands: [], answers: [{ answer: ok }] });
  });

  it('refuses unknown captures and the last capture that is not draining', () => {
    const d = loaded(['C']);
    expect(d.request('drain', 'Z')).toMatchObject({ commands: [], answers: [{ answer: refused('unknown-capture') }] });
    expect(d.request('undrain', 'Z')).toMatchObject({ commands: [], answers: [{ answer: refused('unknown-capture') }] });
    const drainB = d.request('drain', 'B');
    expect(drainB.commands).toMatchObject([{ kind: 'write-drain', captureId: 'B', draining: true }]);
    d.outcome({ kind: 'written', id: (drainB.commands[0] as { id: number }).id, guardRevision: 11n });
    // A is the last one not draining.
    expect(d.request('drain', 'A')).toMatchObject({ commands: [], answers: [{ answer: refused('last-capture') }] });
    // Draining one already draining is fine even then.
    expect(d.request('drain', 'C')).toMatchObject({ commands: [], answers: [{ answer: ok }] });
    // With a fourth capture live, A may go.
    d.captures = [...live, 'D'];
    expect(d.request('drain', 'A').commands).toMatchObject([{ kind: 'write-drain', captureId: 'A', draining: true }]);
  });

  it('runs requests one at a time in their order; a full queue answers busy', () => {
    const d = loaded();
    const first = d.request('drain', 'B');
    expect(first.commands).toMatchObject([{ kind: 'write-drain', id: 2, captureId: 'B', draining: true }]);
    expect(d.request('undrain', 'B')).toEqual({ requestId: 2, commands: [], answers: [] });
    expect(d.request('drain', 'C')).toEqual({ requestId: 3, commands: [], answers: [] });
    expect(d.drains.jobs).toBe(3);
    expect(d.request('drain', 'C').answers).toEqual([{ requestId: 4, request: { kind: 'drain', captureId: 'C' }, answer: refused('busy') }]);
    // The first answered: the undrain's write goes out at once, over the new revision.
    expect(d.outcome({ kind: 'written', id: 2, guardRevision: 20n })).toEqual({
      commands: [{ kind: 'write-drain', id: 3, captureId: 'B', draining: false, expectedGuardRevision: 20n, departed: false }],
      answers: [{ requestId: 1, request: { kind: 'drain', captureId: 'B' }, answer: ok }],
    });
    expect(d.outcome({ kind: 'written', id: 3, guardRevision: 21n })).toEqual({
      commands: [{ kind: 'write-drain', id: 4, captureId: 'C', draining: true, expectedGuardRevision: 21n, departed: false }],
      answers: [{ requestId: 2, request: { kind: 'undrain', captureId: 'B' }, answer: ok }],
    });
    expect(d.outcome({ kind: 'written', id: 4, guardRevision: 22n }).answers).toMatchObject([{ requestId: 3, answer: ok }]);
    expect([...d.drains.draining]).toEqual(['C']);
  });

  it('decides a queued request when its turn comes, with the captures live then', () => {
    const d = loaded();
    d.request('drain', 'B');
    d.request('drain', 'C');
    // C leaves before its turn.
    d.captures = ['A', 'B'];
    d.tick();
    expect(d.outcome({ kind: 'written', id: 2, guardRevision: 11n })).toEqual({
      commands: [],
      answers: [
        { requestId: 1, request: { kind: 'drain', captureId: 'B' }, answer: ok },
        { requestId: 2, request: { kind: 'drain', captureId: 'C' }, answer: refused('unknown-capture') },
      ],
    });
  });
});

describe('failed, lost and late writes', () => {
  it('a failed write answers not-persisted, the queued ones drains-loading, and the re-read shows it landed', () => {
    const d = loaded();
    d.request('drain', 'B');
    d.request('drain', 'C');
    expect(d.outcome({ kind: 'failed', id: 2 })).toEqual({
      commands: [],
      answers: [
        { requestId: 1, request: { kind: 'drain', captureId: 'B' }, answer: refused('not-persisted') },
        { requestId: 2, request: { kind: 'drain', captureId: 'C' }, answer: refused('drains-loading') },
      ],
    });
    expect(d.drains.phase).toBe('loading');
    // The set is the one last read until the re-read answers.
    expect([...d.drains.draining]).toEqual([]);
    expect(d.request('undrain', 'B').answers).toMatchObject([{ answer: refused('drains-loading') }]);
    expect(d.tick().commands).toEqual([{ kind: 'read-drains', id: 3, moveGuard: true }]);
    // It had landed (the answer was lost on the way back).
    d.outcome({ kind: 'drains-read', id: 3, captureIds: ['B'], guardRevision: 11n });
    expect([...d.drains.draining]).toEqual(['B']);
    expect(d.request('drain', 'B')).toMatchObject({ commands: [], answers: [{ answer: ok }] });
  });

  it('a write unanswered within the deadline counts as failed: read again in the same tick; its late answer is ignored', () => {
    const d = loaded();
    d.tick({ tick: 2 });
    expect(d.request('drain', 'B').commands).toMatchObject([{ id: 2 }]);
    for (let tick = 3; tick < 7; tick++) expect(d.tick({ tick })).toEqual(none);
    expect(d.tick({ tick: 7 })).toEqual({
      commands: [{ kind: 'read-drains', id: 3, moveGuard: true }],
      answers: [{ requestId: 1, request: { kind: 'drain', captureId: 'B' }, answer: refused('not-persisted') }],
    });
    // The write's answer comes late: given up on, ignored (the re-read tells).
    expect(d.outcome({ kind: 'written', id: 2, guardRevision: 11n })).toEqual(none);
    expect([...d.drains.draining]).toEqual([]);
    expect(d.drains.guardRevision).toBe(10n);
    d.outcome({ kind: 'drains-read', id: 3, captureIds: [], guardRevision: 12n });
    // The next write compares the re-read's guard: the late one cannot land after it.
    expect(d.request('drain', 'B').commands).toEqual([{ kind: 'write-drain', id: 4, captureId: 'B', draining: true, expectedGuardRevision: 12n, departed: false }]);
    // Stale failures of old commands change nothing.
    expect(d.outcome({ kind: 'failed', id: 2 })).toEqual(none);
    expect(d.outcome({ kind: 'failed', id: 3 })).toEqual(none);
    expect(d.drains.writeInFlight).toBe(true);
  });

  it('moves the guard on every read after a write given up on, until one answers; not on a first read', () => {
    const d = new Driver();
    expect(d.tick().commands).toEqual([{ kind: 'read-drains', id: 1, moveGuard: false }]);
    d.outcome({ kind: 'failed', id: 1 });
    d.tick();
    expect(d.tick().commands).toEqual([{ kind: 'read-drains', id: 2, moveGuard: false }]);
    d.outcome({ kind: 'drains-read', id: 2, captureIds: [], guardRevision: 0n });
    // No guard key yet: the first write expects none.
    expect(d.request('drain', 'B').commands).toEqual([{ kind: 'write-drain', id: 3, captureId: 'B', draining: true, expectedGuardRevision: 0n, departed: false }]);
    d.outcome({ kind: 'failed', id: 3 });
    expect(d.tick().commands).toEqual([{ kind: 'read-drains', id: 4, moveGuard: true }]);
    d.outcome({ kind: 'failed', id: 4 });
    d.tick();
    expect(d.tick().commands).toEqual([{ kind: 'read-drains', id: 5, moveGuard: true }]);
    d.outcome({ kind: 'drains-read', id: 5, captureIds: ['B'], guardRevision: 30n });
    expect(d.request('undrain', 'B').commands).toMatchObject([{ kind: 'write-drain', id: 6, expectedGuardRevision: 30n }]);
    d.outcome({ kind: 'written', id: 6, guardRevision: 31n });
    expect([...d.drains.draining]).toEqual([]);
  });

  it('a fenced write stops the drains: everything waiting is answered not-persisted', () => {
    const d = loaded();
    d.request('drain', 'B');
    d.request('undrain', 'C');
    expect(d.outcome({ kind: 'fenced', id: 2 })).toEqual({
      commands: [],
      answers: [
        { requestId: 1, request: { kind: 'drain', captureId: 'B' }, answer: refused('not-persisted') },
        { requestId: 2, request: { kind: 'undrain', captureId: 'C' }, answer: refused('not-persisted') },
      ],
    });
    expect(d.drains.phase).toBe('stopped');
    expect(d.tick()).toEqual(none);
    expect(d.request('drain', 'B').answers).toMatchObject([{ answer: refused('not-persisted') }]);
    expect(d.outcome({ kind: 'written', id: 2, guardRevision: 11n })).toEqual(none);
  });

  it('stop() answers what waits, once', () => {
    const d = loaded();
    d.request('drain', 'B');
    expect(d.drains.stop().answers).toMatchObject([{ requestId: 1, answer: refused('not-persisted') }]);
    expect(d.drains.stop()).toEqual(none);
    // A new owner's drains read the persisted set.
    const next = new OwnerDrains('B', limits);
    expect(next.tick({ tick: 1, captures: live, ownerRemainingSpans: null }).commands).toEqual([{ kind: 'read-drains', id: 1, moveGuard: false }]);
  });

  it('a fenced read stops too', () => {
    const d = new Driver();
    d.tick();
    d.outcome({ kind: 'fenced', id: 1 });
    expect(d.drains.phase).toBe('stopped');
  });
});

describe('captures that left', () => {
  it('deletes their drains one at a time, queued with the requests', () => {
    const d = loaded(['D', 'E', 'B']);
    expect(d.tick()).toEqual({ commands: [{ kind: 'write-drain', id: 2, captureId: 'D', draining: false, expectedGuardRevision: 10n, departed: true }], answers: [] });
    // A request waits behind the cleanup; no second cleanup starts meanwhile.
    expect(d.request('undrain', 'B')).toEqual({ requestId: 1, commands: [], answers: [] });
    expect(d.tick()).toEqual(none);
    expect(d.outcome({ kind: 'written', id: 2, guardRevision: 11n })).toEqual({
      commands: [{ kind: 'write-drain', id: 3, captureId: 'B', draining: false, expectedGuardRevision: 11n, departed: false }],
      answers: [],
    });
    expect(d.outcome({ kind: 'written', id: 3, guardRevision: 12n }).answers).toMatchObject([{ requestId: 1, answer: ok }]);
    expect(d.tick().commands).toEqual([{ kind: 'write-drain', id: 4, captureId: 'E', draining: false, expectedGuardRevision: 12n, departed: true }]);
    d.outcome({ kind: 'written', id: 4, guardRevision: 13n });
    expect(d.tick()).toEqual(none);
    expect([...d.drains.draining]).toEqual([]);
  });

  it('a failed cleanup is read again and made again; an undrain of a capture that left is unknown', () => {
    const d = loaded(['D']);
    expect(d.request('undrain', 'D').answers).toMatchObject([{ answer: refused('unknown-capture') }]);
    expect(d.tick().commands).toMatchObject([{ kind: 'write-drain', id: 2, captureId: 'D', departed: true }]);
    expect(d.outcome({ kind: 'failed', id: 2 })).toEqual(none);
    expect(d.tick().commands).toEqual([{ kind: 'read-drains', id: 3, moveGuard: true }]);
    d.outcome({ kind: 'drains-read', id: 3, captureIds: ['D'], guardRevision: 11n });
    expect(d.tick().commands).toEqual([{ kind: 'write-drain', id: 4, captureId: 'D', draining: false, expectedGuardRevision: 11n, departed: true }]);
  });
});

describe('a drained owner resigns', () => {
  it('once it holds no span, asked once, and again after a failed resign', () => {
    const d = loaded(['A']);
    expect(d.tick({ ownerRemainingSpans: null })).toEqual(none);
    expect(d.tick({ ownerRemainingSpans: 3 })).toEqual(none);
    expect(d.tick({ ownerRemainingSpans: 0 })).toEqual({ commands: [{ kind: 'resign', id: 2 }], answers: [] });
    expect(d.tick({ ownerRemainingSpans: 0 })).toEqual(none);
    expect(d.outcome({ kind: 'failed', id: 2 })).toEqual(none);
    expect(d.tick({ ownerRemainingSpans: 0 })).toEqual(none);
    expect(d.tick({ ownerRemainingSpans: 0 })).toEqual({ commands: [{ kind: 'resign', id: 3 }], answers: [] });
    // A duplicated failure of the old resign changes nothing.
    expect(d.outcome({ kind: 'failed', id: 2 })).toEqual(none);
    for (let i = 0; i < 5; i++) expect(d.tick({ ownerRemainingSpans: 0 })).toEqual(none);
  });

  it('not while its own capture is not drained, nor while a drain job waits', () => {
    const d = loaded(['B']);
    expect(d.tick({ ownerRemainingSpans: 0 })).toEqual(none);
    const drainA = d.request('drain', 'A');
    expect(drainA.commands).toMatchObject([{ kind: 'write-drain', id: 2, captureId: 'A' }]);
    expect(d.tick({ ownerRemainingSpans: 0 })).toEqual(none);
    d.outcome({ kind: 'written', id: 2, guardRevision: 11n });
    expect(d.tick({ ownerRemainingSpans: 0 }).commands).toEqual([{ kind: 'resign', id: 3 }]);
  });

  it('not while every other live capture drains too: ownership would only go round', () => {
    const d = loaded(['A', 'B']);
    // Only A (the owner) and B are live, both draining: nobody to hand ownership to.
    expect(d.tick({ ownerRemainingSpans: 0, captures: ['A', 'B'] })).toEqual(none);
    // Once a capture that does not drain is live, A hands ownership away.
    expect(d.tick({ ownerRemainingSpans: 0, captures: ['A', 'B', 'C'] }).commands).toEqual([{ kind: 'resign', id: 2 }]);
  });

  it('not before the set is read', () => {
    const d = new Driver();
    expect(d.tick({ ownerRemainingSpans: 0 }).commands).toEqual([{ kind: 'read-drains', id: 1, moveGuard: false }]);
    expect(d.tick({ ownerRemainingSpans: 0 })).toEqual(none);
    d.outcome({ kind: 'drains-read', id: 1, captureIds: ['A'], guardRevision: 5n });
    expect(d.tick({ ownerRemainingSpans: 0 }).commands).toEqual([{ kind: 'resign', id: 2 }]);
  });
});

describe('applying the set to a coordinator', () => {
  it('asks every live member on each call, and cancels the other live captures once per change of the set', () => {
    const d = loaded(['B', 'D']);
    const calls: string[] = [];
    const target = { requestDrain: (id: string) => calls.push(`drain ${id}`), cancelDrain: (id: string) => calls.push(`cancel ${id}`) };
    const liveNow = new Set(live);
    let applied = d.drains.applyTo(target, liveNow, -1);
    // D left: not asked.
    expect(calls.splice(0)).toEqual(['cancel A', 'cancel C', 'drain B']);
    applied = d.drains.applyTo(target, liveNow, applied);
    expect(calls.splice(0)).toEqual(['drain B']);
    const undrain = d.request('undrain', 'B');
    d.outcome({ kind: 'written', id: (undrain.commands[0] as { id: number }).id, guardRevision: 11n });
    applied = d.drains.applyTo(target, liveNow, applied);
    expect(calls.splice(0)).toEqual(['cancel A', 'cancel B', 'cancel C']);
    d.drains.applyTo(target, liveNow, applied);
    expect(calls).toEqual([]);
  });

  it('is for a loaded set only', () => {
    const d = new Driver();
    expect(() => d.drains.applyTo({ requestDrain: () => undefined, cancelDrain: () => undefined }, new Set(live), -1)).toThrow('drains apply once loaded');
  });
});

/**
 * The capture-side agent, input by input: after every message or pipeline event these
 * tests assert the exact outbox (headers, statuses, watermark), the pipeline commands and
 * the events, and check the agent's invariants through its public API.
 */
import { describe, expect, it } from 'vitest';
import { FakeOwner, a, b, c, keyA, keyB, keyC } from './fake-owner.ts';
import { Agent } from '../../src/agent/agent.ts';
import type { AgentOutput } from '../../src/agent/agent.ts';
import type { PipelineEvent } from '../../src/agent/pipeline.ts';
import type {
  AddSpanRequest,
  AgentSpanState,
  CaptureWatermark,
  CollectPart,
  MessageHeader,
  OwnerMessage,
  ReportMessage,
  SpanStatus,
} from '../../src/core/messages.ts';
import type { Span } from '../../src/core/span.ts';
import { spanKey } from '../../src/core/span.ts';
import { MutableDigest, emptyDigest } from '../../src/core/span-digest.ts';
import { maxTs } from '../../src/core/ts.ts';
import { SeededRandom } from '../../src/core/rng.ts';


const captureEpoch = 77n;

const add = (span: Span, checkpointTs: bigint, secondary = false): AddSpanRequest => ({ span, secondary, checkpointTs });

const status = (span: Span, state: AgentSpanState, checkpointTs: bigint, resolvedTs: bigint): SpanStatus => ({
  span,
  state,
  checkpointTs,
  resolvedTs,
});

/** A watermark over `keys`, with the digest built by hand. */
function watermark(checkpointTs: bigint, resolvedTs: bigint, keys: readonly string[]): CaptureWatermark {
  const digest = new MutableDigest();
  for (const key of keys) digest.add(key);
  return { checkpointTs, resolvedTs, digest: digest.snapshot() };
}
const noWatermark = watermark(0n, 0n, []);

interface ReportOptions {
  readonly to?: string;
  readonly ownerRevision?: bigint;
  readonly liveness?: 'alive' | 'stopping';
  readonly collect?: CollectPart;
}

/** The report the agent must send, with every field spelled out. */
function report(seq: number, ackSeq: number, statuses: SpanStatus[], wm: CaptureWatermark, options: ReportOptions = {}): ReportMessage {
  const base: ReportMessage = {
    kind: 'report',
    header: {
      changefeed: 'cf',
      ownerRevision: options.ownerRevision ?? 5n,
      changefeedEpoch: 1n,
      captureEpoch,
      from: 'cap',
      to: options.to ?? 'owner',
      seq,
      ackSeq,
    },
    statuses,
    watermark: wm,
    liveness: options.liveness ?? 'alive',
  };
  return options.collect === undefined ? base : { ...base, collect: options.collect };
}

const changed = (span: Span, from: AgentSpanState, to: AgentSpanState) => ({ type: 'span-state-changed', span, from, to }) as const;
const adopted = (owner: string, ownerRevision: bigint) => ({ type: 'owner-adopted', owner, ownerRevision }) as const;

const empty: AgentOutput = { outbox: [], commands: [], events: [] };

/**
 * Invariants visible from outside: the watermark is exactly the min over the replicating
 * spans and its digest covers exactly them; a reported resolved-ts is never below the
 * checkpoint.
 */
function checkInvariants(agent: Agent): void {
  const replicating = agent.statuses().filter((s) => s.state === 'replicating');
  const digest = new MutableDigest();
  let checkpointTs: bigint | undefined;
  let resolvedTs: bigint | undefined;
  for (const s of replicating) {
    digest.add(spanKey(s.span));
    checkpointTs = checkpointTs === undefined || s.checkpointTs < checkpointTs ? s.checkpointTs : checkpointTs;
    resolvedTs = resolvedTs === undefined || s.resolvedTs < resolvedTs ? s.resolvedTs : resolvedTs;
  }
  expect(agent.watermark()).toEqual({ checkpointTs: checkpointTs ?? 0n, resolvedTs: resolvedTs ?? 0n, digest: digest.snapshot() });
  for (const s of agent.statuses()) {
    expect(s.resolvedTs).toBeGreaterThanOrEqual(s.checkpointTs);
    expect(agent.spanState(spanKey(s.span))).toBe(s.state);
  }
}

/** An agent whose every input is followed by an invariant check. */
class Checked {
  readonly agent: Agent;

  constructor(statusesPerMessageMax = 16) {
    this.agent = new Agent({ captureId: 'cap', captureEpoch, changefeed: 'cf', changefeedEpoch: 1n, statusesPerMessageMax });
  }

  message(message: OwnerMessage): AgentOutput {
    return this.checked(this.agent.handleMessage(message));
  }

  pipeline(event: PipelineEvent): AgentOutput {
    return this.checked(this.agent.handlePipelineEvent(event));
  }

  flush(): AgentOutput {
    return this.checked(this.agent.flush());
  }

  stopAll(): AgentOutput {
    return this.checked(this.agent.stopAll());
  }

  state(key: string): AgentSpanState {
    return this.agent.spanState(key);
  }

  private checked(out: AgentOutput): AgentOutput {
    checkInvariants(this.agent);
    return out;
  }
}

/** Brings span `span` to replicating at `checkpointTs` through a plain add; returns the owner. */
function replicating(agent: Checked, owner: FakeOwner, span: Span, checkpointTs: bigint): void {
  owner.saw(agent.message(owner.dispatch([add(span, checkpointTs)])).outbox);
  agent.pipeline({ kind: 'prepared', key: spanKey(span), resolvedTs: checkpointTs });
  owner.saw(agent.flush().outbox);
}

describe('agent: plain add', () => {
  it('prepares, promotes itself once prepared, and reports each state once', () => {
    const owner = new FakeOwner('owner', 5n, false);
    const agent = new Checked();

    expect(agent.message(owner.dispatch([add(a, 10n)]))).toEqual({
      outbox: [report(1, 1, [status(a, 'preparing', 10n, 10n)], noWatermark)],
      commands: [{ kind: 'prepare', span: a, key: keyA, checkpointTs: 10n }],
      events: [adopted('owner', 5n), changed(a, 'absent', 'preparing')],
    });

    expect(agent.pipeline({ kind: 'prepared', key: keyA, resolvedTs: 15n })).toEqual({
      outbox: [],
      commands: [{ kind: 'promote', span: a, key: keyA, checkpointTs: 10n }],
      events: [changed(a, 'preparing', 'prepared'), changed(a, 'prepared', 'replicating')],
    });
    expect(agent.state(keyA)).toBe('replicating');

    expect(agent.flush()).toEqual({
      outbox: [report(2, 1, [status(a, 'replicating', 10n, 15n)], watermark(10n, 15n, [keyA]))],
      commands: [],
      events: [],
    });
    expect(agent.flush()).toEqual(empty);

    // Progress moves the watermark but is not a change: nothing to flush.
    expect(agent.pipeline({ kind: 'progress', key: keyA, checkpointTs: 30n, resolvedTs: 40n })).toEqual(empty);
    expect(agent.flush()).toEqual(empty);
    expect(agent.message(owner.heartbeat())).toEqual({
      outbox: [report(3, 2, [], watermark(30n, 40n, [keyA]))],
      commands: [{ kind: 'barrier', barrierTs: maxTs }],
      events: [],
    });
  });

  it('never reports before an owner is known', () => {
    const agent = new Checked();
    expect(agent.flush()).toEqual(empty);
    expect(agent.pipeline({ kind: 'prepared', key: keyA, resolvedTs: 1n })).toEqual(empty);
  });
});

describe('agent: secondary add and promotion', () => {
  it('stays prepared, then promotes at the higher checkpoint the owner sends', () => {
    const owner = new FakeOwner('owner', 5n, false);
    const agent = new Checked();
    expect(agent.message(owner.dispatch([add(a, 10n, true)]))).toEqual({
      outbox: [report(1, 1, [status(a, 'preparing', 10n, 10n)], noWatermark)],
      commands: [{ kind: 'prepare', span: a, key: keyA, checkpointTs: 10n }],
      events: [adopted('owner', 5n), changed(a, 'absent', 'preparing')],
    });
    expect(agent.pipeline({ kind: 'prepared', key: keyA, resolvedTs: 12n })).toEqual({
      outbox: [],
      commands: [],
      events: [changed(a, 'preparing', 'prepared')],
    });
    // Before promotion a pipeline's progress only moves the resolved-ts.
    expect(agent.pipeline({ kind: 'progress', key: keyA, checkpointTs: 99n, resolvedTs: 14n })).toEqual(empty);
    expect(agent.agent.statuses()).toEqual([status(a, 'prepared', 10n, 14n)]);

    // A repeated secondary add changes nothing.
    expect(agent.message(owner.dispatch([add(a, 10n, true)]))).toEqual({
      outbox: [report(2, 2, [status(a, 'prepared', 10n, 14n)], noWatermark)],
      commands: [],
      events: [],
    });

    // Promotion at 18: the resolved-ts reported is never below the checkpoint.
    expect(agent.message(owner.dispatch([add(a, 18n)]))).toEqual({
      outbox: [report(3, 3, [status(a, 'replicating', 18n, 18n)], watermark(18n, 18n, [keyA]))],
      commands: [{ kind: 'promote', span: a, key: keyA, checkpointTs: 18n }],
      events: [changed(a, 'prepared', 'replicating')],
    });

    // A duplicated promotion (new seq) is idempotent.
    expect(agent.message(owner.dispatch([add(a, 18n)]))).toEqual({
      outbox: [report(4, 4, [status(a, 'replicating', 18n, 18n)], watermark(18n, 18n, [keyA]))],
      commands: [],
      events: [],
    });
  });

  it('a plain add while preparing promotes once prepared, at the latest checkpoint sent', () => {
    const owner = new FakeOwner('owner', 5n, false);
    const agent = new Checked();
    agent.message(owner.dispatch([add(a, 10n, true)]));
    expect(agent.message(owner.dispatch([add(a, 20n)]))).toEqual({
      outbox: [report(2, 2, [status(a, 'preparing', 10n, 10n)], noWatermark)],
      commands: [],
      events: [],
    });
    // A later secondary add does not cancel the promotion asked for.
    expect(agent.message(owner.dispatch([add(a, 20n, true)])).commands).toEqual([]);
    expect(agent.pipeline({ kind: 'prepared', key: keyA, resolvedTs: 25n })).toEqual({
      outbox: [],
      commands: [{ kind: 'promote', span: a, key: keyA, checkpointTs: 20n }],
      events: [changed(a, 'preparing', 'prepared'), changed(a, 'prepared', 'replicating')],
    });
    expect(agent.agent.statuses()).toEqual([status(a, 'replicating', 20n, 25n)]);
  });
});

describe('agent: remove', () => {
  it('stops a replicating span and reports the final checkpoint', () => {
    const owner = new FakeOwner('owner', 5n, false);
    const agent = new Checked();
    replicating(agent, owner, a, 10n);
    agent.pipeline({ kind: 'progress', key: keyA, checkpointTs: 30n, resolvedTs: 35n });

    expect(agent.message(owner.dispatch([], [a]))).toEqual({
      outbox: [report(3, 2, [status(a, 'stopping', 30n, 35n)], noWatermark)],
      commands: [{ kind: 'stop', span: a, key: keyA }],
      events: [changed(a, 'replicating', 'stopping')],
    });
    // Progress while stopping still moves the checkpoint (the flush is under way).
    expect(agent.pipeline({ kind: 'progress', key: keyA, checkpointTs: 32n, resolvedTs: 36n })).toEqual(empty);
    // A second remove while stopping sends no second stop.
    expect(agent.message(owner.dispatch([], [a]))).toEqual({
      outbox: [report(4, 3, [status(a, 'stopping', 32n, 36n)], noWatermark)],
      commands: [],
      events: [],
    });
    expect(agent.pipeline({ kind: 'stopped', key: keyA, checkpointTs: 33n })).toEqual({
      outbox: [],
      commands: [],
      events: [changed(a, 'stopping', 'stopped')],
    });
    expect(agent.flush().outbox).toEqual([report(5, 3, [status(a, 'stopped', 33n, 36n)], noWatermark)]);
    // Removing a stopped span does nothing but answer.
    expect(agent.message(owner.dispatch([], [a]))).toEqual({
      outbox: [report(6, 4, [status(a, 'stopped', 33n, 36n)], noWatermark)],
      commands: [],
      events: [],
    });
  });

  it('stops a preparing span without promoting it later', () => {
    const owner = new FakeOwner('owner', 5n, false);
    const agent = new Checked();
    agent.message(owner.dispatch([add(a, 10n)]));
    expect(agent.message(owner.dispatch([], [a])).commands).toEqual([{ kind: 'stop', span: a, key: keyA }]);
    // A late 'prepared' from the pipeline being stopped is ignored.
    expect(agent.pipeline({ kind: 'prepared', key: keyA, resolvedTs: 11n })).toEqual(empty);
    expect(agent.pipeline({ kind: 'stopped', key: keyA, checkpointTs: 10n })).toEqual({
      outbox: [],
      commands: [],
      events: [changed(a, 'stopping', 'stopped')],
    });
  });

  it('an add that arrives while stopping waits, the newest replaces it, and it runs once stopped', () => {
    const owner = new FakeOwner('owner', 5n, false);
    const agent = new Checked();
    replicating(agent, owner, a, 10n);
    agent.message(owner.dispatch([], [a]));

    expect(agent.message(owner.dispatch([add(a, 40n, true)]))).toEqual({
      outbox: [report(4, 3, [status(a, 'stopping', 10n, 10n)], noWatermark)],
      commands: [],
      events: [],
    });
    expect(agent.message(owner.dispatch([add(a, 45n)])).commands).toEqual([]);
    expect(agent.state(keyA)).toBe('stopping');

    expect(agent.pipeline({ kind: 'stopped', key: keyA, checkpointTs: 12n })).toEqual({
      outbox: [],
      commands: [{ kind: 'prepare', span: a, key: keyA, checkpointTs: 45n }],
      events: [changed(a, 'stopping', 'stopped'), changed(a, 'stopped', 'preparing')],
    });
    expect(agent.flush().outbox).toEqual([report(6, 4, [status(a, 'preparing', 45n, 45n)], noWatermark)]);
    // The waiting add was plain, so the span promotes itself once prepared.
    expect(agent.pipeline({ kind: 'prepared', key: keyA, resolvedTs: 46n }).commands).toEqual([
      { kind: 'promote', span: a, key: keyA, checkpointTs: 45n },
    ]);
  });

  it('a remove while stopping drops the waiting add: it is the newer request', () => {
    const owner = new FakeOwner('owner', 5n, false);
    const agent = new Checked();
    replicating(agent, owner, a, 10n);
    agent.message(owner.dispatch([], [a]));
    agent.message(owner.dispatch([add(a, 40n)]));
    agent.message(owner.dispatch([], [a]));
    expect(agent.pipeline({ kind: 'stopped', key: keyA, checkpointTs: 12n })).toEqual({
      outbox: [],
      commands: [],
      events: [changed(a, 'stopping', 'stopped')],
    });
  });
});

describe('agent: stale adds after a stop', () => {
  it('ignores an add sent before the owner saw the stop, and accepts one sent after', () => {
    const owner = new FakeOwner('owner', 5n, false);
    const agent = new Checked();
    replicating(agent, owner, a, 10n);
    agent.pipeline({ kind: 'failed', key: keyA, error: 'boom', retryable: true });
    const stopReport = agent.flush().outbox;
    expect(stopReport).toEqual([report(3, 1, [status(a, 'stopped', 10n, 10n)], noWatermark)]);

    // The owner had seen up to report 2, not report 3, when it sent this add.
    expect(agent.message(owner.dispatch([add(a, 10n)]))).toEqual({
      outbox: [report(4, 2, [status(a, 'stopped', 10n, 10n)], noWatermark)],
      commands: [],
      events: [],
    });
    owner.saw(stopReport);
    expect(agent.message(owner.dispatch([add(a, 11n)]))).toEqual({
      outbox: [report(5, 3, [status(a, 'preparing', 11n, 11n)], noWatermark)],
      commands: [{ kind: 'prepare', span: a, key: keyA, checkpointTs: 11n }],
      events: [changed(a, 'stopped', 'preparing')],
    });
  });
});

describe('agent: pipeline failures', () => {
  it('a failed pipeline leaves the span stopped at its checkpoint, with no command', () => {
    const owner = new FakeOwner('owner', 5n, false);
    const agent = new Checked();
    replicating(agent, owner, a, 10n);
    agent.pipeline({ kind: 'progress', key: keyA, checkpointTs: 20n, resolvedTs: 25n });
    expect(agent.pipeline({ kind: 'failed', key: keyA, error: 'sink down', retryable: true })).toEqual({
      outbox: [],
      commands: [],
      events: [{ type: 'span-failed', span: a, error: 'sink down' }, changed(a, 'replicating', 'stopped')],
    });
    expect(agent.flush().outbox).toEqual([report(3, 1, [status(a, 'stopped', 20n, 25n)], noWatermark)]);
    // Later events of the dead pipeline change nothing.
    expect(agent.pipeline({ kind: 'progress', key: keyA, checkpointTs: 30n, resolvedTs: 30n })).toEqual(empty);
    expect(agent.pipeline({ kind: 'stopped', key: keyA, checkpointTs: 30n })).toEqual(empty);
    expect(agent.agent.statuses()).toEqual([status(a, 'stopped', 20n, 25n)]);
  });

  it('a failure no retry can fix is reported on the stopped span', () => {
    const owner = new FakeOwner('owner', 5n, false);
    const agent = new Checked();
    agent.message(owner.dispatch([add(a, 1n, true)]));
    agent.pipeline({ kind: 'failed', key: keyA, error: 'revision 2 was compacted', retryable: false });
    expect(agent.flush().outbox).toEqual([
      report(2, 1, [{ ...status(a, 'stopped', 1n, 1n), fatalError: 'revision 2 was compacted' }], noWatermark),
    ]);
  });

  it('a failure while stopping drops the waiting add', () => {
    const owner = new FakeOwner('owner', 5n, false);
    const agent = new Checked();
    replicating(agent, owner, a, 10n);
    agent.message(owner.dispatch([], [a]));
    agent.message(owner.dispatch([add(a, 40n)]));
    expect(agent.pipeline({ kind: 'failed', key: keyA, error: 'x', retryable: true })).toEqual({
      outbox: [],
      commands: [],
      events: [{ type: 'span-failed', span: a, error: 'x' }, changed(a, 'stopping', 'stopped')],
    });
  });

  it('ignores events for spans it does not hold', () => {
    const agent = new Checked();
    for (const event of [
      { kind: 'prepared', key: keyA, resolvedTs: 1n },
      { kind: 'progress', key: keyA, checkpointTs: 1n, resolvedTs: 1n },
      { kind: 'stopped', key: keyA, checkpointTs: 1n },
      { kind: 'failed', key: keyA, error: 'x', retryable: true },
    ] as const) {
      expect(agent.pipeline(event)).toEqual(empty);
    }
  });
});

describe('agent: fencing', () => {
  it('drops a duplicated dispatch (same seq)', () => {
    const owner = new FakeOwner('owner', 5n, false);
    const agent = new Checked();
    const message = owner.dispatch([add(a, 1n)]);
    expect(agent.message(message).commands).toHaveLength(1);
    expect(agent.message(message)).toEqual({
      outbox: [],
      commands: [],
      events: [{ type: 'message-dropped', reason: 'stale-seq', header: message.header }],
    });
  });

  it('drops a message that arrives after a newer one (lower seq)', () => {
    const owner = new FakeOwner('owner', 5n, false);
    const agent = new Checked();
    const first = owner.dispatch([add(a, 1n)]);
    const second = owner.dispatch([], [a]);
    expect(agent.message(second)).toEqual({
      outbox: [report(1, 2, [status(a, 'absent', 0n, 0n)], noWatermark)],
      commands: [],
      events: [adopted('owner', 5n)],
    });
    // Applying the late add would undo the newer remove.
    expect(agent.message(first)).toEqual({
      outbox: [],
      commands: [],
      events: [{ type: 'message-dropped', reason: 'stale-seq', header: first.header }],
    });
    expect(agent.state(keyA)).toBe('absent');
  });

  it('drops a stale owner revision; adopts a higher one and restarts both seqs', () => {
    const old = new FakeOwner('old', 5n, false);
    const agent = new Checked();
    agent.message(old.heartbeat());
    expect(agent.message(old.heartbeat()).outbox).toEqual([report(2, 2, [], noWatermark, { to: 'old' })]);

    const fresh = new FakeOwner('new', 6n, false);
    expect(agent.message(fresh.heartbeat())).toEqual({
      outbox: [report(1, 1, [], noWatermark, { to: 'new', ownerRevision: 6n })],
      commands: [],
      events: [adopted('new', 6n)],
    });

    const stale = old.dispatch([add(a, 1n)]);
    expect(agent.message(stale)).toEqual({
      outbox: [],
      commands: [],
      events: [{ type: 'message-dropped', reason: 'stale-owner', header: stale.header }],
    });
    expect(agent.state(keyA)).toBe('absent');

    // The new owner's seq restarted at 1; its seq 2 is accepted, a replay of 1 is not.
    expect(agent.message(fresh.dispatch([add(a, 1n)])).outbox).toEqual([
      report(2, 2, [status(a, 'preparing', 1n, 1n)], noWatermark, { to: 'new', ownerRevision: 6n }),
    ]);
    const replay = fresh.header({ seq: 1 });
    expect(agent.message({ kind: 'dispatch', header: replay, adds: [], removes: [] }).events).toEqual([
      { type: 'message-dropped', reason: 'stale-seq', header: replay },
    ]);
  });

  it('drops messages for another changefeed, changefeed epoch, capture or capture epoch', () => {
    const owner = new FakeOwner('owner', 5n, false);
    const agent = new Checked();
    const cases: [Partial<MessageHeader>, string][] = [
      [{ changefeed: 'other' }, 'wrong-changefeed'],
      [{ changefeedEpoch: 2n }, 'wrong-epoch'],
      [{ to: 'someone-else' }, 'wrong-capture'],
      [{ captureEpoch: 78n }, 'wrong-epoch'],
    ];
    for (const [overrides, reason] of cases) {
      const message = owner.dispatch([add(a, 1n)], [], { ...overrides, seq: 1 });
      expect(agent.message(message)).toEqual({
        outbox: [],
        commands: [],
        events: [{ type: 'message-dropped', reason, header: message.header }],
      });
    }
    // None of them was adopted or consumed a seq: seq 1 is still new, with this capture's epoch.
    expect(agent.message(owner.dispatch([add(a, 1n)], [], { captureEpoch, seq: 1 }))).toEqual({
      outbox: [report(1, 1, [status(a, 'preparing', 1n, 1n)], noWatermark)],
      commands: [{ kind: 'prepare', span: a, key: keyA, checkpointTs: 1n }],
      events: [adopted('owner', 5n), changed(a, 'absent', 'preparing')],
    });
  });
});

describe('agent: dispatch replies', () => {
  it('answer every span named plus every queued change, each once', () => {
    const owner = new FakeOwner('owner', 5n, false);
    const agent = new Checked();
    owner.saw(agent.message(owner.dispatch([add(a, 1n), add(b, 1n, true)])).outbox);
    agent.pipeline({ kind: 'prepared', key: keyA, resolvedTs: 2n });
    agent.pipeline({ kind: 'prepared', key: keyB, resolvedTs: 2n });
    // a and b changed; the dispatch names b and c.
    expect(agent.message(owner.dispatch([add(c, 3n, true)], [b]))).toEqual({
      outbox: [
        report(
          2,
          2,
          [status(b, 'stopping', 1n, 2n), status(c, 'preparing', 3n, 3n), status(a, 'replicating', 1n, 2n)],
          watermark(1n, 2n, [keyA]),
        ),
      ],
      commands: [
        { kind: 'stop', span: b, key: keyB },
        { kind: 'prepare', span: c, key: keyC, checkpointTs: 3n },
      ],
      events: [changed(b, 'prepared', 'stopping'), changed(c, 'absent', 'preparing')],
    });
    expect(agent.flush()).toEqual(empty);
  });

  it('chunk by statusesPerMessageMax, every part carrying the watermark', () => {
    const owner = new FakeOwner('owner', 5n, false);
    const agent = new Checked(2);
    const out = agent.message(owner.dispatch([add(a, 3n, true), add(b, 3n, true), add(c, 3n, true)]));
    expect(out.outbox).toEqual([
      report(1, 1, [status(a, 'preparing', 3n, 3n), status(b, 'preparing', 3n, 3n)], noWatermark),
      report(2, 1, [status(c, 'preparing', 3n, 3n)], noWatermark),
    ]);
  });
});

describe('agent: unsolicited reports', () => {
  it('flush sends one report of at most statusesPerMessageMax changes; the rest wait', () => {
    const owner = new FakeOwner('owner', 5n, false);
    const agent = new Checked(2);
    owner.saw(agent.message(owner.dispatch([add(a, 3n, true), add(b, 3n, true), add(c, 3n, true)])).outbox);
    for (const key of [keyA, keyB, keyC]) agent.pipeline({ kind: 'prepared', key, resolvedTs: 4n });
    expect(agent.flush().outbox).toEqual([report(3, 1, [status(a, 'prepared', 3n, 4n), status(b, 'prepared', 3n, 4n)], noWatermark)]);
    expect(agent.flush().outbox).toEqual([report(4, 1, [status(c, 'prepared', 3n, 4n)], noWatermark)]);
    expect(agent.flush()).toEqual(empty);
  });

  it('reports carry liveness stopping once the capture is shutting down', () => {
    const owner = new FakeOwner('owner', 5n, false);
    const agent = new Checked();
    agent.message(owner.heartbeat());
    agent.agent.setStopping();
    expect(agent.message(owner.heartbeat()).outbox).toEqual([report(2, 2, [], noWatermark, { liveness: 'stopping' })]);
  });
});

describe('agent: heartbeats', () => {
  it('answers absent for spans it lacks, plus queued changes', () => {
    const owner = new FakeOwner('owner', 5n, false);
    const agent = new Checked();
    owner.saw(agent.message(owner.dispatch([add(a, 5n, true)])).outbox);
    agent.pipeline({ kind: 'prepared', key: keyA, resolvedTs: 6n });
    expect(agent.message(owner.heartbeat([b, c]))).toEqual({
      outbox: [report(2, 2, [status(b, 'absent', 0n, 0n), status(c, 'absent', 0n, 0n), status(a, 'prepared', 5n, 6n)], noWatermark)],
      commands: [{ kind: 'barrier', barrierTs: maxTs }],
      events: [],
    });
    expect(agent.flush()).toEqual(empty);
  });

  it('adds at most statusesPerMessageMax queued changes to an answer', () => {
    const owner = new FakeOwner('owner', 5n, false);
    const agent = new Checked(1);
    owner.saw(agent.message(owner.dispatch([add(a, 5n, true), add(b, 5n, true)])).outbox);
    agent.pipeline({ kind: 'prepared', key: keyA, resolvedTs: 6n });
    agent.pipeline({ kind: 'prepared', key: keyB, resolvedTs: 6n });
    expect(agent.message(owner.heartbeat([c])).outbox).toEqual([
      report(3, 2, [status(c, 'absent', 0n, 0n)], noWatermark),
      report(4, 2, [status(a, 'prepared', 5n, 6n)], noWatermark),
    ]);
    expect(agent.flush().outbox).toEqual([report(5, 2, [status(b, 'prepared', 5n, 6n)], noWatermark)]);
  });

  it('sends a barrier command only when the barrier moves', () => {
    const owner = new FakeOwner('owner', 5n, false);
    const agent = new Checked();
    expect(agent.message(owner.heartbeat([], { barrierTs: 100n })).commands).toEqual([{ kind: 'barrier', barrierTs: 100n }]);
    expect(agent.message(owner.heartbeat([], { barrierTs: 100n })).commands).toEqual([]);
    expect(agent.message(owner.heartbeat([], { barrierTs: 200n })).commands).toEqual([{ kind: 'barrier', barrierTs: 200n }]);
  });

  it('forgets stopped spans the owner no longer asks about, only when the list is complete', () => {
    const owner = new FakeOwner('owner', 5n, false);
    const agent = new Checked();
    owner.saw(agent.message(owner.dispatch([add(a, 1n, true), add(b, 1n, true)])).outbox);
    owner.saw(agent.message(owner.dispatch([], [a, b])).outbox);
    agent.pipeline({ kind: 'stopped', key: keyA, checkpointTs: 1n });
    agent.pipeline({ kind: 'stopped', key: keyB, checkpointTs: 1n });

    // An incomplete list never makes the agent forget: the owner may still need a stop.
    expect(agent.message(owner.heartbeat([b], { spansComplete: false })).outbox).toEqual([
      report(3, 3, [status(b, 'stopped', 1n, 1n), status(a, 'stopped', 1n, 1n)], noWatermark),
    ]);
    expect(agent.state(keyA)).toBe('stopped');
    expect(agent.message(owner.heartbeat([], { spansComplete: false })).outbox).toEqual([report(4, 4, [], noWatermark)]);
    expect(agent.state(keyA)).toBe('stopped');

    // A complete list that names b: a is forgotten, b is kept and answered.
    expect(agent.message(owner.heartbeat([b], { spansComplete: true })).outbox).toEqual([
      report(5, 5, [status(b, 'stopped', 1n, 1n)], noWatermark),
    ]);
    expect(agent.agent.statuses()).toEqual([status(b, 'stopped', 1n, 1n)]);
    expect(agent.message(owner.heartbeat([a], { spansComplete: true })).outbox).toEqual([
      report(6, 6, [status(a, 'absent', 0n, 0n)], noWatermark),
    ]);
    expect(agent.agent.statuses()).toEqual([]);
  });

  it('keeps a stopped span whose stop is still queued, even under a complete list', () => {
    const owner = new FakeOwner('owner', 5n, false);
    const agent = new Checked(1);
    owner.saw(agent.message(owner.dispatch([add(a, 1n, true)])).outbox);
    owner.saw(agent.message(owner.dispatch([add(b, 1n, true)])).outbox);
    owner.saw(agent.message(owner.dispatch([], [a])).outbox);
    owner.saw(agent.message(owner.dispatch([], [b])).outbox);
    agent.pipeline({ kind: 'stopped', key: keyA, checkpointTs: 1n });
    agent.pipeline({ kind: 'stopped', key: keyB, checkpointTs: 1n });
    // Only one queued change fits: a's stop is reported, b's stays queued.
    expect(agent.message(owner.heartbeat([], { spansComplete: true })).outbox).toEqual([
      report(5, 5, [status(a, 'stopped', 1n, 1n)], noWatermark),
    ]);
    expect(agent.agent.statuses()).toEqual([status(b, 'stopped', 1n, 1n)]);
    expect(agent.flush().outbox).toEqual([report(6, 5, [status(b, 'stopped', 1n, 1n)], noWatermark)]);
    agent.message(owner.heartbeat([], { spansComplete: true }));
    expect(agent.agent.statuses()).toEqual([]);
  });
});

describe('agent: collections', () => {
  it('sends every span held, stopped ones included, in parts built from one snapshot', () => {
    const owner = new FakeOwner('owner', 5n, false);
    const agent = new Checked(2);
    owner.saw(agent.message(owner.dispatch([add(a, 3n), add(b, 3n, true), add(c, 3n, true)])).outbox);
    agent.pipeline({ kind: 'prepared', key: keyA, resolvedTs: 4n });
    agent.pipeline({ kind: 'failed', key: keyC, error: 'x', retryable: true });

    expect(agent.message(owner.heartbeat([], { collectId: 42, spansComplete: true }))).toEqual({
      outbox: [
        report(3, 2, [status(a, 'replicating', 3n, 4n), status(b, 'preparing', 3n, 3n)], watermark(3n, 4n, [keyA]), {
          collect: { id: 42, part: 0, parts: 2 },
        }),
        report(4, 2, [status(c, 'stopped', 3n, 3n)], watermark(3n, 4n, [keyA]), { collect: { id: 42, part: 1, parts: 2 } }),
      ],
      commands: [{ kind: 'barrier', barrierTs: maxTs }],
      events: [],
    });
    // The collection carried every queued change, and it forgot nothing.
    expect(agent.flush()).toEqual(empty);
    expect(agent.state(keyC)).toBe('stopped');
  });

  it('sends one empty part when it holds nothing', () => {
    const owner = new FakeOwner('owner', 5n, false);
    const agent = new Checked();
    expect(agent.message(owner.heartbeat([], { collectId: 7 })).outbox).toEqual([
      report(1, 1, [], noWatermark, { collect: { id: 7, part: 0, parts: 1 } }),
    ]);
  });

  it('splits into exactly ceil(n / max) parts', () => {
    const owner = new FakeOwner('owner', 5n, false);
    const agent = new Checked(2);
    owner.saw(agent.message(owner.dispatch([add(a, 3n, true), add(b, 3n, true)])).outbox);
    expect(agent.message(owner.heartbeat([], { collectId: 9 })).outbox.map((r) => [r.collect, r.statuses.length])).toEqual([
      [{ id: 9, part: 0, parts: 1 }, 2],
    ]);
  });
});

describe('agent: watermark', () => {
  it('is zero with an empty digest when nothing replicates', () => {
    const agent = new Checked();
    expect(agent.agent.watermark()).toEqual({ checkpointTs: 0n, resolvedTs: 0n, digest: emptyDigest });
  });

  it('is the min over replicating spans only, with a digest equal to one built by hand', () => {
    const owner = new FakeOwner('owner', 5n, false);
    const agent = new Checked();
    replicating(agent, owner, a, 10n);
    replicating(agent, owner, b, 10n);
    // c prepares far behind: it must not hold the watermark back.
    agent.message(owner.dispatch([add(c, 1n, true)]));
    agent.pipeline({ kind: 'progress', key: keyA, checkpointTs: 50n, resolvedTs: 60n });
    agent.pipeline({ kind: 'progress', key: keyB, checkpointTs: 40n, resolvedTs: 70n });

    const expected = new MutableDigest();
    expected.add(keyB);
    expected.add(keyA);
    expect(agent.agent.watermark()).toEqual({ checkpointTs: 40n, resolvedTs: 60n, digest: expected.snapshot() });

    // Leaving replicating removes the key from the digest, in any order.
    agent.message(owner.dispatch([], [b]));
    expected.remove(keyB);
    expect(agent.agent.watermark()).toEqual({ checkpointTs: 50n, resolvedTs: 60n, digest: expected.snapshot() });

    // Checkpoints and resolved-ts only rise.
    agent.pipeline({ kind: 'progress', key: keyA, checkpointTs: 45n, resolvedTs: 55n });
    expect(agent.agent.watermark()).toEqual({ checkpointTs: 50n, resolvedTs: 60n, digest: expected.snapshot() });
  });
});

describe('agent: stopAll', () => {
  it('stops every live pipeline, forgets every span and reports nothing', () => {
    const owner = new FakeOwner('owner', 5n, false);
    const agent = new Checked();
    replicating(agent, owner, a, 10n);
    agent.message(owner.dispatch([add(b, 1n, true), add(c, 1n, true)]));
    agent.message(owner.dispatch([], [c]));
    agent.pipeline({ kind: 'stopped', key: keyC, checkpointTs: 1n });
    const d: Span = { table: 't', start: 'd', end: 'e' };
    replicating(agent, owner, d, 10n);
    agent.message(owner.dispatch([], [d]));

    expect(agent.stopAll()).toEqual({
      outbox: [],
      commands: [
        { kind: 'stop', span: a, key: keyA },
        { kind: 'stop', span: b, key: keyB },
        { kind: 'stop', span: d, key: spanKey(d) },
      ],
      events: [],
    });
    expect(agent.agent.statuses()).toEqual([]);
    expect(agent.agent.watermark()).toEqual({ checkpointTs: 0n, resolvedTs: 0n, digest: emptyDigest });
    expect(agent.flush()).toEqual(empty);
    // The stops finishing later concern spans the agent no longer holds.
    expect(agent.pipeline({ kind: 'stopped', key: keyA, checkpointTs: 12n })).toEqual(empty);
  });
});

describe('watermark without a rescan', () => {
  /** The old O(spans) watermark, computed from the statuses. */
  function rescan(agent: Agent): { checkpointTs: bigint; resolvedTs: bigint } {
    let checkpointTs: bigint | undefined;
    let resolvedTs: bigint | undefined;
    for (const s of agent.statuses()) {
      if (s.state !== 'replicating') continue;
      if (checkpointTs === undefined || s.checkpointTs < checkpointTs) checkpointTs = s.checkpointTs;
      if (resolvedTs === undefined || s.resolvedTs < resolvedTs) resolvedTs = s.resolvedTs;
    }
    return { checkpointTs: checkpointTs ?? 0n, resolvedTs: resolvedTs ?? 0n };
  }

  it('equals the rescan under random adds, progress, removes, stops, failures and self-fences', () => {
    const spans: Span[] = Array.from({ length: 12 }, (_, i) => ({ table: 't', start: String.fromCharCode(97 + i), end: String.fromCharCode(98 + i) }));
    for (let seed = 1; seed <= 15; seed++) {
      const rng = new SeededRandom(seed);
      const agent = new Agent({ captureId: 'cap', captureEpoch, changefeed: 'cf', changefeedEpoch: 1n, statusesPerMessageMax: 8 });
      const owner = new FakeOwner();
      let mostReplicating = 0;
      for (let step = 0; step < 800; step++) {
        const span = rng.pick(spans);
        const key = spanKey(span);
        const ts = BigInt(rng.int(1_000));
        const out = ((): AgentOutput => {
          switch (rng.int(12)) {
            case 0:
            case 1:
            case 2:
              return agent.handleMessage(owner.dispatch([add(span, ts, rng.chance(0.2))]));
            case 3:
              return agent.handleMessage(owner.dispatch([], [span]));
            case 4:
            case 5:
              return agent.handlePipelineEvent({ kind: 'prepared', key, resolvedTs: ts });
            case 6:
              return agent.handlePipelineEvent({ kind: 'stopped', key, checkpointTs: ts });
            case 7:
              return rng.chance(0.3) ? agent.handlePipelineEvent({ kind: 'failed', key, error: 'x', retryable: true }) : agent.flush();
            case 8:
              return step % 200 === 0 ? agent.stopAll() : agent.flush();
            default:
              // Progress, the most frequent input; resolved may trail the checkpoint.
              return agent.handlePipelineEvent({ kind: 'progress', key, checkpointTs: ts, resolvedTs: BigInt(rng.int(1_000)) });
          }
        })();
        owner.saw(out.outbox);
        const mark = agent.watermark();
        expect({ checkpointTs: mark.checkpointTs, resolvedTs: mark.resolvedTs }).toEqual(rescan(agent));
        agent.checkInvariants();
        mostReplicating = Math.max(mostReplicating, agent.statuses().filter((s) => s.state === 'replicating').length);
      }
      // The run must exercise the heaps with several spans at once, not only an empty one.
      expect(mostReplicating).toBeGreaterThanOrEqual(4);
    }
  });
});

describe('agent: per-span progress', () => {
  it('reports its K slowest replicating spans and a round-robin slice that covers every span in turn', () => {
    const owner = new FakeOwner('owner', 5n, false);
    const agent = new Agent({ captureId: 'cap', captureEpoch, changefeed: 'cf', changefeedEpoch: 1n, statusesPerMessageMax: 64, progressSlowestMax: 2, progressSliceMax: 3 });
    const spans: Span[] = Array.from({ length: 7 }, (_, i) => ({ table: 't', start: `k${i}`, end: `k${i}~` }));
    for (const [i, span] of spans.entries()) {
      owner.saw(agent.handleMessage(owner.dispatch([add(span, 10n)])).outbox);
      agent.handlePipelineEvent({ kind: 'prepared', key: spanKey(span), resolvedTs: 10n });
      // Checkpoints 100, 90, ..., 40: the last spans are the slowest; span 3 writes 12 events a second.
      agent.handlePipelineEvent({ kind: 'progress', key: spanKey(span), checkpointTs: BigInt(100 - 10 * i), resolvedTs: 200n, ...(i === 3 ? { eventsPerSecond: 12 } : {}) });
    }
    // One more span that is only preparing: never in the progress.
    const preparing: Span = { table: 't', start: 'z', end: 'z~' };
    owner.saw(agent.handleMessage(owner.dispatch([add(preparing, 10n)])).outbox);
    const seen = new Map<string, bigint>();
    const rates = new Map<string, number>();
    for (let round = 0; round < 3; round++) {
      const out = agent.handleMessage(owner.heartbeat());
      const progress = out.outbox[0]?.progress;
      expect(progress?.slowest.map((p) => [p.span.start, p.checkpointTs])).toEqual([['k6', 40n], ['k5', 50n]]);
      expect(progress?.slice.length).toBeLessThanOrEqual(3);
      for (const p of progress?.slice ?? []) {
        expect(p.span.start).not.toBe('z');
        expect(p.resolvedTs).toBe(200n);
        seen.set(p.span.start, p.checkpointTs);
        rates.set(p.span.start, p.eventsPerSecond);
      }
      owner.saw(out.outbox);
    }
    // Three reports of three: all seven spans were refreshed.
    expect([...seen.keys()].sort()).toEqual(spans.map((s) => s.start).sort());
    expect(seen.get('k3')).toBe(70n);
    expect(rates.get('k3')).toBe(12);
    expect(rates.get('k4')).toBe(0);
  });

  it('sends the split key only of spans at or above splitKeyRateMin, with bytes a second', () => {
    const owner = new FakeOwner('owner', 5n, false);
    const agent = new Agent({ captureId: 'cap', captureEpoch, changefeed: 'cf', changefeedEpoch: 1n, statusesPerMessageMax: 64, progressSlowestMax: 1, progressSliceMax: 8, splitKeyRateMin: 100 });
    const hot: Span = { table: 't', start: 'a', end: 'b' };
    const warm: Span = { table: 't', start: 'b', end: 'c' };
    for (const [span, rate, splitKey] of [[hot, 150, 'a5'], [warm, 99, 'b5']] as const) {
      owner.saw(agent.handleMessage(owner.dispatch([add(span, 10n)])).outbox);
      agent.handlePipelineEvent({ kind: 'prepared', key: spanKey(span), resolvedTs: 10n });
      agent.handlePipelineEvent({ kind: 'progress', key: spanKey(span), checkpointTs: 20n, resolvedTs: 30n, eventsPerSecond: rate, bytesPerSecond: rate * 10, splitKey, sampleKeys: 9 });
    }
    const report = agent.handleMessage(owner.heartbeat()).outbox[0];
    owner.saw(report === undefined ? [] : [report]);
    const bySpan = new Map((report?.progress?.slice ?? []).map((p) => [p.span.start, p]));
    expect(bySpan.get('a')).toEqual({ span: hot, checkpointTs: 20n, resolvedTs: 30n, eventsPerSecond: 150, bytesPerSecond: 1_500, splitKey: 'a5', sampleKeys: 9 });
    expect(bySpan.get('b')).toEqual({ span: warm, checkpointTs: 20n, resolvedTs: 30n, eventsPerSecond: 99, bytesPerSecond: 990 });
    // A window whose sample named no key clears the old one.
    agent.handlePipelineEvent({ kind: 'progress', key: spanKey(hot), checkpointTs: 21n, resolvedTs: 30n, eventsPerSecond: 200 });
    const next = agent.handleMessage(owner.heartbeat()).outbox[0];
    const again = (next?.progress?.slice ?? []).find((p) => p.span.start === 'a');
    expect(again?.eventsPerSecond).toBe(200);
    expect(again?.splitKey).toBeUndefined();
  });

  it('sends no progress unless asked to', () => {
    const owner = new FakeOwner('owner', 5n, false);
    const agent = new Checked();
    replicating(agent, owner, a, 10n);
    expect(agent.message(owner.heartbeat()).outbox[0]?.progress).toBeUndefined();
  });
});

import { describe, expect, it } from 'vitest';
import { FakeOwner, a, b, c, keyA, keyB } from './fake-owner.ts';
import { Agent } from '../../src/agent/agent.ts';
import type { MessageHeader, ReportMessage } from '../../src/core/messages.ts';
import { spanKey } from '../../src/core/span.ts';
import { MutableDigest } from '../../src/core/span-digest.ts';

function newAgent(statusesPerMessageMax = 16): Agent {
  return new Agent({ captureId: 'cap', captureEpoch: 77n, changefeed: 'cf', changefeedEpoch: 1n, statusesPerMessageMax });
}

const states = (report: ReportMessage | undefined): [string, string, string][] =>
  (report?.statuses ?? []).map((s) => [s.span.start, s.state, s.checkpointTs.toString()]);

describe('agent: plain add', () => {
  it('prepares, promotes itself once prepared, and reports every step', () => {
    const owner = new FakeOwner();
    const agent = newAgent();
    const out1 = agent.handleMessage(owner.dispatch([{ span: a, secondary: false, checkpointTs: 10n }]));
    expect(out1.commands).toEqual([{ kind: 'prepare', span: a, key: keyA, checkpointTs: 10n }]);
    expect(out1.outbox).toHaveLength(1);
    expect(out1.outbox[0]?.header).toMatchObject({ from: 'cap', to: 'owner', ownerRevision: 5n, captureEpoch: 77n, seq: 1, ackSeq: 1 });
    expect(states(out1.outbox[0])).toEqual([['a', 'preparing', '10']]);

    const out2 = agent.handlePipelineEvent({ kind: 'prepared', key: keyA, resolvedTs: 15n });
    expect(out2.commands).toEqual([{ kind: 'promote', span: a, key: keyA, checkpointTs: 10n }]);
    expect(agent.spanState(keyA)).toBe('replicating');

    const flushed = agent.flush();
    expect(states(flushed.outbox[0])).toEqual([['a', 'replicating', '10']]);
    expect(flushed.outbox[0]?.statuses[0]?.resolvedTs).toBe(15n);
    expect(agent.flush().outbox).toEqual([]);
  });
});

describe('agent: secondary add and promotion', () => {
  it('waits prepared, then promotes at the checkpoint the owner sends', () => {
    const owner = new FakeOwner();
    const agent = newAgent();
    agent.handleMessage(owner.dispatch([{ span: a, secondary: true, checkpointTs: 10n }]));
    const prepared = agent.handlePipelineEvent({ kind: 'prepared', key: keyA, resolvedTs: 20n });
    expect(prepared.commands).toEqual([]);
    expect(agent.spanState(keyA)).toBe('prepared');

    const promote = agent.handleMessage(owner.dispatch([{ span: a, secondary: false, checkpointTs: 18n }]));
    expect(promote.commands).toEqual([{ kind: 'promote', span: a, key: keyA, checkpointTs: 18n }]);
    expect(states(promote.outbox[0])).toEqual([['a', 'replicating', '18']]);

    // A duplicated promotion (new seq) is idempotent.
    expect(agent.handleMessage(owner.dispatch([{ span: a, secondary: false, checkpointTs: 18n }])).commands).toEqual([]);
  });
});

describe('agent: remove', () => {
  it('stops, reports stopping, then stopped with the final checkpoint', () => {
    const owner = new FakeOwner();
    const agent = newAgent();
    agent.handleMessage(owner.dispatch([{ span: a, secondary: false, checkpointTs: 10n }]));
    agent.handlePipelineEvent({ kind: 'prepared', key: keyA, resolvedTs: 10n });
    agent.handlePipelineEvent({ kind: 'progress', key: keyA, checkpointTs: 30n, resolvedTs: 35n });
    const remove = agent.handleMessage(owner.dispatch([], [a]));
    expect(remove.commands).toEqual([{ kind: 'stop', span: a, key: keyA }]);
    expect(states(remove.outbox[0])).toEqual([['a', 'stopping', '30']]);
    agent.handlePipelineEvent({ kind: 'stopped', key: keyA, checkpointTs: 33n });
    expect(states(agent.flush().outbox[0])).toEqual([['a', 'stopped', '33']]);
  });

  it('runs an add that arrived while stopping once the stop finished', () => {
    const owner = new FakeOwner();
    const agent = newAgent();
    agent.handleMessage(owner.dispatch([{ span: a, secondary: false, checkpointTs: 10n }]));
    agent.handlePipelineEvent({ kind: 'prepared', key: keyA, resolvedTs: 10n });
    agent.handleMessage(owner.dispatch([], [a]));
    const waiting = agent.handleMessage(owner.dispatch([{ span: a, secondary: true, checkpointTs: 40n }]));
    expect(waiting.commands).toEqual([]);
    expect(agent.spanState(keyA)).toBe('stopping');
    const stopped = agent.handlePipelineEvent({ kind: 'stopped', key: keyA, checkpointTs: 12n });
    expect(stopped.commands).toEqual([{ kind: 'prepare', span: a, key: keyA, checkpointTs: 40n }]);
    expect(agent.spanState(keyA)).toBe('preparing');
  });

  it('ignores an add the owner sent before it saw the span stop', () => {
    const owner = new FakeOwner();
    const agent = newAgent();
    owner.saw(agent.handleMessage(owner.dispatch([{ span: a, secondary: false, checkpointTs: 10n }])).outbox);
    // The pipeline fails; the stop is reported in a report the owner has not seen yet.
    agent.handlePipelineEvent({ kind: 'failed', key: keyA, error: 'boom', retryable: true });
    const report = agent.flush().outbox;
    expect(states(report[0])).toEqual([['a', 'stopped', '10']]);
    const stale = agent.handleMessage(owner.dispatch([{ span: a, secondary: false, checkpointTs: 10n }]));
    expect(stale.commands).toEqual([]);
    expect(states(stale.outbox[0])).toEqual([['a', 'stopped', '10']]);
    // Once the owner has seen the stop, a new add starts the span again.
    owner.saw(report);
    owner.saw(stale.outbox);
    const fresh = agent.handleMessage(owner.dispatch([{ span: a, secondary: false, checkpointTs: 11n }]));
    expect(fresh.commands).toEqual([{ kind: 'prepare', span: a, key: keyA, checkpointTs: 11n }]);
  });
});

describe('agent: fatal pipeline errors', () => {
  it('reports a failure no retry can fix on the stopped span until it starts again', () => {
    const owner = new FakeOwner();
    const agent = newAgent();
    owner.saw(agent.handleMessage(owner.dispatch([{ span: a, secondary: false, checkpointTs: 1n }])).outbox);
    agent.handlePipelineEvent({ kind: 'failed', key: keyA, error: 'revision 2 was compacted', retryable: false });
    const report = agent.flush().outbox;
    expect(report[0]?.statuses[0]).toMatchObject({ state: 'stopped', fatalError: 'revision 2 was compacted' });
    owner.saw(report);
    agent.handleMessage(owner.dispatch([{ span: a, secondary: false, checkpointTs: 5n }]));
    expect(agent.statuses()[0]?.fatalError).toBeUndefined();
  });
});

describe('agent: fencing', () => {
  it('drops duplicated and reordered messages by seq', () => {
    const owner = new FakeOwner();
    const agent = newAgent();
    const first = owner.dispatch([{ span: a, secondary: true, checkpointTs: 1n }]);
    const second = owner.dispatch([{ span: b, secondary: true, checkpointTs: 1n }]);
    expect(agent.handleMessage(second).commands).toHaveLength(1);
    const late = agent.handleMessage(first);
    expect(late.commands).toEqual([]);
    expect(late.outbox).toEqual([]);
    expect(late.events).toEqual([{ type: 'message-dropped', reason: 'stale-seq', header: first.header }]);
    expect(agent.handleMessage(second).events[0]).toMatchObject({ type: 'message-dropped', reason: 'stale-seq' });
    expect(agent.spanState(keyA)).toBe('absent');
  });

  it('drops a lower owner revision and adopts a higher one, resetting seq', () => {
    const old = new FakeOwner('old', 5n);
    const agent = newAgent();
    agent.handleMessage(old.heartbeat());
    agent.handleMessage(old.heartbeat());
    const fresh = new FakeOwner('new', 6n);
    const adopted = agent.handleMessage(fresh.heartbeat());
    expect(adopted.events).toContainEqual({ type: 'owner-adopted', owner: 'new', ownerRevision: 6n });
    expect(adopted.outbox[0]?.header).toMatchObject({ to: 'new', ownerRevision: 6n, seq: 1, ackSeq: 1 });
    const stale = agent.handleMessage(old.dispatch([{ span: a, secondary: false, checkpointTs: 1n }]));
    expect(stale.events[0]).toMatchObject({ type: 'message-dropped', reason: 'stale-owner' });
    expect(agent.spanState(keyA)).toBe('absent');
  });

  it('learns the owner from etcd so a deposed owner cannot be heard first', () => {
    const agent = newAgent();
    agent.observeOwner('new', 9n);
    const old = new FakeOwner('old', 8n);
    expect(agent.handleMessage(old.dispatch([{ span: a, secondary: false, checkpointTs: 1n }])).events[0]).toMatchObject({ reason: 'stale-owner' });
  });

  it('drops messages for another changefeed, epoch or capture', () => {
    const owner = new FakeOwner();
    const agent = newAgent();
    const cases: [Partial<MessageHeader>, string][] = [
      [{ changefeed: 'other' }, 'wrong-changefeed'],
      [{ changefeedEpoch: 2n }, 'wrong-epoch'],
      [{ to: 'someone-else' }, 'wrong-capture'],
      [{ captureEpoch: 78n }, 'wrong-epoch'],
    ];
    for (const [overrides, reason] of cases) {
      const out = agent.handleMessage(owner.dispatch([{ span: a, secondary: false, checkpointTs: 1n }], [], overrides));
      expect(out.events[0]).toMatchObject({ type: 'message-dropped', reason });
      expect(out.commands).toEqual([]);
    }
    expect(agent.handleMessage(owner.dispatch([{ span: a, secondary: false, checkpointTs: 1n }], [], { captureEpoch: 77n })).commands).toHaveLength(1);
  });
});

describe('agent: heartbeats and collections', () => {
  it('answers absent for spans it lacks and forgets stopped spans no longer asked about', () => {
    const owner = new FakeOwner();
    const agent = newAgent();
    agent.handleMessage(owner.dispatch([{ span: a, secondary: true, checkpointTs: 1n }]));
    agent.handleMessage(owner.dispatch([], [a]));
    agent.handlePipelineEvent({ kind: 'stopped', key: keyA, checkpointTs: 1n });
    const asked = agent.handleMessage(owner.heartbeat([a, b], { spansComplete: false }));
    expect(states(asked.outbox[0])).toEqual([
      ['a', 'stopped', '1'],
      ['b', 'absent', '0'],
    ]);
    agent.handleMessage(owner.heartbeat([b], { spansComplete: false }));
    expect(agent.spanState(keyA)).toBe('stopped');
    agent.handleMessage(owner.heartbeat([b], { spansComplete: true }));
    expect(agent.spanState(keyA)).toBe('absent');
  });

  it('sends a full collection in parts built from one snapshot', () => {
    const owner = new FakeOwner();
    const agent = newAgent(2);
    agent.handleMessage(owner.dispatch([a, b, c].map((span) => ({ span, secondary: true, checkpointTs: 3n }))));
    const out = agent.handleMessage(owner.heartbeat([], { collectId: 42 }));
    expect(out.outbox.map((r) => r.collect)).toEqual([
      { id: 42, part: 0, parts: 2 },
      { id: 42, part: 1, parts: 2 },
    ]);
    expect(out.outbox.map((r) => r.header.seq)).toEqual([3, 4]);
    expect(out.outbox.flatMap((r) => r.statuses.map((s) => s.span.start))).toEqual(['a', 'b', 'c']);
    const empty = newAgent().handleMessage(new FakeOwner().heartbeat([], { collectId: 7 }));
    expect(empty.outbox.map((r) => [r.collect, r.statuses.length])).toEqual([[{ id: 7, part: 0, parts: 1 }, 0]]);
  });

  it('emits a barrier command when the barrier changes', () => {
    const owner = new FakeOwner();
    const agent = newAgent();
    expect(agent.handleMessage(owner.heartbeat([], { barrierTs: 100n })).commands).toEqual([{ kind: 'barrier', barrierTs: 100n }]);
    expect(agent.handleMessage(owner.heartbeat([], { barrierTs: 100n })).commands).toEqual([]);
  });

  it('chunks reports by statusesPerMessageMax', () => {
    const owner = new FakeOwner();
    const agent = newAgent(2);
    const out = agent.handleMessage(owner.dispatch([a, b, c].map((span) => ({ span, secondary: true, checkpointTs: 3n }))));
    expect(out.outbox.map((r) => r.statuses.length)).toEqual([2, 1]);
  });
});

describe('agent: watermark', () => {
  it('is the min over replicating spans, tagged with their digest', () => {
    const owner = new FakeOwner();
    const agent = newAgent();
    agent.handleMessage(owner.dispatch([a, b, c].map((span) => ({ span, secondary: false, checkpointTs: 10n }))));
    for (const span of [a, b]) agent.handlePipelineEvent({ kind: 'prepared', key: spanKey(span), resolvedTs: 10n });
    agent.handlePipelineEvent({ kind: 'progress', key: keyA, checkpointTs: 50n, resolvedTs: 60n });
    agent.handlePipelineEvent({ kind: 'progress', key: keyB, checkpointTs: 40n, resolvedTs: 70n });
    const expected = new MutableDigest();
    expected.add(keyA);
    expected.add(keyB);
    expect(agent.watermark()).toEqual({ checkpointTs: 40n, resolvedTs: 60n, digest: expected.snapshot() });
    // A failed span leaves the aggregate.
    agent.handlePipelineEvent({ kind: 'failed', key: keyB, error: 'x', retryable: true });
    expected.remove(keyB);
    expect(agent.watermark()).toEqual({ checkpointTs: 50n, resolvedTs: 60n, digest: expected.snapshot() });
  });

  it('stopAll stops every pipeline and forgets every span', () => {
    const owner = new FakeOwner();
    const agent = newAgent();
    agent.handleMessage(owner.dispatch([a, b].map((span) => ({ span, secondary: false, checkpointTs: 10n }))));
    agent.handlePipelineEvent({ kind: 'prepared', key: keyA, resolvedTs: 10n });
    const out = agent.stopAll();
    expect(out.commands.map((cmd) => cmd.kind)).toEqual(['stop', 'stop']);
    expect(agent.statuses()).toEqual([]);
    expect(agent.watermark().digest.count).toBe(0);
  });
});

describe('agent: pipelines retrying through an outage', () => {
  it('reports how many spans retry and the latest error, until they progress or stop', () => {
    const owner = new FakeOwner();
    const agent = newAgent();
    agent.handleMessage(owner.dispatch([a, b, c].map((span) => ({ span, secondary: false, checkpointTs: 10n }))));
    for (const span of [a, b, c]) agent.handlePipelineEvent({ kind: 'prepared', key: spanKey(span), resolvedTs: 10n });
    const answer = (): ReportMessage | undefined => agent.handleMessage(owner.heartbeat()).outbox[0];
    expect(answer()?.failing).toBeUndefined();

    // Retrying changes no span's state: no report of its own, the next answer carries it.
    expect(agent.handlePipelineEvent({ kind: 'retrying', key: keyA, error: 'sink down' }).outbox).toEqual([]);
    agent.handlePipelineEvent({ kind: 'retrying', key: keyB, error: 'x'.repeat(600) });
    agent.handlePipelineEvent({ kind: 'retrying', key: keyA, error: 'sink still down' });
    expect(answer()?.failing).toEqual({ spans: 2, error: 'sink still down' });
    expect(agent.spanState(keyA)).toBe('replicating');

    // Progress alone proves nothing (a step with nothing to write); recovery clears the
    // span, and a span that stops leaves the count too.
    agent.handlePipelineEvent({ kind: 'progress', key: keyA, checkpointTs: 20n, resolvedTs: 20n });
    expect(answer()?.failing?.spans).toBe(2);
    agent.handlePipelineEvent({ kind: 'recovered', key: keyA });
    expect(answer()?.failing).toEqual({ spans: 1, error: 'x'.repeat(512) });
    agent.handlePipelineEvent({ kind: 'failed', key: keyB, error: 'gave up', retryable: true });
    expect(answer()?.failing).toBeUndefined();

    // Errors are cut to a bounded length.
    agent.handlePipelineEvent({ kind: 'retrying', key: spanKey(c), error: 'y'.repeat(600) });
    expect(answer()?.failing?.error).toHaveLength(512);
  });
});

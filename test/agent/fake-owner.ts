/**
 * Fixtures of the agent tests: three adjacent spans and an owner that numbers its
 * messages like the coordinator does.
 */
import type { AddSpanRequest, HeartbeatMessage, MessageHeader, OwnerMessage, ReportMessage } from '../../src/core/messages.ts';
import type { Span } from '../../src/core/span.ts';
import { spanKey } from '../../src/core/span.ts';
import { emptyDigest } from '../../src/core/span-digest.ts';
import { maxTs } from '../../src/core/ts.ts';

export const a: Span = { table: 't', start: 'a', end: 'b' };
export const b: Span = { table: 't', start: 'b', end: 'c' };
export const c: Span = { table: 't', start: 'c', end: 'd' };
export const keyA = spanKey(a);
export const keyB = spanKey(b);
export const keyC = spanKey(c);

export class FakeOwner {
  seq = 0;
  /** The last report seq this owner has seen, sent back as `ackSeq`. */
  ack = 0;

  /** `spansComplete`: what a heartbeat claims about its span list unless told otherwise. */
  constructor(
    readonly id = 'owner',
    readonly revision = 5n,
    readonly spansComplete = true,
  ) {}

  header(overrides: Partial<MessageHeader> = {}): MessageHeader {
    return {
      changefeed: 'cf',
      ownerRevision: this.revision,
      changefeedEpoch: 1n,
      captureEpoch: 0n,
      from: this.id,
      to: 'cap',
      seq: ++this.seq,
      ackSeq: this.ack,
      ...overrides,
    };
  }

  dispatch(adds: AddSpanRequest[], removes: Span[] = [], overrides: Partial<MessageHeader> = {}): OwnerMessage {
    return { kind: 'dispatch', header: this.header(overrides), adds, removes };
  }

  heartbeat(spans: Span[] = [], extra: Partial<Omit<HeartbeatMessage, 'kind' | 'header'>> = {}): OwnerMessage {
    return {
      kind: 'heartbeat',
      header: this.header(),
      spans,
      spansComplete: this.spansComplete,
      primaryDigest: emptyDigest,
      draining: false,
      barrierTs: maxTs,
      collectId: 0,
      ...extra,
    };
  }

  /** Records the last report seen, as the owner acknowledges it in later messages. */
  saw(reports: readonly ReportMessage[]): void {
    for (const report of reports) this.ack = Math.max(this.ack, report.header.seq);
  }
}

/**
 * Fixtures of the coordinator tests: one table split in four spans, a coordinator over it,
 * and a hand-driven capture that builds the reports the coordinator fences on. They share
 * one module because the capture's headers must name the changefeed, epoch, owner and
 * revision the coordinator was built with.
 */
import { Coordinator } from '../../src/core/coordinator.ts';
import type { CoordinatorLimits } from '../../src/core/coordinator.ts';
import type { AgentSpanState, CaptureWatermark, CollectPart, HeartbeatMessage, MessageHeader, OwnerMessage, ReportMessage, SpanStatus } from '../../src/core/messages.ts';
import type { Span, TableRange } from '../../src/core/span.ts';
import { spanKey, splitTable } from '../../src/core/span.ts';
import type { SpanDigest } from '../../src/core/span-digest.ts';
import { MutableDigest, emptyDigest } from '../../src/core/span-digest.ts';
import { maxTs } from '../../src/core/ts.ts';

/** The coordinator's identity, as `newCoordinator` builds it and `FakeCapture` addresses it. */
export const OWNER = 'owner';
export const REVISION = 3n;
export const CF = 'cf';
export const CF_EPOCH = 1n;

/** The one table of the coordinator tests, and its four spans [a,g) [g,n) [n,t) [t,z). */
export const table: TableRange = { name: 't', start: 'a', end: 'z' };
export const spans = splitTable(table, ['g', 'n', 't']);
export const [s0, s1, s2, s3] = spans as [Span, Span, Span, Span];

/** The digest of the given spans, as a capture or the owner would compute it. */
export function digestOf(list: readonly Span[]): SpanDigest {
  const digest = new MutableDigest();
  for (const span of list) digest.add(spanKey(span));
  return digest.snapshot();
}

/** What `FakeCapture.report` may be told to put in a report instead of its own values. */
export interface ReportOptions {
  header?: Partial<MessageHeader>;
  collect?: CollectPart;
  liveness?: 'alive' | 'stopping';
  watermark?: CaptureWatermark;
}

/** A hand-driven capture that fills in the header fields the owner fences on. */
export class FakeCapture {
  seq = 0;
  ack = 0;
  readonly held = new Map<string, SpanStatus>();

  constructor(
    readonly id: string,
    readonly epoch: bigint,
  ) {}

  /** Records the capture's own state for a span (what its reports and aggregate say). */
  hold(span: Span, state: AgentSpanState, checkpointTs = 100n, resolvedTs = checkpointTs): SpanStatus {
    const status: SpanStatus = { span, state, checkpointTs, resolvedTs };
    if (state === 'absent' || state === 'stopped') this.held.delete(spanKey(span));
    else this.held.set(spanKey(span), status);
    return status;
  }

  /** The aggregate over the spans it replicates. */
  watermark(): CaptureWatermark {
    const replicating = [...this.held.values()].filter((s) => s.state === 'replicating');
    if (replicating.length === 0) return { checkpointTs: 0n, resolvedTs: 0n, digest: emptyDigest };
    let checkpointTs = maxTs;
    let resolvedTs = maxTs;
    for (const s of replicating) {
      if (s.checkpointTs < checkpointTs) checkpointTs = s.checkpointTs;
      if (s.resolvedTs < resolvedTs) resolvedTs = s.resolvedTs;
    }
    return { checkpointTs, resolvedTs, digest: digestOf(replicating.map((s) => s.span)) };
  }

  /** A report of the given statuses with the next seq and the current aggregate (none: only the aggregate). */
  report(statuses: readonly SpanStatus[] = [], options: ReportOptions = {}): ReportMessage {
    const header: MessageHeader = {
      changefeed: CF,
      ownerRevision: REVISION,
      changefeedEpoch: CF_EPOCH,
      captureEpoch: this.epoch,
      from: this.id,
      to: OWNER,
      seq: options.header?.seq ?? ++this.seq,
      ackSeq: this.ack,
      ...options.header,
    };
    const message: ReportMessage = {
      kind: 'report',
      header,
      statuses,
      watermark: options.watermark ?? this.watermark(),
      liveness: options.liveness ?? 'alive',
      ...(options.collect === undefined ? {} : { collect: options.collect }),
    };
    return message;
  }

  /** A full collection of every held span in `parts` reports with consecutive seq. */
  collect(id: number, parts = 1): ReportMessage[] {
    const all = [...this.held.values()];
    const per = Math.ceil(all.length / parts);
    return Array.from({ length: parts }, (_, part) => this.report(all.slice(part * per, (part + 1) * per), { collect: { id, part, parts } }));
  }

  /** Takes the owner messages for this capture and acknowledges them. */
  receive(outbox: readonly OwnerMessage[]): OwnerMessage[] {
    const mine = outbox.filter((m) => m.header.to === this.id);
    for (const m of mine) this.ack = Math.max(this.ack, m.header.seq);
    return mine;
  }

  /** Takes the owner messages for this capture, returning the collection id of the latest heartbeat (0: none asked). */
  collectAsked(outbox: readonly OwnerMessage[]): number {
    const heartbeats = this.receive(outbox).filter((m): m is HeartbeatMessage => m.kind === 'heartbeat');
    return heartbeats.at(-1)?.collectId ?? 0;
  }
}

/** A coordinator over `table` that heartbeats every tick and balances only when asked. */
export function newCoordinator(limits: Partial<CoordinatorLimits> = {}, checkpointTs = 100n, seed = 7): Coordinator {
  const coordinator = new Coordinator({
    changefeed: CF,
    changefeedEpoch: CF_EPOCH,
    ownerId: OWNER,
    ownerRevision: REVISION,
    checkpointTs,
    seed,
    limits: { heartbeatIntervalTicks: 1, balanceIntervalTicks: 0, collectRetryTicks: 1, ...limits },
  });
  coordinator.setSpans([table], spans);
  return coordinator;
}

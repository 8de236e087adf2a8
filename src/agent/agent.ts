/**
 * The capture-side agent of one changefeed: answers the owner and drives the span
 * pipelines (DESIGN.md §3, agent side). Pure: messages and pipeline events in, reports,
 * pipeline commands and events out.
 *
 * ```
 * absent/stopped ──add──► preparing ──source resolved──► prepared ──promote──► replicating
 * preparing ──add(secondary: false)──► (promotes itself once prepared)
 * preparing | prepared | replicating ──remove──► stopping ──pipeline stopped──► stopped
 * stopping ──add──► (waits: one request in flight per span) ──► preparing once stopped
 * stopping ──remove──► (drops the waiting add: the remove is the newer request)
 * any ──pipeline failed──► stopped
 * absent ──add the shell refused (see owner-gate.ts)──► stopped (no pipeline: the owner aborts the add)
 * stopped ──heartbeat with spansComplete that no longer asks about it──► absent (forgotten)
 * any ──stopAll (lease lost)──► absent (forgotten, after a stop command)
 * ```
 *
 * Progress (checkpoint/resolved moving) is not a state change: it reaches the owner in
 * the watermark and in the next report that names the span, never on its own.
 *
 * Fencing: messages from a lower owner revision are dropped and a higher one is adopted
 * (also when the shell learns it from etcd through {@link Agent.observeOwner}; the
 * shell's `OwnerGate` (owner-gate.ts) lets through only the owner it saw in etcd); within
 * one revision a message whose `seq` is not above the last accepted one is dropped, so a
 * late or duplicated request can never undo a newer one.
 */
import { assert, assertNever } from '../core/assert.ts';
import type {
  AddSpanRequest,
  AgentSpanState,
  CaptureId,
  CaptureWatermark,
  DispatchMessage,
  HeartbeatMessage,
  MessageHeader,
  OwnerMessage,
  PipelinesFailing,
  ProgressReport,
  ReportMessage,
  SpanProgress,
  SpanStatus,
} from '../core/messages.ts';
import { splitKeyCharsMax } from '../core/messages.ts';
import type { Span } from '../core/span.ts';
import { spanKey } from '../core/span.ts';
import type { TsBucket } from '../core/ts-buckets.ts';
import { TsBuckets } from '../core/ts-buckets.ts';
import { MutableDigest } from '../core/span-digest.ts';
import { tsMax } from '../core/ts.ts';
import type { PipelineCommand, PipelineEvent } from './pipeline.ts';

/** What an agent is created with. */
export interface AgentConfig {
  readonly captureId: CaptureId;
  /** Random per agent start, chosen by the shell. */
  readonly captureEpoch: bigint;
  readonly changefeed: string;
  readonly changefeedEpoch: bigint;
  /** Bound on statuses in one report. */
  readonly statusesPerMessageMax: number;
  /** Per-span progress in each report: the K slowest replicating spans (0 or absent: no progress sent). */
  readonly progressSlowestMax?: number;
  /** Per-span progress in each report: a round-robin slice of the other replicating spans. */
  readonly progressSliceMax?: number;
  /** Spans writing at least this many events a second send their split key with their progress. */
  readonly splitKeyRateMin?: number;
}

/** Defaults for the limits in {@link AgentConfig}. */
export const agentDefaults: { readonly statusesPerMessageMax: number; readonly progressSlowestMax: number; readonly progressSliceMax: number; readonly splitKeyRateMin: number } = {
  statusesPerMessageMax: 1_024,
  progressSlowestMax: 32,
  progressSliceMax: 1_024,
  // The owner's split threshold (`coordinatorDefaults.splitRateMin`): below it a key is never used.
  splitKeyRateMin: 1_000,
};

/** What happened inside the agent, for the shell to log; the agent itself never logs. */
export type AgentEvent =
  | { readonly type: 'span-state-changed'; readonly span: Span; readonly from: AgentSpanState; readonly to: AgentSpanState }
  | {
      readonly type: 'message-dropped';
      readonly reason: 'stale-owner' | 'stale-seq' | 'wrong-changefeed' | 'wrong-epoch' | 'wrong-capture';
      readonly header: MessageHeader;
    }
  | { readonly type: 'owner-adopted'; readonly owner: CaptureId; readonly ownerRevision: bigint }
  | { readonly type: 'span-failed'; readonly span: Span; readonly error: string };

/** Why the agent ignored an owner's message. */
export type AgentDropReason = Extract<AgentEvent, { type: 'message-dropped' }>['reason'];

/** The result of every input: reports to send, pipeline commands to run, events to log. */
export interface AgentOutput {
  readonly outbox: ReportMessage[];
  readonly commands: PipelineCommand[];
  readonly events: AgentEvent[];
}

/** One span held by this capture. */
interface AgentSpan {
  readonly span: Span;
  readonly key: string;
  state: AgentSpanState;
  checkpointTs: bigint;
  resolvedTs: bigint;
  /** Set by a plain add while preparing: promote at this checkpoint once prepared. */
  promoteTs: bigint | undefined;
  /** An add that arrived while stopping; it runs once stopped. */
  pending: AddSpanRequest | undefined;
  /** The last report seq sent before the span stopped: older requests cannot restart it. */
  stoppedAfterSeq: number;
  /** Why its pipeline failed for good, reported until the span starts again. */
  fatalError: string | undefined;
  /** Its bucket in the agent's checkpoint order, undefined when not replicating. */
  checkpointSlot: TsBucket<AgentSpan> | undefined;
  checkpointIndex: number;
  /** Its bucket in the agent's resolved order, undefined when not replicating. */
  resolvedSlot: TsBucket<AgentSpan> | undefined;
  resolvedIndex: number;
  /** Events written a second, as its pipeline last said (display, and the owner's split policy). */
  eventsPerSecond: number;
  /** Bytes written a second, when its pipeline measures them. */
  bytesPerSecond: number | undefined;
  /** The split key of its pipeline's last key sample, and the distinct keys in that sample. */
  splitKey: string | undefined;
  sampleKeys: number;
}

/**
 * A held span's progress as a report carries it; the split key only for a span writing
 * at least `splitKeyRateMin` events a second (the owner splits no other), and one not
 * too long for the wire.
 */
function progressOf(held: AgentSpan, splitKeyRateMin: number): SpanProgress {
  const progress: SpanProgress = { span: held.span, checkpointTs: held.checkpointTs, resolvedTs: effectiveResolvedTs(held), eventsPerSecond: held.eventsPerSecond };
  const withBytes = held.bytesPerSecond === undefined ? progress : { ...progress, bytesPerSecond: held.bytesPerSecond };
  const key = held.splitKey;
  if (key === undefined || held.eventsPerSecond < splitKeyRateMin || key.length > splitKeyCharsMax) return withBytes;
  return { ...withBytes, splitKey: key, sampleKeys: held.sampleKeys };
}

/** What the resolved heap orders by: a span's resolved-ts is never reported below its checkpoint. */
function effectiveResolvedTs(held: AgentSpan): bigint {
  return tsMax(held.resolvedTs, held.checkpointTs);
}

/** The longest pipeline error a report carries. */
export const failingErrorCharsMax = 512;

/** The capture-side state machine of one changefeed. */
export class Agent {
  readonly captureId: CaptureId;
  private readonly config: AgentConfig;
  private readonly spans = new Map<string, AgentSpan>();
  private readonly changed = new Set<string>();
  /** Keys of spans in state `stopped`, so forgetting them never scans every span. */
  private readonly stoppedKeys = new Set<string>();
  /**
   * Spans whose pipeline retries a failed step in place, with its error, the latest last;
   * cleared when the pipeline recovers, or the span stops.
   */
  private readonly retrying = new Map<string, string>();
  private readonly digest = new MutableDigest();
  /** Where the round-robin slice of per-span progress goes on. */
  private progressCursor: IterableIterator<AgentSpan> | undefined;
  private ownerId: CaptureId | undefined;
  private ownerRevision = 0n;
  private lastSeqIn = 0;
  private seqOut = 0;
  private stopping = false;
  private barrierTs: bigint | undefined;
  private cachedWatermark: CaptureWatermark | undefined;
  /**
   * The replicating spans by checkpoint and by max(resolved, checkpoint): the watermark is
   * their two least keys, kept in O(1) per progress event (spans are bucketed by key, and
   * quiet spans move on in bulk to few distinct keys; see ts-buckets.ts), so no event
   * rescans every span held (issue 11).
   */
  private readonly byCheckpoint = new TsBuckets<AgentSpan>((held) => held.checkpointTs, {
    bucket: (held) => held.checkpointSlot,
    index: (held) => held.checkpointIndex,
    set: (held, bucket, index) => {
      held.checkpointSlot = bucket;
      held.checkpointIndex = index;
    },
  });
  private readonly byResolved = new TsBuckets<AgentSpan>(effectiveResolvedTs, {
    bucket: (held) => held.resolvedSlot,
    index: (held) => held.resolvedIndex,
    set: (held, bucket, index) => {
      held.resolvedSlot = bucket;
      held.resolvedIndex = index;
    },
  });
  private commands: PipelineCommand[] = [];
  private events: AgentEvent[] = [];

  constructor(config: AgentConfig) {
    this.config = config;
    this.captureId = config.captureId;
  }

  /** The shell saw in etcd that `owner` holds the election at `revision`. */
  observeOwner(owner: CaptureId, revision: bigint): AgentOutput {
    if (revision > this.ownerRevision) this.adopt(owner, revision);
    return this.output([]);
  }

  /**
   * Handles one message from an owner. `refusedAdds`: spans of adds the shell refused
   * (outside the changefeed's tables, or over the capture's bound). Nothing starts for
   * them; a span not held is reported `stopped` (not `absent`, which the owner answers by
   * sending the add again), so the owner aborts the add and places it again later.
   */
  handleMessage(message: OwnerMessage, refusedAdds: readonly Span[] = []): AgentOutput {
    const dropped = this.fence(message.header);
    if (dropped !== undefined) {
      this.events.push({ type: 'message-dropped', reason: dropped, header: message.header });
      return this.output([]);
    }
    switch (message.kind) {
      case 'dispatch':
        return this.output(this.handleDispatch(message, refusedAdds));
      case 'heartbeat':
        return this.output(this.handleHeartbeat(message));
      default:
        return assertNever(message, 'owner message');
    }
  }

  /** Handles what a span pipeline reported. */
  handlePipelineEvent(event: PipelineEvent): AgentOutput {
    this.applyPipelineEvent(event);
    return this.output([]);
  }

  /**
   * Events of the pipelines in the order they happened, as one output: a bulk check of
   * quiet spans moves thousands of them on at once, and one output for all of them spares
   * an output (and a pass through the shell) per span.
   */
  handlePipelineEvents(events: readonly PipelineEvent[]): AgentOutput {
    for (const event of events) this.applyPipelineEvent(event);
    return this.output([]);
  }

  private applyPipelineEvent(event: PipelineEvent): void {
    const held = this.spans.get(event.key);
    if (held === undefined) return;
    if (event.kind === 'retrying' || event.kind === 'recovered') {
      // The latest error last: delete first, so setting moves it to the end.
      this.retrying.delete(held.key);
      if (event.kind === 'retrying') this.retrying.set(held.key, event.error);
      return;
    }
    // A pipeline that stopped or failed is gone, and its failures with it.
    if (event.kind === 'stopped' || event.kind === 'failed') this.retrying.delete(held.key);
    switch (event.kind) {
      case 'prepared':
        if (held.state !== 'preparing') break;
        held.resolvedTs = tsMax(held.resolvedTs, event.resolvedTs);
        this.setState(held, 'prepared');
        if (held.promoteTs !== undefined) this.promote(held, held.promoteTs);
        break;
      case 'progress':
        if (event.eventsPerSecond !== undefined) {
          held.eventsPerSecond = event.eventsPerSecond;
          held.bytesPerSecond = event.bytesPerSecond;
          // A window whose sample named no key leaves none: an old key may lie outside what the span writes now.
          held.splitKey = event.splitKey;
          held.sampleKeys = event.sampleKeys ?? 0;
        }
        if (held.state === 'replicating' || held.state === 'stopping') {
          const checkpointTs = tsMax(held.checkpointTs, event.checkpointTs);
          const resolvedTs = tsMax(held.resolvedTs, event.resolvedTs);
          if (checkpointTs === held.checkpointTs && resolvedTs === held.resolvedTs) break;
          const checkpointMoved = checkpointTs !== held.checkpointTs;
          const resolvedBefore = effectiveResolvedTs(held);
          held.checkpointTs = checkpointTs;
          held.resolvedTs = resolvedTs;
          // Only a replicating span is in the heaps (a stopping one left them); keys only grow.
          if (held.state === 'replicating') {
            if (checkpointMoved) this.byCheckpoint.update(held);
            if (effectiveResolvedTs(held) !== resolvedBefore) this.byResolved.update(held);
            this.cachedWatermark = undefined;
          }
        } else if (held.state === 'preparing' || held.state === 'prepared') {
          held.resolvedTs = tsMax(held.resolvedTs, event.resolvedTs);
        }
        break;
      case 'stopped': {
        if (held.state !== 'stopping') break;
        held.checkpointTs = tsMax(held.checkpointTs, event.checkpointTs);
        this.setState(held, 'stopped');
        const pending = held.pending;
        held.pending = undefined;
        // The add waited for this stop, so it is newer than the stop: no ack check.
        if (pending !== undefined) this.add(pending, Infinity);
        break;
      }
      case 'failed':
        this.events.push({ type: 'span-failed', span: held.span, error: event.error });
        held.pending = undefined;
        held.promoteTs = undefined;
        held.fatalError = event.retryable ? undefined : event.error;
        if (held.state !== 'stopped') this.setState(held, 'stopped');
        else this.changed.add(held.key);
        break;
      default:
        assertNever(event, 'pipeline event');
    }
  }

  /** An unsolicited report of the spans that changed state since the last report. */
  flush(): AgentOutput {
    if (this.changed.size === 0 || this.ownerId === undefined) return this.output([]);
    const statuses: SpanStatus[] = [];
    for (const key of this.changed) {
      if (statuses.length >= this.config.statusesPerMessageMax) break;
      statuses.push(this.statusOf(key));
    }
    for (const status of statuses) this.changed.delete(spanKey(status.span));
    return this.output(this.reports(statuses));
  }

  /** From now on reports say the capture is shutting down. */
  setStopping(): void {
    this.stopping = true;
  }

  /** Self-fence after losing the lease: stop every pipeline at once and forget every span. */
  stopAll(): AgentOutput {
    for (const held of this.spans.values()) {
      if (held.state !== 'stopped') this.commands.push({ kind: 'stop', span: held.span, key: held.key });
      if (held.state === 'replicating') this.digest.remove(held.key);
    }
    this.byCheckpoint.clear();
    this.byResolved.clear();
    this.spans.clear();
    this.changed.clear();
    this.stoppedKeys.clear();
    this.cachedWatermark = undefined;
    return this.output([]);
  }

  /** Every span held, for the API and tests. */
  statuses(): SpanStatus[] {
    return [...this.spans.keys()].map((key) => this.statusOf(key));
  }

  /** Spans held (stopped ones until forgotten), for the capture's bound. */
  get size(): number {
    return this.spans.size;
  }

  /** The state of one span; `absent` when not held. */
  spanState(key: string): AgentSpanState {
    return this.spans.get(key)?.state ?? 'absent';
  }

  /** Min checkpoint and resolved over the spans replicated as primary, with their digest. */
  watermark(): CaptureWatermark {
    if (this.cachedWatermark !== undefined) return this.cachedWatermark;
    const slowest = this.byCheckpoint.peek();
    const leastResolved = this.byResolved.peek();
    this.cachedWatermark = {
      checkpointTs: slowest?.checkpointTs ?? 0n,
      resolvedTs: leastResolved === undefined ? 0n : effectiveResolvedTs(leastResolved),
      digest: this.digest.snapshot(),
    };
    return this.cachedWatermark;
  }

  /**
   * Checks that the heaps hold exactly the replicating spans and that their roots are the
   * minima. O(spans): for tests and the simulator, never on the shell's path.
   */
  checkInvariants(): void {
    let replicating = 0;
    let checkpointTs: bigint | undefined;
    let resolvedTs: bigint | undefined;
    for (const held of this.spans.values()) {
      const inHeaps = this.byCheckpoint.has(held) && this.byResolved.has(held);
      assert(inHeaps === (held.state === 'replicating'), 'a span is in the watermark heaps exactly while replicating', { key: held.key, state: held.state, inHeaps });
      if (held.state !== 'replicating') continue;
      replicating++;
      if (checkpointTs === undefined || held.checkpointTs < checkpointTs) checkpointTs = held.checkpointTs;
      const resolved = effectiveResolvedTs(held);
      if (resolvedTs === undefined || resolved < resolvedTs) resolvedTs = resolved;
    }
    assert(this.byCheckpoint.size === replicating && this.byResolved.size === replicating, 'the watermark heaps hold only held spans', {
      replicating,
      byCheckpoint: this.byCheckpoint.size,
      byResolved: this.byResolved.size,
    });
    const mark = this.watermark();
    assert(mark.checkpointTs === (checkpointTs ?? 0n) && mark.resolvedTs === (resolvedTs ?? 0n), 'the watermark is the min over replicating spans', {
      watermark: { checkpointTs: mark.checkpointTs, resolvedTs: mark.resolvedTs },
      rescan: { checkpointTs, resolvedTs },
    });
  }

  // ---- message handling ----

  private fence(header: MessageHeader): AgentDropReason | undefined {
    if (header.changefeed !== this.config.changefeed) return 'wrong-changefeed';
    if (header.changefeedEpoch !== this.config.changefeedEpoch) return 'wrong-epoch';
    if (header.to !== this.captureId) return 'wrong-capture';
    if (header.captureEpoch !== 0n && header.captureEpoch !== this.config.captureEpoch) return 'wrong-epoch';
    if (header.ownerRevision < this.ownerRevision) return 'stale-owner';
    if (header.ownerRevision > this.ownerRevision) this.adopt(header.from, header.ownerRevision);
    else if (header.seq <= this.lastSeqIn) return 'stale-seq';
    this.ownerId = header.from;
    this.lastSeqIn = header.seq;
    return undefined;
  }

  private adopt(owner: CaptureId, revision: bigint): void {
    this.ownerId = owner;
    this.ownerRevision = revision;
    this.lastSeqIn = 0;
    this.seqOut = 0;
    // A new owner learns every stop from its first collection before it adds anything.
    for (const held of this.spans.values()) held.stoppedAfterSeq = 0;
    this.events.push({ type: 'owner-adopted', owner, ownerRevision: revision });
  }

  private handleDispatch(message: DispatchMessage, refusedAdds: readonly Span[]): ReportMessage[] {
    for (const span of message.removes) this.remove(spanKey(span));
    for (const add of message.adds) this.add(add, message.header.ackSeq);
    for (const span of refusedAdds) this.refuse(span);
    return this.reports(this.answer([...message.removes, ...message.adds.map((add) => add.span), ...refusedAdds]));
  }

  private handleHeartbeat(message: HeartbeatMessage): ReportMessage[] {
    if (this.barrierTs !== message.barrierTs) {
      this.barrierTs = message.barrierTs;
      this.commands.push({ kind: 'barrier', barrierTs: message.barrierTs });
    }
    if (message.collectId !== 0) return this.collection(message.collectId);
    // Per-span progress rides on heartbeat answers only (one a heartbeat interval), never on
    // dispatch answers or flushes: during a placement those are many a second, and each
    // would carry K + slice entries.
    const reports = this.reports(this.answer(message.spans), true);
    if (message.spansComplete && this.stoppedKeys.size > 0) {
      const keep = new Set(message.spans.map(spanKey));
      for (const key of [...this.stoppedKeys]) {
        if (keep.has(key) || this.changed.has(key)) continue;
        this.spans.delete(key);
        this.stoppedKeys.delete(key);
      }
    }
    return reports;
  }

  /** Statuses of the named spans (`absent` when not held) plus queued changes (bounded), each span once. */
  private answer(named: readonly Span[]): SpanStatus[] {
    const statuses: SpanStatus[] = [];
    const seen = new Set<string>();
    for (const span of named) {
      const key = spanKey(span);
      if (seen.has(key)) continue;
      seen.add(key);
      statuses.push(this.spans.has(key) ? this.statusOf(key) : absentStatus(span));
    }
    let extra = 0;
    for (const key of this.changed) {
      if (extra >= this.config.statusesPerMessageMax) break;
      if (seen.has(key)) continue;
      statuses.push(this.statusOf(key));
      seen.add(key);
      extra++;
    }
    for (const key of seen) this.changed.delete(key);
    return statuses;
  }

  /** A full collection: every span held, in parts built from one snapshot. */
  private collection(id: number): ReportMessage[] {
    const statuses = this.statuses();
    this.changed.clear();
    const max = this.config.statusesPerMessageMax;
    const parts = Math.max(1, Math.ceil(statuses.length / max));
    const reports: ReportMessage[] = [];
    for (let part = 0; part < parts; part++) {
      reports.push(this.report(statuses.slice(part * max, (part + 1) * max), { id, part, parts }));
    }
    return reports;
  }

  // ---- span transitions ----

  /** `ackSeq`: the last report of ours the owner had seen when it sent the request. */
  private add(request: AddSpanRequest, ackSeq: number): void {
    const key = spanKey(request.span);
    let held = this.spans.get(key);
    if (held === undefined) {
      held = {
        span: request.span,
        key,
        state: 'absent',
        checkpointTs: request.checkpointTs,
        resolvedTs: request.checkpointTs,
        promoteTs: undefined,
        pending: undefined,
        stoppedAfterSeq: 0,
        fatalError: undefined,
        checkpointSlot: undefined,
        checkpointIndex: -1,
        resolvedSlot: undefined,
        resolvedIndex: -1,
        eventsPerSecond: 0,
        bytesPerSecond: undefined,
        splitKey: undefined,
        sampleKeys: 0,
      };
      this.spans.set(key, held);
    }
    if (held.state === 'stopped' && ackSeq <= held.stoppedAfterSeq) {
      // Sent before the owner saw this span stop: it may already have given the span to
      // another capture. Report the stop again instead; a newer add will follow if wanted.
      this.changed.add(key);
      return;
    }
    switch (held.state) {
      case 'absent':
      case 'stopped':
        held.fatalError = undefined;
        held.checkpointTs = request.checkpointTs;
        held.resolvedTs = request.checkpointTs;
        held.promoteTs = request.secondary ? undefined : request.checkpointTs;
        this.setState(held, 'preparing');
        // A new pipeline starts with no failures behind it.
        this.retrying.delete(key);
        this.commands.push({ kind: 'prepare', span: held.span, key, checkpointTs: request.checkpointTs });
        return;
      case 'preparing':
        if (!request.secondary) held.promoteTs = request.checkpointTs;
        return;
      case 'prepared':
        if (!request.secondary) this.promote(held, request.checkpointTs);
        return;
      case 'replicating':
        return;
      case 'stopping':
        held.pending = request;
        return;
      default:
        assertNever(held.state, 'agent span state');
    }
  }

  /**
   * An add the shell refused: a span not held becomes `stopped` without a pipeline (a
   * table removed while its add was in flight must not be re-sent forever); a held one
   * keeps its state, and the owner removes it if it is no longer wanted.
   */
  private refuse(span: Span): void {
    const key = spanKey(span);
    let held = this.spans.get(key);
    if (held === undefined) {
      held = { span, key, state: 'absent', checkpointTs: 0n, resolvedTs: 0n, promoteTs: undefined, pending: undefined, stoppedAfterSeq: 0, fatalError: undefined, checkpointSlot: undefined, checkpointIndex: -1, resolvedSlot: undefined, resolvedIndex: -1, eventsPerSecond: 0, bytesPerSecond: undefined, splitKey: undefined, sampleKeys: 0 };
      this.spans.set(key, held);
    }
    if (held.state === 'absent') this.setState(held, 'stopped');
    else if (held.state === 'stopped') this.changed.add(key);
  }

  private remove(key: string): void {
    const held = this.spans.get(key);
    if (held === undefined) return;
    switch (held.state) {
      case 'preparing':
      case 'prepared':
      case 'replicating':
        held.pending = undefined;
        held.promoteTs = undefined;
        this.setState(held, 'stopping');
        this.commands.push({ kind: 'stop', span: held.span, key });
        return;
      case 'absent':
      case 'stopping':
      case 'stopped':
        held.pending = undefined;
        return;
      default:
        assertNever(held.state, 'agent span state');
    }
  }

  /**
   * Not max(checkpoint, checkpointTs): before promotion the checkpoint is only where the
   * source started reading, nothing this capture flushed. The writer starts at
   * `checkpointTs`, so reporting anything higher would claim events nobody wrote yet.
   */
  private promote(held: AgentSpan, checkpointTs: bigint): void {
    held.promoteTs = undefined;
    held.checkpointTs = checkpointTs;
    held.resolvedTs = tsMax(held.resolvedTs, checkpointTs);
    this.setState(held, 'replicating');
    this.commands.push({ kind: 'promote', span: held.span, key: held.key, checkpointTs });
  }

  private setState(held: AgentSpan, to: AgentSpanState): void {
    const from = held.state;
    if (from === to) return;
    if (from === 'replicating') {
      this.digest.remove(held.key);
      this.byCheckpoint.remove(held);
      this.byResolved.remove(held);
    }
    if (to === 'replicating') {
      this.digest.add(held.key);
      this.byCheckpoint.push(held);
      this.byResolved.push(held);
    }
    held.state = to;
    if (from === 'stopped') this.stoppedKeys.delete(held.key);
    if (to === 'stopped') {
      held.stoppedAfterSeq = this.seqOut;
      this.stoppedKeys.add(held.key);
    }
    this.changed.add(held.key);
    this.cachedWatermark = undefined;
    this.events.push({ type: 'span-state-changed', span: held.span, from, to });
  }

  // ---- reports ----

  private statusOf(key: string): SpanStatus {
    const held = this.spans.get(key);
    assert(held !== undefined, 'status of a span the agent does not hold', { key });
    const status: SpanStatus = { span: held.span, state: held.state, checkpointTs: held.checkpointTs, resolvedTs: tsMax(held.resolvedTs, held.checkpointTs) };
    return held.fatalError === undefined ? status : { ...status, fatalError: held.fatalError };
  }

  /** Reports carrying `statuses`, at most statusesPerMessageMax each (at least one); the first with per-span progress when asked. */
  private reports(statuses: readonly SpanStatus[], withProgress = false): ReportMessage[] {
    if (this.ownerId === undefined) return [];
    const max = this.config.statusesPerMessageMax;
    const reports: ReportMessage[] = [];
    for (let i = 0; i === 0 || i < statuses.length; i += max) reports.push(this.report(statuses.slice(i, i + max), undefined, withProgress && i === 0));
    return reports;
  }

  private report(statuses: readonly SpanStatus[], collect?: ReportMessage['collect'], withProgress = false): ReportMessage {
    const header: MessageHeader = {
      changefeed: this.config.changefeed,
      ownerRevision: this.ownerRevision,
      changefeedEpoch: this.config.changefeedEpoch,
      captureEpoch: this.config.captureEpoch,
      from: this.captureId,
      to: this.ownerId ?? '',
      seq: ++this.seqOut,
      ackSeq: this.lastSeqIn,
    };
    const base = { kind: 'report', header, statuses, watermark: this.watermark(), liveness: this.stopping ? 'stopping' : 'alive' } as const;
    const failing = this.failing();
    const withFailing = failing === undefined ? base : { ...base, failing };
    if (collect !== undefined) return { ...withFailing, collect };
    const progress = withProgress ? this.progress() : undefined;
    return progress === undefined ? withFailing : { ...withFailing, progress };
  }

  /**
   * Per-span progress for one report (display only): the K slowest replicating spans,
   * from the checkpoint heap in O(K log K), and the next slice of the others, round-robin
   * over the held spans (a Map iterator survives adds and removes), so every span is
   * refreshed within spans / slice reports without any report walking them all.
   */
  private progress(): ProgressReport | undefined {
    const slowestMax = this.config.progressSlowestMax ?? 0;
    if (slowestMax <= 0) return undefined;
    const splitKeyRateMin = this.config.splitKeyRateMin ?? agentDefaults.splitKeyRateMin;
    const slowest = this.byCheckpoint.smallest(slowestMax).map((held) => progressOf(held, splitKeyRateMin));
    const sliceMax = this.config.progressSliceMax ?? agentDefaults.progressSliceMax;
    const slice: SpanProgress[] = [];
    // Bounded however few of the held spans replicate: at most 2 slices' worth looked at.
    for (let looked = 0; slice.length < sliceMax && looked < 2 * sliceMax && this.spans.size > 0; looked++) {
      let next = this.progressCursor?.next();
      if (next === undefined || next.done === true) {
        this.progressCursor = this.spans.values();
        next = this.progressCursor.next();
        if (next.done === true) break;
      }
      if (next.value.state === 'replicating') slice.push(progressOf(next.value, splitKeyRateMin));
    }
    return { slowest, slice };
  }

  /** The spans still held whose pipeline is retrying, or undefined when none is. */
  private failing(): PipelinesFailing | undefined {
    for (const key of this.retrying.keys()) {
      const held = this.spans.get(key);
      if (held === undefined || held.state === 'stopped') this.retrying.delete(key);
    }
    let latest = '';
    for (const error of this.retrying.values()) latest = error;
    return this.retrying.size === 0 ? undefined : { spans: this.retrying.size, error: latest.slice(0, failingErrorCharsMax) };
  }

  private output(outbox: ReportMessage[]): AgentOutput {
    const out: AgentOutput = { outbox, commands: this.commands, events: this.events };
    this.commands = [];
    this.events = [];
    return out;
  }
}

function absentStatus(span: Span): SpanStatus {
  return { span, state: 'absent', checkpointTs: 0n, resolvedTs: 0n };
}

/**
 * The owner <-> capture protocol as core data (DESIGN.md §4). The gRPC codec in
 * `src/rpc` maps these to and from `proto/spanfeed/v1`; the simulator passes them as
 * they are.
 *
 * Every message carries a {@link MessageHeader}. Receivers drop a message whose `seq` is
 * not above the last one they accepted on the same stream, so a reordered or duplicated
 * message is a lost one, and lost messages only cost a heartbeat: every handler is
 * level-triggered.
 */
import type { Span } from './span.ts';
import type { SpanDigest } from './span-digest.ts';

/** A capture's id: new on every process start. */
export type CaptureId = string;

/** Fencing and routing data on every message. */
export interface MessageHeader {
  /** The changefeed this message is about. */
  readonly changefeed: string;
  /** The owner's fencing token: the etcd revision of its election key. */
  readonly ownerRevision: bigint;
  /** The changefeed's epoch; bumped when it is re-created. */
  readonly changefeedEpoch: bigint;
  /**
   * Owner -> capture: the epoch the owner recorded for the receiver (0 before the first
   * reply). Capture -> owner: the sender's own epoch, random per agent start.
   */
  readonly captureEpoch: bigint;
  readonly from: CaptureId;
  readonly to: CaptureId;
  /** Strictly increasing per (sender, receiver, owner revision). */
  readonly seq: number;
  /**
   * The last `seq` the sender accepted from the receiver. A capture ignores an add for a
   * span it stopped after that point: the owner sent it before it could know of the stop.
   */
  readonly ackSeq: number;
}

/** Ask a capture to hold a span, as a secondary (prepare only) or as the writer. */
export interface AddSpanRequest {
  readonly span: Span;
  /** True: prepare and wait. False: become primary (directly, or by promotion). */
  readonly secondary: boolean;
  /** The position the capture reads (and, as primary, writes) strictly after. */
  readonly checkpointTs: bigint;
}

/** Owner -> capture: add and remove spans. */
export interface DispatchMessage {
  readonly kind: 'dispatch';
  readonly header: MessageHeader;
  readonly adds: readonly AddSpanRequest[];
  readonly removes: readonly Span[];
}

/** Owner -> capture, every heartbeat interval. */
export interface HeartbeatMessage {
  readonly kind: 'heartbeat';
  readonly header: MessageHeader;
  /** Spans in transition on this capture: it answers each, `absent` when it lacks one. */
  readonly spans: readonly Span[];
  /**
   * True when `spans` lists every span in transition on this capture. Only then may the
   * capture forget a stopped span the owner no longer asks about.
   */
  readonly spansComplete: boolean;
  /** What the owner believes the capture replicates as primary, as a digest. */
  readonly primaryDigest: SpanDigest;
  readonly draining: boolean;
  /** The position no span may pass (the changefeed's target-ts, or the max). */
  readonly barrierTs: bigint;
  /** Non-zero: the id of a full-status collection; the capture answers with every span. */
  readonly collectId: number;
}

/** Capture-side state of one span (DESIGN.md §3, agent side). */
export type AgentSpanState = 'absent' | 'preparing' | 'prepared' | 'replicating' | 'stopping' | 'stopped';

/** A capture's report on one span. */
export interface SpanStatus {
  readonly span: Span;
  readonly state: AgentSpanState;
  /** Replicating/stopping/stopped: flushed position. Otherwise: where it will start from. */
  readonly checkpointTs: bigint;
  readonly resolvedTs: bigint;
  /**
   * Set on a stopped span whose pipeline failed in a way no retry can fix (e.g. its start
   * revision was compacted): the owner fails the changefeed with this message.
   */
  readonly fatalError?: string;
}

/**
 * One capture-level watermark: min checkpoint and min resolved over the spans the capture
 * replicates as primary, and the digest of exactly those spans. Meaningless when the
 * digest's count is 0.
 */
export interface CaptureWatermark {
  readonly checkpointTs: bigint;
  readonly resolvedTs: bigint;
  readonly digest: SpanDigest;
}

/** One part of a full-status collection. */
export interface CollectPart {
  readonly id: number;
  /** 0-based part number. */
  readonly part: number;
  readonly parts: number;
}

/**
 * Capture -> owner: the answer to a dispatch or a heartbeat, or an unsolicited report of
 * span state changes. One shape for all of them: statuses (changes, answers, or a part of
 * a collection), the capture watermark, and liveness.
 */
export interface ReportMessage {
  readonly kind: 'report';
  readonly header: MessageHeader;
  readonly statuses: readonly SpanStatus[];
  readonly watermark: CaptureWatermark;
  /** `stopping`: the capture is shutting down and wants its spans moved away. */
  readonly liveness: 'alive' | 'stopping';
  /** Set when `statuses` is one part of a full-status collection. */
  readonly collect?: CollectPart;
  /** Spans of this capture retrying a failed step in place, and the latest error. */
  readonly failing?: PipelinesFailing;
  /** Per-span progress; absent from reports that carry none (a collect part, an old capture). */
  readonly progress?: ProgressReport;
}

/** What a capture says of its span pipelines that keep failing (an outage). */
/** One span's progress, as a capture reports it for the spans it is primary for. */
export interface SpanProgress {
  readonly span: Span;
  readonly checkpointTs: bigint;
  readonly resolvedTs: bigint;
  /** Events written a second, over the pipeline's recent past. */
  readonly eventsPerSecond: number;
  /** Bytes (keys and values) written a second, when the pipeline measures them. */
  readonly bytesPerSecond?: number;
  /**
   * Where the span would best be split: the median of a sample of its recently written
   * keys, strictly after the span's start (`src/agent/key-sample.ts`). Sent only for spans
   * at or above the capture's `splitKeyRateMin`, at most {@link splitKeyCharsMax} long.
   */
  readonly splitKey?: string;
  /** With `splitKey`: how many distinct keys the sample held. */
  readonly sampleKeys?: number;
}

/** The longest split key a progress entry carries (longer ones are not sent). */
export const splitKeyCharsMax = 1_024;

/**
 * Per-span progress carried by a report (display only: the watermark does not use it):
 * the capture's K slowest primaries and a round-robin slice of the others.
 */
export interface ProgressReport {
  /** The capture's slowest primaries, lowest checkpoint first (at most its K). */
  readonly slowest: readonly SpanProgress[];
  /** A round-robin slice of its primaries. */
  readonly slice: readonly SpanProgress[];
}

export interface PipelinesFailing {
  readonly spans: number;
  readonly error: string;
}

export type OwnerMessage = DispatchMessage | HeartbeatMessage;
export type CaptureMessage = ReportMessage;
export type Message = OwnerMessage | CaptureMessage;

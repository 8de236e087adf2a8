/**
 * The owner's view of the live captures for one changefeed: the initialisation
 * handshake, heartbeat timing, fencing of their reports, full-status collections, their
 * latest aggregate watermark, and who is draining.
 *
 * A capture is `initialised` once a full collection from it has arrived: the first
 * heartbeat a new owner (or a newly joined capture) gets asks for one. Collections are
 * then repeated every `collectIntervalTicks` (staggered per capture) to refresh per-span
 * statuses for the API and to reconcile, and at once when a capture's aggregate keeps
 * disagreeing with what the owner expects.
 *
 * A collection comes in parts, each a report with consecutive `seq` built from one
 * snapshot on the capture; parts are only combined when they belong to the same snapshot
 * (same `seq - part`), so a lost part restarts the collection instead of mixing views.
 */
import type { DropReason } from './events.ts';
import type { CaptureId, CaptureWatermark, PipelinesFailing, ReportMessage, SpanStatus } from './messages.ts';

/** Timing of heartbeats and collections, in ticks. */
export interface CaptureTiming {
  readonly heartbeatIntervalTicks: number;
  readonly collectIntervalTicks: number;
  /** Ticks a capture's aggregate may disagree with the owner before a collection reconciles. */
  readonly digestMismatchCollectTicks: number;
  /**
   * Ticks without a part of the collection in flight (since it was last asked for)
   * before a heartbeat asks for it again: a lost part or a lost request costs this.
   */
  readonly collectRetryTicks: number;
}

/** A full-status collection being assembled. */
interface Collection {
  readonly id: number;
  readonly startedTick: number;
  /** When a heartbeat last asked for it, and when its last part arrived. */
  askedTick: number;
  lastPartTick: number;
  base: number | undefined;
  parts: (readonly SpanStatus[] | undefined)[];
  received: number;
}

/** One live capture as the owner sees it. */
export class CaptureState {
  readonly id: CaptureId;
  /** The epoch recorded from its first accepted report; later reports must match. */
  epoch: bigint | undefined = undefined;
  initialized = false;
  lastSeqIn = 0;
  seqOut = 0;
  nextHeartbeatTick: number;
  nextCollectTick: number;
  /** Drain requested through the API. */
  draining = false;
  /** The capture itself said it is shutting down. */
  stopping = false;
  aggregate: CaptureWatermark | undefined = undefined;
  /** Its pipelines retrying a failed step, from its latest report. */
  failing: PipelinesFailing | undefined = undefined;
  collection: Collection | undefined = undefined;
  /** First tick of the current run of digest mismatches, or -1. */
  mismatchSinceTick = -1;
  /** Rotates which spans in transition a heartbeat lists when there are too many. */
  heartbeatCursor = 0;

  constructor(id: CaptureId, tick: number, collectOffsetTicks: number) {
    this.id = id;
    this.nextHeartbeatTick = tick;
    this.nextCollectTick = tick + collectOffsetTicks;
  }

  /** Draining for scheduling: asked to, or shutting down by itself. */
  get leaving(): boolean {
    return this.draining || this.stopping;
  }
}

/** A complete collection: every span the capture held at one instant. */
export interface CompletedCollection {
  readonly capture: CaptureState;
  readonly statuses: readonly SpanStatus[];
  /** The last owner message the capture had received when it took the snapshot. */
  readonly ackSeq: number;
}

/** Identity of the owner that fences reports. */
export interface OwnerIdentity {
  readonly ownerId: CaptureId;
  readonly ownerRevision: bigint;
  readonly changefeed: string;
  readonly changefeedEpoch: bigint;
}

/** Tracks the live captures of one changefeed. */
export class CaptureManager {
  readonly captures = new Map<CaptureId, CaptureState>();
  private readonly timing: CaptureTiming;
  private readonly owner: OwnerIdentity;
  private nextCollectId = 1;

  constructor(owner: OwnerIdentity, timing: CaptureTiming) {
    this.owner = owner;
    this.timing = timing;
  }

  /** Adds a capture that joined; its first heartbeat asks for a collection. */
  join(id: CaptureId, tick: number, collectOffsetTicks: number): CaptureState {
    const state = new CaptureState(id, tick, collectOffsetTicks);
    this.captures.set(id, state);
    return state;
  }

  /** Forgets a capture that left. */
  leave(id: CaptureId): void {
    this.captures.delete(id);
  }

  /** Ids of live captures that have not completed their first collection. */
  uninitialized(): CaptureId[] {
    const ids: CaptureId[] = [];
    for (const capture of this.captures.values()) if (!capture.initialized) ids.push(capture.id);
    return ids;
  }

  /**
   * Fences a report: returns the capture it comes from, or why it is dropped. Records the
   * capture's epoch at its first accepted report and its sequence number.
   */
  accept(message: ReportMessage): CaptureState | DropReason {
    const { header } = message;
    if (header.changefeed !== this.owner.changefeed) return 'wrong-changefeed';
    if (header.to !== this.owner.ownerId || header.ownerRevision !== this.owner.ownerRevision) return 'wrong-owner';
    if (header.changefeedEpoch !== this.owner.changefeedEpoch) return 'wrong-epoch';
    const capture = this.captures.get(header.from);
    if (capture === undefined) return 'unknown-capture';
    if (capture.epoch !== undefined && capture.epoch !== header.captureEpoch) return 'wrong-epoch';
    if (header.seq <= capture.lastSeqIn) return 'stale-seq';
    capture.epoch = header.captureEpoch;
    capture.lastSeqIn = header.seq;
    capture.stopping = message.liveness === 'stopping';
    capture.failing = message.failing;
    return capture;
  }

  /**
   * The collection id a heartbeat to `capture` should carry now (0: none), starting one
   * if due. A collection keeps its id until it completes, and each answer is a whole
   * snapshot (parts of another snapshot restart the assembly). Giving up on an id after
   * a timeout, as this once did, made every answer stale once answers took longer than
   * the timeout (a loaded owner with hundreds of changefeeds): the capture was never
   * initialized, for good. Asking again on every heartbeat, as it did next, made a
   * capture holding 33,000 spans send a new 33-part snapshot every 100 ms while the
   * owner was still decoding the first: the owner drowned in snapshots and every report
   * queued behind them (seen at 100,000 spans). So a collection is asked for again only
   * after `collectRetryTicks` in which no part of it arrived since the last ask: parts
   * that keep coming are never multiplied, and a lost request or part costs that long.
   */
  collectIdFor(capture: CaptureState, tick: number): number {
    const current = capture.collection;
    if (current !== undefined) {
      if (tick - Math.max(current.askedTick, current.lastPartTick) < this.timing.collectRetryTicks) return 0;
      current.askedTick = tick;
      return current.id;
    }
    const due =
      !capture.initialized ||
      tick >= capture.nextCollectTick ||
      (capture.mismatchSinceTick >= 0 && tick - capture.mismatchSinceTick >= this.timing.digestMismatchCollectTicks);
    if (!due) return 0;
    capture.collection = { id: this.nextCollectId++, startedTick: tick, askedTick: tick, lastPartTick: tick, base: undefined, parts: [], received: 0 };
    return capture.collection.id;
  }

  /**
   * Adds one part of a collection. Returns the completed collection when this part was
   * the last one missing, 'stale-collect' for a part of no current collection.
   */
  addPart(capture: CaptureState, message: ReportMessage, tick: number): CompletedCollection | 'stale-collect' | undefined {
    const part = message.collect;
    const collection = capture.collection;
    if (part === undefined || collection === undefined || part.id !== collection.id) return 'stale-collect';
    if (part.parts < 1 || part.part < 0 || part.part >= part.parts) return 'stale-collect';
    const base = message.header.seq - part.part;
    collection.lastPartTick = tick;
    if (collection.base !== base || collection.parts.length !== part.parts) {
      // A new snapshot of the same collection: start over with it.
      collection.base = base;
      collection.parts = new Array<readonly SpanStatus[] | undefined>(part.parts).fill(undefined);
      collection.received = 0;
    }
    if (collection.parts[part.part] === undefined) collection.received++;
    collection.parts[part.part] = message.statuses;
    if (collection.received < part.parts) return undefined;
    capture.collection = undefined;
    capture.initialized = true;
    capture.nextCollectTick = tick + this.timing.collectIntervalTicks;
    capture.mismatchSinceTick = -1;
    const statuses: SpanStatus[] = [];
    for (const list of collection.parts) if (list !== undefined) for (const status of list) statuses.push(status);
    return { capture, statuses, ackSeq: message.header.ackSeq };
  }
}

/**
 * What the elected capture does as owner: one pure {@link Coordinator} per running
 * changefeed, ticked every `tickIntervalMs`; one gRPC stream to every live capture; the
 * fenced persistence of checkpoints (decided by each changefeed's pure
 * {@link ChangefeedRun}); the drains (decided by the pure {@link OwnerDrains}, applied to
 * every coordinator); and the operator requests of the HTTP API.
 *
 * The owner stops acting the moment its session is no longer alive (no keepalive for
 * one TTL) or a fenced write fails: its election key is gone, someone else may own.
 */
import type { Etcd3 } from 'etcd3';
import type { CoordinatorLimits, RequestErrorCode } from '../core/coordinator.ts';
import { Coordinator } from '../core/coordinator.ts';
import type { ReportMessage } from '../core/messages.ts';
import { maxTs } from '../core/ts.ts';
import { assertNever } from '../core/assert.ts';
import type { OwnerInfo } from '../cluster/election.ts';
import type { Election } from '../cluster/election.ts';
import type { ClusterKeys } from '../cluster/keys.ts';
import type { EtcdSession } from '../cluster/session.ts';
import type { Metrics } from './metrics.ts';
import type { Logger } from '../log.ts';
import { CaptureConnection } from '../rpc/owner-client.ts';
import { spanIdsPerStreamDefault } from '../rpc/span-ids.ts';
import { SpanProgressBook } from '../core/span-progress.ts';
import type { SpanProgressEntry } from '../core/span-progress.ts';
import type { Span } from '../core/span.ts';
import { compareSpans, formatSpan, spanKey } from '../core/span.ts';
import type { SpanOperationView } from '../core/span-operation.ts';
import { splitRange } from '../core/split.ts';
import type { CoordinatorEvent } from '../core/events.ts';
import type * as grpc from '@grpc/grpc-js';
import { ChangefeedRun, runDefaults } from '../core/changefeed-run.ts';
import type { RunCommand, RunOutcome } from '../core/changefeed-run.ts';
import { describeValue } from '../core/assert.ts';
import type { ChangefeedCache } from '../cluster/changefeed-cache.ts';
import type { FencedResult } from '../cluster/election.ts';
import type { ChangefeedInfo, ChangefeedStatus, TableSpec } from './changefeed-info.ts';
import { changefeedLimits, specWithTiling, tableRange, tableSpans } from './changefeed-info.ts';
import { LagTracker } from './lag-tracker.ts';
import { backfillTablePrefix } from '../pipeline/backfill.ts';
import { SerialQueue } from './serial-queue.ts';
import { FailureWindow } from '../core/failure-window.ts';
import { failRun } from '../core/changefeed-lifecycle.ts';
import { OwnerDrains } from '../core/owner-drains.ts';
import type { AnsweredRequest, DrainRequest, DrainsCommand, DrainsLimits, DrainsOutcome, DrainsStep } from '../core/owner-drains.ts';

/**
 * The answer to a drain request; `not-persisted` when etcd did not take the change,
 * `drains-loading` while a new owner has not read the persisted drains yet, `busy` when
 * too many drain changes wait (retry all three).
 */
export type DrainResult =
  | { readonly ok: true; readonly remainingSpans: number | null }
  | { readonly ok: false; readonly code: RequestErrorCode | 'not-persisted' | 'drains-loading' | 'busy'; readonly message: string };

const drainsLoading: DrainResult = { ok: false, code: 'drains-loading', message: 'this owner is still reading the persisted drains; retry' };
const drainsBusy: DrainResult = { ok: false, code: 'busy', message: 'too many drain changes are waiting; retry' };

/**
 * Why a split or merge was refused: the coordinator's codes, and the shell's own:
 * `not-running` (the changefeed is not coordinated here in a running run),
 * `unknown-table`, `spans-bound` (the table or the changefeed would get more spans than
 * `changefeedLimits` allow), `no-split-key` (the span has no key strictly inside it to
 * split at), `source-unavailable` (the source could not be asked for a split key).
 */
export type SpanOperationRefusal = RequestErrorCode | 'not-running' | 'unknown-table' | 'spans-bound' | 'no-split-key' | 'source-unavailable';

/** The answer to a split or merge request: the operation it started, or why not. */
export type SpanOperationResult =
  | { readonly ok: true; readonly operation: SpanOperationView }
  | { readonly ok: false; readonly code: SpanOperationRefusal; readonly message: string };

/**
 * Picks a split key for `span` from the changefeed's source (its sample's median);
 * undefined when the source cannot tell (no sample, too few keys). The capture passes
 * one that opens the source within its bounds.
 */
export type SplitKeySampler = (info: ChangefeedInfo, span: Span) => Promise<string | undefined>;

/** A live capture as registered in etcd. */
export interface CaptureRecord {
  readonly id: string;
  readonly grpcAddr: string;
  readonly httpAddr: string;
  readonly version: string;
  readonly startedAt: string;
}

/** Timing and bounds of the owner. */
export interface OwnerLimits {
  readonly tickIntervalMs: number;
  readonly coordinator: Partial<CoordinatorLimits>;
  readonly sendQueueMax: number;
  /** Span ids the owner assigns per capture stream before it starts over (0: spans in full). */
  readonly spanIdsMax: number;
  readonly reconnectBackoffMinMs: number;
  readonly reconnectBackoffMaxMs: number;
  /** Reports buffered per changefeed between ticks; more are dropped (level-triggered). */
  readonly reportsQueuedMax: number;
  /** Changefeed info writes (API requests, failures) waiting their turn; more get 503. */
  readonly infoWritesQueuedMax: number;
  /** Drain changes waiting their turn (or being written); more get 503. */
  readonly drainWritesQueuedMax: number;
  /**
   * Deadline of one drain write or read; a write unanswered by then counts as failed and
   * the drains are read again.
   */
  readonly drainWriteTimeoutMs: number;
  /**
   * Deadline of one checkpoint (status) write or read. Shorter than the client's default:
   * a write stuck on a dead etcd leader is replaced by a newer one instead of holding the
   * checkpoint for the whole default deadline.
   */
  readonly statusWriteTimeoutMs: number;
  /** Fewest ms between two checkpoint writes of one changefeed. */
  readonly statusWriteIntervalMs: number;
  /**
   * Checkpoint writes per second over all changefeeds: with many changefeeds each one's
   * interval widens (every write also makes each capture's watch re-read).
   */
  readonly statusWritesPerSecondMax: number;
  /**
   * How long spans may keep failing (retrying in place, given back and placed again)
   * without the checkpoint moving before the changefeed fails with their last error.
   */
  readonly failureWindowMs: number;
  /** No span failing for this long ends a failure window. */
  readonly failureQuietMs: number;
  /** Wait after a failed checkpoint or failure write before the next try. */
  readonly writeRetryBackoffMs: number;
  /**
   * Heartbeats per second over all changefeeds and captures: with many changefeeds each
   * one's heartbeat interval widens (every heartbeat is a message and an answer).
   */
  readonly heartbeatsPerSecondMax: number;
  /**
   * How long a split without a key waits for the source's sample of the span's keys;
   * after that the request is answered 503 `source-unavailable` (retry, or give `at`).
   */
  readonly splitSampleTimeoutMs: number;
}

export const ownerDefaults: OwnerLimits = {
  tickIntervalMs: 50,
  coordinator: {},
  sendQueueMax: 1_000,
  spanIdsMax: spanIdsPerStreamDefault,
  reconnectBackoffMinMs: 50,
  reconnectBackoffMaxMs: 2_000,
  reportsQueuedMax: 10_000,
  infoWritesQueuedMax: 64,
  drainWritesQueuedMax: 64,
  drainWriteTimeoutMs: 5_000,
  statusWriteTimeoutMs: 500,
  statusWriteIntervalMs: 100,
  statusWritesPerSecondMax: 500,
  heartbeatsPerSecondMax: 4_000,
  writeRetryBackoffMs: 100,
  failureWindowMs: 30 * 60_000,
  failureQuietMs: 60_000,
  splitSampleTimeoutMs: 5_000,
};

/** A fenced write's outcome for the API: `conflict` when etcd's copy changed meanwhile. */
export type WriteResult = 'ok' | 'conflict' | 'fenced';

/** Everything the owner reads from the rest of the capture. */
export interface OwnerContext {
  readonly owner: OwnerInfo;
  readonly client: Etcd3;
  readonly keys: ClusterKeys;
  readonly election: Election;
  readonly session: EtcdSession;
  readonly captures: () => ReadonlyMap<string, CaptureRecord>;
  /** Every changefeed's info and status with mod revisions; the owner's writes go in at once. */
  readonly cache: ChangefeedCache;
  readonly limits: OwnerLimits;
  readonly log: Logger;
  readonly metrics: Metrics;
  /** Hands ownership away (a drained owner does, once its spans are gone). */
  readonly resign: () => Promise<void>;
  /** Called once when the owner stops acting (deposed, fenced or resigned). */
  readonly onStop: (reason: string) => void;
  /** Asks the source for a split key (a split without `at`); undefined: raw-byte midpoints only. */
  readonly sampleSplitKey?: SplitKeySampler | undefined;
  /** Credentials of the streams to captures (mutual TLS); undefined: plain text. */
  readonly grpcCredentials?: grpc.ChannelCredentials | undefined;
  /** Their channel options (the TLS server name). */
  readonly grpcChannelOptions?: Readonly<Record<string, string>> | undefined;
}

/**
 * One run (epoch) of a changefeed on this owner: one mutable record for its whole life,
 * so nothing of it is ever copied and left behind.
 */
interface ManagedChangefeed {
  /** The latest info of this run (table updates replace it). */
  info: ChangefeedInfo;
  readonly epoch: string;
  readonly coordinator: Coordinator;
  /** The pure decisions of this run: checkpoint writes, failure. */
  readonly run: ChangefeedRun;
  /** When the resolved-ts reached which value: lags in ms for revision timestamps. */
  readonly lag: LagTracker;
  /** When spans that keep failing fail the changefeed. */
  readonly failures: FailureWindow;
  /** How long its spans have been failing without progress, in ms; undefined when they are not. */
  failingForMs: number | undefined;
  reports: ReportMessage[];
  /** The drains version whose cancels this coordinator has had (-1: none yet). */
  drainsVersion: number;
  /** Per-span progress as the captures report it (display only; the watermark does not use it). */
  readonly progress: SpanProgressBook;
  /** The settled tilings of splits and merges, not yet persisted in the info (see `persistTilings`). */
  readonly tilings: TilingWrites;
}

/**
 * The tilings a run's splits and merges settled (`operation-done`, `tiling-adopted`),
 * per table, until the info holds them. One write at a time per changefeed (so per
 * table), always of the latest tiling; a write that fails is tried again.
 */
export interface TilingWrites {
  /** Per table: its settled tiling that the info does not hold yet. */
  readonly pending: Map<string, Span[]>;
  /** Per table: the spec (as JSON) this run last wrote, to tell its own writes from an operator's. */
  readonly written: Map<string, string>;
  writing: boolean;
  /** No write before this owner tick (after a failed one). */
  retryAtTick: number;
}

export function newTilingWrites(): TilingWrites {
  return { pending: new Map(), written: new Map(), writing: false, retryAtTick: 0 };
}

export class OwnerRole {
  readonly managed = new Map<string, ManagedChangefeed>();
  private readonly connections = new Map<string, { address: string; connection: CaptureConnection }>();
  private timer: NodeJS.Timeout | undefined;
  private stopped = false;
  /** Ticks since this owner started: the runs' and the drains' clock. */
  private tickCount = 0;
  /** The pure drain decisions: the set, its reads and writes, the request queue, the resign. */
  private readonly drains: OwnerDrains;
  /** Drain requests waiting for their answer, by request id. */
  private readonly drainWaiters = new Map<number, (result: DrainResult) => void>();
  /** Changefeed info writes run one at a time (see `queueInfoWrite`). */
  private readonly infoWrites: SerialQueue;

  constructor(private readonly ctx: OwnerContext) {
    this.drains = new OwnerDrains(ctx.owner.captureId, this.drainsLimits);
    this.infoWrites = new SerialQueue(ctx.limits.infoWritesQueuedMax);
  }

  /**
   * Captures an operator asked to drain, applied to every changefeed: as of the last read
   * or write of the drains, so what the next owner will read once it is loaded.
   */
  get draining(): ReadonlySet<string> {
    return this.drains.draining;
  }

  get info(): OwnerInfo {
    return this.ctx.owner;
  }

  start(): void {
    this.ctx.log.info({ ownerRevision: this.ctx.owner.revision }, 'became owner');
    // Drains asked of earlier owners are read at once; nothing is scheduled before.
    this.handleDrains(this.drains.tick({ tick: this.tickCount, captures: [...this.ctx.captures().keys()], ownerRemainingSpans: null }));
    this.timer = setInterval(() => this.tick(), this.ctx.limits.tickIntervalMs);
  }

  /** Stops acting as owner. Idempotent. */
  stop(reason: string): void {
    if (this.stopped) return;
    this.stopped = true;
    if (this.timer !== undefined) clearInterval(this.timer);
    for (const { connection } of this.connections.values()) connection.close();
    this.connections.clear();
    // Drain requests still waiting are answered not-persisted (the next owner reads etcd).
    this.handleDrains(this.drains.stop());
    this.ctx.log.warn({ reason, ownerRevision: this.ctx.owner.revision }, 'stopped acting as owner');
    this.ctx.onStop(reason);
  }

  get active(): boolean {
    return !this.stopped;
  }

  /** A report from a capture's stream. */
  onReport(report: ReportMessage): void {
    const managed = this.managed.get(report.header.changefeed);
    if (managed === undefined) return;
    // Progress is taken at once (bounded per report by the codec), even when the report
    // queue is full: it decides nothing, and a report of another run is ignored.
    if (report.progress !== undefined && String(report.header.changefeedEpoch) === managed.epoch) managed.progress.apply(report.header.from, report.progress, Date.now());
    if (managed.reports.length >= this.ctx.limits.reportsQueuedMax) return;
    managed.reports.push(report);
  }

  // ---- the tick ----

  private tick(): void {
    if (this.stopped) return;
    if (!this.ctx.session.alive) {
      this.stop('session lost');
      return;
    }
    const started = performance.now();
    const captures = this.ctx.captures();
    this.syncConnections(captures);
    const live = [...captures.keys()];
    this.tickCount++;
    // No scheduling before the drains are known: spans could go to a draining capture.
    // No coordinator starts before either: one that never ticked knows no capture, and
    // would count 0 spans on every one (an answer to a drain must say null, not yet known).
    if (this.drains.loaded) this.tickChangefeeds(captures, live);
    // The drains after the coordinators: a drained owner resigns in the tick that moved its
    // last span away, before an answer between ticks could count 0 spans on it.
    const ownerId = this.ctx.owner.captureId;
    const ownerRemainingSpans = this.drains.draining.has(ownerId) ? this.remainingSpans(ownerId) : null;
    this.handleDrains(this.drains.tick({ tick: this.tickCount, captures: live, ownerRemainingSpans }));
    this.ctx.metrics.ownerTickSeconds.observe((performance.now() - started) / 1000);
  }

  /** Every changefeed's coordinator and run, once the drains are known. */
  private tickChangefeeds(captures: ReadonlyMap<string, CaptureRecord>, live: readonly string[]): void {
    this.syncChangefeeds();
    const limits = this.ctx.limits;
    const writeIntervalMs = Math.max(limits.statusWriteIntervalMs, (1000 * this.managed.size) / limits.statusWritesPerSecondMax);
    const writeIntervalTicks = Math.max(1, Math.ceil(writeIntervalMs / limits.tickIntervalMs));
    const heartbeatsPerTick = (limits.heartbeatsPerSecondMax * limits.tickIntervalMs) / 1000;
    const heartbeatIntervalTicks = Math.ceil((this.managed.size * captures.size) / Math.max(1, heartbeatsPerTick));
    for (const [id, managed] of this.managed) {
      managed.coordinator.setHeartbeatInterval(heartbeatIntervalTicks);
      // Nothing one changefeed does may stop the others or the process.
      try {
        this.tickChangefeed(id, managed, live, captures);
      } catch (error) {
        this.ctx.log.error({ err: error, changefeed: id }, 'changefeed tick failed');
        managed.run.fail(`internal error: ${(error as Error).message ?? describeValue(error)}`);
      }
      try {
        const { checkpointTs, resolvedTs } = managed.coordinator;
        for (const command of managed.run.tick({ tick: this.tickCount, checkpointTs, resolvedTs, writeIntervalTicks })) {
          this.perform(managed, command);
        }
      } catch (error) {
        // A broken run (a bug) must not take the owner's tick down with it: that
        // changefeed stops here, the others go on.
        this.ctx.log.error({ err: error, changefeed: id }, 'changefeed run failed');
        this.managed.delete(id);
      }
    }
  }

  private tickChangefeed(id: string, managed: ManagedChangefeed, live: readonly string[], captures: ReadonlyMap<string, CaptureRecord>): void {
    if (managed.run.phase !== 'running') return;
    this.applyDrains(managed, captures);
    const reports = managed.reports;
    managed.reports = [];
    const targetTs = managed.info.targetTs === undefined ? maxTs : BigInt(managed.info.targetTs);
    // A monotonic clock: a stall's duration must not jump with the wall clock.
    const out = managed.coordinator.tick({ captures: live, reports, barrierTs: targetTs, nowMs: performance.now() });
    managed.lag.observeResolved(managed.coordinator.resolvedTs, Date.now());
    for (const message of out.outbox) this.connections.get(message.header.to)?.connection.send(message);
    this.noteOperations(id, managed, out.events);
    this.persistTilings(managed);
    for (const event of out.events) {
      if (event.type === 'stall-started' || event.type === 'stall-ended') this.ctx.log.warn({ changefeed: id, event }, event.type === 'stall-started' ? 'checkpoint stalled' : 'checkpoint moving again');
      else if (event.type === 'invariant-violation') this.ctx.log.error({ changefeed: id, event }, 'invariant violation');
      else if (
        event.type === 'capture-gone' ||
        event.type === 'rebuilt' ||
        event.type === 'capture-joined' ||
        event.type === 'move-refused' ||
        event.type === 'operation-started' ||
        event.type === 'operation-changed' ||
        event.type === 'operation-done' ||
        event.type === 'operation-aborted' ||
        event.type === 'tiling-adopted' ||
        event.type === 'split-policy-decided'
      )
        this.ctx.log.info({ changefeed: id, event }, 'coordinator event');
      else this.ctx.log.debug({ changefeed: id, event }, 'coordinator event');
    }
    if (out.watermark.state === 'cannot-proceed') this.ctx.metrics.cannotProceedTicks.inc({ changefeed: id, reason: out.watermark.reason.code });
    if (managed.coordinator.phase === 'failed') managed.run.fail(managed.coordinator.failure ?? 'invariant violation');
    const failing = managed.coordinator.failing();
    const window = managed.failures.observe({ tick: this.tickCount, failingSpans: failing.spans, error: failing.error, checkpointTs: managed.coordinator.checkpointTs });
    managed.failingForMs = window.kind === 'ok' ? undefined : window.forTicks * this.ctx.limits.tickIntervalMs;
    if (window.kind === 'expired') {
      managed.run.fail(`spans kept failing for ${Math.round(managed.failingForMs ?? 0) / 1000} s without the checkpoint moving: ${window.error}`);
    }
  }

  private syncConnections(captures: ReadonlyMap<string, CaptureRecord>): void {
    for (const [id, entry] of this.connections) {
      const record = captures.get(id);
      if (record === undefined || record.grpcAddr !== entry.address) {
        entry.connection.close();
        this.connections.delete(id);
        for (const managed of this.managed.values()) managed.progress.forgetCapture(id);
      }
    }
    for (const [id, record] of captures) {
      if (this.connections.has(id)) continue;
      const limits = this.ctx.limits;
      const connection = new CaptureConnection(record.grpcAddr, (report) => this.onReport(report), {
        reconnectBackoffMinMs: limits.reconnectBackoffMinMs,
        reconnectBackoffMaxMs: limits.reconnectBackoffMaxMs,
        sendQueueMax: limits.sendQueueMax,
        spanIdsMax: limits.spanIdsMax,
        credentials: this.ctx.grpcCredentials,
        channelOptions: this.ctx.grpcChannelOptions,
      });
      this.connections.set(id, { address: record.grpcAddr, connection });
    }
  }

  private syncChangefeeds(): void {
    const infos = this.ctx.cache.infos;
    for (const [id, managed] of this.managed) {
      const info = infos.get(id);
      // A run ends when its info says so: gone, paused, failed (its failure written) or
      // resumed as a new epoch. A failing run stays until its failure is written, so
      // no new coordinator starts it again meanwhile.
      if (info === undefined || info.state !== 'normal' || info.epoch !== managed.epoch) {
        this.managed.delete(id);
        continue;
      }
      if (info === managed.info) continue;
      const tablesChanged = JSON.stringify(info.tables) !== JSON.stringify(managed.info.tables);
      const previous = managed.info;
      managed.info = info;
      managed.coordinator.setAutoSplit(info.autoSplit === true);
      if (tablesChanged && managed.run.phase === 'running') {
        try {
          const { tables, spans } = settledSpans(info, previous, managed.tilings);
          managed.coordinator.setSpans(tables, spans);
          const kept = new Set(spans.map(spanKey));
          managed.progress.retain((span) => kept.has(spanKey(span)));
        } catch (error) {
          managed.run.fail(`cannot apply the tables: ${(error as Error).message}`);
        }
      }
    }
    const statuses = this.ctx.cache.statuses;
    for (const [id, info] of infos) {
      if (info.state !== 'normal' || this.managed.has(id)) continue;
      const status = statuses.get(id);
      const run = new ChangefeedRun(this.runLimits);
      try {
        const checkpointTs = BigInt(status?.checkpointTs ?? info.startTs);
        const coordinator = new Coordinator({
          changefeed: id,
          changefeedEpoch: BigInt(info.epoch),
          ownerId: this.ctx.owner.captureId,
          ownerRevision: this.ctx.owner.revision,
          checkpointTs,
          seed: Number(this.ctx.owner.revision % 2_147_483_647n),
          limits: this.ctx.limits.coordinator,
          autoSplit: info.autoSplit === true,
        });
        const { tables, spans } = settledSpans(info, info, undefined);
        coordinator.setSpans(tables, spans);
        this.managed.set(id, { info, epoch: info.epoch, coordinator, run, lag: new LagTracker(), failures: this.failureWindow(), failingForMs: undefined, reports: [], drainsVersion: -1, progress: new SpanProgressBook(), tilings: newTilingWrites() });
        this.ctx.log.info({ changefeed: id, checkpointTs, spans: spans.length }, 'coordinating changefeed');
      } catch (error) {
        // A changefeed whose stored info cannot even start a coordinator fails, alone.
        this.ctx.log.error({ err: error, changefeed: id }, 'cannot coordinate changefeed');
        const coordinator = new Coordinator({ changefeed: id, changefeedEpoch: 0n, ownerId: this.ctx.owner.captureId, ownerRevision: this.ctx.owner.revision, checkpointTs: 0n, seed: 1, limits: this.ctx.limits.coordinator });
        run.fail(`cannot coordinate: ${(error as Error).message}`);
        this.managed.set(id, { info, epoch: info.epoch, coordinator, run, lag: new LagTracker(), failures: this.failureWindow(), failingForMs: undefined, reports: [], drainsVersion: -1, progress: new SpanProgressBook(), tilings: newTilingWrites() });
      }
    }
  }

  private failureWindow(): FailureWindow {
    const tickMs = this.ctx.limits.tickIntervalMs;
    return new FailureWindow({ windowTicks: Math.max(1, Math.ceil(this.ctx.limits.failureWindowMs / tickMs)), quietTicks: Math.max(1, Math.ceil(this.ctx.limits.failureQuietMs / tickMs)) });
  }

  private get runLimits(): typeof runDefaults {
    const tickMs = this.ctx.limits.tickIntervalMs;
    return {
      writeDeadlineTicks: Math.ceil(this.ctx.limits.statusWriteTimeoutMs / tickMs) + 1,
      retryBackoffTicks: Math.max(1, Math.ceil(this.ctx.limits.writeRetryBackoffMs / tickMs)),
      writeIntervalTicks: Math.max(1, Math.ceil(this.ctx.limits.statusWriteIntervalMs / tickMs)),
    };
  }

  /** Performs one command of a run and feeds its outcome back; never throws, never floats. */
  private perform(managed: ManagedChangefeed, command: RunCommand): void {
    const outcome = (result: RunOutcome): void => {
      try {
        managed.run.onOutcome(result);
      } catch (error) {
        // A bug in the run: logged, and that changefeed stops on this owner; an
        // exception here would otherwise be an unhandled rejection that ends the process.
        this.ctx.log.error({ err: error, changefeed: managed.info.id, outcome: result.kind }, 'changefeed run failed');
        if (this.managed.get(managed.info.id) === managed) this.managed.delete(managed.info.id);
      }
    };
    const failed = (error: unknown, what: string): void => {
      this.ctx.metrics.etcdErrors.inc();
      this.ctx.log.warn({ err: error, changefeed: managed.info.id }, what);
      outcome({ kind: 'failed', id: command.id });
    };
    switch (command.kind) {
      case 'read-status':
        this.readStatus(managed.info.id).then(
          (status) => outcome({ kind: 'status-read', id: command.id, status }),
          (error: unknown) => failed(error, 'checkpoint read failed'),
        );
        return;
      case 'write-status':
        this.writeStatus(managed, command).then(
          (result) => {
            if (result.kind === 'ok') outcome({ kind: 'status-written', id: command.id, modRevision: result.revision });
            else if (result.kind === 'conflict') outcome({ kind: 'status-conflict', id: command.id });
            else this.fenced();
          },
          (error: unknown) => failed(error, 'checkpoint write failed'),
        );
        return;
      case 'write-failure':
        this.writeFailure(managed, command.error).then(
          (result) => {
            if (result === 'ok') outcome({ kind: 'failure-written', id: command.id });
            else if (result === 'conflict') outcome({ kind: 'failed', id: command.id });
            else this.fenced();
          },
          (error: unknown) => failed(error, 'failure write failed'),
        );
        return;
      default:
        assertNever(command, 'run command');
    }
  }

  private fenced(): void {
    this.ctx.metrics.fencedWriteRejections.inc();
    this.stop('fenced write rejected');
  }

  /** The status key as etcd holds it now (a missing key is checkpoint 0 at revision 0). */
  private async readStatus(id: string): Promise<{ checkpointTs: bigint; resolvedTs: bigint; modRevision: bigint }> {
    const response = await this.ctx.client
      .get(this.ctx.keys.changefeedStatus(id))
      .options({ deadline: Date.now() + this.ctx.limits.statusWriteTimeoutMs })
      .exec();
    const kv = response.kvs[0];
    if (kv === undefined) return { checkpointTs: 0n, resolvedTs: 0n, modRevision: 0n };
    const status = JSON.parse(kv.value.toString()) as ChangefeedStatus;
    return { checkpointTs: BigInt(status.checkpointTs), resolvedTs: BigInt(status.resolvedTs), modRevision: BigInt(kv.mod_revision) };
  }

  /** Writes a checkpoint, fenced, only over the status revision the run knows. */
  private async writeStatus(managed: ManagedChangefeed, command: RunCommand & { kind: 'write-status' }): Promise<FencedResult> {
    const id = managed.info.id;
    const status: ChangefeedStatus = { checkpointTs: command.checkpointTs.toString(), resolvedTs: command.resolvedTs.toString(), updatedAt: new Date().toISOString() };
    const key = this.ctx.keys.changefeedStatus(id);
    const result = await this.ctx.election.fencedTxn(
      this.ctx.owner,
      { compares: [{ key, modRevision: command.expectedModRevision }], puts: [{ key, value: JSON.stringify(status) }] },
      this.ctx.limits.statusWriteTimeoutMs,
    );
    if (result.kind === 'ok') this.ctx.cache.applyWrite(result.revision, { id, status });
    return result;
  }

  /**
   * Persists a run's failure over the latest info. A run an operator already ended
   * (paused, removed, resumed as a new epoch) needs no failure: it counts as written.
   */
  private async writeFailure(managed: ManagedChangefeed, error: string): Promise<WriteResult> {
    const latest = this.ctx.cache.info(managed.info.id);
    const decision = failRun(latest === undefined ? undefined : { state: latest.value.state, epoch: BigInt(latest.value.epoch), tables: [] }, BigInt(managed.epoch));
    if (latest === undefined || decision.kind === 'ended') return 'ok';
    this.ctx.log.error({ changefeed: managed.info.id, error }, 'changefeed failed');
    return this.writeInfo({ ...latest.value, state: decision.next.state, error }, { expectedModRevision: latest.modRevision });
  }

  /**
   * Runs a changefeed info write after the ones before it: each reads the info, may wait
   * on the source, then writes; two at once (two resumes, a resume and a failure) could
   * both pass their checks. Undefined when `infoWritesQueuedMax` are already waiting.
   */
  queueInfoWrite<T>(write: () => Promise<T>): Promise<T> | undefined {
    return this.infoWrites.run(write);
  }

  /**
   * Writes changefeed info (and a status, at create), fenced, only if the info key is
   * still at `expectedModRevision` (0: it must not exist); forgets the backfill records
   * of `removedTables`. The cache takes the write at once.
   */
  async writeInfo(info: ChangefeedInfo, options: { expectedModRevision: bigint; status?: ChangefeedStatus; removedTables?: readonly string[] }): Promise<WriteResult> {
    const key = this.ctx.keys.changefeedInfo(info.id);
    const puts = [{ key, value: JSON.stringify(info) }];
    if (options.status !== undefined) puts.push({ key: this.ctx.keys.changefeedStatus(info.id), value: JSON.stringify(options.status) });
    const deletes = (options.removedTables ?? []).map((table) => backfillTablePrefix(this.ctx.keys.backfillPrefix(info.id), table));
    const result = await this.ctx.election.fencedTxn(this.ctx.owner, { compares: [{ key, modRevision: options.expectedModRevision }], puts, deletes });
    if (result.kind === 'fenced') this.fenced();
    if (result.kind === 'ok') this.ctx.cache.applyWrite(result.revision, { id: info.id, info, ...(options.status === undefined ? {} : { status: options.status }) });
    return result.kind;
  }

  /** Deletes a changefeed's keys, fenced, only if its info is still at `expectedModRevision`. */
  async deleteChangefeed(id: string, expectedModRevision: bigint): Promise<WriteResult> {
    const result = await this.ctx.election.fencedTxn(this.ctx.owner, {
      compares: [{ key: this.ctx.keys.changefeedInfo(id), modRevision: expectedModRevision }],
      deletes: [this.ctx.keys.changefeedPrefix(id), this.ctx.keys.backfillPrefix(id)],
    });
    if (result.kind === 'fenced') this.fenced();
    if (result.kind === 'ok') {
      this.ctx.cache.applyWrite(result.revision, { id, info: null, status: null });
      this.managed.delete(id);
    }
    return result.kind;
  }

  // ---- operator requests ----

  /**
   * Drains a capture in every changefeed; the sum of spans still on it. Answers once the
   * drain is persisted, so a 202 survives an owner change.
   */
  drain(captureId: string): Promise<DrainResult> {
    return this.askDrains({ kind: 'drain', captureId });
  }

  /**
   * Cancels a capture's drain in every changefeed (idempotent): it takes new spans again,
   * and its share back by a rebalance. Answers once the cancel is persisted.
   */
  undrain(captureId: string): Promise<DrainResult> {
    return this.askDrains({ kind: 'undrain', captureId });
  }

  private askDrains(request: DrainRequest): Promise<DrainResult> {
    return new Promise((resolve) => {
      const { requestId, ...step } = this.drains.request(request, [...this.ctx.captures().keys()]);
      this.drainWaiters.set(requestId, resolve);
      this.handleDrains(step);
    });
  }

  /**
   * Checkpoint and resolved lag in ms: for wall-clock timestamps (datagen) now minus the
   * timestamp; otherwise from when the resolved-ts reached them. Null when unknown.
   */
  /**
   * The `k` slowest spans of a coordinated changefeed as their captures last reported
   * them, each from the capture that holds it now ([] when not coordinated here).
   */
  slowestSpans(id: string, k: number): SpanProgressEntry[] {
    const managed = this.managed.get(id);
    if (managed === undefined) return [];
    // By the span's key (O(1)): a scan by table and start for each entry took the owner
    // O(spans) per entry, on every view and every metrics scrape.
    return managed.progress.slowest(k, (entry) => managed.coordinator.setOf(entry.span)?.primary === entry.captureId);
  }

  lagsMs(id: string, checkpointTs: bigint, resolvedTs: bigint): { checkpointLagMs: number | null; resolvedLagMs: number | null } {
    const managed = this.managed.get(id);
    const now = Date.now();
    if (managed?.info.source.uri.startsWith('datagen:') === true) {
      return { checkpointLagMs: Math.max(0, now - Number(checkpointTs)), resolvedLagMs: Math.max(0, now - Number(resolvedTs)) };
    }
    return { checkpointLagMs: managed?.lag.checkpointLagMs(checkpointTs, now) ?? null, resolvedLagMs: managed?.lag.resolvedLagMs(now) ?? null };
  }

  /**
   * Spans a capture still holds over every changefeed; null while any changefeed has not
   * heard from it yet (or is not coordinated yet), so "0" always means drained.
   */
  remainingSpans(captureId: string): number | null {
    let total = 0;
    for (const [id, info] of this.ctx.cache.infos) if (info.state === 'normal' && !this.managed.has(id)) return null;
    for (const managed of this.managed.values()) {
      if (managed.run.phase !== 'running') continue;
      const spans = managed.coordinator.remainingSpans(captureId);
      if (spans === undefined) return null;
      total += spans;
    }
    return total;
  }

  /**
   * Splits the span of `table` that starts at `start` at key `at`; without `at`, at the
   * median of a sample of its keys from the source when the source has one, else at
   * the raw-byte midpoint of the span. Answers once the operation started (or why not);
   * its new tiling is persisted when it is done (see `persistTilings`).
   */
  async splitSpan(changefeed: string, table: string, start: string, at?: string): Promise<SpanOperationResult> {
    const found = this.operationTarget(changefeed, table, start);
    if (!found.ok) return this.refused(changefeed, 'split', found);
    const { managed, span } = found;
    const tableSpans = managed.coordinator.tiling().filter((s) => s.table === table).length;
    const totalSpans = managed.coordinator.manager.sets.size;
    if (tableSpans + 1 > changefeedLimits.spansPerTableMax || totalSpans + 1 > changefeedLimits.spansMax) {
      return this.refused(changefeed, 'split', { ok: false, code: 'spans-bound', message: `table ${table} may have at most ${changefeedLimits.spansPerTableMax} spans, the changefeed ${changefeedLimits.spansMax}` });
    }
    let key = at;
    if (key === undefined) {
      let sampled: string | undefined;
      try {
        sampled = this.ctx.sampleSplitKey === undefined ? undefined : await withDeadline(this.ctx.sampleSplitKey(managed.info, span), this.ctx.limits.splitSampleTimeoutMs);
      } catch (error) {
        return this.refused(changefeed, 'split', { ok: false, code: 'source-unavailable', message: `cannot sample the keys of ${formatSpan(span)} to split it: ${(error as Error).message}; retry, or give "at"` });
      }
      key = sampled !== undefined && insideSpan(sampled, span) ? sampled : midpointKey(span);
      if (key === undefined) return this.refused(changefeed, 'split', { ok: false, code: 'no-split-key', message: `${formatSpan(span)} has no key strictly inside it to split at` });
    }
    // The sample took a while: the span must still be the one that was asked about.
    const again = this.operationTarget(changefeed, table, start);
    if (!again.ok) return this.refused(changefeed, 'split', again);
    const result = again.managed.coordinator.requestSplit(table, start, key);
    if (!result.ok) return this.refused(changefeed, 'split', result);
    this.ctx.metrics.spanOperations.inc({ changefeed, kind: 'split', outcome: 'started' });
    return result;
  }

  /** Merges the span of `table` that starts at `start` with the next one. */
  mergeSpans(changefeed: string, table: string, start: string): SpanOperationResult {
    const found = this.operationTarget(changefeed, table, start);
    if (!found.ok) return this.refused(changefeed, 'merge', found);
    const result = found.managed.coordinator.requestMerge(table, start);
    if (!result.ok) return this.refused(changefeed, 'merge', result);
    this.ctx.metrics.spanOperations.inc({ changefeed, kind: 'merge', outcome: 'started' });
    return result;
  }

  /** The splits and merges in flight of a changefeed coordinated here ([] otherwise). */
  operations(changefeed: string): SpanOperationView[] {
    const managed = this.managed.get(changefeed);
    return managed === undefined ? [] : managed.coordinator.operations();
  }

  /** The running changefeed and the span a split or merge is asked for. */
  private operationTarget(changefeed: string, table: string, start: string): { ok: true; managed: ManagedChangefeed; span: Span } | { ok: false; code: SpanOperationRefusal; message: string } {
    const managed = this.managed.get(changefeed);
    // The cache has this owner's own writes at once, the managed run only from the next
    // tick: a split asked right after a pause's answer must meet the pause, not a run
    // that is about to end.
    const latest = this.ctx.cache.info(changefeed)?.value;
    const running = managed !== undefined && managed.run.phase === 'running' && managed.info.state === 'normal' && latest?.state === 'normal' && latest.epoch === managed.epoch;
    if (!running) return { ok: false, code: 'not-running', message: `changefeed ${changefeed} is not running` };
    if (!managed.info.tables.some((t) => t.name === table)) return { ok: false, code: 'unknown-table', message: `changefeed ${changefeed} has no table ${JSON.stringify(table)}` };
    if (managed.coordinator.phase !== 'running') return { ok: false, code: 'not-ready', message: `the coordinator of ${changefeed} is ${managed.coordinator.phase}; retry` };
    const set = managed.coordinator.findSpan(table, start);
    if (set === undefined) return { ok: false, code: 'unknown-span', message: `no span of table ${JSON.stringify(table)} starts at ${JSON.stringify(start)}` };
    return { ok: true, managed, span: set.span };
  }

  private refused(changefeed: string, kind: 'split' | 'merge', refusal: { readonly ok?: false; readonly code: SpanOperationRefusal; readonly message: string }): SpanOperationResult {
    this.ctx.metrics.spanOperations.inc({ changefeed, kind, outcome: 'refused' });
    return { ok: false, code: refusal.code, message: refusal.message };
  }

  // ---- splits and merges: persisting the tiling ----

  /** Counts settled operations and takes the tilings they (or a rebuild) settled. */
  private noteOperations(id: string, managed: ManagedChangefeed, events: readonly CoordinatorEvent[]): void {
    for (const event of events) {
      let table: string | undefined;
      if (event.type === 'operation-done') {
        this.ctx.metrics.spanOperations.inc({ changefeed: id, kind: event.operation.kind, outcome: 'done' });
        table = event.table;
      } else if (event.type === 'operation-aborted') {
        this.ctx.metrics.spanOperations.inc({ changefeed: id, kind: event.operation.kind, outcome: 'aborted' });
      } else if (event.type === 'tiling-adopted') {
        this.ctx.metrics.spanOperations.inc({ changefeed: id, kind: 'adopt', outcome: 'done' });
        table = event.table;
      }
      if (table === undefined) continue;
      // The table's whole tiling as it is now (a later operation's replaces an earlier one's).
      const spans = managed.coordinator.tiling().filter((span) => span.table === table).sort(compareSpans);
      if (spans.length > 0) managed.tilings.pending.set(table, spans);
    }
  }

  /**
   * Writes the settled tilings into the changefeed info: the table's `spans` and
   * `boundaries`, so every later owner derives these spans. Through the info write queue
   * (after the API's writes, never beside them), fenced by the owner's key and by the
   * info's mod revision, and only while this run is still the changefeed's run (same
   * epoch, normal); a failed or conflicting write is tried again after
   * `writeRetryBackoffMs` with the latest tiling. A table the operator cut anew (or
   * removed) meanwhile keeps the operator's cut: its settled tiling is dropped (the
   * coordinator is then given the operator's spans, see `Coordinator.setSpans`).
   */
  private persistTilings(managed: ManagedChangefeed): void {
    const writes = managed.tilings;
    if (writes.writing || writes.pending.size === 0 || this.tickCount < writes.retryAtTick || this.stopped) return;
    const batch = new Map(writes.pending);
    const retryLater = (): void => {
      writes.retryAtTick = this.tickCount + Math.max(1, Math.ceil(this.ctx.limits.writeRetryBackoffMs / this.ctx.limits.tickIntervalMs));
    };
    const queued = this.queueInfoWrite(() => this.writeTilings(managed, batch));
    if (queued === undefined) {
      retryLater();
      return;
    }
    writes.writing = true;
    queued.then(
      (result) => {
        writes.writing = false;
        if (result === 'ok' || result === 'ended') {
          // Only what was written: a table settled again meanwhile is written next.
          for (const [table, spans] of batch) if (writes.pending.get(table) === spans) writes.pending.delete(table);
          if (result === 'ok') this.ctx.log.info({ changefeed: managed.info.id, tables: [...batch.keys()] }, 'tiling persisted');
        } else if (result === 'conflict') {
          retryLater();
        }
        // fenced: writeInfo stopped this owner; the next one adopts the held tiling.
      },
      (error: unknown) => {
        writes.writing = false;
        this.ctx.metrics.etcdErrors.inc();
        this.ctx.log.warn({ err: error, changefeed: managed.info.id }, 'tiling write failed; trying again');
        retryLater();
      },
    );
  }

  private async writeTilings(managed: ManagedChangefeed, batch: ReadonlyMap<string, Span[]>): Promise<WriteResult | 'ended'> {
    const id = managed.info.id;
    const latest = this.ctx.cache.info(id);
    // Fenced by the run too: a pause, failure, resume or removal ended it, and a new run
    // derives its spans from the info as it is (nobody holds the old run's spans).
    if (this.stopped || this.managed.get(id) !== managed || latest === undefined || latest.value.state !== 'normal' || latest.value.epoch !== managed.epoch) return 'ended';
    const writes = managed.tilings;
    let changed = false;
    const tables = latest.value.tables.map((spec): TableSpec => {
      const spans = batch.get(spec.name);
      if (spans === undefined) return spec;
      const next = specWithTiling(spec, spans);
      if (next === undefined) {
        // The table was cut anew or its range changed: the operator's cut stands.
        writes.pending.delete(spec.name);
        return spec;
      }
      writes.written.set(spec.name, JSON.stringify(next));
      if (JSON.stringify(next) !== JSON.stringify(spec)) changed = true;
      return next;
    });
    for (const table of batch.keys()) if (!latest.value.tables.some((spec) => spec.name === table)) writes.pending.delete(table);
    if (!changed) return 'ok';
    return this.writeInfo({ ...latest.value, tables }, { expectedModRevision: latest.modRevision });
  }

  // ---- drains: the shell of OwnerDrains ----

  private get drainsLimits(): DrainsLimits {
    const limits = this.ctx.limits;
    const deadlineTicks = Math.ceil(limits.drainWriteTimeoutMs / limits.tickIntervalMs) + 1;
    return {
      requestsQueuedMax: limits.drainWritesQueuedMax,
      readDeadlineTicks: deadlineTicks,
      writeDeadlineTicks: deadlineTicks,
      retryBackoffTicks: Math.max(1, Math.ceil(limits.writeRetryBackoffMs / limits.tickIntervalMs)),
    };
  }

  /** Performs the drains' commands and hands their answers to the requests waiting. */
  private handleDrains(step: DrainsStep): void {
    for (const command of step.commands) this.performDrains(command);
    if (step.answers.length === 0) return;
    // The coordinators follow the set before an answer counts the spans left.
    if (this.drains.loaded) {
      const captures = this.ctx.captures();
      for (const managed of this.managed.values()) this.applyDrains(managed, captures);
    }
    for (const answered of step.answers) {
      const resolve = this.drainWaiters.get(answered.requestId);
      if (resolve === undefined) continue;
      this.drainWaiters.delete(answered.requestId);
      resolve(this.drainResult(answered));
    }
  }

  /** The coordinator drains exactly the set's live captures (see `OwnerDrains.applyTo`). */
  private applyDrains(managed: ManagedChangefeed, captures: ReadonlyMap<string, CaptureRecord>): void {
    managed.drainsVersion = this.drains.applyTo(managed.coordinator, captures, managed.drainsVersion);
  }

  private drainResult({ request, answer }: AnsweredRequest): DrainResult {
    const id = request.captureId;
    if (answer.ok) return { ok: true, remainingSpans: this.remainingSpans(id) };
    switch (answer.code) {
      case 'unknown-capture':
        return { ok: false, code: answer.code, message: `no live capture ${id}` };
      case 'last-capture':
        return { ok: false, code: answer.code, message: `capture ${id} is the last one that is not draining` };
      case 'not-persisted':
        return {
          ok: false,
          code: answer.code,
          message: request.kind === 'drain' ? `the drain of ${id} could not be persisted; retry` : `the end of the drain of ${id} could not be persisted; retry`,
        };
      case 'drains-loading':
        return drainsLoading;
      case 'busy':
        return drainsBusy;
      default:
        return assertNever(answer.code, 'drain refusal');
    }
  }

  /** Performs one command of the drains and feeds its outcome back; never throws, never floats. */
  private performDrains(command: DrainsCommand): void {
    if (this.stopped) return;
    const outcome = (result: DrainsOutcome): void => {
      try {
        this.handleDrains(this.drains.onOutcome(result));
      } catch (error) {
        // A bug in the drains: what is drained is no longer known, so this owner stops
        // (the next one reads etcd); an exception here would end the process.
        this.ctx.log.error({ err: error, outcome: result.kind }, 'owner drains failed');
        this.stop('owner drains failed');
      }
    };
    const failed = (error: unknown, what: string): void => {
      this.ctx.metrics.etcdErrors.inc();
      this.ctx.log.warn({ err: error }, what);
      outcome({ kind: 'failed', id: command.id });
    };
    const fenced = (): void => {
      outcome({ kind: 'fenced', id: command.id });
      this.fenced();
    };
    switch (command.kind) {
      case 'read-drains':
        this.readDrains(command).then(
          (read) => (read === 'fenced' ? fenced() : outcome({ kind: 'drains-read', id: command.id, ...read })),
          (error: unknown) => failed(error, 'reading drains failed; trying again'),
        );
        return;
      case 'write-drain':
        if (command.departed) this.ctx.log.info({ captureId: command.captureId }, 'forgetting the drain of a capture that left');
        this.writeDrain(command).then(
          (result) => {
            if (result.kind === 'ok') outcome({ kind: 'written', id: command.id, guardRevision: result.revision });
            else if (result.kind === 'conflict') failed(new Error('the drains guard moved'), 'drain write conflicted; reading the drains again');
            else fenced();
          },
          (error: unknown) => failed(error, 'drain write failed; reading the drains again'),
        );
        return;
      case 'resign':
        this.ctx.log.info({ captureId: this.ctx.owner.captureId }, 'drained owner resigns');
        this.ctx.resign().catch((error: unknown) => {
          this.ctx.log.warn({ err: error }, 'resign failed; trying again');
          outcome({ kind: 'failed', id: command.id });
        });
        return;
      default:
        assertNever(command, 'drains command');
    }
  }

  /**
   * Lists the drain keys with the guard's revision, in one fenced transaction; moving the
   * guard when asked (after a write given up on, which then either landed before, and is
   * listed, or never lands: its compare on the guard fails).
   */
  private async readDrains(command: DrainsCommand & { kind: 'read-drains' }): Promise<{ captureIds: string[]; guardRevision: bigint } | 'fenced'> {
    const prefix = this.ctx.keys.drainingPrefix;
    const guard = { ...this.drainsGuardPut(), move: command.moveGuard };
    const read = await this.ctx.election.fencedListGuarded(this.ctx.owner, prefix, guard, this.ctx.limits.drainWriteTimeoutMs);
    if (read.kind === 'fenced') return 'fenced';
    return { captureIds: read.keys.map((key) => key.slice(prefix.length)), guardRevision: read.guardRevision };
  }

  /** Puts or deletes one drain key, fenced, only over the guard revision the drains know. */
  private writeDrain(command: DrainsCommand & { kind: 'write-drain' }): Promise<FencedResult> {
    const key = this.ctx.keys.draining(command.captureId);
    return this.ctx.election.fencedTxn(
      this.ctx.owner,
      {
        compares: [{ key: this.ctx.keys.drainsGuard, modRevision: command.expectedGuardRevision }],
        puts: command.draining ? [this.drainsGuardPut(), { key, value: new Date().toISOString() }] : [this.drainsGuardPut()],
        deletes: command.draining ? [] : [key],
      },
      this.ctx.limits.drainWriteTimeoutMs,
    );
  }

  private drainsGuardPut(): { key: string; value: string } {
    return { key: this.ctx.keys.drainsGuard, value: JSON.stringify({ owner: this.ctx.owner.captureId, updatedAt: new Date().toISOString() }) };
  }
}

/**
 * The tables and spans a run's coordinator is given for `info`: the info's spans, except
 * for tables whose settled tiling is not persisted yet (so the coordinator is never told
 * spans that disagree with a settled split or merge). A table's settled tiling is kept
 * while the info's spec of it is what it was (`previous`) or what this run wrote itself;
 * an operator's new cut of the table (or its removal) drops it: the cut wins.
 */
export function settledSpans(info: ChangefeedInfo, previous: ChangefeedInfo, tilings: TilingWrites | undefined): { tables: ReturnType<typeof tableRange>[]; spans: Span[] } {
  const tables: ReturnType<typeof tableRange>[] = [];
  const spans: Span[] = [];
  const names = new Set(info.tables.map((spec) => spec.name));
  if (tilings !== undefined) for (const table of [...tilings.pending.keys()]) if (!names.has(table)) tilings.pending.delete(table);
  for (const spec of info.tables) {
    tables.push(tableRange(spec));
    const settled = tilings?.pending.get(spec.name);
    if (settled !== undefined && tilings !== undefined) {
      const text = JSON.stringify(spec);
      const before = previous.tables.find((p) => p.name === spec.name);
      const ours = (before !== undefined && JSON.stringify(before) === text) || tilings.written.get(spec.name) === text;
      if (ours && specWithTiling(spec, settled) !== undefined) {
        spans.push(...settled);
        continue;
      }
      tilings.pending.delete(spec.name);
    }
    spans.push(...tableSpans(spec));
  }
  return { tables, spans };
}

/** `promise`, or a rejection once `ms` passed (the promise's own outcome is then ignored). */
function withDeadline<T>(promise: Promise<T>, ms: number): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no answer within ${ms} ms`)), ms);
    promise.then(
      (value) => {
        clearTimeout(timer);
        resolve(value);
      },
      (error: unknown) => {
        clearTimeout(timer);
        reject(error instanceof Error ? error : new Error(String(error)));
      },
    );
  });
}

/** True when `key` lies strictly inside `span` (after its start, before its end). */
function insideSpan(key: string, span: Span): boolean {
  return key > span.start && (span.end === '' || key < span.end);
}

/** The raw-byte midpoint of a span (as `splitRange` cuts); undefined when it has none. */
function midpointKey(span: Span): string | undefined {
  const halves = splitRange({ name: span.table, start: span.start, end: span.end }, 2);
  const key = halves[1]?.start;
  return key !== undefined && insideSpan(key, span) ? key : undefined;
}


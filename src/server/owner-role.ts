/**
 * What the elected capture does as owner: one pure {@link Coordinator} per running
 * changefeed, ticked every `tickIntervalMs`; one gRPC stream to every live capture; the
 * fenced persistence of checkpoints; and the operator requests of the HTTP API.
 *
 * The owner stops acting the moment its session is no longer alive (no keepalive for
 * one TTL) or a fenced write fails: its election key is gone, someone else may own.
 */
import type { Etcd3 } from 'etcd3';
import type { CoordinatorLimits, RequestErrorCode } from '../core/coordinator.ts';
import { Coordinator } from '../core/coordinator.ts';
import type { ReportMessage } from '../core/messages.ts';
import { maxTs } from '../core/ts.ts';
import type { OwnerInfo } from '../cluster/election.ts';
import type { Election } from '../cluster/election.ts';
import type { ClusterKeys } from '../cluster/keys.ts';
import type { EtcdSession } from '../cluster/session.ts';
import type { Metrics } from '../api/metrics.ts';
import type { Logger } from '../log.ts';
import { CaptureConnection } from '../rpc/owner-client.ts';
import type { ChangefeedInfo, ChangefeedStatus } from './changefeed-info.ts';
import { changefeedSpans } from './changefeed-info.ts';
import { LagTracker } from './lag-tracker.ts';
import { backfillTablePrefix } from '../pipeline/backfill.ts';
import { SerialQueue } from './serial-queue.ts';

/**
 * The answer to a drain request; `not-persisted` when etcd did not take the change,
 * `drains-loading` while a new owner has not read the persisted drains yet, `busy` when
 * too many drain changes wait (retry all three).
 */
export type DrainResult =
  | { readonly ok: true; readonly remainingSpans: number }
  | { readonly ok: false; readonly code: RequestErrorCode | 'not-persisted' | 'drains-loading' | 'busy'; readonly message: string };

const drainsLoading: DrainResult = { ok: false, code: 'drains-loading', message: 'this owner is still reading the persisted drains; retry' };
const drainsBusy: DrainResult = { ok: false, code: 'busy', message: 'too many drain changes are waiting; retry' };

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
  readonly reconnectBackoffMinMs: number;
  readonly reconnectBackoffMaxMs: number;
  /** Reports buffered per changefeed between ticks; more are dropped (level-triggered). */
  readonly reportsQueuedMax: number;
  /** Changefeed info writes (API requests, failures) waiting their turn; more get 503. */
  readonly infoWritesQueuedMax: number;
  /** Drain changes waiting their turn; more get 503. */
  readonly drainWritesQueuedMax: number;
}

export const ownerDefaults: OwnerLimits = {
  tickIntervalMs: 50,
  coordinator: {},
  sendQueueMax: 1_000,
  reconnectBackoffMinMs: 50,
  reconnectBackoffMaxMs: 2_000,
  reportsQueuedMax: 10_000,
  infoWritesQueuedMax: 64,
  drainWritesQueuedMax: 64,
};

/** Everything the owner reads from the rest of the capture. */
export interface OwnerContext {
  readonly owner: OwnerInfo;
  readonly client: Etcd3;
  readonly keys: ClusterKeys;
  readonly election: Election;
  readonly session: EtcdSession;
  readonly captures: () => ReadonlyMap<string, CaptureRecord>;
  readonly changefeeds: () => ReadonlyMap<string, ChangefeedInfo>;
  readonly statuses: () => ReadonlyMap<string, ChangefeedStatus>;
  readonly limits: OwnerLimits;
  readonly log: Logger;
  readonly metrics: Metrics;
  /** Called once when the owner stops acting (deposed, fenced or resigned). */
  readonly onStop: (reason: string) => void;
}

interface ManagedChangefeed {
  readonly info: ChangefeedInfo;
  readonly coordinator: Coordinator;
  /** When the resolved-ts reached which value: lags in ms for revision timestamps. */
  readonly lag: LagTracker;
  reports: ReportMessage[];
  persisting: boolean;
}

export class OwnerRole {
  readonly managed = new Map<string, ManagedChangefeed>();
  private readonly connections = new Map<string, { address: string; connection: CaptureConnection }>();
  private timer: NodeJS.Timeout | undefined;
  private stopped = false;
  /**
   * Captures an operator asked to drain, applied to every changefeed. Changed only after etcd took the change, so it always says
   * what the next owner will read (once `drainsLoaded`).
   */
  readonly draining = new Set<string>();
  private drainsLoaded = false;
  private drainsLoading = false;
  /** Drain writes run one at a time: a drain and an undrain reach etcd in their order. */
  private readonly drainWrites: SerialQueue;
  /** Changefeed info writes run one at a time (see `queueInfoWrite`). */
  private readonly infoWrites: SerialQueue;
  /** Departed captures whose drain key is being deleted. */
  private readonly departing = new Set<string>();

  constructor(private readonly ctx: OwnerContext) {
    this.drainWrites = new SerialQueue(ctx.limits.drainWritesQueuedMax);
    this.infoWrites = new SerialQueue(ctx.limits.infoWritesQueuedMax);
  }

  get info(): OwnerInfo {
    return this.ctx.owner;
  }

  start(): void {
    this.ctx.log.info({ ownerRevision: this.ctx.owner.revision }, 'became owner');
    // Drains asked of an earlier owner apply before this one schedules anything.
    void this.loadDrains().finally(() => {
      if (!this.stopped) this.timer = setInterval(() => this.tick(), this.ctx.limits.tickIntervalMs);
    });
  }

  /** Reads the persisted drains; a failed read is tried again on the next tick. */
  private async loadDrains(): Promise<void> {
    if (this.drainsLoaded || this.drainsLoading) return;
    this.drainsLoading = true;
    try {
      const prefix = this.ctx.keys.drainingPrefix;
      const ids = await this.ctx.client.getAll().prefix(prefix).keys();
      this.draining.clear();
      for (const key of ids) this.draining.add(key.slice(prefix.length));
      // After a read again, a drain cancelled in etcd is cancelled here too (the tick
      // re-asks every drain in the set).
      for (const managed of this.managed.values()) {
        for (const id of this.ctx.captures().keys()) if (!this.draining.has(id)) managed.coordinator.cancelDrain(id);
      }
      this.drainsLoaded = true;
    } catch (error) {
      this.ctx.metrics.etcdErrors.inc();
      this.ctx.log.warn({ err: error }, 'reading drains failed; trying again');
    } finally {
      this.drainsLoading = false;
    }
  }

  /** Runs a drain change after the ones before it. */
  private serializeDrainWrite(write: () => Promise<DrainResult>): Promise<DrainResult> {
    return this.drainWrites.run(write) ?? Promise.resolve(drainsBusy);
  }

  /**
   * Persists a drain (fenced), so the next owner keeps draining. Resolves false when the
   * write was fenced or failed; the owner stops acting on a fenced write.
   */
  private async persistDrain(captureId: string, draining: boolean): Promise<boolean> {
    const key = this.ctx.keys.draining(captureId);
    try {
      const ok = draining
        ? await this.ctx.election.fencedPut(this.ctx.owner, [{ key, value: new Date().toISOString() }])
        : await this.ctx.election.fencedPut(this.ctx.owner, [], [key]);
      if (!ok) {
        this.ctx.metrics.fencedWriteRejections.inc();
        this.stop('fenced write rejected');
      }
      return ok;
    } catch (error) {
      this.ctx.metrics.etcdErrors.inc();
      this.ctx.log.warn({ err: error, captureId }, 'drain write failed; reading the drains again');
      // A write that timed out may still have landed: read the drains again before
      // answering more drain requests or scheduling.
      this.drainsLoaded = false;
      this.draining.clear();
      return false;
    }
  }

  /** Stops acting as owner. Idempotent. */
  stop(reason: string): void {
    if (this.stopped) return;
    this.stopped = true;
    if (this.timer !== undefined) clearInterval(this.timer);
    for (const { connection } of this.connections.values()) connection.close();
    this.connections.clear();
    this.ctx.log.warn({ reason, ownerRevision: this.ctx.owner.revision }, 'stopped acting as owner');
    this.ctx.onStop(reason);
  }

  get active(): boolean {
    return !this.stopped;
  }

  /** A report from a capture's stream. */
  onReport(report: ReportMessage): void {
    const managed = this.managed.get(report.header.changefeed);
    if (managed === undefined || managed.reports.length >= this.ctx.limits.reportsQueuedMax) return;
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
    this.syncChangefeeds();
    const live = [...captures.keys()];
    if (!this.drainsLoaded) {
      // No scheduling before the drains are known: spans could go to a draining capture.
      void this.loadDrains();
      return;
    }
    for (const id of this.draining) {
      // A drained capture that left needs no drain any more (one cleanup at a time).
      if (captures.has(id) || this.departing.has(id)) continue;
      this.departing.add(id);
      void this.undrain(id, { departed: true }).finally(() => this.departing.delete(id));
    }
    for (const [id, managed] of this.managed) {
      for (const capture of this.draining) if (captures.has(capture)) managed.coordinator.requestDrain(capture);
      const reports = managed.reports;
      managed.reports = [];
      const targetTs = managed.info.targetTs === undefined ? maxTs : BigInt(managed.info.targetTs);
      const out = managed.coordinator.tick({ captures: live, reports, barrierTs: targetTs });
      managed.lag.observeResolved(managed.coordinator.resolvedTs, Date.now());
      for (const message of out.outbox) this.connections.get(message.header.to)?.connection.send(message);
      for (const event of out.events) {
        if (event.type === 'invariant-violation') this.ctx.log.error({ changefeed: id, event }, 'invariant violation');
        else if (event.type === 'capture-gone' || event.type === 'rebuilt' || event.type === 'capture-joined') this.ctx.log.info({ changefeed: id, event }, 'coordinator event');
        else this.ctx.log.debug({ changefeed: id, event }, 'coordinator event');
      }
      if (out.watermark.state === 'cannot-proceed') this.ctx.metrics.cannotProceedTicks.inc({ changefeed: id, reason: out.watermark.reason.code });
      if (managed.coordinator.phase === 'failed') void this.failChangefeed(managed, managed.coordinator.failure ?? 'invariant violation');
      else if (out.advanced !== undefined) void this.persist(managed);
    }
    this.ctx.metrics.ownerTickSeconds.observe((performance.now() - started) / 1000);
  }

  private syncConnections(captures: ReadonlyMap<string, CaptureRecord>): void {
    for (const [id, entry] of this.connections) {
      const record = captures.get(id);
      if (record === undefined || record.grpcAddr !== entry.address) {
        entry.connection.close();
        this.connections.delete(id);
      }
    }
    for (const [id, record] of captures) {
      if (this.connections.has(id)) continue;
      const limits = this.ctx.limits;
      const connection = new CaptureConnection(record.grpcAddr, (report) => this.onReport(report), {
        reconnectBackoffMinMs: limits.reconnectBackoffMinMs,
        reconnectBackoffMaxMs: limits.reconnectBackoffMaxMs,
        sendQueueMax: limits.sendQueueMax,
      });
      this.connections.set(id, { address: record.grpcAddr, connection });
    }
  }

  private syncChangefeeds(): void {
    const infos = this.ctx.changefeeds();
    for (const [id, managed] of this.managed) {
      const info = infos.get(id);
      if (info === undefined || info.state !== 'normal' || info.epoch !== managed.info.epoch) this.managed.delete(id);
      else if (info !== managed.info && JSON.stringify(info.tables) !== JSON.stringify(managed.info.tables)) {
        const { tables, spans } = changefeedSpans(info);
        managed.coordinator.setSpans(tables, spans);
        this.managed.set(id, { ...managed, info });
      }
    }
    const statuses = this.ctx.statuses();
    for (const [id, info] of infos) {
      if (info.state !== 'normal' || this.managed.has(id)) continue;
      const status = statuses.get(id);
      const checkpointTs = BigInt(status?.checkpointTs ?? info.startTs);
      const coordinator = new Coordinator({
        changefeed: id,
        changefeedEpoch: BigInt(info.epoch),
        ownerId: this.ctx.owner.captureId,
        ownerRevision: this.ctx.owner.revision,
        checkpointTs,
        seed: Number(this.ctx.owner.revision % 2_147_483_647n),
        limits: this.ctx.limits.coordinator,
      });
      const { tables, spans } = changefeedSpans(info);
      coordinator.setSpans(tables, spans);
      this.managed.set(id, { info, coordinator, lag: new LagTracker(), reports: [], persisting: false });
      this.ctx.log.info({ changefeed: id, checkpointTs, spans: spans.length }, 'coordinating changefeed');
    }
  }

  /** Writes the coordinator's checkpoint, fenced; one write in flight per changefeed. */
  private async persist(managed: ManagedChangefeed): Promise<void> {
    if (managed.persisting) return;
    managed.persisting = true;
    try {
      const coordinator = managed.coordinator;
      const status: ChangefeedStatus = {
        checkpointTs: coordinator.checkpointTs.toString(),
        resolvedTs: coordinator.resolvedTs.toString(),
        updatedAt: new Date().toISOString(),
      };
      const previous = this.ctx.statuses().get(managed.info.id);
      if (previous !== undefined && BigInt(previous.checkpointTs) > coordinator.checkpointTs) return;
      const ok = await this.ctx.election.fencedPut(this.ctx.owner, [{ key: this.ctx.keys.changefeedStatus(managed.info.id), value: JSON.stringify(status) }]);
      if (!ok) {
        this.ctx.metrics.fencedWriteRejections.inc();
        this.stop('fenced write rejected');
      }
    } catch (error) {
      this.ctx.metrics.etcdErrors.inc();
      this.ctx.log.warn({ err: error, changefeed: managed.info.id }, 'checkpoint write failed');
    } finally {
      managed.persisting = false;
    }
  }

  private async failChangefeed(managed: ManagedChangefeed, error: string): Promise<void> {
    const id = managed.info.id;
    if (!this.managed.has(id)) return;
    this.managed.delete(id);
    this.ctx.log.error({ changefeed: id, error }, 'changefeed failed');
    // In line with the API's writes, over the latest info: a table change the API just
    // made stays, and a run that an operator already paused or restarted is left alone.
    await this.queueInfoWrite(async () => {
      const latest = this.ctx.changefeeds().get(id);
      if (latest === undefined || latest.state !== 'normal' || latest.epoch !== managed.info.epoch) return;
      await this.writeInfo({ ...latest, state: 'failed', error });
    });
  }

  /**
   * Runs a changefeed info write after the ones before it: each reads the info, may wait
   * on the source, then writes; two at once (two resumes, a resume and a failure) could
   * both pass their checks. Undefined when `infoWritesQueuedMax` are already waiting.
   */
  queueInfoWrite<T>(write: () => Promise<T>): Promise<T> | undefined {
    return this.infoWrites.run(write);
  }

  /** Writes changefeed info, fenced; forgets the backfill records of `removedTables`. */
  async writeInfo(info: ChangefeedInfo, status?: ChangefeedStatus, removedTables: readonly string[] = []): Promise<boolean> {
    const puts = [{ key: this.ctx.keys.changefeedInfo(info.id), value: JSON.stringify(info) }];
    if (status !== undefined) puts.push({ key: this.ctx.keys.changefeedStatus(info.id), value: JSON.stringify(status) });
    const deletes = removedTables.map((table) => backfillTablePrefix(this.ctx.keys.backfillPrefix(info.id), table));
    const ok = await this.ctx.election.fencedPut(this.ctx.owner, puts, deletes);
    if (!ok) {
      this.ctx.metrics.fencedWriteRejections.inc();
      this.stop('fenced write rejected');
    }
    return ok;
  }

  /** Deletes a changefeed's keys, fenced. */
  async deleteChangefeed(id: string): Promise<boolean> {
    const ok = await this.ctx.election.fencedPut(this.ctx.owner, [], [this.ctx.keys.changefeedPrefix(id), this.ctx.keys.backfillPrefix(id)]);
    if (!ok) {
      this.ctx.metrics.fencedWriteRejections.inc();
      this.stop('fenced write rejected');
    }
    this.managed.delete(id);
    return ok;
  }

  // ---- operator requests ----

  /**
   * Drains a capture in every changefeed; the sum of spans still on it. Answers once the
   * drain is persisted, so a 202 survives an owner change.
   */
  drain(captureId: string): Promise<DrainResult> {
    if (!this.drainsLoaded) return Promise.resolve(drainsLoading);
    return this.serializeDrainWrite(async (): Promise<DrainResult> => {
      const captures = this.ctx.captures();
      if (!captures.has(captureId)) return { ok: false, code: 'unknown-capture', message: `no live capture ${captureId}` };
      if (!this.draining.has(captureId)) {
        const staying = [...captures.keys()].filter((id) => id !== captureId && !this.draining.has(id));
        if (staying.length === 0) return { ok: false, code: 'last-capture', message: `capture ${captureId} is the last one that is not draining` };
        if (!(await this.persistDrain(captureId, true))) {
          return { ok: false, code: 'not-persisted', message: `the drain of ${captureId} could not be persisted; retry` };
        }
        this.draining.add(captureId);
      }
      let remainingSpans = 0;
      for (const managed of this.managed.values()) {
        const result = managed.coordinator.requestDrain(captureId);
        if (result.ok) remainingSpans += result.remainingSpans ?? 0;
        else remainingSpans += managed.coordinator.remainingSpans(captureId);
      }
      return { ok: true, remainingSpans };
    });
  }

  /**
   * Cancels a capture's drain in every changefeed (idempotent): it takes new spans again,
   * and its share back by a rebalance. Answers once the cancel is persisted. A capture
   * that left (`departed`) is only forgotten.
   */
  undrain(captureId: string, options: { departed?: boolean } = {}): Promise<DrainResult> {
    if (!this.drainsLoaded) return Promise.resolve(drainsLoading);
    return this.serializeDrainWrite(async (): Promise<DrainResult> => {
      if (options.departed !== true && !this.ctx.captures().has(captureId)) return { ok: false, code: 'unknown-capture', message: `no live capture ${captureId}` };
      if (this.draining.has(captureId)) {
        if (!(await this.persistDrain(captureId, false))) {
          return { ok: false, code: 'not-persisted', message: `the end of the drain of ${captureId} could not be persisted; retry` };
        }
        this.draining.delete(captureId);
      }
      for (const managed of this.managed.values()) managed.coordinator.cancelDrain(captureId);
      return { ok: true, remainingSpans: this.remainingSpans(captureId) };
    });
  }

  /**
   * Checkpoint and resolved lag in ms: for wall-clock timestamps (datagen) now minus the
   * timestamp; otherwise from when the resolved-ts reached them. Null when unknown.
   */
  lagsMs(id: string, checkpointTs: bigint, resolvedTs: bigint): { checkpointLagMs: number | null; resolvedLagMs: number | null } {
    const managed = this.managed.get(id);
    const now = Date.now();
    if (managed?.info.source.uri.startsWith('datagen:') === true) {
      return { checkpointLagMs: Math.max(0, now - Number(checkpointTs)), resolvedLagMs: Math.max(0, now - Number(resolvedTs)) };
    }
    return { checkpointLagMs: managed?.lag.checkpointLagMs(checkpointTs, now) ?? null, resolvedLagMs: managed?.lag.resolvedLagMs(now) ?? null };
  }

  /** Spans a capture still holds over every changefeed. */
  remainingSpans(captureId: string): number {
    let total = 0;
    for (const managed of this.managed.values()) total += managed.coordinator.remainingSpans(captureId);
    return total;
  }
}

/**
 * The capture side of every changefeed on this capture: one pure {@link Agent} and one
 * {@link PipelineRunner} per changefeed, fed by the owner's stream and the pipelines.
 * Reports go back on the stream the owner's latest accepted message came from.
 */
import { randomInt } from 'node:crypto';
import { Agent, agentDefaults } from '../agent/agent.ts';
import type { AgentOutput } from '../agent/agent.ts';
import { OwnerGate, admitAdds, isRunning } from '../agent/owner-gate.ts';
import type { OwnerMessage, ReportMessage } from '../core/messages.ts';
import type { TableRange } from '../core/span.ts';
import type { Logger } from '../log.ts';
import type { Etcd3 } from 'etcd3';
import type { Metrics } from './metrics.ts';
import type { ClusterKeys } from '../cluster/keys.ts';
import { EtcdBackfillStore, backfillDefaults } from '../pipeline/backfill.ts';
import type { PipelineLimits } from '../pipeline/pipeline-runner.ts';
import { PipelineRunner } from '../pipeline/pipeline-runner.ts';
import type { PipelineBounds } from '../pipeline/bounds.ts';
import { openBoundedSink, openBoundedSource } from '../pipeline/registry.ts';
import type { Sink } from '../pipeline/sink.ts';
import type { Source, SourceStats } from '../pipeline/source.ts';
import type { ChangefeedInfo, ChangefeedStatus } from './changefeed-info.ts';
import { tableRange } from './changefeed-info.ts';

interface HostedAgent {
  readonly agent: Agent;
  readonly epoch: string;
  readonly runner: PipelineRunner;
  /** The runner's sink, told the persisted checkpoint (file retention). */
  readonly sink: Sink;
  /** The runner's source, asked for its watchers (metrics). */
  readonly source: Source;
  reply: ((report: ReportMessage) => void) | undefined;
}

/** Per table: the lower bound of its incremental backfill, when it has one. */
const backfillSinceByInfo = new WeakMap<ChangefeedInfo, ReadonlyMap<string, bigint>>();

function backfillSince(info: ChangefeedInfo): ReadonlyMap<string, bigint> {
  let since = backfillSinceByInfo.get(info);
  if (since === undefined) {
    since = new Map(info.tables.filter((t) => t.backfillSinceTs !== undefined).map((t) => [t.name, BigInt(t.backfillSinceTs as string)] as const));
    backfillSinceByInfo.set(info, since);
  }
  return since;
}

/** Per table: its backfill revision, or null when it is not backfilled; computed once per info (every pipeline step asks). */
const backfillRevisionsByInfo = new WeakMap<ChangefeedInfo, ReadonlyMap<string, bigint | null>>();

function backfillRevisions(info: ChangefeedInfo): ReadonlyMap<string, bigint | null> {
  let revisions = backfillRevisionsByInfo.get(info);
  if (revisions === undefined) {
    revisions = new Map(info.tables.map((t) => [t.name, t.backfillTs === undefined ? null : BigInt(t.backfillTs)] as const));
    backfillRevisionsByInfo.set(info, revisions);
  }
  return revisions;
}

/** Every table range of a changefeed by name, computed once per info (every add asks). */
const tableRangesByInfo = new WeakMap<ChangefeedInfo, ReadonlyMap<string, TableRange>>();

function tableRanges(info: ChangefeedInfo): ReadonlyMap<string, TableRange> {
  let ranges = tableRangesByInfo.get(info);
  if (ranges === undefined) {
    ranges = new Map(info.tables.map((t) => [t.name, tableRange(t)] as const));
    tableRangesByInfo.set(info, ranges);
  }
  return ranges;
}

/** What the host lets through to its agents (see {@link OwnerGate}), and the progress it has them report. */
export interface AdmissionLimits {
  /** Spans held on this capture over every changefeed; adds past it are refused. */
  readonly spansHeldMax: number;
  /** Fewest ms between two election re-reads asked for by messages of an unknown owner. */
  readonly ownerVerifyIntervalMs: number;
  /** Per-span progress in each report: the slowest spans named, and the round-robin slice. */
  readonly progressSlowestMax?: number;
  readonly progressSliceMax?: number;
  /** Spans writing at least this many events a second send a split key (the owner's split threshold). */
  readonly splitKeyRateMin?: number;
}

export class AgentHost {
  private readonly hosted = new Map<string, HostedAgent>();
  private owner: { id: string; revision: bigint } | undefined;
  private flushScheduled = false;
  private readonly gate: OwnerGate;

  constructor(
    private readonly captureId: string,
    private readonly changefeeds: () => ReadonlyMap<string, ChangefeedInfo>,
    private readonly limits: PipelineLimits,
    private readonly log: Logger,
    private readonly metadata: { readonly client: Etcd3; readonly keys: ClusterKeys; readonly metrics: Metrics; readonly bounds: PipelineBounds },
    /** Every changefeed's persisted status, as the capture last read it. */
    private readonly statuses: () => ReadonlyMap<string, ChangefeedStatus>,
    private readonly admission: AdmissionLimits,
    /** Re-reads the election from etcd now (a message named an owner not seen yet). */
    private readonly verifyOwner: () => void,
  ) {
    this.gate = new OwnerGate({ verifyIntervalMs: admission.ownerVerifyIntervalMs });
  }

  /**
   * A message from an owner, with the way back on its stream. Only the owner seen in
   * etcd is heard, and only adds inside the changefeed's tables (as this capture last
   * read them, at the message's epoch) reach the agent.
   */
  handle(message: OwnerMessage, reply: (report: ReportMessage) => void): void {
    const refused = (reason: string): void => this.metadata.metrics.rpcMessagesRefused.inc({ reason });
    const check = this.gate.check(message.header, Date.now());
    if (check.kind === 'refuse') {
      refused(check.reason);
      if (check.verify) this.verifyOwner();
      if (check.reason !== 'stale-owner') this.log.debug({ header: message.header, reason: check.reason }, 'owner message refused');
      return;
    }
    const id = message.header.changefeed;
    const info = this.changefeeds().get(id);
    if (info === undefined || info.state !== 'normal' || BigInt(info.epoch) !== message.header.changefeedEpoch) {
      refused('unknown-changefeed');
      return;
    }
    const hosted = this.ensure(info);
    let out: AgentOutput;
    if (message.kind === 'dispatch' && message.adds.length > 0) {
      const agent = hosted.agent;
      let count = 0;
      for (const other of this.hosted.values()) count += other.agent.size;
      const admission = admitAdds(message.adds, tableRanges(info), { count, has: (key) => isRunning(agent.spanState(key)) }, this.admission.spansHeldMax);
      for (const { span, reason } of admission.refused) {
        this.metadata.metrics.rpcSpansRefused.inc({ reason });
        this.log.debug({ changefeed: id, span, reason }, 'span add refused');
      }
      const admitted = admission.refused.length === 0 ? message : { ...message, adds: admission.admitted };
      out = agent.handleMessage(admitted, admission.refused.map((r) => r.span));
    } else {
      out = hosted.agent.handleMessage(message);
    }
    if (out.outbox.length > 0 || message.header.ownerRevision >= (this.owner?.revision ?? 0n)) hosted.reply = reply;
    this.apply(id, hosted, out);
  }

  /** The owner seen in etcd: the only one heard from now on; agents drop anything older. */
  observeOwner(ownerId: string, revision: bigint): void {
    if (!this.gate.observe(ownerId, revision)) return;
    this.owner = { id: ownerId, revision };
    for (const [id, hosted] of this.hosted) this.apply(id, hosted, hosted.agent.observeOwner(ownerId, revision));
  }

  /** Sends each agent's pending state changes; called every tick. */
  flush(): void {
    for (const [id, hosted] of this.hosted) this.apply(id, hosted, hosted.agent.flush());
  }

  /**
   * Stops agents whose changefeed is gone, paused, or re-created with a new epoch; tells
   * the others' sinks the persisted checkpoint.
   */
  sync(): void {
    const infos = this.changefeeds();
    for (const [id, hosted] of this.hosted) {
      const info = infos.get(id);
      if (info === undefined || info.state !== 'normal' || info.epoch !== hosted.epoch) void this.drop(id, 'changefeed stopped');
      else this.observeCheckpoint(id, hosted);
    }
  }

  /**
   * Info and status come from the same cache read, and the info's epoch is the agent's:
   * the checkpoint is this run's, never a removed namesake's.
   */
  private observeCheckpoint(id: string, hosted: HostedAgent): void {
    const status = this.statuses().get(id);
    if (status !== undefined) hosted.sink.observeCheckpoint?.(BigInt(status.checkpointTs));
  }

  /** Tells owners this capture is shutting down. */
  setStopping(): void {
    for (const hosted of this.hosted.values()) hosted.agent.setStopping();
  }

  /** Self-fence: every pipeline stops at once and every agent is forgotten. */
  async stopAll(reason: string): Promise<void> {
    await Promise.all([...this.hosted.keys()].map((id) => this.drop(id, reason)));
  }

  /** How each changefeed's source reads upstream (sources that can tell), for metrics. */
  sourceStats(): Map<string, SourceStats> {
    const stats = new Map<string, SourceStats>();
    for (const [id, hosted] of this.hosted) {
      const current = hosted.source.stats?.();
      if (current !== undefined) stats.set(id, current);
    }
    return stats;
  }

  /** Spans held per changefeed, for the API and metrics. */
  spansHeld(): Map<string, number> {
    const held = new Map<string, number>();
    for (const [id, hosted] of this.hosted) held.set(id, hosted.runner.size);
    return held;
  }

  private ensure(info: ChangefeedInfo): HostedAgent {
    const existing = this.hosted.get(info.id);
    if (existing !== undefined && existing.epoch === info.epoch) return existing;
    if (existing !== undefined) void this.drop(info.id, 'new epoch');
    const agent = new Agent({
      captureId: this.captureId,
      captureEpoch: BigInt(randomInt(1, 2 ** 47)),
      changefeed: info.id,
      changefeedEpoch: BigInt(info.epoch),
      statusesPerMessageMax: agentDefaults.statusesPerMessageMax,
      progressSlowestMax: this.admission.progressSlowestMax ?? agentDefaults.progressSlowestMax,
      progressSliceMax: this.admission.progressSliceMax ?? agentDefaults.progressSliceMax,
      splitKeyRateMin: this.admission.splitKeyRateMin ?? agentDefaults.splitKeyRateMin,
    });
    if (this.owner !== undefined) agent.observeOwner(this.owner.id, this.owner.revision);
    const log = this.log.child({ changefeed: info.id });
    let hosted: HostedAgent | undefined;
    // Within the capture's bounds: a stored changefeed outside them fails, with the reason.
    // The span count is what `datagen://?totalRate=` divides by; it is fixed for the life of
    // this agent (a new epoch opens the source again), so every read of a span's history
    // on this capture sees the same events.
    const spanCount = info.tables.reduce((n, table) => n + (table.spans ?? 1), 0);
    const source = openBoundedSource(info.source.uri, this.metadata.bounds, { spanCount, tables: [...tableRanges(info).values()] });
    const sink = openBoundedSink(info.sink.uri, {
      log: log.child({ component: 'sink' }),
      filesRetired: (count) => this.metadata.metrics.sinkFilesRetired.inc({ changefeed: info.id }, count),
    }, this.metadata.bounds);
    const runner = new PipelineRunner(
      source,
      sink,
      (events) => {
        if (hosted !== undefined && this.hosted.get(info.id) === hosted) this.apply(info.id, hosted, hosted.agent.handlePipelineEvents(events));
      },
      this.limits,
      log,
      {
        snapshotTsFor: (span) => {
          const current = this.changefeeds().get(info.id);
          if (current === undefined) return undefined;
          const revision = backfillRevisions(current).get(span.table);
          return revision === undefined ? 'unknown-table' : (revision ?? undefined);
        },
        sinceTsFor: (span) => {
          const current = this.changefeeds().get(info.id);
          return current === undefined ? undefined : backfillSince(current).get(span.table);
        },
        store: new EtcdBackfillStore(this.metadata.client, this.metadata.keys.backfillPrefix(info.id)),
        limits: { ...backfillDefaults, ...source.snapshots?.backfillLimits },
      },
      {
        eventsWritten: (count) => this.metadata.metrics.sourceEvents.inc({ changefeed: info.id }, count),
        flushed: (seconds) => this.metadata.metrics.sinkFlushSeconds.observe({ changefeed: info.id }, seconds),
        keysCopied: (count) => this.metadata.metrics.backfillKeysCopied.inc({ changefeed: info.id }, count),
        quietChecked: (spans, moved) => {
          this.metadata.metrics.quietChecks.inc({ changefeed: info.id });
          this.metadata.metrics.quietSpansMoved.inc({ changefeed: info.id }, moved);
        },
      },
    );
    hosted = { agent, epoch: info.epoch, runner, sink, source, reply: undefined };
    this.hosted.set(info.id, hosted);
    this.observeCheckpoint(info.id, hosted);
    runner.start();
    log.info({ epoch: info.epoch }, 'agent started');
    return hosted;
  }

  private apply(id: string, hosted: HostedAgent, out: AgentOutput): void {
    if (out.commands.length > 0) hosted.runner.apply(out.commands);
    for (const report of out.outbox) hosted.reply?.(report);
    for (const event of out.events) {
      // A state change is reported at once rather than at the next tick: every step of
      // an add or a move waits for it.
      if (event.type === 'span-state-changed') this.scheduleFlush();
      if (event.type === 'message-dropped') this.metadata.metrics.rpcMessagesRefused.inc({ reason: event.reason });
      if (event.type === 'span-failed') this.log.warn({ changefeed: id, span: event.span, error: event.error }, 'span pipeline failed');
      else this.log.debug({ changefeed: id, event }, 'agent event');
    }
  }

  private scheduleFlush(): void {
    if (this.flushScheduled) return;
    this.flushScheduled = true;
    setImmediate(() => {
      this.flushScheduled = false;
      this.flush();
    });
  }

  private async drop(id: string, reason: string): Promise<void> {
    const hosted = this.hosted.get(id);
    if (hosted === undefined) return;
    this.hosted.delete(id);
    hosted.agent.stopAll();
    await hosted.runner.close();
    this.log.info({ changefeed: id, reason }, 'agent stopped');
  }
}

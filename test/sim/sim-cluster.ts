/**
 * A simulated spanfeed cluster for one seed: captures running the real pure agent over
 * simulated pipelines, an owner running the real pure coordinator, an unreliable network,
 * a model of etcd (membership with lease expiry, election revisions, fenced checkpoint
 * writes), and faults: capture crashes and restarts, owner crashes, pauses longer than
 * the lease (the deposed owner keeps acting for a few steps and must be fenced), owner
 * resignations, operator moves, drains and rebalances, splits and merges of spans at run
 * time (whose new tiling the owner writes, sometimes too late: the next owner must settle
 * it from what the captures hold); and, under the real pure span
 * pipelines, an upstream with history and compaction, a backfill of every table at the
 * start, source and sink calls that fail, fail midway or hang past their deadline,
 * record writes that fail or land unanswered, and resumes with backfill after a
 * compaction failed the changefeed. Drains go through each owner's pure
 * {@link OwnerDrains} into a model of the persisted drain keys.
 *
 * After every step it checks the invariants of DESIGN.md §8, that no two pipelines write
 * overlapping spans at once, that the owner's spans (a split or merge in flight counted
 * as one) tile every table exactly once, and that the sink holds, at
 * the persisted checkpoint and at the checkpoints agents report, exactly the upstream's
 * state; once faults stop it checks that every span replicates again and the checkpoint
 * advances within a bound.
 */
import { Agent } from '../../src/agent/agent.ts';
import { OwnerGate, admitAdds, isRunning } from '../../src/agent/owner-gate.ts';
import type { Coordinator as CoordinatorType } from '../../src/core/coordinator.ts';
import { Coordinator } from '../../src/core/coordinator.ts';
import { ChangefeedRun } from '../../src/core/changefeed-run.ts';
import type { CoordinatorEvent } from '../../src/core/events.ts';
import { FailureWindow } from '../../src/core/failure-window.ts';
import { resume, update } from '../../src/core/changefeed-lifecycle.ts';
import type { LifecycleView } from '../../src/core/changefeed-lifecycle.ts';
import type { CaptureId, Message, OwnerMessage, ReportMessage } from '../../src/core/messages.ts';
import { SeededRandom } from '../../src/core/rng.ts';
import type { Span, TableRange } from '../../src/core/span.ts';
import { compareSpans, spanKey, splitTable } from '../../src/core/span.ts';
import { spansOverlap, tilingProblem } from '../../src/core/tiling.ts';
import { SimNetwork } from './sim-network.ts';
import { SimPipelines, SimSinkLog, SimUpstream, stateDifference } from './sim-pipelines.ts';
import type { CaptureInfoView, SimWorld } from './sim-pipelines.ts';
import type { PipelineEvent } from '../../src/agent/pipeline.ts';
import type { BackfillProgress } from '../../src/agent/span-pipeline.ts';
import { SimMetadata } from './sim-metadata.ts';
import type { MetadataWriter } from './sim-metadata.ts';
import { OwnerDrains } from '../../src/core/owner-drains.ts';
import type { DrainRequest, DrainsStep } from '../../src/core/owner-drains.ts';
import { SimDrainStore } from './sim-drains.ts';
import type { DrainsWriter, LandedDrainWrite } from './sim-drains.ts';

/** Simulated time per step, for the coordinator's stall detection. */
const simStepMs = 50;
/** Short, so stalls happen under the simulated faults (pipeline failures, pauses). */
const simStallAfterMs = 1_000;

/**
 * The split policy on even seeds, in the simulator's scale: about 20 upstream events a
 * second over all spans, so a span of a few events a second is hot. Splits stop at 12
 * spans a table; halves rarely write under 1 a second together for 2 s, so merges are
 * fewer. Off on odd seeds (the coordinator ignores these then).
 */
const simSplitPolicy = {
  splitRateMin: 3,
  mergeRateMax: 1,
  splitAfterTicks: 20,
  mergeAfterTicks: 40,
  coolDownTicks: 60,
  spansPerTableMax: 12,
  rateReportAgeMaxTicks: 40,
} as const;

/** What one simulation run is made of. */
export interface SimOptions {
  readonly seed: number;
  readonly steps: number;
  readonly spans: number;
  readonly captures: number;
  /** Steps after faults stop within which every span must replicate and the checkpoint advance. */
  readonly livenessStepsMax: number;
  /** Prints every event about spans whose key contains this text (debugging a seed). */
  readonly trace?: string;
}

/** The result of one seed. */
export interface SimResult {
  readonly seed: number;
  readonly steps: number;
  readonly violations: string[];
  readonly livenessFailure: string | undefined;
  readonly stats: Record<string, number>;
}

interface SimCapture {
  readonly id: CaptureId;
  /** Undefined while the changefeed is failed (its agents are dropped until a resume). */
  agent: Agent | undefined;
  readonly pipelines: SimPipelines;
  alive: boolean;
  pausedUntil: number;
  /** Its copy of the info's tables, read now and then (it lags the owner's updates). */
  readonly view: CaptureInfoView;
  /** The owner it learned from etcd: the only one it hears (the shell's gate, in steps). */
  readonly gate: OwnerGate;
  /** The step its re-read of the election lands, asked for by a message of an unknown owner; -1: none. */
  verifyAtStep: number;
}

/** Steps an on-demand read of the election takes, and the fewest between two. */
const ownerVerifySteps = 2;

interface SimOwner {
  readonly id: CaptureId;
  readonly revision: bigint;
  /** The run this owner coordinates, while the changefeed's info is normal. */
  coordinator: CoordinatorType | undefined;
  run: ChangefeedRun | undefined;
  /** Spans that keep failing fail the changefeed, as on the owner. */
  failures: FailureWindow | undefined;
  epoch: bigint;
  ticks: number;
  /** Steps a deposed owner keeps acting before it notices; -1 while it is the owner. */
  zombieUntil: number;
  reports: ReportMessage[];
  /** This owner's drain decisions, from a read of the persisted drains. */
  readonly drains: OwnerDrains;
  /** The drains version its coordinator has had (-1: none yet; a new coordinator has none). */
  drainsApplied: number;
  /** The table set its coordinator has (table updates reach an owner at its next tick). */
  tablesVersion: number;
}

const changefeed = 'sim';
const startTs = 100n;
/** The runs' timing in the simulator (ticks are steps). */
const runLimits = { writeDeadlineTicks: 12, retryBackoffTicks: 2, writeIntervalTicks: 1 };
/** The drains' bounds in the simulator: a short queue, so bursts of requests find it full. */
const drainsLimits = { requestsQueuedMax: 4, readDeadlineTicks: 12, writeDeadlineTicks: 12, retryBackoffTicks: 2 };
/** Once faults stop, the persisted checkpoint must reach the coordinator's of this many steps before. */
const convergeStepsMax = 40;

export class SimCluster {
  private readonly options: SimOptions;
  private readonly rng: SeededRandom;
  private readonly network: SimNetwork;
  /** The upstream, the sink and the backfill records every capture's pipelines act on. */
  private readonly world: SimWorld;
  /** The tables' backfill revision: the create's, then each resume with backfill's. */
  /** Every table the upstream has; the changefeed replicates the `included` ones. */
  private readonly allTables: TableRange[] = [];
  private readonly spansByTable = new Map<string, Span[]>();
  private readonly included = new Set<string>();
  /** Per included table, its backfill revision (create, a table added, a resume with backfill). */
  private readonly generations = new Map<string, bigint>();
  /** Per table whose backfill is incremental, its lower bound (a resume with `sinceTs`). */
  private readonly backfillSince = new Map<string, bigint>();
  /** Bumped on every table update, so owners apply it once. */
  private tablesVersion = 0;
  /** Per capture and span, the last agent checkpoint whose sink state was checked. */
  private readonly checkedCheckpoints = new Map<string, bigint>();
  private lastCheckedPersisted = -1n;
  private readonly captures = new Map<CaptureId, SimCapture>();
  /** Registered in etcd (lease alive). */
  private readonly membership = new Set<CaptureId>();
  private readonly leaseExpiry = new Map<CaptureId, number>();
  private owner: SimOwner | undefined;
  private zombies: SimOwner[] = [];
  private revision = 0n;
  private nextCaptureNumber = 0;
  private step = 0;
  /** Per coordinator: its checkpoint and the step it was first seen at. */
  private readonly checkpointSeen = new WeakMap<CoordinatorType, { checkpointTs: bigint; sinceStep: number }>();
  private readonly metadata: SimMetadata;
  private readonly drainStore: SimDrainStore;
  /**
   * Captures whose drain an owner answered ok, and not undrained since (by an undrain
   * that landed): each must stay in the persisted drains while it is live.
   */
  private readonly okDrains = new Set<CaptureId>();
  private epoch = 1n;
  /** When an operator resumes the failed changefeed (-1: not failed). */
  private resumeAtStep = -1;
  private agentsDropped = false;
  /** The coordinator's checkpoint at each step after faults stop (for convergence). */
  private readonly coordinatorCheckpoints = new Map<number, bigint>();
  /** Checkpoints persisted earlier: what a stale cache may still show. */
  private readonly persistedHistory: bigint[] = [];
  private readonly faultsEndStep: number;
  private settledAt = -1;
  private checkpointAtSettle = 0n;
  /**
   * Where the liveness window starts: when faults stop, or once later, when a compaction
   * made while they were on surfaces only now (a span reads below it and fails the
   * changefeed, which is resumed with a backfill): the recovery it needs starts there.
   */
  private livenessFromStep: number;
  private readonly violations: string[] = [];
  private livenessFailure: string | undefined;
  private readonly stats: Record<string, number> = {
    crashes: 0,
    pauses: 0,
    resigns: 0,
    elections: 0,
    moves: 0,
    drains: 0,
    drainsCancelled: 0,
    drainsRefused: 0,
    drainsBusy: 0,
    drainsNotPersisted: 0,
    drainsLoading: 0,
    drainedOwnerResigns: 0,
    rebalances: 0,
    fencedWrites: 0,
    pipelineFailures: 0,
    changefeedFailures: 0,
    resumes: 0,
    splits: 0,
    merges: 0,
    autoSplits: 0,
    autoMerges: 0,
    operationsRefused: 0,
    operationsDone: 0,
    operationsAborted: 0,
    tilingsAdopted: 0,
    tilingWritesLost: 0,
  };
  /**
   * Tiling writes of owners in office (after a split or merge is done, or a rebuild
   * adopted one), landing at `atStep` if the owner is still in office then (a fenced write).
   */
  private tilingWrites: { owner: SimOwner; coordinator: CoordinatorType; table: string; spans: Span[]; atStep: number }[] = [];

  /**
   * Even seeds run the changefeed with `autoSplit`: captures report per-span progress
   * with split keys, and the owner's split policy splits and merges (thresholds in the
   * simulator's scale: a span sees a few events a second) besides the random requests.
   */
  private readonly autoSplit: boolean;
  /**
   * The info's `autoSplit` on those seeds: an operator turns it off and on again now and
   * then (a PUT of `autoSplit` alone, decided by the lifecycle, which keeps the tables),
   * and the owner in office applies it at its next tick.
   */
  private autoSplitInfo: boolean;
  /**
   * Seeds 2-3 mod 4 run without periodic collections (only the first one of a capture,
   * the digest's reconciling ones and a stall's): the product's default is a backstop of
   * 30 minutes, so nothing may depend on them.
   */
  private readonly collectIntervalTicks: number;

  constructor(options: SimOptions) {
    this.options = options;
    this.autoSplit = options.seed % 2 === 0;
    this.autoSplitInfo = this.autoSplit;
    this.collectIntervalTicks = Math.floor(options.seed / 2) % 2 === 1 ? 1_000_000 : 60;
    this.rng = new SeededRandom(options.seed);
    this.network = new SimNetwork(this.rng, { dropProbability: 0.05, duplicateProbability: 0.03, delayStepsMax: 3 });
    // One more table than the changefeed starts with: table updates add and remove them.
    const tableCount = 1 + this.rng.int(3);
    for (let t = 0; t <= tableCount; t++) {
      const table: TableRange = { name: `t${t}`, start: 'a', end: 'z' };
      const count = Math.max(1, Math.floor(options.spans / tableCount) + (t === 0 ? options.spans % tableCount : 0));
      const boundaries: string[] = [];
      for (let i = 1; i < count; i++) boundaries.push(`k${String(i).padStart(6, '0')}`);
      this.allTables.push(table);
      this.spansByTable.set(table.name, splitTable(table, boundaries));
      // Created with a backfill at the start revision + 1 (the checkpoint starts just below).
      if (t < tableCount) {
        this.included.add(table.name);
        this.generations.set(table.name, startTs + 1n);
      }
    }
    const upstream = new SimUpstream(this.rng, [...this.spansByTable.values()].flat(), startTs);
    this.world = { upstream, sink: new SimSinkLog((span) => upstream.keysIn(span)), records: new Map<string, BackfillProgress>(), doneAt: new Map(), stats: this.stats };
    this.metadata = new SimMetadata(this.rng, startTs, this.epoch, { failProbability: 0.05, lostProbability: 0.02, slowProbability: 0.05, slowStepsMax: 30 });
    this.drainStore = new SimDrainStore(this.rng, { failProbability: 0.08, lostProbability: 0.04, slowProbability: 0.08, slowStepsMax: 30 }, (write) => this.onDrainLanded(write));
    this.faultsEndStep = Math.max(0, options.steps - options.livenessStepsMax);
    this.livenessFromStep = this.faultsEndStep;
    for (let i = 0; i < options.captures; i++) this.startCapture();
  }

  /** Runs every step and returns the verdict. */
  run(): SimResult {
    // A late compaction failure moves the window, and the run goes on to its end.
    const lastStep = (): number => Math.max(this.options.steps, this.livenessFromStep + this.options.livenessStepsMax);
    for (this.step = 1; this.step <= lastStep(); this.step++) {
      this.runStep();
      if (this.violations.length > 0) break;
    }
    if (this.violations.length === 0 && this.livenessFailure === undefined) this.checkLiveness(true);
    return {
      seed: this.options.seed,
      steps: Math.min(this.step, lastStep()),
      violations: this.violations,
      livenessFailure: this.livenessFailure,
      stats: { ...this.stats, ...this.metadata.stats, ...this.drainStore.stats, messages: this.network.sent, dropped: this.network.dropped, duplicated: this.network.duplicated },
    };
  }

  /** The checkpoint etcd holds. */
  private get persisted(): { checkpointTs: bigint; resolvedTs: bigint } {
    return this.metadata.status;
  }

  private get faultsOn(): boolean {
    return this.step < this.faultsEndStep;
  }

  private runStep(): void {
    const step = this.step;
    this.world.upstream.advance(this.world.upstream.ts + BigInt(1 + this.rng.int(3)));
    if (step === this.faultsEndStep) this.endFaults();
    if (this.faultsOn) this.injectFaults();
    this.resumePaused();
    this.expireLeases();
    this.refreshViews();
    this.elect();
    this.landOwnerReads();
    this.deliver();
    for (const capture of this.captures.values()) {
      if (!this.canRun(capture)) continue;
      const agent = capture.agent;
      if (agent === undefined) continue;
      this.feed(capture, capture.pipelines.step(step, this.faultsOn));
      this.sendAll(agent.flush().outbox);
    }
    this.metadata.step(step);
    this.drainStore.step(step);
    this.landTilingWrites();
    this.tickOwners();
    this.followChangefeedState();
    this.checkInvariants();
    if (!this.faultsOn) this.checkLiveness(false);
  }

  // ---- faults ----

  private injectFaults(): void {
    const live = this.liveCaptures();
    if (live.length > 1 && this.rng.chance(0.01)) this.crash(this.rng.pick(live));
    if (this.liveCaptures().length < this.options.captures && this.rng.chance(0.05)) this.startCapture();
    if (this.owner !== undefined && this.owner.zombieUntil < 0 && this.rng.chance(0.003)) this.pauseOwner();
    if (this.owner !== undefined && this.owner.zombieUntil < 0 && this.rng.chance(0.003)) this.resignOwner();
    this.updateTables();
    // Off now and then, for a short while: the policy still runs most of the time.
    if (this.autoSplit && this.rng.chance(this.autoSplitInfo ? 0.001 : 0.02)) this.toggleAutoSplit();
    // etcd compacts the upstream's history: spans behind it fail the changefeed.
    if (this.rng.chance(0.0015)) {
      this.world.upstream.compactedTs = this.world.upstream.ts - BigInt(this.rng.int(4));
      this.stats.compactions = (this.stats.compactions ?? 0) + 1;
    }
    this.operatorDrains();
    // A changefeed failure (an error retrying cannot fix): the run must persist it and stay failed.
    if (this.owner?.run?.phase === 'running' && this.owner.zombieUntil < 0 && this.rng.chance(0.001)) this.owner.run.fail(`injected failure at step ${this.step}`);
    // An operator pauses it (resumed a while later, like a failure).
    if (this.metadata.info.state === 'normal' && this.rng.chance(0.0007)) {
      this.metadata.pause();
    }
    const coordinator = this.owner?.coordinator;
    if (coordinator === undefined || coordinator.phase !== 'running' || this.owner?.run?.phase !== 'running') return;
    if (this.rng.chance(0.05)) {
      const span = this.rng.pick(this.spans);
      const targets = [...coordinator.captures.captures.keys()];
      if (targets.length > 0 && coordinator.requestMove(spanKey(span), this.rng.pick(targets)).ok) this.stats.moves = (this.stats.moves ?? 0) + 1;
    }
    if (this.rng.chance(0.01) && coordinator.requestRebalance().ok) this.stats.rebalances = (this.stats.rebalances ?? 0) + 1;
    if (this.rng.chance(0.04)) this.requestOperation(coordinator);
    // A rolling restart: a drained capture that holds nothing is stopped and replaced (a
    // drained owner resigns first).
    for (const [id, state] of coordinator.captures.captures) {
      const capture = this.captures.get(id);
      if (id === this.owner?.id) continue;
      if (state.draining && coordinator.remainingSpans(id) === 0 && capture !== undefined && this.canRun(capture) && this.liveCaptures().length > 1) {
        this.crash(capture);
      }
    }
  }

  /**
   * An operator's (or a split policy's) split or merge of a random span: split at one of
   * its keys, on its capture or on two random ones; or merged with the next span. Merges
   * are likelier once a table has many more spans than it started with.
   */
  private requestOperation(coordinator: CoordinatorType): void {
    const tiling = coordinator.tiling().filter((span) => this.included.has(span.table));
    if (tiling.length === 0) return;
    const span = this.rng.pick(tiling);
    const captures = [...coordinator.captures.captures.values()].filter((c) => c.initialized).map((c) => c.id);
    const started = tiling.length / Math.max(1, this.options.spans);
    if (this.rng.chance(started > 1.5 ? 0.3 : 0.6)) {
      const keys = this.world.upstream.keysIn(span).map((key) => key.slice(span.table.length + 1)).filter((key) => key > span.start);
      if (keys.length === 0 || captures.length === 0) return;
      const at = this.rng.pick(keys);
      const targets: [CaptureId, CaptureId] | undefined = this.rng.chance(0.5) ? undefined : [this.rng.pick(captures), this.rng.pick(captures)];
      const result = coordinator.requestSplit(span.table, span.start, at, targets);
      if (result.ok) this.stats.splits = (this.stats.splits ?? 0) + 1;
      else this.stats.operationsRefused = (this.stats.operationsRefused ?? 0) + 1;
      return;
    }
    const capture = this.rng.chance(0.5) || captures.length === 0 ? undefined : this.rng.pick(captures);
    const result = coordinator.requestMerge(span.table, span.start, capture);
    if (result.ok) this.stats.merges = (this.stats.merges ?? 0) + 1;
    else this.stats.operationsRefused = (this.stats.operationsRefused ?? 0) + 1;
  }

  /**
   * What the shell does with a coordinator's tiling events: the owner in office writes
   * the table's new tiling (a fenced write, sometimes slow: an owner change before it
   * lands loses it, and the next owner must cope with the tiling the captures hold).
   */
  private persistTilings(owner: SimOwner, coordinator: CoordinatorType, events: readonly CoordinatorEvent[]): void {
    for (const event of events) {
      let table: string | undefined;
      if (event.type === 'operation-done') {
        this.stats.operationsDone = (this.stats.operationsDone ?? 0) + 1;
        table = event.table;
      } else if (event.type === 'operation-aborted') {
        this.stats.operationsAborted = (this.stats.operationsAborted ?? 0) + 1;
      } else if (event.type === 'tiling-adopted') {
        this.stats.tilingsAdopted = (this.stats.tilingsAdopted ?? 0) + 1;
        table = event.table;
      } else if (event.type === 'split-policy-decided' && event.operation !== undefined) {
        const stat = event.kind === 'split' ? 'autoSplits' : 'autoMerges';
        this.stats[stat] = (this.stats[stat] ?? 0) + 1;
      }
      if (table === undefined) continue;
      this.writeTiling(owner, coordinator, table);
    }
    // Level-triggered, as the shell: with nothing in flight, a table whose persisted
    // tiling differs from the coordinator's (a write lost to a pause or a fenced run) is
    // written again, or it would stay stale until some later operation.
    if (coordinator.operations().length === 0) {
      const tiling = coordinator.tiling();
      for (const table of new Set(tiling.map((span) => span.table))) {
        if (this.tilingWrites.some((write) => write.table === table)) continue;
        const want = tiling.filter((span) => span.table === table).sort(compareSpans);
        if (!sameSpans(want, this.spansByTable.get(table) ?? [])) this.writeTiling(owner, coordinator, table);
      }
    }
    this.landTilingWrites();
  }

  /** Starts the write of the table's tiling as the coordinator has it now (fenced, sometimes slow). */
  private writeTiling(owner: SimOwner, coordinator: CoordinatorType, table: string): void {
    const spans = coordinator.tiling().filter((span) => span.table === table).sort(compareSpans);
    if (spans.length === 0) return;
    let atStep = this.step + (this.faultsOn && this.rng.chance(0.3) ? 1 + this.rng.int(20) : 0);
    // One write per table at a time, with the latest tiling (as the shell serialises them).
    for (const earlier of this.tilingWrites) if (earlier.table === table && earlier.atStep > atStep) atStep = earlier.atStep;
    this.tilingWrites = this.tilingWrites.filter((earlier) => earlier.table !== table);
    this.tilingWrites.push({ owner, coordinator, table, spans, atStep });
  }

  private landTilingWrites(): void {
    const waiting: typeof this.tilingWrites = [];
    for (const write of this.tilingWrites) {
      if (write.atStep > this.step) {
        waiting.push(write);
        continue;
      }
      const { owner } = write;
      // Fenced: the owner is still in office, and its run (a pause or failure ends it) too.
      if (this.owner === owner && owner.zombieUntil < 0 && this.membership.has(owner.id) && owner.coordinator === write.coordinator) this.spansByTable.set(write.table, write.spans);
      else this.stats.tilingWritesLost = (this.stats.tilingWritesLost ?? 0) + 1;
    }
    this.tilingWrites = waiting;
  }

  /**
   * An operator's table update (PUT with backfill): a table added is backfilled at the
   * current revision, a table removed leaves the changefeed (and may come back later with
   * a new backfill). The owner applies it at its next tick; captures read it a while later.
   */
  private updateTables(): void {
    if (this.metadata.info.state !== 'normal' || !this.rng.chance(0.004)) return;
    const absent = this.allTables.filter((t) => !this.included.has(t.name));
    if (absent.length > 0 && (this.included.size <= 1 || this.rng.chance(0.5))) {
      const table = this.rng.pick(absent).name;
      this.included.add(table);
      this.generations.set(table, this.world.upstream.ts);
      this.backfillSince.delete(table);
      this.stats.tablesAdded = (this.stats.tablesAdded ?? 0) + 1;
    } else if (this.included.size > 1) {
      const table = this.rng.pick([...this.included]);
      this.included.delete(table);
      this.generations.delete(table);
      this.backfillSince.delete(table);
      // The owner's info write deletes the removed table's backfill records with it.
      for (const span of this.spansByTable.get(table) ?? []) this.world.records.delete(spanKey(span));
      this.stats.tablesRemoved = (this.stats.tablesRemoved ?? 0) + 1;
    } else {
      return;
    }
    this.tablesVersion++;
  }

  /** An operator's PUT of `autoSplit` alone: the lifecycle flips it and keeps the very same tables. */
  private toggleAutoSplit(): void {
    const view = this.lifecycleView();
    const decision = update(view, { autoSplit: !this.autoSplitInfo });
    if (!decision.ok || decision.next.tables !== view.tables || (decision.removed ?? []).length > 0) {
      throw new Error(`sim: an autoSplit update changed more than autoSplit: ${JSON.stringify(decision, (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v))}`);
    }
    this.autoSplitInfo = decision.next.autoSplit === true;
    this.stats.autoSplitToggles = (this.stats.autoSplitToggles ?? 0) + 1;
  }

  /** The changefeed's info as the lifecycle sees it. */
  private lifecycleView(): LifecycleView {
    const tables = [...this.included].map((name) => {
      const backfillTs = this.generations.get(name);
      const backfillSinceTs = this.backfillSince.get(name);
      return { name, ...(backfillTs === undefined ? {} : { backfillTs }), ...(backfillSinceTs === undefined ? {} : { backfillSinceTs }) };
    });
    return { state: this.metadata.info.state, epoch: this.epoch, tables, ...(this.autoSplitInfo ? { autoSplit: true } : {}) };
  }

  /** The tables the changefeed replicates now. */
  private get tables(): TableRange[] {
    return this.allTables.filter((t) => this.included.has(t.name));
  }

  /** Their spans. */
  private get spans(): Span[] {
    return this.tables.flatMap((t) => this.spansByTable.get(t.name) ?? []);
  }

  /** A capture reads the info now and then (always, once faults stop). */
  private refreshViews(): void {
    for (const capture of this.captures.values()) {
      if (!this.canRun(capture) || (this.faultsOn && !this.rng.chance(0.3))) continue;
      capture.view.generations = new Map(this.generations);
      capture.view.since = new Map(this.backfillSince);
      capture.view.tables = this.tableMap();
    }
  }

  private tableMap(): Map<string, TableRange> {
    return new Map(this.tables.map((t) => [t.name, t] as const));
  }

  /**
   * True when every span of `table` finished its current backfill at or below `ts`, as
   * the records say: only then does a reader (the verifier) count the table at `ts`.
   */
  private backfilledBy(table: string, ts: bigint, spans: readonly Span[] = this.spansByTable.get(table) ?? []): boolean {
    const generation = this.generations.get(table);
    if (generation === undefined || ts < generation) return false;
    return spans.every((span) => {
      const snapshotTs = this.world.doneAt.get(spanKey(span))?.get(generation);
      return snapshotTs !== undefined && snapshotTs <= ts;
    });
  }

  private endFaults(): void {
    this.owner?.coordinator?.setAutoSplit(false);
    this.network.faults = undefined;
    this.metadata.faults = undefined;
    this.drainStore.faults = undefined;
    if (this.resumeAtStep >= 0) this.resumeAtStep = this.step;
    for (const capture of this.captures.values()) if (capture.pausedUntil > this.step) capture.pausedUntil = this.step;
  }

  private startCapture(): void {
    const id = `c${this.nextCaptureNumber++}`;
    // A joining capture reads the election before it serves.
    const gate = new OwnerGate({ verifyIntervalMs: ownerVerifySteps });
    if (this.owner !== undefined) gate.observe(this.owner.id, this.owner.revision);
    const agent = this.metadata.info.state === 'normal' ? this.newAgent(id, gate) : undefined;
    const view: CaptureInfoView = { generations: new Map(this.generations), since: new Map(this.backfillSince), tables: this.tableMap() };
    this.captures.set(id, { id, agent, pipelines: new SimPipelines(this.rng, this.world, view), alive: true, pausedUntil: -1, view, gate, verifyAtStep: -1 });
    this.membership.add(id);
  }

  private newAgent(id: CaptureId, gate: OwnerGate): Agent {
    const agent = new Agent({
      captureId: id,
      captureEpoch: BigInt(1 + this.rng.int(1_000_000_000)),
      changefeed,
      changefeedEpoch: this.epoch,
      statusesPerMessageMax: 8,
      ...(this.autoSplit ? { progressSlowestMax: 2, progressSliceMax: 4, splitKeyRateMin: simSplitPolicy.splitRateMin } : {}),
    });
    // As the shell does: a new agent starts from the owner its capture saw in etcd.
    const owner = gate.owner;
    if (owner !== undefined) agent.observeOwner(owner.id, owner.revision);
    return agent;
  }

  /**
   * What captures and operators do when the changefeed's info changes: a failed
   * changefeed's agents stop everything (as the shell drops them); an operator resumes it
   * a while later, as a new epoch with new agents.
   */
  private followChangefeedState(): void {
    if (this.metadata.info.state !== 'normal' && !this.agentsDropped) {
      this.agentsDropped = true;
      if (this.metadata.info.state === 'failed') this.stats.changefeedFailures = (this.stats.changefeedFailures ?? 0) + 1;
      else this.stats.changefeedPauses = (this.stats.changefeedPauses ?? 0) + 1;
      for (const capture of this.captures.values()) {
        capture.agent?.stopAll();
        capture.agent = undefined;
        capture.pipelines.crash();
      }
      this.resumeAtStep = this.faultsOn ? this.step + 10 + this.rng.int(40) : this.step;
    }
    if (this.resumeAtStep >= 0 && this.step >= this.resumeAtStep) {
      this.resumeAtStep = -1;
      this.agentsDropped = false;
      // The way out of a compacted checkpoint is a resume with backfill: every table is
      // copied again at the current revision (the API's `{"backfill": true}`), half of the
      // time incrementally from the persisted checkpoint (the highest bound allowed),
      // which the lifecycle refuses unless every table's last backfill finished below it.
      const withBackfill = this.metadata.info.error?.includes('compacted') === true;
      const view = this.lifecycleView();
      const checkpointTs = this.persisted.checkpointTs;
      const atTs = this.world.upstream.ts;
      let decision = resume(changefeed, view, checkpointTs, withBackfill ? { atTs, ...(this.rng.chance(0.5) ? { sinceTs: checkpointTs } : {}) } : undefined);
      if (!decision.ok && withBackfill) {
        this.stats.incrementalRefused = (this.stats.incrementalRefused ?? 0) + 1;
        decision = resume(changefeed, view, checkpointTs, { atTs });
      }
      if (!decision.ok) {
        this.violations.push(`step ${this.step}: the resume of a ${view.state} changefeed was refused: ${decision.message}`);
        return;
      }
      this.epoch = decision.next.epoch;
      if (withBackfill) {
        this.stats.resumesWithBackfill = (this.stats.resumesWithBackfill ?? 0) + 1;
        this.backfillSince.clear();
        for (const table of decision.next.tables) {
          if (table.backfillTs !== undefined) this.generations.set(table.name, table.backfillTs);
          if (table.backfillSinceTs !== undefined) this.backfillSince.set(table.name, table.backfillSinceTs);
        }
        if (this.backfillSince.size > 0) this.stats.incrementalResumes = (this.stats.incrementalResumes ?? 0) + 1;
        this.tablesVersion++;
      }
      this.metadata.resume(this.epoch);
      this.stats.resumes = (this.stats.resumes ?? 0) + 1;
      for (const capture of this.captures.values()) if (capture.alive) capture.agent = this.newAgent(capture.id, capture.gate);
    }
  }

  /** A process crash: everything on it vanishes; its lease expires a few steps later. */
  private crash(capture: SimCapture): void {
    this.stats.crashes = (this.stats.crashes ?? 0) + 1;
    capture.alive = false;
    capture.pipelines.crash();
    this.leaseExpiry.set(capture.id, this.step + 2 + this.rng.int(6));
    // A crashed owner stays owner in etcd until its lease expires; its zombie dies with it.
    this.zombies = this.zombies.filter((z) => z.id !== capture.id);
  }

  /** The owner's process stops for longer than its lease (SIGSTOP). */
  private pauseOwner(): void {
    const owner = this.owner;
    const capture = owner === undefined ? undefined : this.captures.get(owner.id);
    if (owner === undefined || capture === undefined || !this.canRun(capture)) return;
    this.stats.pauses = (this.stats.pauses ?? 0) + 1;
    const lease = 2 + this.rng.int(6);
    capture.pausedUntil = this.step + lease + 1 + this.rng.int(10);
    this.leaseExpiry.set(capture.id, this.step + lease);
  }

  /** The owner resigns; it may still send a few messages as it winds down. */
  private resignOwner(): void {
    const owner = this.owner;
    if (owner === undefined || this.liveCaptures().length < 2) return;
    this.stats.resigns = (this.stats.resigns ?? 0) + 1;
    owner.zombieUntil = this.step + this.rng.int(3);
    this.zombies.push(owner);
    this.owner = undefined;
    this.elect(owner.id);
  }

  /** A paused capture resumes: it has lost its lease, so it self-fences and is replaced. */
  private resumePaused(): void {
    for (const capture of this.captures.values()) {
      if (capture.pausedUntil < 0 || capture.pausedUntil > this.step || !capture.alive) continue;
      capture.pausedUntil = -1;
      if (this.membership.has(capture.id)) {
        // Resumed before its lease expired: the keepalive renews it.
        this.leaseExpiry.delete(capture.id);
        continue;
      }
      capture.agent?.stopAll();
      capture.pipelines.crash();
      capture.alive = false;
      if (this.owner?.id === capture.id) this.owner = undefined;
      const zombie = [...this.zombies].find((z) => z.id === capture.id);
      if (zombie !== undefined) zombie.zombieUntil = this.step + this.rng.int(3);
      this.startCapture();
    }
  }

  private expireLeases(): void {
    for (const [id, at] of [...this.leaseExpiry]) {
      if (at > this.step) continue;
      this.leaseExpiry.delete(id);
      this.membership.delete(id);
      if (this.owner?.id === id) {
        // The owner lost its lease: if it is only paused, it acts again as a zombie when it resumes.
        const capture = this.captures.get(id);
        if (capture !== undefined && capture.alive) {
          this.owner.zombieUntil = capture.pausedUntil + 3;
          this.zombies.push(this.owner);
        }
        this.owner = undefined;
      }
    }
  }

  /** Elects an owner among registered, running captures when there is none. */
  private elect(exclude?: CaptureId): void {
    if (this.owner !== undefined) return;
    const candidates = [...this.membership].filter((id) => {
      const capture = this.captures.get(id);
      return id !== exclude && capture !== undefined && this.canRun(capture);
    });
    if (candidates.length === 0) return;
    const id = this.rng.pick(candidates);
    this.revision++;
    this.stats.elections = (this.stats.elections ?? 0) + 1;
    this.owner = { id, revision: this.revision, coordinator: undefined, run: undefined, failures: undefined, epoch: 0n, ticks: 0, zombieUntil: -1, reports: [], drains: new OwnerDrains(id, drainsLimits), drainsApplied: -1, tablesVersion: -1 };
    // Captures learn the new owner from etcd, some sooner than others.
    for (const capture of this.captures.values()) {
      if (this.canRun(capture) && this.rng.chance(0.5)) this.observeOwner(capture);
    }
  }

  /** The capture reads the election from etcd: its gate and agent learn the owner there now. */
  private observeOwner(capture: SimCapture): void {
    const owner = this.owner;
    if (owner === undefined) return;
    capture.gate.observe(owner.id, owner.revision);
    capture.agent?.observeOwner(owner.id, owner.revision);
  }

  /** On-demand election reads that land this step (the rest learn at an election, or never). */
  private landOwnerReads(): void {
    for (const capture of this.captures.values()) {
      if (capture.verifyAtStep < 0 || capture.verifyAtStep > this.step) continue;
      capture.verifyAtStep = -1;
      if (this.canRun(capture)) this.observeOwner(capture);
    }
  }

  // ---- message flow ----

  private deliver(): void {
    for (const message of this.network.deliver(this.step)) {
      if (message.kind === 'report') {
        const owner = [this.owner, ...this.zombies].find((o) => o !== undefined && o.id === message.header.to && o.revision === message.header.ownerRevision)
          ?? [this.owner, ...this.zombies].find((o) => o !== undefined && o.id === message.header.to);
        owner?.reports.push(message);
        continue;
      }
      const capture = this.captures.get(message.header.to);
      if (capture === undefined || !this.canRun(capture) || capture.agent === undefined) continue;
      const check = capture.gate.check(message.header, this.step);
      if (check.kind === 'refuse') {
        const stat = { 'unverified-owner': 'refusedUnverifiedOwner', 'forged-owner': 'refusedForgedOwner', 'stale-owner': 'refusedStaleOwner' }[check.reason];
        this.stats[stat] = (this.stats[stat] ?? 0) + 1;
        if (check.verify && capture.verifyAtStep < 0) capture.verifyAtStep = this.step + ownerVerifySteps;
        continue;
      }
      const owned = message as OwnerMessage;
      let out;
      if (owned.kind === 'dispatch' && owned.adds.length > 0) {
        // As the shell does: adds outside the capture's copy of the tables start nothing.
        const agent = capture.agent;
        const admission = admitAdds(owned.adds, capture.view.tables, { count: agent.size, has: (key) => isRunning(agent.spanState(key)) }, Number.POSITIVE_INFINITY);
        if (admission.refused.length > 0) this.stats.addsRefused = (this.stats.addsRefused ?? 0) + admission.refused.length;
        out = agent.handleMessage(admission.refused.length === 0 ? owned : { ...owned, adds: admission.admitted }, admission.refused.map((r) => r.span));
      } else {
        out = capture.agent.handleMessage(owned);
      }
      if (this.options.trace !== undefined) {
        const m = message as OwnerMessage;
        const text = m.kind === 'dispatch'
          ? `adds ${m.adds.map((a) => `${spanKey(a.span)}:${a.secondary ? 'sec' : 'pri'}@${a.checkpointTs}`).join(',')} removes ${m.removes.map(spanKey).join(',')}`
          : `heartbeat spans ${m.spans.map(spanKey).join(',')} collect ${m.collectId}`;
        this.trace(`${capture.id} <- ${m.header.from}@${m.header.ownerRevision}#${m.header.seq} ${m.kind} ${text}`, text);
      }
      this.traceAgent(capture.id, out);
      this.feed(capture, capture.pipelines.apply(out.commands, this.step, this.faultsOn));
      this.sendAll(out.outbox);
    }
  }

  /** Hands pipeline events to the capture's agent, and the agent's commands back to the pipelines, until both are quiet. */
  private feed(capture: SimCapture, events: PipelineEvent[]): void {
    const pending = [...events];
    for (let event = pending.shift(); event !== undefined; event = pending.shift()) {
      const agent = capture.agent;
      if (agent === undefined) return;
      this.trace(`${capture.id} pipeline ${event.kind} ${'checkpointTs' in event ? event.checkpointTs : ''}`, event.key);
      if (event.kind === 'failed') this.stats.pipelineFailures = (this.stats.pipelineFailures ?? 0) + 1;
      if (event.kind === 'retrying') this.stats.pipelineRetries = (this.stats.pipelineRetries ?? 0) + 1;
      const out = agent.handlePipelineEvent(event);
      this.traceAgent(capture.id, out);
      pending.push(...capture.pipelines.apply(out.commands, this.step, this.faultsOn));
      this.sendAll(out.outbox);
    }
  }

  /**
   * An owner follows the changefeed's info as the shell does: it coordinates the current
   * epoch while the info is normal, from the checkpoint etcd holds (a new run), and drops
   * the run once the info says failed.
   */
  private followRun(owner: SimOwner): void {
    const info = this.metadata.info;
    if (info.state !== 'normal') {
      if (owner.run?.phase !== 'failing') {
        owner.coordinator = undefined;
        owner.run = undefined;
      }
      return;
    }
    if (owner.coordinator !== undefined && owner.epoch === info.epoch) return;
    // The shell starts a coordinator from its cache of the status, which may be stale: an
    // older persisted checkpoint. The run must never write below what etcd holds.
    this.persistedHistory.push(this.persisted.checkpointTs);
    // A cache is stale by a few writes at most (it is re-read every few hundred ms).
    if (this.persistedHistory.length > 3) this.persistedHistory.shift();
    const staleStart = this.rng.chance(0.3) ? this.rng.pick(this.persistedHistory) : this.persisted.checkpointTs;
    const coordinator = new Coordinator({
      changefeed,
      changefeedEpoch: info.epoch,
      ownerId: owner.id,
      ownerRevision: owner.revision,
      checkpointTs: staleStart,
      seed: this.rng.int(2 ** 31),
      limits: { collectIntervalTicks: this.collectIntervalTicks, balanceIntervalTicks: 100, moveTasksInFlightMax: 4, addBatchPerTickMax: 16, spansPerMessageMax: 8, stallAfterMs: simStallAfterMs, ...simSplitPolicy },
      // Like the operator's requests, the policy stops with the faults: liveness is judged on a tiling nobody changes.
      autoSplit: this.autoSplitInfo && this.faultsOn,
    });
    coordinator.setSpans(this.tables, this.spans);
    owner.tablesVersion = this.tablesVersion;
    owner.coordinator = coordinator;
    owner.drainsApplied = -1;
    owner.run = new ChangefeedRun(runLimits);
    owner.failures = new FailureWindow({ windowTicks: 150, quietTicks: 20 });
    owner.epoch = info.epoch;
  }

  private writer(owner: SimOwner, run: ChangefeedRun): MetadataWriter {
    return {
      run,
      epoch: owner.epoch,
      fenceHolds: () => this.owner === owner && owner.zombieUntil < 0 && this.membership.has(owner.id),
      onFenced: () => {
        this.stats.fencedWrites = (this.stats.fencedWrites ?? 0) + 1;
        if (owner.zombieUntil >= 0) owner.zombieUntil = this.step - 1;
      },
    };
  }

  /**
   * One owner tick, as the shell does it: nothing is scheduled before the drains are read;
   * once they are, the coordinator while the run is running (after it was made to drain
   * exactly the set's live captures), then the run's commands; the drains last.
   */
  private tickOwner(owner: SimOwner, captures: CaptureId[] | undefined): void {
    const tick = ++owner.ticks;
    // A zombie still sees the captures in etcd; only its coordinator keeps its old view.
    const live = captures ?? [...this.membership];
    if (owner.drains.loaded) this.tickCoordinator(owner, tick, captures, live);
    this.onDrainsStep(owner, owner.drains.tick({ tick, captures: live, ownerRemainingSpans: this.ownerRemainingSpans(owner) }));
  }

  private tickCoordinator(owner: SimOwner, tick: number, captures: CaptureId[] | undefined, live: readonly CaptureId[]): void {
    const coordinator = owner.coordinator;
    const run = owner.run;
    if (coordinator === undefined || run === undefined) {
      owner.reports.length = 0;
      return;
    }
    const reports = owner.reports.splice(0);
    if (run.phase === 'running') {
      // A table update reaches the owner in office (a zombie keeps its old tables).
      if (captures !== undefined && owner.tablesVersion !== this.tablesVersion) {
        coordinator.setSpans(this.tables, this.spans);
        owner.tablesVersion = this.tablesVersion;
      }
      // So does an autoSplit update (the owner role calls setAutoSplit on every info change).
      const autoSplit = this.autoSplitInfo && this.faultsOn;
      if (captures !== undefined && coordinator.autoSplit !== autoSplit) coordinator.setAutoSplit(autoSplit);
      this.applyDrains(owner, live);
      const nowMs = this.step * simStepMs;
      const out = coordinator.tick(captures === undefined ? { reports, nowMs } : { captures, reports, nowMs });
      this.checkStall(coordinator);
      if (this.options.trace !== undefined) {
        for (const report of reports) {
          for (const status of report.statuses) this.trace(`owner ${owner.id} got from ${report.header.from}#${report.header.seq} ${spanKey(status.span)} ${status.state} ${status.checkpointTs}`, spanKey(status.span));
        }
        for (const event of out.events) {
          const text = JSON.stringify(event, (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v));
          this.trace(`owner ${owner.id} ${text}`, text);
        }
      }
      this.sendAll(out.outbox);
      // Only the owner in office writes (a zombie's write would be fenced).
      if (captures !== undefined) this.persistTilings(owner, coordinator, out.events);
      if (coordinator.phase === 'failed') {
        // A span error retrying cannot fix (a compacted revision) fails the changefeed;
        // anything else is a broken invariant.
        if (coordinator.manager.violations.length > 0) this.violations.push(`step ${this.step}: coordinator failed: ${coordinator.failure ?? '?'}`);
        else {
          run.fail(coordinator.failure ?? 'span failed');
          // No compaction after faults stop, so this one was made while they were on.
          if (!this.faultsOn && this.livenessFromStep === this.faultsEndStep && coordinator.failure?.includes('compacted') === true) {
            this.livenessFromStep = this.step;
            this.settledAt = -1;
            this.stats.lateCompactionFailures = (this.stats.lateCompactionFailures ?? 0) + 1;
          }
        }
      }
      const failing = coordinator.failing();
      const window = owner.failures?.observe({ tick: owner.ticks, failingSpans: failing.spans, error: failing.error, checkpointTs: coordinator.checkpointTs });
      if (window?.kind === 'expired') {
        this.stats.failureWindowsExpired = (this.stats.failureWindowsExpired ?? 0) + 1;
        run.fail(`spans kept failing: ${window.error}`);
      }
    }
    const commands = run.tick({ tick, checkpointTs: coordinator.checkpointTs, resolvedTs: coordinator.resolvedTs });
    this.metadata.submit(this.writer(owner, run), commands, this.step);
  }

  // ---- drains ----

  /** An operator's drain requests, to the owner as the HTTP API forwards them. */
  private operatorDrains(): void {
    const owner = this.owner;
    const capture = owner === undefined ? undefined : this.captures.get(owner.id);
    if (owner === undefined || owner.zombieUntil >= 0 || capture === undefined || !this.canRun(capture)) return;
    const members = [...this.membership];
    const ask = (kind: DrainRequest['kind'], captureId: CaptureId): void => {
      const { requestId: _requestId, ...step } = owner.drains.request({ kind, captureId }, members);
      this.onDrainsStep(owner, step);
    };
    if (members.length > 0 && this.rng.chance(0.006)) ask('drain', this.rng.pick(members));
    const drained = [...owner.drains.draining];
    if (drained.length > 0 && this.rng.chance(0.003)) ask('undrain', this.rng.pick(drained));
    // A capture that is gone (or never was) is unknown.
    if (this.rng.chance(0.0005)) ask(this.rng.chance(0.5) ? 'drain' : 'undrain', this.rng.pick([...this.captures.keys()]));
    // A burst (a script draining many at once) fills the queue.
    if (members.length > 0 && this.rng.chance(0.001)) {
      for (let i = 0; i < 6; i++) ask(this.rng.chance(0.5) ? 'drain' : 'undrain', this.rng.pick(members));
    }
  }

  /** Performs what an owner's drains returned: reads and writes to etcd, a resign, the answers. */
  private onDrainsStep(owner: SimOwner, step: DrainsStep): void {
    this.drainStore.submit(this.drainsWriter(owner), step.commands, this.step);
    for (const command of step.commands) if (command.kind === 'resign') this.drainedOwnerResigns(owner, command.id);
    // As the shell: the coordinator follows the set before an answer counts spans.
    if (step.answers.length > 0) this.applyDrains(owner, [...this.membership]);
    for (const { request, answer } of step.answers) {
      if (answer.ok) {
        if (request.kind === 'drain') {
          this.stats.drains = (this.stats.drains ?? 0) + 1;
          this.okDrains.add(request.captureId);
        } else {
          this.stats.drainsCancelled = (this.stats.drainsCancelled ?? 0) + 1;
          this.okDrains.delete(request.captureId);
        }
        continue;
      }
      const stat = answer.code === 'busy' ? 'drainsBusy' : answer.code === 'not-persisted' ? 'drainsNotPersisted' : answer.code === 'drains-loading' ? 'drainsLoading' : 'drainsRefused';
      this.stats[stat] = (this.stats[stat] ?? 0) + 1;
    }
  }

  private drainsWriter(owner: SimOwner): DrainsWriter {
    return {
      drains: owner.drains,
      fenceHolds: () => this.owner === owner && owner.zombieUntil < 0 && this.membership.has(owner.id),
      onFenced: () => {
        this.stats.fencedWrites = (this.stats.fencedWrites ?? 0) + 1;
        if (owner.zombieUntil >= 0) owner.zombieUntil = this.step - 1;
      },
      onStep: (step) => this.onDrainsStep(owner, step),
    };
  }

  /** A drained owner resigns (a deposed one's resign changes nothing); some resigns fail. */
  private drainedOwnerResigns(owner: SimOwner, id: number): void {
    const capture = this.captures.get(owner.id);
    if (owner !== this.owner || owner.zombieUntil >= 0 || capture === undefined || !this.canRun(capture)) return;
    if (this.liveCaptures().length < 2 || (this.faultsOn && this.rng.chance(0.2))) {
      this.onDrainsStep(owner, owner.drains.onOutcome({ kind: 'failed', id }));
      return;
    }
    this.stats.drainedOwnerResigns = (this.stats.drainedOwnerResigns ?? 0) + 1;
    this.resignOwner();
  }

  /** Spans the owner's capture holds, as the shell counts them (null: not known yet). */
  private ownerRemainingSpans(owner: SimOwner): number | null {
    const info = this.metadata.info;
    if (info.state !== 'normal') return 0;
    if (owner.coordinator === undefined || owner.run === undefined || owner.epoch !== info.epoch) return null;
    if (owner.run.phase !== 'running') return 0;
    return owner.coordinator.remainingSpans(owner.id) ?? null;
  }

  /**
   * The owner's coordinator drains exactly the set's live captures (as the shell's
   * `applyDrains`), checked at once: a live capture in the set is draining unless every
   * other one is leaving (the coordinator's last-capture refusal), and no other is.
   */
  private applyDrains(owner: SimOwner, live: readonly CaptureId[]): void {
    const coordinator = owner.coordinator;
    if (coordinator === undefined || !owner.drains.loaded) return;
    const liveSet = new Set(live);
    owner.drainsApplied = owner.drains.applyTo(coordinator, liveSet, owner.drainsApplied);
    const states = coordinator.captures.captures;
    for (const [id, state] of states) {
      if (!liveSet.has(id)) continue;
      const wanted = owner.drains.draining.has(id);
      if (!wanted && state.draining) this.violations.push(`step ${this.step}: owner ${owner.id}'s coordinator drains ${id}, which its drains do not hold`);
      if (wanted && !state.leaving && [...states.values()].some((other) => other.id !== id && !other.leaving)) {
        this.violations.push(`step ${this.step}: owner ${owner.id}'s coordinator does not drain ${id}, which its drains hold`);
      }
    }
  }

  /** A drain write reached etcd: an undrain ends an ok drain; a cleanup must be of a capture that left. */
  private onDrainLanded(write: LandedDrainWrite): void {
    if (write.draining) return;
    if (write.departed && this.membership.has(write.captureId)) {
      this.violations.push(`step ${this.step}: the drain of live capture ${write.captureId} was deleted as departed`);
    }
    this.okDrains.delete(write.captureId);
  }

  private checkDrains(): void {
    const step = this.step;
    const same = (a: ReadonlySet<CaptureId>, b: ReadonlySet<CaptureId>): boolean => a.size === b.size && [...a].every((id) => b.has(id));
    const show = (set: ReadonlySet<CaptureId> | undefined): string => (set === undefined ? 'unknown' : `[${[...set].join(',')}]`);
    for (const owner of [this.owner, ...this.zombies]) {
      if (owner === undefined) continue;
      try {
        owner.drains.checkInvariants();
      } catch (error) {
        this.violations.push(`step ${step}: owner ${owner.id}'s drains: ${(error as Error).message} ${JSON.stringify((error as { state?: unknown }).state)}`);
      }
      if (!owner.drains.loaded) continue;
      // As of its last read or write, every owner's set is what etcd held.
      const revision = owner.drains.guardRevision;
      const known = revision === undefined ? undefined : this.drainStore.setAt(revision);
      if (known === undefined || !same(known, owner.drains.draining)) {
        this.violations.push(`step ${step}: owner ${owner.id}'s drains ${show(owner.drains.draining)} are not etcd's ${show(known)} at guard revision ${revision}`);
      }
    }
    // The owner in office, with no write out, holds what the next owner will read.
    const owner = this.owner;
    if (owner !== undefined && owner.zombieUntil < 0 && this.membership.has(owner.id) && owner.drains.loaded && !owner.drains.writeInFlight && !same(owner.drains.draining, this.drainStore.persisted)) {
      this.violations.push(`step ${step}: owner ${owner.id}'s drains ${show(owner.drains.draining)} are not the persisted ${show(this.drainStore.persisted)}`);
    }
    // A drain answered ok stays persisted until an undrain of it lands (or it leaves).
    for (const id of this.okDrains) {
      if (this.membership.has(id) && !this.drainStore.persisted.has(id)) this.violations.push(`step ${step}: the drain of ${id} was answered ok but is not persisted`);
    }
  }

  private tickOwners(): void {
    this.zombies = this.zombies.filter((z) => z.zombieUntil >= this.step);
    for (const zombie of this.zombies) {
      const capture = this.captures.get(zombie.id);
      if (capture === undefined || !capture.alive || capture.pausedUntil > this.step) continue;
      this.tickOwner(zombie, undefined);
    }
    const owner = this.owner;
    if (owner === undefined) return;
    const ownerCapture = this.captures.get(owner.id);
    if (ownerCapture === undefined || !this.canRun(ownerCapture)) return;
    this.followRun(owner);
    this.tickOwner(owner, [...this.membership]);
    if (!this.faultsOn && owner.coordinator !== undefined) this.coordinatorCheckpoints.set(this.step, owner.coordinator.checkpointTs);
  }

  private trace(line: string, about: string): void {
    const filter = this.options.trace;
    if (filter !== undefined && about.includes(filter)) process.stderr.write(`[${this.step}] ${line}\n`);
  }

  private traceAgent(id: CaptureId, out: { events: readonly { type: string }[]; outbox: readonly ReportMessage[] }): void {
    if (this.options.trace === undefined) return;
    for (const event of out.events) {
      const text = JSON.stringify(event, (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v));
      this.trace(`${id} agent ${text}`, text);
    }
    for (const report of out.outbox) {
      for (const status of report.statuses) {
        this.trace(`${id} -> ${report.header.to}#${report.header.seq} ${report.collect ? "collect " : ""}${spanKey(status.span)} ${status.state} ${status.checkpointTs}`, spanKey(status.span));
      }
    }
  }

  private sendAll(messages: readonly Message[]): void {
    for (const message of messages) this.network.send(message, this.step);
  }

  // ---- checks ----

  private checkInvariants(): void {
    const step = this.step;
    // At most one primary and one writer per span among captures that can act.
    const primaries = new Map<string, CaptureId>();
    for (const capture of this.captures.values()) {
      if (!this.canRun(capture)) continue;
      for (const status of capture.agent?.statuses() ?? []) {
        if (status.state !== 'replicating') continue;
        const key = spanKey(status.span);
        const other = primaries.get(key);
        if (other !== undefined) this.violations.push(`step ${step}: two primaries for ${key}: ${other} and ${capture.id}`);
        primaries.set(key, capture.id);
      }
    }
    // No key written by two pipelines at once, whatever the spans (splits and merges
    // change them): overlapping writing spans on live captures.
    const writing: { span: Span; capture: CaptureId }[] = [];
    for (const capture of this.captures.values()) {
      if (!this.canRun(capture)) continue;
      for (const span of capture.pipelines.writingSpans()) writing.push({ span, capture: capture.id });
    }
    writing.sort((a, b) => compareSpans(a.span, b.span));
    for (let i = 0; i + 1 < writing.length; i++) {
      const a = writing[i] as { span: Span; capture: CaptureId };
      for (let j = i + 1; j < writing.length; j++) {
        const b = writing[j] as { span: Span; capture: CaptureId };
        if (b.span.table !== a.span.table || !spansOverlap(a.span, b.span)) break;
        if (spanKey(a.span) !== spanKey(b.span)) this.violations.push(`step ${step}: overlapping spans written at once: ${spanKey(a.span)} on ${a.capture} and ${spanKey(b.span)} on ${b.capture}`);
      }
    }
    // Every key of every table has exactly one owner-side unit (a span, or a split or
    // merge in flight as a whole): no key is ever left without a writer to come.
    const office = this.owner?.coordinator;
    if (office !== undefined && office.phase === 'running') {
      const problem = tilingProblem(office.tableRanges, office.tiling());
      if (problem !== undefined) this.violations.push(`step ${step}: the coordinator's spans do not tile its tables: ${JSON.stringify(problem)}`);
    }
    const writers = new Map<string, number>();
    for (const capture of this.captures.values()) {
      if (!this.canRun(capture)) continue;
      for (const key of capture.pipelines.writingKeys()) writers.set(key, (writers.get(key) ?? 0) + 1);
    }
    for (const [key, count] of writers) if (count > 1) this.violations.push(`step ${step}: ${count} writers for ${key}`);
    // The persisted checkpoint: at most resolved, and nothing at or below it is missing.
    if (this.persisted.checkpointTs > this.persisted.resolvedTs) {
      this.violations.push(`step ${step}: persisted checkpoint ${this.persisted.checkpointTs} above resolved ${this.persisted.resolvedTs}`);
    }
    for (const violation of this.metadata.violations.splice(0)) this.violations.push(`step ${step}: ${violation}`);
    this.checkDrains();
    // A failed changefeed stays failed until an operator resumes it: no run coordinates it.
    const ownerCapture = this.owner === undefined ? undefined : this.captures.get(this.owner.id);
    const ownerActs = ownerCapture !== undefined && this.canRun(ownerCapture);
    if (ownerActs && this.metadata.info.state !== 'normal' && this.owner?.run !== undefined && this.owner.run.phase === 'running') {
      this.violations.push(`step ${step}: owner ${this.owner.id} runs the ${this.metadata.info.state} changefeed`);
    }
    this.checkSinkState();
    // Each agent's heap watermark equals a rescan of its spans (issue 11).
    for (const capture of this.captures.values()) {
      try {
        capture.agent?.checkInvariants();
      } catch (error) {
        this.violations.push(`step ${step}: capture ${capture.id}: ${(error as Error).message}`);
      }
    }
    const coordinator = this.owner?.coordinator;
    if (coordinator !== undefined) {
      try {
        coordinator.checkInvariants();
      } catch (error) {
        const state = (error as { state?: unknown }).state;
        this.violations.push(`step ${step}: ${(error as Error).message} ${state === undefined ? '' : JSON.stringify(state, (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v))}`);
      }
    }
  }

  /**
   * What the sink holds: at the persisted checkpoint, and at every checkpoint an agent
   * reports for a span it replicates, the sink's state (as a reader computes it) equals
   * the upstream's, once the checkpoint is past the tables' backfill revision (below it
   * the tables are still being copied and readers wait, as the verifier does).
   */
  private checkSinkState(): void {
    const { upstream, sink } = this.world;
    const persisted = this.persisted.checkpointTs;
    if (persisted !== this.lastCheckedPersisted) {
      this.lastCheckedPersisted = persisted;
      for (const table of this.included) {
        if (!this.backfilledBy(table, persisted)) continue;
        for (const span of this.spansByTable.get(table) ?? []) {
          const difference = stateDifference(upstream, sink, span, persisted);
          if (difference !== undefined) this.violations.push(`step ${this.step}: at the persisted checkpoint ${persisted} the sink differs for ${spanKey(span)}: ${difference}`);
        }
      }
    }
    // The agents' checkpoints every few steps (each check reads the span's whole history).
    if (this.step % 4 !== 0) return;
    for (const capture of this.captures.values()) {
      if (!this.canRun(capture)) continue;
      for (const status of capture.agent?.statuses() ?? []) {
        if (status.state !== 'replicating' || !this.included.has(status.span.table) || !this.backfilledBy(status.span.table, status.checkpointTs, [status.span])) continue;
        const id = `${capture.id}/${spanKey(status.span)}`;
        if (this.checkedCheckpoints.get(id) === status.checkpointTs) continue;
        this.checkedCheckpoints.set(id, status.checkpointTs);
        const difference = stateDifference(upstream, sink, status.span, status.checkpointTs);
        if (difference !== undefined) this.violations.push(`step ${this.step}: ${capture.id} reports ${spanKey(status.span)} at ${status.checkpointTs}, but the sink differs: ${difference}`);
      }
    }
  }

  /** After faults stop: every span replicating, then the checkpoint advancing, in time. */
  private checkLiveness(final: boolean): void {
    const coordinator = this.owner?.coordinator;
    // Settled: no split or merge in flight, every span replicating, and the tiling the
    // coordinator has is exact and is the persisted one.
    const settled =
      coordinator !== undefined &&
      coordinator.phase === 'running' &&
      coordinator.manager.operations.size === 0 &&
      coordinator.manager.sets.size === this.spans.length &&
      coordinator.manager.stateCounts.replicating === this.spans.length &&
      sameSpans(coordinator.tiling(), this.spans);
    if (settled && this.settledAt < 0) {
      this.settledAt = this.step;
      // The coordinator's: after a start from a stale cache it may still be below the
      // persisted one, replaying; the convergence check below covers the persisted one.
      this.checkpointAtSettle = coordinator.checkpointTs;
    }
    const deadline = this.livenessFromStep + this.options.livenessStepsMax;
    if (this.step < deadline && !final) return;
    if (this.livenessFailure !== undefined) return;
    if (this.settledAt < 0) {
      const counts = coordinator === undefined ? 'no owner' : `${coordinator.phase} ${JSON.stringify(coordinator.manager.stateCounts)}`;
      const tiling = coordinator === undefined ? '' : tilingDifference(coordinator.tiling(), this.spans, coordinator.manager.operations.size);
      this.livenessFailure = `spans not all replicating ${this.options.livenessStepsMax} steps after faults stopped (${counts})${tiling}`;
    } else if ((this.coordinatorCheckpoints.get(this.step - convergeStepsMax) ?? 0n) > this.persisted.checkpointTs) {
      this.livenessFailure = `the persisted checkpoint ${this.persisted.checkpointTs} is below the coordinator's of ${convergeStepsMax} steps before (${this.coordinatorCheckpoints.get(this.step - convergeStepsMax)})`;
    } else if ([...this.drainStore.persisted].some((id) => !this.membership.has(id))) {
      this.livenessFailure = `drains of captures that left are still persisted: ${[...this.drainStore.persisted].filter((id) => !this.membership.has(id)).join(',')}`;
    } else if (this.highestCoordinatorCheckpoint() <= this.checkpointAtSettle) {
      this.livenessFailure = `checkpoint stuck at ${coordinator?.checkpointTs} after spans settled at step ${this.settledAt} (${JSON.stringify(coordinator?.lastWatermark, (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v))})`;
    } else if (final && [...this.included].some((t) => !this.backfilledBy(t, this.persisted.checkpointTs))) {
      // Every table's copy is done and below the checkpoint in the end: a table whose
      // spans skipped their backfill would never be whole in the sink.
      const pending = [...this.included].filter((t) => !this.backfilledBy(t, this.persisted.checkpointTs));
      this.livenessFailure = `tables ${pending.join(',')} are not backfilled by the persisted checkpoint ${this.persisted.checkpointTs} after faults stopped`;
    }
  }

  /**
   * A stalled watermark only after the checkpoint stood still for stallAfterMs, as the
   * simulator (not the detector) saw it.
   */
  private checkStall(coordinator: CoordinatorType): void {
    const seen = this.checkpointSeen.get(coordinator);
    if (seen === undefined || seen.checkpointTs !== coordinator.checkpointTs) {
      this.checkpointSeen.set(coordinator, { checkpointTs: coordinator.checkpointTs, sinceStep: this.step });
      if (seen !== undefined) return;
    }
    const watermark = coordinator.lastWatermark;
    if (watermark.state !== 'stalled') return;
    this.stats.stalledTicks = (this.stats.stalledTicks ?? 0) + 1;
    const stillMs = (this.step - (this.checkpointSeen.get(coordinator)?.sinceStep ?? this.step)) * simStepMs;
    if (stillMs < simStallAfterMs || watermark.stalledForMs > stillMs) {
      this.violations.push(`step ${this.step}: stalled for ${watermark.stalledForMs} ms with the checkpoint still for ${stillMs} ms`);
    }
    if (watermark.heldBy.spanCount === 0 || watermark.heldBy.captureCount === 0) this.violations.push(`step ${this.step}: a stall held back by nothing`);
  }

  /**
   * The highest checkpoint an owner's coordinator had since faults stopped: at the last
   * step an owner may have just resigned (a drained one does) and its successor not
   * built its coordinator yet.
   */
  private highestCoordinatorCheckpoint(): bigint {
    let highest = 0n;
    for (const checkpointTs of this.coordinatorCheckpoints.values()) if (checkpointTs > highest) highest = checkpointTs;
    return highest;
  }

  private canRun(capture: SimCapture): boolean {
    return capture.alive && !(capture.pausedUntil > this.step);
  }

  private liveCaptures(): SimCapture[] {
    return [...this.captures.values()].filter((c) => this.canRun(c) && this.membership.has(c.id));
  }
}

/** True when two lists hold the same spans (in any order). */
function sameSpans(a: readonly Span[], b: readonly Span[]): boolean {
  if (a.length !== b.length) return false;
  const keys = new Set(a.map(spanKey));
  return b.every((span) => keys.has(spanKey(span)));
}

/** How the coordinator's tiling differs from the persisted one, for a liveness failure. */
function tilingDifference(coordinator: readonly Span[], persisted: readonly Span[], operations: number): string {
  const have = new Set(coordinator.map(spanKey));
  const want = new Set(persisted.map(spanKey));
  const only = (a: Set<string>, b: Set<string>): string => [...a].filter((k) => !b.has(k)).map((k) => k.replace('\u0000', ' ')).join(',');
  if (operations === 0 && only(have, want) === '' && only(want, have) === '') return '';
  return `; ${operations} operations in flight; the coordinator's tiling has [${only(have, want)}], the persisted one [${only(want, have)}]`;
}

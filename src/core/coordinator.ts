/**
 * The coordinator: the owner's logic for one changefeed, as a pure state machine.
 *
 * `tick(input) -> { outbox, watermark, advanced, events }`: the shell passes the live
 * captures (from etcd) and the reports that arrived since the last tick; the coordinator
 * fences and applies them, runs the scheduling policies, and returns the messages to
 * send, the watermark, and what happened. It reads no clock (time is the tick count,
 * and for stall detection the `nowMs` the shell passes in), does no I/O, and takes
 * randomness only from its seed.
 *
 * Stall detection (`stall-detector.ts`) runs when the shell passes `nowMs`: an
 * advancing watermark whose checkpoint has stood still behind the resolved-ts for
 * `stallAfterMs` is answered as `stalled`, naming the spans and captures at the
 * checkpoint (computed only while stalled, at most every `stallHoldersRefreshMs`).
 *
 * Phases: `bootstrapping` (a new owner asks every live capture for a full collection and
 * does nothing else until all have answered, then rebuilds every replication set from
 * the answers), `running`, and `failed` (an invariant broke, e.g. two primaries for one
 * span; the coordinator stops acting and the shell fails the changefeed).
 */
import { assert } from './assert.ts';
import type { CaptureState, CaptureTiming, CompletedCollection } from './capture-manager.ts';
import { CaptureManager } from './capture-manager.ts';
import type { CoordinatorEvent } from './events.ts';
import type { CaptureId, CaptureWatermark, DispatchMessage, HeartbeatMessage, MessageHeader, OwnerMessage, ReportMessage, SpanStatus } from './messages.ts';
import type { CaptureSpans, ReplicationLimits } from './replication-manager.ts';
import { ReplicationManager } from './replication-manager.ts';
import type { ReplicationSet } from './replication-set.ts';
import { SeededRandom } from './rng.ts';
import { BalanceScheduler } from './scheduler/balance-scheduler.ts';
import { BasicScheduler } from './scheduler/basic-scheduler.ts';
import { DrainScheduler } from './scheduler/drain-scheduler.ts';
import { MoveScheduler } from './scheduler/move-scheduler.ts';
import { RebalanceScheduler } from './scheduler/rebalance-scheduler.ts';
import type { Scheduler, SchedulerView } from './scheduler/scheduler.ts';
import type { SplitPolicyLimits, SplitView } from './scheduler/split-scheduler.ts';
import { SplitScheduler } from './scheduler/split-scheduler.ts';
import type { Span, TableRange } from './span.ts';
import type { StallHolders } from './stall-detector.ts';
import { StallDetector, findStallHolders } from './stall-detector.ts';
import type { Task } from './task.ts';
import type { SpanOperationView } from './span-operation.ts';
import { endBefore, formatSpan, spanKey } from './span.ts';
import { maxTs, tsMax } from './ts.ts';
import type { Watermark } from './watermark.ts';
import { computeWatermark } from './watermark.ts';

/** Every bound and interval of the coordinator; all configurable. */
export interface CoordinatorLimits extends ReplicationLimits, CaptureTiming, SplitPolicyLimits {
  /** Spans (adds + removes, or spans asked about) in one message. */
  readonly spansPerMessageMax: number;
  /** Messages the coordinator emits in one tick; the rest wait (handlers re-send). */
  readonly messagesPerTickMax: number;
  /** Explicit move requests waiting for a slot. */
  readonly moveRequestsQueuedMax: number;
  /** Ticks between periodic balance rounds; 0 turns the balance policy off. */
  readonly balanceIntervalTicks: number;
  readonly balanceMovesPerRoundMax: number;
  /**
   * How long the checkpoint may stand still while the resolved-ts is past it before the
   * watermark says `stalled`; 0 turns stall detection off. In the shell's ms (`nowMs`).
   */
  readonly stallAfterMs: number;
  /** While stalled, fewest ms between two searches for the spans holding it back. */
  readonly stallHoldersRefreshMs: number;
  /** Spans and captures a stalled watermark names at most (it counts all of them). */
  readonly stallHoldersListedMax: number;
  /**
   * Splits and merges in flight at once. Each withholds the watermark while it runs, so
   * a few at a time; more are refused (`operations-bound`), never queued.
   */
  readonly splitsInFlightMax: number;
}

/** Defaults, tuned for a 50 ms tick. */
export const coordinatorDefaults: CoordinatorLimits = {
  moveTasksInFlightMax: 10,
  addRemoveTasksInFlightMax: 10_000,
  addBatchPerTickMax: 2_000,
  heartbeatIntervalTicks: 2,
  // A backstop only (30 min): the digest asks for a reconciling collection whenever a
  // capture's set disagrees, a stall asks the holders for one, and per-span progress
  // comes in report slices. Every 600 ticks, as it was, a capture holding 100,000 spans
  // sent them all every 30 s: the encode and decode blocked both event loops for
  // seconds and the checkpoint lag jumped from under 1 s to 5-7 s each time.
  collectIntervalTicks: 36_000,
  digestMismatchCollectTicks: 40,
  collectRetryTicks: 20,
  spansPerMessageMax: 1_024,
  messagesPerTickMax: 10_000,
  moveRequestsQueuedMax: 1_000,
  balanceIntervalTicks: 1_200,
  balanceMovesPerRoundMax: 10,
  // Well above what a healthy changefeed sees (a checkpoint moves every pipeline step;
  // a move, an owner change or a pipeline retry holds it for a few seconds, a capture
  // death for a lease TTL of 10 s) and well below an operator's alerting window.
  stallAfterMs: 30_000,
  stallHoldersRefreshMs: 1_000,
  stallHoldersListedMax: 10,
  splitsInFlightMax: 4,
  // The split policy (scheduler/split-scheduler.ts), for changefeeds with autoSplit on.
  // A pipeline measures its rate over windows of 1 s and a capture reports it every
  // heartbeat (2 ticks): 10 s above 1,000 events/s splits; two neighbours writing less
  // than 200 a second together for a minute merge, a minute after the last operation.
  splitRateMin: 1_000,
  splitAfterTicks: 200,
  mergeRateMax: 200,
  mergeAfterTicks: 1_200,
  coolDownTicks: 1_200,
  spansPerTableMax: 1_024,
  splitSampleKeysMin: 2,
  rateReportAgeMaxTicks: 200,
  mergeCandidatesPerTickMax: 256,
};

/** What a coordinator is created with. */
export interface CoordinatorConfig {
  readonly changefeed: string;
  readonly changefeedEpoch: bigint;
  readonly ownerId: CaptureId;
  readonly ownerRevision: bigint;
  /** The persisted global checkpoint: never regressed, and the floor of every add. */
  readonly checkpointTs: bigint;
  readonly seed: number;
  readonly limits?: Partial<CoordinatorLimits>;
  /** The changefeed's `autoSplit`: the split policy splits hot spans and merges quiet ones. Default off. */
  readonly autoSplit?: boolean;
}

/** One tick's input. */
export interface TickInput {
  /** The live captures, when membership may have changed; omitted: unchanged. */
  readonly captures?: readonly CaptureId[];
  /** Reports received since the last tick, in arrival order. */
  readonly reports: readonly ReportMessage[];
  /** The position the changefeed must not pass (target-ts); omitted: unchanged. */
  readonly barrierTs?: bigint;
  /** The shell's monotonic clock in ms, for stall detection; omitted: no stall detection this tick. */
  readonly nowMs?: number;
}

/** One tick's output. */
export interface TickOutput {
  readonly outbox: OwnerMessage[];
  readonly watermark: Watermark;
  /** Set when the global checkpoint or resolved rose this tick: persist it (fenced). */
  readonly advanced: { readonly checkpointTs: bigint; readonly resolvedTs: bigint } | undefined;
  readonly events: CoordinatorEvent[];
}

/** The answer to an operator request. */
export type RequestResult =
  | { readonly ok: true }
  | { readonly ok: false; readonly code: RequestErrorCode; readonly message: string };

/** Why an operator request was refused; the API maps these to 404 or 409. */
export type RequestErrorCode =
  | 'not-ready'
  | 'unknown-span'
  | 'unknown-capture'
  | 'span-not-replicating'
  | 'span-already-there'
  | 'capture-draining'
  | 'last-capture'
  | 'queue-full'
  | 'move-queued'
  | 'bad-split-key'
  | 'not-adjacent'
  | 'span-in-transition'
  | 'operations-bound';

/** The answer to a split or merge request: the operation's id when it started. */
export type OperationRequestResult =
  | { readonly ok: true; readonly operation: SpanOperationView }
  | { readonly ok: false; readonly code: RequestErrorCode; readonly message: string };

/** A queued move that could not start when its turn came (the API shows the latest ones). */
export interface MoveRefusal {
  readonly span: Span;
  readonly capture: CaptureId;
  readonly reason: string;
  readonly tick: number;
}

export type CoordinatorPhase = 'bootstrapping' | 'running' | 'failed';

/** How many refused moves a coordinator remembers for the API. */
export const moveRefusalsKept = 16;

/** The owner logic for one changefeed. */
export class Coordinator {
  private readonly moveRefusalsList: MoveRefusal[] = [];
  readonly config: CoordinatorConfig;
  readonly limits: CoordinatorLimits;
  /**
   * Ticks between two heartbeats to a capture: the configured interval, or longer when
   * the shell widens it (an owner of many changefeeds bounds its heartbeats in all).
   */
  private heartbeatIntervalTicks: number;
  readonly manager: ReplicationManager;
  readonly captures: CaptureManager;
  phase: CoordinatorPhase = 'bootstrapping';
  failure: string | undefined = undefined;
  tickCount = 0;
  checkpointTs: bigint;
  resolvedTs: bigint;
  barrierTs: bigint = maxTs;
  lastWatermark: Watermark = { state: 'cannot-proceed', reason: { code: 'capture-not-initialized', captures: [] } };

  private readonly rng: SeededRandom;
  private readonly moveScheduler: MoveScheduler;
  private readonly rebalanceScheduler = new RebalanceScheduler();
  private readonly splitScheduler: SplitScheduler;
  /** The policies in priority order; the split policy (operations, not tasks) sits below move. */
  private readonly schedulers: readonly (Scheduler | SplitScheduler)[];
  private autoSplitOn: boolean;
  private tables: readonly TableRange[] = [];
  private desired: readonly Span[] = [];
  private readonly bootstrapReports = new Map<CaptureId, readonly SpanStatus[]>();
  private events: CoordinatorEvent[] = [];
  private readonly stall: StallDetector;
  /**
   * While stalled: when the stall started (its `sinceMs`), the holders last found, and the
   * holding captures asked for a collection when it started that have not answered yet.
   */
  private stalled: { sinceMs: number; holders: StallHolders | undefined; holdersAtMs: number; awaiting: Set<CaptureId> } | undefined;
  /** One of those collections arrived: the holders' per-span checkpoints are fresh now. */
  private stallHoldersDirty = false;

  constructor(config: CoordinatorConfig) {
    this.config = config;
    this.limits = { ...coordinatorDefaults, ...config.limits };
    this.heartbeatIntervalTicks = this.limits.heartbeatIntervalTicks;
    this.rng = new SeededRandom(config.seed);
    this.checkpointTs = config.checkpointTs;
    this.resolvedTs = config.checkpointTs;
    this.manager = new ReplicationManager(this.limits, config.checkpointTs, (capture) => this.captures.captures.get(capture)?.seqOut ?? 0);
    this.captures = new CaptureManager(
      { ownerId: config.ownerId, ownerRevision: config.ownerRevision, changefeed: config.changefeed, changefeedEpoch: config.changefeedEpoch },
      this.limits,
    );
    this.moveScheduler = new MoveScheduler(this.limits.moveRequestsQueuedMax);
    this.stall = new StallDetector(this.limits.stallAfterMs);
    const limits = this.limits;
    // Hysteresis (see split-scheduler.ts): the halves of a split span must not merge back.
    assert(limits.mergeRateMax * 2 <= limits.splitRateMin, 'mergeRateMax must be at most half of splitRateMin', { mergeRateMax: limits.mergeRateMax, splitRateMin: limits.splitRateMin });
    assert(limits.splitAfterTicks >= 1 && limits.mergeAfterTicks >= 1 && limits.coolDownTicks >= 0 && limits.spansPerTableMax >= 1, 'split policy bounds out of range', { limits });
    this.splitScheduler = new SplitScheduler(limits);
    this.autoSplitOn = config.autoSplit === true;
    this.schedulers = [
      new BasicScheduler(),
      new DrainScheduler(),
      this.moveScheduler,
      this.splitScheduler,
      this.rebalanceScheduler,
      new BalanceScheduler(this.limits.balanceIntervalTicks, this.limits.balanceMovesPerRoundMax, 0),
    ];
  }

  /**
   * Sets the tables and the spans they are split into. Before the rebuild they are kept
   * for it; afterwards new spans start absent and dropped ones are removed (a new span
   * that shares keys with a dropped one that still writes waits until it stopped).
   *
   * Splits and merges change the tiling at run time: the shell passes the persisted
   * tiling, brought up to date from `operation-done` and `tiling-adopted` (the table's
   * spans in `tiling()`). An operation in flight survives a call that still lists its old
   * spans; one in prepare whose old spans are no longer listed is aborted, one in commit
   * finishes stopping them and its new spans are dropped for the ones listed.
   */
  setSpans(tables: readonly TableRange[], spans: readonly Span[]): void {
    this.tables = tables;
    this.desired = spans;
    if (this.splitScheduler.size > 0) {
      const wanted = new Set(spans.map(spanKey));
      this.splitScheduler.retain((key) => wanted.has(key));
    }
    if (this.phase === 'running') this.manager.setDesiredSpans(tables, spans);
  }

  /** The tables the coordinator replicates (as last set). */
  get tableRanges(): readonly TableRange[] {
    return this.tables;
  }

  /** Whether the split policy runs (the changefeed's `autoSplit`). */
  get autoSplit(): boolean {
    return this.autoSplitOn;
  }

  /** Turns the split policy on or off (the changefeed's info changed); off forgets what it knew. */
  setAutoSplit(on: boolean): void {
    this.autoSplitOn = on;
    if (!on) this.splitScheduler.retain(() => false);
  }

  /** Advances one tick. */
  tick(input: TickInput): TickOutput {
    this.tickCount++;
    const tick = this.tickCount;
    if (input.barrierTs !== undefined) this.barrierTs = input.barrierTs;
    if (this.phase === 'failed') return this.output([], undefined);

    if (input.captures !== undefined) this.updateMembership(input.captures, tick);
    for (const report of input.reports) this.handleReport(report, tick);
    if (this.phase === 'bootstrapping') this.tryRebuild();
    if (this.phase === 'running') this.manager.stepOperations();
    if (this.phase === 'running' && this.captures.uninitialized().length === 0) this.schedule(tick);
    this.trackDigestMismatches(tick);

    if (this.manager.violations.length > 0 || this.manager.fatalErrors.length > 0) {
      this.phase = 'failed';
      this.failure = [...this.manager.violations, ...this.manager.fatalErrors].join('; ');
      return this.output([], undefined);
    }
    const outbox = this.buildOutbox(tick);
    return this.output(outbox, this.updateWatermark(tick, input.nowMs));
  }

  // ---- operator requests (synchronous, validated, change nothing when refused) ----

  /** Moves one span to one capture. */
  requestMove(key: string, capture: CaptureId): RequestResult {
    if (this.phase !== 'running') return refuse('not-ready', `the coordinator is ${this.phase}`);
    const set = this.manager.sets.get(key);
    if (set === undefined) return refuse('unknown-span', 'no such span in this changefeed');
    const target = this.captures.captures.get(capture);
    if (target === undefined || !target.initialized) return refuse('unknown-capture', `no live capture ${capture}`);
    if (target.leaving) return refuse('capture-draining', `capture ${capture} is draining`);
    if (set.state !== 'replicating' || set.task !== undefined) return refuse('span-not-replicating', `the span is ${set.state}${set.task ? ` (${set.task} in flight)` : ''}`);
    if (set.operation !== undefined) return refuse('span-in-transition', 'the span is being split or merged');
    if (set.primary === capture) return refuse('span-already-there', `the span is already replicated by ${capture}`);
    const queuedTo = this.moveScheduler.queuedTarget(key);
    if (queuedTo !== undefined) return refuse('move-queued', `a move of the span to ${queuedTo} is already queued`);
    if (!this.moveScheduler.request(key, capture)) return refuse('queue-full', `${this.limits.moveRequestsQueuedMax} moves are already queued`);
    return { ok: true };
  }

  /**
   * Splits the span of `table` that starts at `start` at key `at` (start < at < end), as
   * a two-phase operation (`span-operation.ts`): `[start, at)` and `[at, end)` are
   * prepared on `targets` (default: both on the span's capture) while the span keeps
   * writing, then it is stopped and they take over from its final checkpoint.
   */
  requestSplit(table: string, start: string, at: string, targets?: readonly [CaptureId, CaptureId]): OperationRequestResult {
    if (this.phase !== 'running') return refuse('not-ready', `the coordinator is ${this.phase}`);
    const set = this.findSpan(table, start);
    if (set === undefined || !this.manager.isWanted(set)) return refuse('unknown-span', `no span of table ${table} starts at ${JSON.stringify(start)}`);
    return this.splitSet(set, at, targets);
  }

  /** {@link requestSplit} of a set already found (the split policy's path). */
  private splitSet(set: ReplicationSet, at: string, targets?: readonly [CaptureId, CaptureId]): OperationRequestResult {
    const table = set.span.table;
    if (!(at > set.span.start) || !endBefore(at, set.span.end)) return refuse('bad-split-key', `${JSON.stringify(at)} is not inside ${formatSpan(set.span)}`);
    const busy = this.busyProblem([set]);
    if (busy !== undefined) return busy;
    const left = { table, start: set.span.start, end: at };
    const right = { table, start: at, end: set.span.end };
    const chosen = targets ?? [set.primary ?? '', set.primary ?? ''];
    return this.startOperation('split', [set], [left, right], chosen);
  }

  /**
   * Merges the span of `table` that starts at `start` with the next one into one span,
   * prepared on `capture` (default: the first span's capture) from the lower of their
   * checkpoints; both are stopped once it is prepared, and it takes over from the lower
   * of their final checkpoints.
   */
  requestMerge(table: string, start: string, capture?: CaptureId): OperationRequestResult {
    if (this.phase !== 'running') return refuse('not-ready', `the coordinator is ${this.phase}`);
    const first = this.findSpan(table, start);
    if (first === undefined || !this.manager.isWanted(first)) return refuse('unknown-span', `no span of table ${table} starts at ${JSON.stringify(start)}`);
    const second = first.span.end === '' ? undefined : this.findSpan(table, first.span.end);
    if (second === undefined || !this.manager.isWanted(second)) return refuse('not-adjacent', `no span follows ${formatSpan(first.span)} in table ${table}`);
    return this.mergeSets(first, second, capture);
  }

  /** {@link requestMerge} of two adjacent wanted sets already found (the split policy's path). */
  private mergeSets(first: ReplicationSet, second: ReplicationSet, capture?: CaptureId): OperationRequestResult {
    const table = first.span.table;
    assert(second.span.table === table && second.span.start === first.span.end, 'merge of spans that are not adjacent', { first: first.span, second: second.span });
    const busy = this.busyProblem([first, second]);
    if (busy !== undefined) return busy;
    const union = { table, start: first.span.start, end: second.span.end };
    return this.startOperation('merge', [first, second], [union], [capture ?? first.primary ?? '']);
  }

  /** The splits and merges in flight. */
  operations(): SpanOperationView[] {
    return [...this.manager.operations.values()].map((operation) => operation.view());
  }

  /**
   * The changefeed's tiling as the coordinator has it, every table's: what the shell
   * persists after `operation-done` or `tiling-adopted`. O(spans).
   */
  tiling(): Span[] {
    return this.manager.tiling();
  }

  /** Why these sets cannot take part in an operation now; undefined when they can. */
  private busyProblem(sets: readonly ReplicationSet[]): Refusal | undefined {
    for (const set of sets) {
      if (set.state !== 'replicating' || set.task !== undefined || set.operation !== undefined) {
        const doing = set.operation !== undefined ? ' (a split or merge in flight)' : set.task !== undefined ? ` (${set.task} in flight)` : '';
        return refuse('span-in-transition', `${formatSpan(set.span)} is ${set.state}${doing}`);
      }
    }
    if (this.manager.operations.size >= this.limits.splitsInFlightMax) {
      return refuse('operations-bound', `${this.limits.splitsInFlightMax} splits or merges are already in flight`);
    }
    return undefined;
  }

  private startOperation(kind: 'split' | 'merge', old: readonly ReplicationSet[], newSpans: readonly Span[], targets: readonly CaptureId[]): OperationRequestResult {
    for (const capture of targets) {
      const target = this.captures.captures.get(capture);
      if (target === undefined || !target.initialized) return refuse('unknown-capture', `no live capture ${capture}`);
      if (target.leaving) return refuse('capture-draining', `capture ${capture} is draining`);
    }
    for (const span of newSpans) {
      // A set of that span is still stopping (an earlier operation's): wait for it.
      if (this.manager.sets.has(spanKey(span))) return refuse('span-in-transition', `${formatSpan(span)} is still being stopped`);
    }
    const operation = this.manager.startOperation(kind, old, newSpans, targets, this.tickCount);
    this.splitScheduler.noteOperation(old.map((set) => set.span));
    return { ok: true, operation: operation.view() };
  }

  /** Drains a capture: its spans move to others. Returns the spans still on it. */
  requestDrain(capture: CaptureId): RequestResult & { readonly remainingSpans?: number | undefined } {
    const target = this.captures.captures.get(capture);
    if (target === undefined) return refuse('unknown-capture', `no live capture ${capture}`);
    if (!target.leaving) {
      const others = [...this.captures.captures.values()].filter((c) => c.id !== capture && !c.leaving);
      if (others.length === 0) return refuse('last-capture', `capture ${capture} is the last one that is not draining`);
      target.draining = true;
    }
    return { ok: true, remainingSpans: this.remainingSpans(capture) };
  }

  /**
   * Cancels a drain: the capture may take spans again (new ones at once, its share back by
   * a rebalance). Moves already in flight finish. Idempotent; a capture that is shutting
   * down by itself stays leaving.
   */
  cancelDrain(capture: CaptureId): RequestResult {
    const target = this.captures.captures.get(capture);
    if (target === undefined) return refuse('unknown-capture', `no live capture ${capture}`);
    target.draining = false;
    return { ok: true };
  }

  /** Starts a rebalance. */
  requestRebalance(): RequestResult {
    if (this.phase !== 'running') return refuse('not-ready', `the coordinator is ${this.phase}`);
    this.rebalanceScheduler.request();
    return { ok: true };
  }

  /**
   * Spans whose pipelines retry a failed step (a sink or source outage), summed over the
   * captures' latest reports, with one of their errors. O(captures).
   */
  failing(): { readonly spans: number; readonly error: string | undefined } {
    let spans = 0;
    let error: string | undefined;
    for (const capture of this.captures.captures.values()) {
      if (capture.failing === undefined) continue;
      spans += capture.failing.spans;
      error ??= capture.failing.error;
    }
    return { spans, error };
  }

  /**
   * Spans a capture still holds as primary or secondary; undefined while that is not
   * known: before the capture answered its first collection (after every owner change,
   * create and resume) the owner has not heard what it holds, and 0 would be a lie.
   */
  remainingSpans(capture: CaptureId): number | undefined {
    const state = this.captures.captures.get(capture);
    if (state === undefined) return 0;
    if (!state.initialized || this.phase !== 'running') return undefined;
    return this.manager.captureSpans(capture)?.load ?? 0;
  }

  /** Widens (or restores) the heartbeat interval; never below the configured one. */
  setHeartbeatInterval(ticks: number): void {
    this.heartbeatIntervalTicks = Math.max(this.limits.heartbeatIntervalTicks, Math.floor(ticks));
  }

  /**
   * Looks a span up by table and start key (O(spans): for the API only). While a split or
   * merge commits, an old span being stopped and a new one can start at the same key: the
   * wanted one is the span the operator means.
   */
  findSpan(table: string, start: string): ReplicationSet | undefined {
    let found: ReplicationSet | undefined;
    for (const set of this.manager.sets.values()) {
      if (set.span.table !== table || set.span.start !== start) continue;
      if (this.manager.isWanted(set)) return set;
      found ??= set;
    }
    return found;
  }

  /** The set of a span, by span. */
  setOf(span: Span): ReplicationSet | undefined {
    return this.manager.sets.get(spanKey(span));
  }

  /**
   * Checks the coordinator's invariants; throws an InvariantError with the state. O(spans):
   * tests and the simulator call it after every step.
   */
  checkInvariants(): void {
    this.manager.checkInvariants();
    assert(this.manager.operations.size <= this.limits.splitsInFlightMax, 'more splits and merges in flight than splitsInFlightMax');
    assert(this.checkpointTs <= this.resolvedTs, `global checkpoint ${this.checkpointTs} above resolved ${this.resolvedTs}`);
    const watermark = this.lastWatermark;
    if (watermark.state === 'stalled') {
      const { heldBy } = watermark;
      const max = this.limits.stallHoldersListedMax;
      assert(watermark.stalledForMs >= this.limits.stallAfterMs && this.limits.stallAfterMs > 0, 'stalled before stallAfterMs', { watermark });
      assert(watermark.checkpointTs < this.barrierTs && watermark.checkpointTs < watermark.resolvedTs, 'stalled at the barrier or with nothing to flush', { watermark });
      assert(heldBy.spans.length <= Math.min(max, heldBy.spanCount) && heldBy.captures.length <= Math.min(max, heldBy.captureCount), 'stall holders over their bounds', { heldBy });
      for (const holder of heldBy.spans) assert(holder.checkpointTs <= this.checkpointTs, 'a stall holder above the checkpoint', { holder, checkpointTs: this.checkpointTs });
    }
  }

  // ---- tick phases ----

  private updateMembership(live: readonly CaptureId[], tick: number): void {
    const liveSet = new Set(live);
    for (const id of [...this.captures.captures.keys()]) {
      if (liveSet.has(id)) continue;
      this.captures.leave(id);
      this.bootstrapReports.delete(id);
      const affected = this.manager.removeCapture(id);
      this.events.push({ type: 'capture-gone', capture: id, spansAffected: affected });
    }
    for (const id of live) {
      if (this.captures.captures.has(id)) continue;
      this.captures.join(id, tick, this.rng.int(this.limits.collectIntervalTicks));
      this.manager.addCapture(id);
      this.events.push({ type: 'capture-joined', capture: id });
    }
  }

  private handleReport(report: ReportMessage, tick: number): void {
    const accepted = this.captures.accept(report);
    if (typeof accepted === 'string') {
      this.events.push({ type: 'message-dropped', reason: accepted, from: report.header.from, seq: report.header.seq });
      return;
    }
    accepted.aggregate = report.watermark;
    if (this.autoSplitOn && report.progress !== undefined && this.phase === 'running') this.splitScheduler.observe(accepted.id, report.progress, tick);
    if (report.collect !== undefined) {
      const result = this.captures.addPart(accepted, report, tick);
      if (result === 'stale-collect') {
        this.events.push({ type: 'message-dropped', reason: 'stale-collect', from: report.header.from, seq: report.header.seq });
      } else if (result !== undefined) {
        this.handleCollection(result);
      }
      return;
    }
    if (this.phase !== 'running' || !accepted.initialized) return;
    for (const status of report.statuses) this.manager.handleStatus(accepted.id, status, report.header.ackSeq);
  }

  private handleCollection({ capture, statuses, ackSeq }: CompletedCollection): void {
    if (this.phase === 'bootstrapping') {
      if (!this.bootstrapReports.has(capture.id)) this.events.push({ type: 'capture-initialized', capture: capture.id, spans: statuses.length });
      this.bootstrapReports.set(capture.id, statuses);
      return;
    }
    if (this.stalled?.awaiting.delete(capture.id) === true) this.stallHoldersDirty = true;
    const listed = new Set<string>();
    for (const status of statuses) {
      listed.add(spanKey(status.span));
      this.manager.handleStatus(capture.id, status, ackSeq);
    }
    this.manager.reconcile(capture.id, listed, ackSeq);
  }

  private tryRebuild(): void {
    if (this.captures.captures.size === 0 || this.captures.uninitialized().length > 0) return;
    this.manager.rebuild(this.bootstrapReports);
    // A split or merge the old owner finished may not be persisted yet: go on with the
    // tiling the captures hold where it is consistent (see tiling.ts).
    const adopted = this.manager.adoptHeldTiling(this.tables, this.desired);
    for (const [table, spans] of adopted.changed) this.events.push({ type: 'tiling-adopted', table, spans });
    this.desired = adopted.spans;
    this.manager.setDesiredSpans(this.tables, this.desired);
    this.manager.retireUnwantedPreparers();
    this.events.push({ type: 'rebuilt', sets: this.manager.sets.size, captures: this.captures.captures.size });
    this.bootstrapReports.clear();
    this.phase = 'running';
  }

  private schedule(tick: number): void {
    const manager = this.manager;
    const limits = this.limits;
    const captures = this.captures;
    const initialized = [...captures.captures.values()].filter((c) => c.initialized).map((c) => c.id).sort();
    const addRemoveInFlight = manager.tasksInFlight.add + manager.tasksInFlight.remove;
    const view: SchedulerView = {
      captures: initialized,
      isLeaving: (capture) => captures.captures.get(capture)?.leaving ?? true,
      spansOf: (capture) => {
        const spans = manager.captureSpans(capture);
        if (spans === undefined) throw new Error(`no span index for capture ${capture}`);
        return spans;
      },
      absentSets: manager.absentSets,
      unwantedSets: manager.unwantedSets,
      spanCount: manager.sets.size,
      moveSlots: limits.moveTasksInFlightMax - manager.tasksInFlight.move,
      addSlots: Math.min(limits.addBatchPerTickMax, limits.addRemoveTasksInFlightMax - addRemoveInFlight),
      rng: this.rng,
      tick,
    };
    const anyStaying = initialized.some((id) => captures.captures.get(id)?.leaving === false);
    const isTarget = (capture: CaptureId): boolean => {
      const state = captures.captures.get(capture);
      // With every capture leaving, spans may still go to one (see the basic policy).
      return state !== undefined && state.initialized && (!state.leaving || !anyStaying);
    };
    for (const scheduler of this.schedulers) {
      if (scheduler instanceof SplitScheduler) {
        if (this.autoSplitOn && this.scheduleOperations(scheduler, view)) return;
        continue;
      }
      const tasks = scheduler.schedule(view);
      if (tasks.length === 0) continue;
      const started = manager.handleTasks(tasks, isTarget, scheduler.name);
      // An operator's move that cannot run any more is said, never dropped in silence.
      if (scheduler.name === 'move' && started.length < tasks.length) this.noteRefusedMoves(tasks, new Set(started), isTarget, tick);
      return;
    }
  }

  /** Runs the split policy; true when it started an operation (it wins the tick). */
  private scheduleOperations(policy: SplitScheduler, view: SchedulerView): boolean {
    const manager = this.manager;
    const splitView: SplitView = {
      tick: view.tick,
      operationSlots: this.limits.splitsInFlightMax - manager.operations.size,
      setOf: (key) => manager.sets.get(key),
      isWanted: (set) => manager.isWanted(set),
      isLeaving: view.isLeaving,
      spansOfTable: (table) => {
        const counts = manager.summary.byTable.get(table);
        return counts === undefined ? 0 : counts.absent + counts.prepare + counts.commit + counts.replicating + counts.removing;
      },
    };
    let started = false;
    for (const decision of policy.plan(splitView)) {
      const result = decision.kind === 'split' ? this.splitSet(decision.set, decision.at) : this.mergeSets(decision.first, decision.second);
      const spans = decision.kind === 'split' ? [decision.set.span] : [decision.first.span, decision.second.span];
      this.events.push({
        type: 'split-policy-decided',
        kind: decision.kind,
        spans,
        eventsPerSecond: decision.eventsPerSecond,
        ...(decision.kind === 'split' ? { at: decision.at } : {}),
        ...(result.ok ? { operation: result.operation.id } : { refused: result.message }),
      });
      if (result.ok) started = true;
    }
    return started;
  }

  private noteRefusedMoves(tasks: readonly Task[], started: ReadonlySet<Task>, isTarget: (capture: CaptureId) => boolean, tick: number): void {
    for (const task of tasks) {
      if (started.has(task) || task.kind !== 'move') continue;
      const set = this.manager.sets.get(task.key);
      if (set === undefined) continue;
      const reason =
        set.operation !== undefined
          ? 'the span is being split or merged'
          : set.state !== 'replicating' || set.task !== undefined
          ? `the span is ${set.state}${set.task === undefined ? '' : ` (${set.task} in flight)`}`
          : set.primary === task.capture
            ? `the span is already on ${task.capture}`
            : !isTarget(task.capture)
              ? `capture ${task.capture} is gone or draining`
              : 'no move slot was free';
      const refusal: MoveRefusal = { span: set.span, capture: task.capture, reason, tick };
      this.moveRefusalsList.push(refusal);
      if (this.moveRefusalsList.length > moveRefusalsKept) this.moveRefusalsList.shift();
      this.events.push({ type: 'move-refused', span: set.span, capture: task.capture, reason });
    }
  }

  /** The latest queued moves that could not start (at most {@link moveRefusalsKept}). */
  get moveRefusals(): readonly MoveRefusal[] {
    return this.moveRefusalsList;
  }

  /** Moves waiting in the queue. */
  get movesQueued(): number {
    return this.moveScheduler.queued;
  }

  /** Notes captures whose aggregate disagrees with the owner while nothing is in flight. */
  private trackDigestMismatches(tick: number): void {
    if (this.phase !== 'running') return;
    for (const capture of this.captures.captures.values()) {
      const spans = this.manager.captureSpans(capture.id);
      if (spans === undefined || !capture.initialized) continue;
      const expected = spans.replicatingDigest;
      const reported = capture.aggregate?.digest;
      const agrees =
        spans.inTransition.size > 0 ||
        (reported !== undefined && reported.count === expected.count && reported.hashA === expected.hashA && reported.hashB === expected.hashB) ||
        (reported === undefined && expected.count === 0);
      if (agrees) capture.mismatchSinceTick = -1;
      else if (capture.mismatchSinceTick < 0) capture.mismatchSinceTick = tick;
    }
  }

  private buildOutbox(tick: number): OwnerMessage[] {
    const outbox: OwnerMessage[] = [];
    const max = this.limits.messagesPerTickMax;
    let dropped = 0;
    for (const [to, pending] of this.manager.takePending()) {
      const capture = this.captures.captures.get(to);
      if (capture === undefined) continue;
      const perMessage = this.limits.spansPerMessageMax;
      let adds = pending.adds;
      let removes = pending.removes;
      while (adds.length + removes.length > 0) {
        const takeRemoves = removes.slice(0, perMessage);
        const takeAdds = adds.slice(0, perMessage - takeRemoves.length);
        removes = removes.slice(takeRemoves.length);
        adds = adds.slice(takeAdds.length);
        if (outbox.length >= max) {
          dropped++;
          continue;
        }
        const message: DispatchMessage = { kind: 'dispatch', header: this.header(capture), adds: takeAdds, removes: takeRemoves };
        outbox.push(message);
      }
    }
    for (const capture of this.captures.captures.values()) {
      if (tick < capture.nextHeartbeatTick) continue;
      if (outbox.length >= max) {
        dropped++;
        continue;
      }
      outbox.push(this.heartbeat(capture, tick));
      capture.nextHeartbeatTick = tick + this.heartbeatIntervalTicks;
    }
    if (dropped > 0) this.events.push({ type: 'outbox-overflow', dropped });
    return outbox;
  }

  private heartbeat(capture: CaptureState, tick: number): HeartbeatMessage {
    const inTransition = this.phase === 'running' ? this.manager.captureSpans(capture.id)?.inTransition : undefined;
    const max = this.limits.spansPerMessageMax;
    let spans: Span[] = [];
    let spansComplete = true;
    if (inTransition !== undefined && inTransition.size > 0) {
      const all = [...inTransition];
      if (all.length <= max) {
        spans = all.map((set) => set.span);
      } else {
        spansComplete = false;
        const start = capture.heartbeatCursor % all.length;
        for (let i = 0; i < max; i++) spans.push((all[(start + i) % all.length] as ReplicationSet).span);
        capture.heartbeatCursor = start + max;
      }
    }
    const digest = this.manager.captureSpans(capture.id)?.replicatingDigest;
    return {
      kind: 'heartbeat',
      header: this.header(capture),
      spans,
      spansComplete: this.phase === 'running' && spansComplete,
      primaryDigest: digest === undefined ? { count: 0, hashA: 0, hashB: 0 } : digest.snapshot(),
      draining: capture.leaving,
      barrierTs: this.barrierTs,
      collectId: this.captures.collectIdFor(capture, tick),
    };
  }

  private header(capture: CaptureState): MessageHeader {
    capture.seqOut++;
    return {
      changefeed: this.config.changefeed,
      ownerRevision: this.config.ownerRevision,
      changefeedEpoch: this.config.changefeedEpoch,
      captureEpoch: capture.epoch ?? 0n,
      from: this.config.ownerId,
      to: capture.id,
      seq: capture.seqOut,
      ackSeq: capture.lastSeqIn,
    };
  }

  private updateWatermark(tick: number, nowMs: number | undefined): { checkpointTs: bigint; resolvedTs: bigint } | undefined {
    const manager = this.manager;
    const captures = this.captures;
    const watermark = computeWatermark({
      uninitialized: this.phase === 'bootstrapping' && captures.captures.size === 0 ? ['(no live capture)'] : captures.uninitialized(),
      coverage: this.phase === 'running' ? manager.coverageProblem() : undefined,
      operations: manager.operations.size,
      spanCount: manager.sets.size,
      stateCounts: manager.stateCounts,
      captures: this.captureAggregates(),
      barrierTs: this.barrierTs,
    });
    let advanced: { checkpointTs: bigint; resolvedTs: bigint } | undefined;
    if (watermark.state === 'advancing') {
      const checkpointTs = tsMax(this.checkpointTs, watermark.checkpointTs);
      const resolvedTs = tsMax(tsMax(this.resolvedTs, watermark.resolvedTs), checkpointTs);
      if (checkpointTs !== this.checkpointTs || resolvedTs !== this.resolvedTs) {
        this.checkpointTs = checkpointTs;
        this.resolvedTs = resolvedTs;
        this.manager.floorTs = checkpointTs;
        this.events.push({ type: 'checkpoint-advanced', checkpointTs, resolvedTs });
        advanced = { checkpointTs, resolvedTs };
      }
    }
    this.lastWatermark = this.withStall(watermark, tick, nowMs);
    return advanced;
  }

  /** Per capture: the owner's index and the capture's latest aggregate. */
  private *captureAggregates(): Generator<readonly [CaptureId, CaptureSpans, CaptureWatermark | undefined]> {
    for (const [id, spans] of this.manager.captureEntries()) yield [id, spans, this.captures.captures.get(id)?.aggregate] as const;
  }

  /**
   * Feeds the stall detector (also while the watermark cannot proceed: the checkpoint
   * stands still then too) and turns an advancing watermark into a stalled one. The
   * holders are searched only while stalled, at most every `stallHoldersRefreshMs` or
   * after a collection; when a stall starts, the holding captures are asked for one, so
   * the per-span checkpoints searched are current.
   */
  private withStall(watermark: Exclude<Watermark, { state: 'stalled' }>, tick: number, nowMs: number | undefined): Watermark {
    if (nowMs === undefined || this.phase !== 'running') return watermark;
    const verdict = this.stall.observe({ nowMs, checkpointTs: this.checkpointTs, resolvedTs: this.resolvedTs, barrierTs: this.barrierTs });
    if (!verdict.stalled) {
      if (this.stalled !== undefined) {
        // Said only of a stall that was said to start (one under cannot-proceed never was).
        if (this.stalled.holders !== undefined) this.events.push({ type: 'stall-ended', checkpointTs: this.checkpointTs, stalledForMs: nowMs - this.stalled.sinceMs });
        this.stalled = undefined;
        this.stallHoldersDirty = false;
      }
      return watermark;
    }
    let stalled = this.stalled;
    if (stalled === undefined || stalled.sinceMs !== verdict.sinceMs) {
      stalled = { sinceMs: verdict.sinceMs, holders: undefined, holdersAtMs: nowMs, awaiting: this.requestHolderCollections(tick) };
      this.stalled = stalled;
    }
    if (watermark.state !== 'advancing') return watermark;
    if (stalled.holders === undefined || this.stallHoldersDirty || nowMs - stalled.holdersAtMs >= this.limits.stallHoldersRefreshMs) {
      const first = stalled.holders === undefined;
      stalled.holders = findStallHolders(this.checkpointTs, this.captureAggregates(), this.limits.stallHoldersListedMax);
      stalled.holdersAtMs = nowMs;
      this.stallHoldersDirty = false;
      if (first) {
        this.events.push({
          type: 'stall-started',
          checkpointTs: this.checkpointTs,
          resolvedTs: this.resolvedTs,
          stalledForMs: verdict.stalledForMs,
          spanCount: stalled.holders.spanCount,
          captures: stalled.holders.captures,
        });
      }
    }
    // The values the detector judged: the changefeed's (monotonic) checkpoint and resolved-ts, as the API shows them.
    return { state: 'stalled', checkpointTs: this.checkpointTs, resolvedTs: this.resolvedTs, stalledForMs: verdict.stalledForMs, heldBy: stalled.holders };
  }

  /**
   * Asks the captures at the checkpoint for a collection at their next heartbeat; returns
   * them. O(captures). Only their answers make the holders be searched before the next
   * refresh, so a stall costs one extra search per holding capture, not one per collection.
   */
  private requestHolderCollections(tick: number): Set<CaptureId> {
    const asked = new Set<CaptureId>();
    for (const [id, spans, aggregate] of this.captureAggregates()) {
      if (spans.replicatingDigest.count === 0 || aggregate === undefined || aggregate.checkpointTs > this.checkpointTs) continue;
      const capture = this.captures.captures.get(id);
      if (capture === undefined) continue;
      if (capture.nextCollectTick > tick) capture.nextCollectTick = tick;
      asked.add(id);
    }
    return asked;
  }

  private output(outbox: OwnerMessage[], advanced: TickOutput['advanced']): TickOutput {
    const events = [...this.events, ...this.manager.takeEvents()];
    this.events = [];
    const watermark: Watermark =
      this.phase === 'failed' ? { state: 'cannot-proceed', reason: { code: 'failed', message: this.failure ?? 'failed' } } : this.lastWatermark;
    this.lastWatermark = watermark;
    return { outbox, watermark, advanced, events };
  }
}

/** A refused request (assignable to every request's result). */
type Refusal = { readonly ok: false; readonly code: RequestErrorCode; readonly message: string };

function refuse(code: RequestErrorCode, message: string): Refusal {
  return { ok: false, code, message };
}

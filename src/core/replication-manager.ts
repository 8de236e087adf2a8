/**
 * The replication manager: every replication set of one changefeed, the tasks running
 * on them, and the incremental indexes that keep a tick O(changes) instead of O(spans)
 * (DESIGN.md §5 "At scale"):
 *
 * - counters of sets per state, so "is anything not replicating?" is O(1);
 * - per capture: the sets it is primary for (an {@link IndexedList}), how many it is
 *   secondary for, the sets in transition it holds a role in (what heartbeats ask
 *   about), and the digest of the spans it replicates as primary;
 * - the absent sets (what the basic scheduler adds) and the unwanted replicating sets
 *   (what it removes), as insertion-ordered sets;
 * - a coverage verdict recomputed only when sets are created or deleted.
 *
 * Every mutation of a set goes through {@link ReplicationManager.apply}, which compares
 * the set's roles and state before and after and updates the indexes, the task
 * bookkeeping and the events. Handlers' commands are batched per capture until the
 * coordinator drains them into dispatch messages.
 */
import { assert } from './assert.ts';
import type { CoordinatorEvent } from './events.ts';
import { IndexedList } from './indexed-list.ts';
import type { AddSpanRequest, CaptureId, SpanStatus } from './messages.ts';
import type { CaptureReport, ReplicationState, SetEffects, SetOperation, SpanCommand } from './replication-set.ts';
import { ReplicationSet, replicationStates } from './replication-set.ts';
import type { CoverageProblem, Span, TableRange } from './span.ts';
import { findCoverageProblem, formatSpan, spanKey } from './span.ts';
import type { OperationEffects, SpanOperationKind } from './span-operation.ts';
import { SpanOperation } from './span-operation.ts';
import type { HeldSpan } from './tiling.ts';
import { adoptHeldTiling, spansOverlap } from './tiling.ts';

/** Stopping spans of one table checked one by one for overlap with an add (see overlapsStopping). */
export const stoppingCheckedMax = 64;
import { MutableDigest } from './span-digest.ts';
import { SpanOrder } from './span-order.ts';
import { SpanSummary } from './span-summary.ts';
import type { Task, TaskKind } from './task.ts';
import { tsMax } from './ts.ts';

/** Bounds on the work the manager starts. */
export interface ReplicationLimits {
  /** Moves in flight at once (drain, move, rebalance, balance). */
  readonly moveTasksInFlightMax: number;
  /** Adds and removes in flight at once. */
  readonly addRemoveTasksInFlightMax: number;
  /** Adds started per tick. */
  readonly addBatchPerTickMax: number;
}

/** The spans one capture holds, as the owner sees them. */
export class CaptureSpans {
  readonly primaries = new IndexedList<ReplicationSet>();
  secondaryCount = 0;
  /** Sets it is primary for that are moving away (they have a secondary elsewhere). */
  movingOutCount = 0;
  /** Sets in transition (or undetermined) in which the capture holds a role. */
  readonly inTransition = new Set<ReplicationSet>();
  /** Digest of the spans the capture replicates as primary (set state `replicating`). */
  readonly replicatingDigest = new MutableDigest();

  /** Spans held as primary or secondary: the load the schedulers balance. */
  get load(): number {
    return this.primaries.length + this.secondaryCount;
  }

  /** Spans it will hold once the moves in flight finish. */
  get settledLoad(): number {
    return this.primaries.length - this.movingOutCount + this.secondaryCount;
  }
}

/** Pending commands for one capture, drained into dispatch messages each tick. */
export interface PendingDispatch {
  readonly adds: AddSpanRequest[];
  readonly removes: Span[];
}

/** A set's roles and state before a mutation. */
interface SetSnapshot {
  state: ReplicationState;
  primary: CaptureId | undefined;
  secondary: CaptureId | undefined;
  undetermined: readonly CaptureId[] | undefined;
}

/** Number of sets per state. */
export type StateCounts = Record<ReplicationState, number>;

/** Owns the replication sets of one changefeed and everything indexed on them. */
export class ReplicationManager implements SetEffects {
  readonly sets = new Map<string, ReplicationSet>();
  /** The same sets in span order, for the API's pages (kept on create and delete). */
  readonly ordered = new SpanOrder<ReplicationSet>();
  /** Sets by table × state and by primary × state, for the API's summary. */
  readonly summary = new SpanSummary();
  readonly stateCounts: StateCounts = { absent: 0, prepare: 0, commit: 0, replicating: 0, removing: 0 };
  readonly tasksInFlight: Record<TaskKind, number> = { add: 0, move: 0, remove: 0 };
  /** Absent sets that should exist: the basic scheduler adds them. */
  readonly absentSets = new Set<ReplicationSet>();
  /** Replicating sets whose span is no longer wanted: the basic scheduler removes them. */
  readonly unwantedSets = new Set<ReplicationSet>();
  readonly violations: string[] = [];
  /** Spans that failed for good (reported by their capture): the changefeed must fail. */
  readonly fatalErrors: string[] = [];
  /** A floor for checkpoints of (re-)added spans: the persisted global checkpoint. */
  floorTs: bigint;
  /** Splits and merges in flight, by id (`span-operation.ts`). */
  readonly operations = new Map<number, SpanOperation>();
  private nextOperationId = 1;

  private readonly limits: ReplicationLimits;
  private readonly captures = new Map<CaptureId, CaptureSpans>();
  private readonly pending = new Map<CaptureId, PendingDispatch>();
  private readonly unwanted = new Set<string>();
  /**
   * Per table, its sets that are no longer wanted and still have a holder (being
   * removed, retired or found stopping). While a table has any, no span of it is added:
   * its spans may have been cut anew, and an old span that still writes would share keys
   * with a new one. Empty in a steady state, so the check is O(1).
   */
  private readonly stoppingByTable = new Map<string, Set<ReplicationSet>>();
  private tables: readonly TableRange[] = [];
  private coverageDirty = true;
  private coverage: CoverageProblem | undefined;
  private events: CoordinatorEvent[] = [];
  private addsThisTick = 0;

  /** The seq of the last message sent to a capture (its next message has a higher one). */
  private readonly seqOutOf: (capture: CaptureId) => number;

  constructor(limits: ReplicationLimits, floorTs: bigint, seqOutOf: (capture: CaptureId) => number) {
    this.limits = limits;
    this.floorTs = floorTs;
    this.seqOutOf = seqOutOf;
  }

  // ---- effects from replication sets ----

  /** {@link SetEffects.send}: batches a command per capture. */
  send(set: ReplicationSet, command: SpanCommand): void {
    let pending = this.pending.get(command.to);
    if (pending === undefined) {
      pending = { adds: [], removes: [] };
      this.pending.set(command.to, pending);
    }
    if (command.kind === 'add') {
      set.secondaryAddSeq = this.seqOutOf(command.to);
      pending.adds.push({ span: set.span, secondary: command.secondary, checkpointTs: command.checkpointTs });
    } else {
      pending.removes.push(set.span);
    }
  }

  /** {@link SetEffects.violation}: recorded; the coordinator fails the changefeed. */
  violation(set: ReplicationSet, message: string): void {
    this.violations.push(message);
    this.events.push({ type: 'invariant-violation', message, state: set.describe() });
  }

  // ---- inputs ----

  /** Sets the tables and the spans that should exist; creates and retires sets. */
  setDesiredSpans(tables: readonly TableRange[], spans: readonly Span[]): void {
    this.tables = tables;
    this.coverageDirty = true;
    const wanted = this.wantedWithOperations(tables, spans);
    for (const span of spans) {
      const key = spanKey(span);
      if (!wanted.has(key)) continue;
      if (this.unwanted.delete(key)) {
        const set = this.sets.get(key);
        if (set !== undefined) this.apply(set, () => undefined);
      }
      if (!this.sets.has(key)) this.createSet(new ReplicationSet(span, this.floorTs, key));
    }
    for (const set of this.sets.values()) {
      // The new spans of an operation in flight are wanted once it is done.
      if (wanted.has(set.key) || set.operation !== undefined) continue;
      this.unwanted.add(set.key);
      if (set.state === 'absent' && set.holders().length === 0) this.deleteSet(set);
      else this.apply(set, () => undefined);
    }
  }

  /**
   * The keys `spans` make wanted, given the operations in flight: an operation whose old
   * spans are all still listed goes on (in commit they stay unwanted: they are being
   * stopped, and their range is the new spans'); one in prepare whose old spans are not
   * (its table was removed or cut anew) is aborted. One in commit cannot be taken back:
   * it finishes, and its new spans are wanted only if listed.
   */
  private wantedWithOperations(tables: readonly TableRange[], spans: readonly Span[]): Set<string> {
    const wanted = new Set<string>();
    for (const span of spans) wanted.add(spanKey(span));
    const ranges = new Map(tables.map((t) => [t.name, t] as const));
    for (const operation of [...this.operations.values()]) {
      const listed = operation.old.every((set) => wanted.has(set.key)) && ranges.has(operation.table);
      if (operation.phase === 'prepare') {
        if (!listed) this.settle(operation, () => operation.abort("the changefeed's spans changed", this.operationEffects));
        continue;
      }
      if (!listed) {
        // The spans it would leave behind are not what the shell wants any more: its old
        // spans still stop (a commit is never taken back), its new ones are then dropped,
        // and the spans listed take the range.
        if (!operation.detached) {
          operation.detached = true;
          this.coverageDirty = true;
        }
        continue;
      }
      // Listed again before it finished: it releases its new spans after all.
      if (operation.detached) {
        operation.detached = false;
        this.coverageDirty = true;
      }
      for (const set of operation.old) wanted.delete(set.key);
      for (const set of operation.sets) wanted.add(set.key);
    }
    return wanted;
  }

  /** Registers a capture so it can receive work. Idempotent. */
  addCapture(capture: CaptureId): void {
    if (!this.captures.has(capture)) this.captures.set(capture, new CaptureSpans());
  }

  /** A capture died: every set it held a role in hears `stopped` from it. */
  removeCapture(capture: CaptureId): number {
    const spans = this.captures.get(capture);
    if (spans === undefined) return 0;
    const affected = [...spans.primaries.toArray(), ...spans.inTransition];
    let count = 0;
    for (const set of new Set(affected)) {
      if (!this.sets.has(set.key)) continue;
      count++;
      this.apply(set, () => set.handleCaptureGone(capture, this));
    }
    // Sets where it was only a secondary are in transition, so all are handled above.
    assert(spans.load === 0 && spans.movingOutCount === 0 && spans.inTransition.size === 0, `capture ${capture} still holds spans after it was removed`, {
      primaries: spans.primaries.length,
      secondaries: spans.secondaryCount,
      inTransition: spans.inTransition.size,
    });
    this.captures.delete(capture);
    this.pending.delete(capture);
    return count;
  }

  /** One span status from a live, initialised capture, made when it had seen `ackSeq`. */
  handleStatus(from: CaptureId, status: SpanStatus, ackSeq: number): void {
    if (status.fatalError !== undefined && this.fatalErrors.length < 10) this.fatalErrors.push(`${formatSpan(status.span)}: ${status.fatalError}`);
    const key = spanKey(status.span);
    const set = this.sets.get(key);
    if (set === undefined) {
      // A span the owner does not track: stop it if the capture still runs it.
      if (status.state === 'preparing' || status.state === 'prepared' || status.state === 'replicating') {
        this.send(new ReplicationSet(status.span, 0n, key), { kind: 'remove', to: from });
      }
      return;
    }
    this.apply(set, () => set.handleStatus(from, status, ackSeq, this));
  }

  /**
   * A full collection from `capture` arrived: every set in which the owner thinks the
   * capture holds a role but that the capture did not list hears `absent` from it.
   * `listed` holds the keys the capture reported, as of `ackSeq`.
   */
  reconcile(capture: CaptureId, listed: ReadonlySet<string>, ackSeq: number): void {
    const spans = this.captures.get(capture);
    if (spans === undefined) return;
    const missing: ReplicationSet[] = [];
    for (const set of spans.primaries.values()) if (!listed.has(set.key)) missing.push(set);
    for (const set of spans.inTransition) if (!listed.has(set.key) && set.primary !== capture) missing.push(set);
    for (const set of missing) {
      const absent: SpanStatus = { span: set.span, state: 'absent', checkpointTs: 0n, resolvedTs: 0n };
      this.apply(set, () => set.handleStatus(capture, absent, ackSeq, this));
    }
  }

  /**
   * Rebuilds every set from what all live captures reported to a new owner (DESIGN.md
   * §3). Call {@link setDesiredSpans} right after: spans no capture holds start absent,
   * and spans no longer wanted are removed once replicating.
   */
  rebuild(reports: ReadonlyMap<CaptureId, readonly SpanStatus[]>): void {
    assert(this.sets.size === 0, 'rebuild on a manager that already has sets');
    const byKey = new Map<string, CaptureReport[]>();
    const spanOf = new Map<string, Span>();
    for (const [capture, statuses] of reports) {
      this.addCapture(capture);
      for (const status of statuses) {
        const key = spanKey(status.span);
        let list = byKey.get(key);
        if (list === undefined) {
          list = [];
          byKey.set(key, list);
          spanOf.set(key, status.span);
        }
        list.push({ capture, status });
      }
    }
    for (const [key, span] of spanOf) {
      this.createSet(ReplicationSet.rebuild(span, key, byKey.get(key) ?? [], this.floorTs, this));
    }
  }

  /**
   * Starts the tasks it can: each is validated (known span, right state, no other task
   * on the span, live target, bounds). Returns the tasks started.
   */
  handleTasks(tasks: readonly Task[], isTarget: (capture: CaptureId) => boolean, scheduler: string): Task[] {
    const started: Task[] = [];
    for (const task of tasks) {
      const set = this.sets.get(task.key);
      if (set === undefined || set.task !== undefined || set.operation !== undefined) continue;
      switch (task.kind) {
        case 'add':
          if (set.state !== 'absent' || this.unwanted.has(set.key) || !isTarget(task.capture)) continue;
          if (this.overlapsStopping(set)) continue;
          if (this.addsThisTick >= this.limits.addBatchPerTickMax) continue;
          if (this.tasksInFlight.add + this.tasksInFlight.remove >= this.limits.addRemoveTasksInFlightMax) continue;
          this.addsThisTick++;
          this.startTask(set, 'add');
          this.apply(set, () => set.add(task.capture, tsMax(set.checkpointTs, this.floorTs), this));
          break;
        case 'move':
          if (set.state !== 'replicating' || set.primary === task.capture || !isTarget(task.capture)) continue;
          if (this.tasksInFlight.move >= this.limits.moveTasksInFlightMax) continue;
          this.startTask(set, 'move');
          // A replicating set's own checkpoint is refreshed only now and then; the global
          // checkpoint is below every span's flushed position, so the target may start there.
          this.apply(set, () => {
            set.raiseCheckpoint(this.floorTs);
            set.move(task.capture, this);
          });
          break;
        case 'remove':
          // Only spans no longer wanted are removed: a wanted one would leave a gap.
          if (set.state !== 'replicating' || !this.unwanted.has(set.key)) continue;
          if (this.tasksInFlight.add + this.tasksInFlight.remove >= this.limits.addRemoveTasksInFlightMax) continue;
          this.startTask(set, 'remove');
          this.apply(set, () => set.remove(this));
          break;
      }
      started.push(task);
      this.events.push({
        type: 'task-started',
        kind: task.kind,
        span: set.span,
        capture: task.kind === 'remove' ? undefined : task.capture,
        scheduler,
      });
    }
    return started;
  }

  // ---- splits and merges ----

  /** What operations do to the sets; every change goes through {@link apply}. */
  private readonly operationEffects: OperationEffects = {
    prepareNew: (span: Span, capture: CaptureId, checkpointTs: bigint, operation: SetOperation): ReplicationSet => {
      const key = spanKey(span);
      assert(!this.sets.has(key), `the new span ${formatSpan(span)} of an operation is already tracked`);
      const set = new ReplicationSet(span, checkpointTs, key);
      set.operation = operation;
      this.createSet(set);
      this.apply(set, () => set.prepareHeld(capture, checkpointTs, operation, this));
      return set;
    },
    stopOld: (set: ReplicationSet): void => {
      this.unwanted.add(set.key);
      this.apply(set, () => set.remove(this));
    },
    dropNew: (set: ReplicationSet): void => {
      if (this.sets.get(set.key) !== set) {
        set.operation = undefined;
        return;
      }
      this.unwanted.add(set.key);
      this.apply(set, () => {
        set.operation = undefined;
        if (set.primary === undefined) set.retire(this);
      });
    },
    release: (set: ReplicationSet): void => {
      if (this.sets.get(set.key) !== set) {
        set.operation = undefined;
        return;
      }
      this.apply(set, () => {
        set.operation = undefined;
        set.kick(this);
      });
    },
    tracks: (set: ReplicationSet): boolean => this.sets.get(set.key) === set,
  };

  /**
   * Starts a split or merge of the replicating `old` sets (adjacent, in key order) into
   * `newSpans`, prepared on `targets`. The caller validated the request.
   */
  startOperation(kind: SpanOperationKind, old: readonly ReplicationSet[], newSpans: readonly Span[], targets: readonly CaptureId[], tick: number): SpanOperation {
    this.coverageDirty = true;
    const id = this.nextOperationId++;
    const operation = new SpanOperation({ id, kind, old, newSpans, targets, tick, floorTs: this.floorTs }, this.operationEffects);
    this.operations.set(id, operation);
    // The old sets leave the schedulers' queues (they belong to the operation now).
    for (const set of old) this.apply(set, () => undefined);
    this.events.push({ type: 'operation-started', operation: operation.view() });
    return operation;
  }

  /** Steps every operation in flight (after the tick's reports and membership changes). */
  stepOperations(): void {
    for (const operation of [...this.operations.values()]) {
      const before = operation.phase;
      if (!operation.step(this.operationEffects)) continue;
      if (operation.settled) this.finish(operation, before);
      else this.events.push({ type: 'operation-changed', operation: operation.view(), from: before, to: operation.phase });
    }
  }

  /** Runs a transition that settles `operation`, then forgets it. */
  private settle(operation: SpanOperation, transition: () => void): void {
    const before = operation.phase;
    transition();
    this.finish(operation, before);
  }

  private finish(operation: SpanOperation, before: string): void {
    this.operations.delete(operation.id);
    this.coverageDirty = true;
    const view = operation.view();
    if (operation.phase === 'aborted') {
      this.events.push({ type: 'operation-aborted', operation: view, from: before, reason: operation.reason ?? '' });
    } else {
      this.events.push({ type: 'operation-done', operation: view, table: view.table, replaced: view.from, by: view.to });
    }
  }

  /**
   * The tiling to persist: every wanted span, with each operation in flight still at its
   * old spans (they are the tiling until it is done). O(spans).
   */
  tiling(): Span[] {
    const spans: Span[] = [];
    for (const set of this.sets.values()) if (set.operation === undefined && !this.unwanted.has(set.key)) spans.push(set.span);
    for (const operation of this.operations.values()) if (!operation.detached) for (const set of operation.old) spans.push(set.span);
    return spans;
  }

  /**
   * At a rebuild, before {@link setDesiredSpans}: the tiling the captures hold where a
   * split or merge left the persisted one behind (see `tiling.ts`). Returns the spans to
   * want and the tables whose tiling changed.
   */
  adoptHeldTiling(tables: readonly TableRange[], desired: readonly Span[]): { spans: Span[]; changed: Map<string, Span[]> } {
    const desiredKeys = new Set(desired.map(spanKey));
    const held: HeldSpan[] = [];
    for (const set of this.sets.values()) {
      if (desiredKeys.has(set.key) || (set.primary === undefined && set.secondary === undefined)) continue;
      held.push({ span: set.span, writer: set.primary !== undefined });
    }
    return adoptHeldTiling(tables, desired, held, (span) => (this.sets.get(spanKey(span))?.holders().length ?? 0) > 0);
  }

  /**
   * After a rebuild's {@link setDesiredSpans}: an unwanted set with a secondary and no
   * primary is stopped now instead of promoted and then removed; its span may overlap
   * a wanted one (a split or merge the old owner had not committed).
   */
  retireUnwantedPreparers(): void {
    for (const set of [...this.sets.values()]) {
      if (this.unwanted.has(set.key) && set.primary === undefined && set.secondary !== undefined) this.apply(set, () => set.retire(this));
    }
  }

  // ---- outputs ----

  /** Takes the commands batched since the last call, per capture. */
  takePending(): Map<CaptureId, PendingDispatch> {
    const pending = new Map(this.pending);
    this.pending.clear();
    this.addsThisTick = 0;
    return pending;
  }

  /** Takes the events recorded since the last call. */
  takeEvents(): CoordinatorEvent[] {
    const events = this.events;
    this.events = [];
    return events;
  }

  /** The per-capture index, for schedulers, heartbeats and the watermark. */
  captureSpans(capture: CaptureId): CaptureSpans | undefined {
    return this.captures.get(capture);
  }

  /** Every capture the manager tracks, with its index. */
  captureEntries(): IterableIterator<[CaptureId, CaptureSpans]> {
    return this.captures.entries();
  }

  /** The first coverage problem among the sets, recomputed only after sets changed. */
  coverageProblem(): CoverageProblem | undefined {
    if (this.coverageDirty) {
      // A split or merge in flight counts as one span over its range (DESIGN.md §6).
      this.coverage = findCoverageProblem(this.tables, (function* (sets, operations) {
        for (const set of sets.values()) if (set.operation === undefined) yield set.span;
        for (const operation of operations.values()) if (!operation.detached) yield operation.range;
      })(this.sets, this.operations));
      this.coverageDirty = false;
    }
    return this.coverage;
  }

  /** True when the span of `set` is still wanted. */
  isWanted(set: ReplicationSet): boolean {
    return !this.unwanted.has(set.key);
  }

  /**
   * Checks the manager's own invariants: counters and indexes agree with the sets, at
   * most one primary per set, tasks bounded. O(spans): for tests and the simulator.
   */
  checkInvariants(): void {
    const counts: StateCounts = { absent: 0, prepare: 0, commit: 0, replicating: 0, removing: 0 };
    const tasks: Record<TaskKind, number> = { add: 0, move: 0, remove: 0 };
    const primaries = new Map<CaptureId, number>();
    const secondaries = new Map<CaptureId, number>();
    const movingOut = new Map<CaptureId, number>();
    for (const set of this.sets.values()) {
      counts[set.state]++;
      if (set.task !== undefined) tasks[set.task]++;
      assert(!set.removed, 'a removed set is still tracked', set.describe());
      assert(set.checkpointTs <= set.resolvedTs, 'set checkpoint above its resolved', set.describe());
      assert(set.primary === undefined || set.primary !== set.secondary, 'primary is also secondary', set.describe());
      if (set.state === 'replicating') assert(set.primary !== undefined && set.secondary === undefined, 'replicating set without exactly a primary', set.describe());
      if (set.state === 'absent') assert(set.primary === undefined && set.secondary === undefined, 'absent set with a role', set.describe());
      if (set.state === 'prepare') assert(set.secondary !== undefined, 'prepare without a secondary', set.describe());
      if (set.state === 'removing') assert(set.primary !== undefined, 'removing without a primary', set.describe());
      if (set.operation !== undefined) {
        const operation = this.operations.get(set.operation.id);
        assert(operation === set.operation && (operation.old.includes(set) || operation.sets.includes(set)), 'a set belongs to an operation that is not in flight', set.describe());
      }
      if (set.held) assert(set.primary === undefined, 'a held set has a primary', set.describe());
      if (set.primary !== undefined) {
        primaries.set(set.primary, (primaries.get(set.primary) ?? 0) + 1);
        const spans = this.captures.get(set.primary);
        assert(spans !== undefined && spans.primaries.at(set.primaryIndex) === set, 'primary index out of date', set.describe());
      }
      if (set.secondary !== undefined) secondaries.set(set.secondary, (secondaries.get(set.secondary) ?? 0) + 1);
      if (set.secondary !== undefined && set.primary !== undefined) movingOut.set(set.primary, (movingOut.get(set.primary) ?? 0) + 1);
      assert(this.absentSets.has(set) === (set.state === 'absent' && this.isWanted(set) && set.operation === undefined), 'absent index out of date', set.describe());
    }
    assert(this.ordered.size === this.sets.size, `span order holds ${this.ordered.size} sets, the manager ${this.sets.size}`);
    const summary = new SpanSummary();
    for (const set of this.sets.values()) summary.count(set.span.table, set.primary, set.state, 1);
    for (const [what, want, have] of [['table', summary.byTable, this.summary.byTable], ['capture', summary.byCapture, this.summary.byCapture]] as const) {
      const a = JSON.stringify([...want].sort(([x], [y]) => (x < y ? -1 : 1)));
      const b = JSON.stringify([...have].sort(([x], [y]) => (x < y ? -1 : 1)));
      assert(a === b, `span summary by ${what} out of date`, { sets: a, summary: b });
    }
    for (const state of replicationStates) {
      assert(counts[state] === this.stateCounts[state], `state counter ${state} is ${this.stateCounts[state]}, sets say ${counts[state]}`);
    }
    for (const kind of ['add', 'move', 'remove'] as const) {
      assert(tasks[kind] === this.tasksInFlight[kind], `task counter ${kind} is ${this.tasksInFlight[kind]}, sets say ${tasks[kind]}`);
    }
    assert(this.tasksInFlight.move <= this.limits.moveTasksInFlightMax, 'too many moves in flight');
    assert(this.tasksInFlight.add + this.tasksInFlight.remove <= this.limits.addRemoveTasksInFlightMax, 'too many adds and removes in flight');
    let digestTotal = 0;
    for (const [capture, spans] of this.captures) {
      assert(spans.primaries.length === (primaries.get(capture) ?? 0), `primary list of ${capture} out of date`);
      assert(spans.secondaryCount === (secondaries.get(capture) ?? 0), `secondary count of ${capture} out of date`);
      assert(spans.movingOutCount === (movingOut.get(capture) ?? 0), `moving-out count of ${capture} out of date`);
      digestTotal += spans.replicatingDigest.count;
      for (const set of spans.inTransition) assert(this.sets.get(set.key) === set && set.involves(capture), 'transition index out of date', set.describe());
    }
    assert(digestTotal === this.stateCounts.replicating, 'replicating digests do not add up to the replicating sets');
    let stopping = 0;
    for (const set of this.sets.values()) {
      const is = this.unwanted.has(set.key) && set.holders().length > 0;
      assert(is === (this.stoppingByTable.get(set.span.table)?.has(set) ?? false), 'stopping index out of date', set.describe());
      if (is) stopping++;
    }
    let indexed = 0;
    for (const sets of this.stoppingByTable.values()) indexed += sets.size;
    assert(indexed === stopping, `stopping index holds ${indexed} sets, the sets say ${stopping}`);
    for (const operation of this.operations.values()) {
      assert(!operation.settled, 'a settled operation is still in flight', operation.view());
      for (const set of operation.old) {
        assert(set.operation === operation, 'an old set of an operation is not marked', set.describe());
        if (operation.phase === 'prepare') assert(this.sets.get(set.key) === set && set.state === 'replicating', 'an old set in prepare is not tracked or not replicating', set.describe());
      }
      for (const set of operation.sets) {
        assert(set.operation === operation && this.sets.get(set.key) === set && set.held, 'a new set of an operation is not held', set.describe());
      }
    }
  }

  // ---- bookkeeping ----

  /**
   * Runs `mutate` on `set` and brings every index up to date with what changed. All
   * changes to sets go through here.
   */
  apply(set: ReplicationSet, mutate: () => void): void {
    const before: SetSnapshot = {
      state: set.state,
      primary: set.primary,
      secondary: set.secondary,
      undetermined: set.undetermined?.slice(),
    };
    mutate();
    this.reindex(set, before);
  }

  private createSet(set: ReplicationSet): void {
    this.sets.set(set.key, set);
    this.ordered.add(set);
    this.coverageDirty = true;
    this.reindex(set, { state: 'absent', primary: undefined, secondary: undefined, undetermined: undefined }, true);
  }

  private deleteSet(set: ReplicationSet): void {
    this.apply(set, () => {
      set.state = 'absent';
      set.removed = true;
    });
  }

  private startTask(set: ReplicationSet, kind: TaskKind): void {
    set.task = kind;
    this.tasksInFlight[kind]++;
  }

  private reindex(set: ReplicationSet, before: SetSnapshot, created = false): void {
    const { state } = set;
    // Only the set the manager tracks for its key is counted (a set deleted before is not).
    if (created) this.summary.count(set.span.table, set.primary, state, 1);
    else if ((before.state !== state || before.primary !== set.primary) && this.sets.get(set.key) === set) {
      this.summary.count(set.span.table, before.primary, before.state, -1);
      this.summary.count(set.span.table, set.primary, state, 1);
    }
    if (created) {
      this.stateCounts[state]++;
    } else if (before.state !== state) {
      this.stateCounts[before.state]--;
      this.stateCounts[state]++;
      this.events.push({ type: 'span-state-changed', span: set.span, from: before.state, to: state, primary: set.primary });
    }

    // Primary lists and replicating digests.
    const wasReplicatingOn = before.state === 'replicating' ? before.primary : undefined;
    const isReplicatingOn = state === 'replicating' && !set.removed ? set.primary : undefined;
    if (wasReplicatingOn !== isReplicatingOn) {
      if (wasReplicatingOn !== undefined) this.captures.get(wasReplicatingOn)?.replicatingDigest.remove(set.key);
      if (isReplicatingOn !== undefined) this.spansOf(isReplicatingOn).replicatingDigest.add(set.key);
    }
    const primary = set.removed ? undefined : set.primary;
    if (before.primary !== primary || created) {
      if (before.primary !== undefined && set.primaryIndex >= 0) this.captures.get(before.primary)?.primaries.remove(set);
      if (primary !== undefined) this.spansOf(primary).primaries.add(set);
    }
    const movingOutOn = set.removed || set.secondary === undefined ? undefined : set.primary;
    const wasMovingOutOn = before.secondary === undefined ? undefined : before.primary;
    if (wasMovingOutOn !== movingOutOn) {
      if (wasMovingOutOn !== undefined) {
        const spans = this.captures.get(wasMovingOutOn);
        if (spans !== undefined) spans.movingOutCount--;
      }
      if (movingOutOn !== undefined) this.spansOf(movingOutOn).movingOutCount++;
    }
    const secondary = set.removed ? undefined : set.secondary;
    if (before.secondary !== secondary) {
      if (before.secondary !== undefined) {
        const spans = this.captures.get(before.secondary);
        if (spans !== undefined) spans.secondaryCount--;
      }
      if (secondary !== undefined) this.spansOf(secondary).secondaryCount++;
    }

    // Sets in transition, per capture holding a role.
    this.unindexTransition(set, before);
    if (!set.removed) {
      const transitional = state !== 'replicating';
      if (transitional) {
        if (set.primary !== undefined) this.spansOf(set.primary).inTransition.add(set);
        if (set.secondary !== undefined) this.spansOf(set.secondary).inTransition.add(set);
      }
      if (set.undetermined !== undefined) for (const c of set.undetermined) this.spansOf(c).inTransition.add(set);
    }

    // Tasks finish when the set settles: replicating (add, move), absent, or deleted.
    if (set.task !== undefined && (state === 'replicating' || state === 'absent' || set.removed)) {
      if (!(set.task === 'remove' && state === 'replicating')) {
        this.tasksInFlight[set.task]--;
        set.task = undefined;
      }
    }

    // Work queues for the basic scheduler.
    const wanted = !this.unwanted.has(set.key);
    // A set of an operation in flight is the operation's to handle.
    const free = set.operation === undefined;
    if (state === 'absent' && wanted && !set.removed && free) this.absentSets.add(set);
    else this.absentSets.delete(set);
    if (state === 'replicating' && !wanted && set.task === undefined && free) this.unwantedSets.add(set);
    else this.unwantedSets.delete(set);

    if (set.removed || (state === 'absent' && !wanted && set.holders().length === 0 && free)) {
      const current = this.sets.get(set.key) === set;
      if (current) {
        this.sets.delete(set.key);
        this.ordered.remove(set);
        this.summary.count(set.span.table, set.primary, state, -1);
        this.stateCounts[state]--;
        this.coverageDirty = true;
        this.unwanted.delete(set.key);
        set.removed = true;
      }
      this.absentSets.delete(set);
      this.unwantedSets.delete(set);
      // Wanted again while its remove ran (a table removed and added back): the span
      // starts anew from the checkpoint, or the table would have a gap for good. The old
      // span of an operation is not: the operation's new spans take its range.
      if (current && wanted && free) this.createSet(new ReplicationSet(set.span, this.floorTs, set.key));
    }
    this.indexStopping(set);
  }

  /**
   * True when a span no longer wanted that still has a holder shares keys with `set`:
   * adding `set` now could give those keys two writers (the table's spans were cut anew,
   * or a new owner went back to the persisted tiling), so it waits for that span to stop.
   * Exact while the table has few such spans; beyond {@link stoppingCheckedMax} every add
   * of the table waits, which bounds the cost of a table cut anew at once.
   */
  private overlapsStopping(set: ReplicationSet): boolean {
    const stopping = this.stoppingByTable.get(set.span.table);
    if (stopping === undefined) return false;
    if (stopping.size > stoppingCheckedMax) return true;
    for (const other of stopping) if (spansOverlap(other.span, set.span)) return true;
    return false;
  }

  private indexStopping(set: ReplicationSet): void {
    const stopping = !set.removed && this.sets.get(set.key) === set && this.unwanted.has(set.key) && set.holders().length > 0;
    let sets = this.stoppingByTable.get(set.span.table);
    if (stopping) {
      if (sets === undefined) this.stoppingByTable.set(set.span.table, (sets = new Set()));
      sets.add(set);
    } else if (sets !== undefined && sets.delete(set) && sets.size === 0) {
      this.stoppingByTable.delete(set.span.table);
    }
  }

  private unindexTransition(set: ReplicationSet, before: SetSnapshot): void {
    if (before.primary !== undefined) this.captures.get(before.primary)?.inTransition.delete(set);
    if (before.secondary !== undefined) this.captures.get(before.secondary)?.inTransition.delete(set);
    if (before.undetermined !== undefined) for (const c of before.undetermined) this.captures.get(c)?.inTransition.delete(set);
  }

  private spansOf(capture: CaptureId): CaptureSpans {
    let spans = this.captures.get(capture);
    if (spans === undefined) {
      spans = new CaptureSpans();
      this.captures.set(capture, spans);
    }
    return spans;
  }
}

/** A readable line for a set, for events and API errors. */
export function describeSet(set: ReplicationSet): string {
  return `${formatSpan(set.span)} ${set.state} primary=${set.primary ?? '-'} secondary=${set.secondary ?? '-'}`;
}

/**
 * A split or a merge of spans at run time, as a two-phase operation over replication
 * sets (DESIGN.md §6 "Split and merge at run time").
 *
 * ```
 * split S=[s,e) at k: old = [S], new = [[s,k), [k,e)], new spans prepared from S's checkpoint
 * merge A=[a,b), B=[b,c): old = [A, B], new = [[a,c)], prepared from min(ckpt A, ckpt B)
 *
 *            every new set prepared              every old set stopped
 * prepare ─────────────────────────► commit ─────────────────────────► done
 *    │  (old spans keep writing;       (old spans are removed;          (new spans released
 *    │   new ones held prepared)        new ones still held)             at the start position)
 *    └── an old span lost its writer, or a new span's capture gave up or died ──► aborted
 *        (new spans are stopped; old spans go on, or are re-added by the basic policy)
 * ```
 *
 * The commit is the point of no return: once the old spans are asked to stop, they are
 * never taken back, so from then on the operation only waits for them to be stopped
 * (removed by their capture, or their capture died: either way the set's checkpoint is
 * then the last position its primary reported durable, DESIGN.md §3). A new span whose
 * capture dies in commit is simply absent when released, and the basic policy adds it
 * again from its checkpoint, as for any span.
 *
 * Start position of the new spans, when released: no event may be lost, and replay is
 * absorbed by the idempotent sinks (DESIGN.md §7), so each new span starts at the lowest
 * final checkpoint among the old spans it covers. For a split that is S's final
 * checkpoint c: everything of S up to c is in the sink, so both halves start after c.
 * For a merge it is min(final A, final B): starting at the max would skip the events of
 * the slower span between the two, while the min replays part of the faster one.
 *
 * Like a replication set the operation is level-triggered: {@link SpanOperation.step}
 * looks at its sets each tick and does what their states call for, so a lost, duplicated
 * or late message only delays it. It does no I/O: it acts through {@link OperationEffects}.
 */
import { assert } from './assert.ts';
import type { CaptureId } from './messages.ts';
import type { ReplicationSet, SetOperation } from './replication-set.ts';
import type { Span } from './span.ts';
import { formatSpan, spanKey } from './span.ts';
import { tsMin } from './ts.ts';

export type SpanOperationKind = 'split' | 'merge';

/** Where an operation is; `done` and `aborted` are final. */
export type SpanOperationPhase = 'prepare' | 'commit' | 'done' | 'aborted';

/** What an operation does to the replication manager. */
export interface OperationEffects {
  /** Creates the set of a new span, held, prepared on `capture` from `checkpointTs`. */
  prepareNew(span: Span, capture: CaptureId, checkpointTs: bigint, operation: SetOperation): ReplicationSet;
  /** The commit of an old set: no longer wanted, its primary is asked to stop. */
  stopOld(set: ReplicationSet): void;
  /** An aborted operation's new set: no longer wanted, its secondary is stopped. */
  dropNew(set: ReplicationSet): void;
  /** Detaches a set from the operation (it is an ordinary set from now on). */
  release(set: ReplicationSet): void;
  /** True while the manager still tracks this set (it was not deleted). */
  tracks(set: ReplicationSet): boolean;
}

/** A plain-data picture of an operation, for the API and events. */
export interface SpanOperationView {
  readonly id: number;
  readonly kind: SpanOperationKind;
  readonly phase: SpanOperationPhase;
  readonly table: string;
  /** The spans it replaces. */
  readonly from: readonly Span[];
  /** The spans that replace them. */
  readonly to: readonly Span[];
  /** Per new span, the capture preparing it. */
  readonly targets: readonly CaptureId[];
  /** The tick it started at. */
  readonly sinceTick: number;
  /** Set once aborted: why. */
  readonly reason?: string;
}

/** One split or merge in flight. */
export class SpanOperation implements SetOperation {
  readonly id: number;
  readonly kind: SpanOperationKind;
  readonly old: readonly ReplicationSet[];
  readonly newSpans: readonly Span[];
  readonly targets: readonly CaptureId[];
  readonly sinceTick: number;
  phase: SpanOperationPhase = 'prepare';
  reason: string | undefined;
  /**
   * Set when the shell's spans changed under it after its commit (its table removed or
   * cut anew): the old spans still stop, but the new ones are dropped, not released,
   * and the spans the shell listed cover the range instead.
   */
  detached = false;
  private newSets: ReplicationSet[] = [];
  private readonly newKeys: ReadonlySet<string>;

  /**
   * Starts the operation: marks the old sets and prepares the new spans, each on its
   * target, from the lowest checkpoint of the old sets (any lower position is safe too;
   * the floor of the global checkpoint is applied by the caller).
   */
  constructor(
    init: { id: number; kind: SpanOperationKind; old: readonly ReplicationSet[]; newSpans: readonly Span[]; targets: readonly CaptureId[]; tick: number; floorTs: bigint },
    fx: OperationEffects,
  ) {
    assert(init.old.length > 0 && init.newSpans.length > 0 && init.targets.length === init.newSpans.length, 'operation without old or new spans', init);
    this.id = init.id;
    this.kind = init.kind;
    this.old = init.old;
    this.newSpans = init.newSpans;
    this.targets = init.targets;
    this.sinceTick = init.tick;
    this.newKeys = new Set(init.newSpans.map(spanKey));
    let fromTs: bigint | undefined;
    for (const set of init.old) {
      assert(set.operation === undefined && set.state === 'replicating' && set.task === undefined, 'operation on a busy set', set.describe());
      set.operation = this;
      fromTs = fromTs === undefined ? set.checkpointTs : tsMin(fromTs, set.checkpointTs);
    }
    const startTs = fromTs === undefined || fromTs < init.floorTs ? init.floorTs : fromTs;
    this.newSets = init.newSpans.map((span, i) => fx.prepareNew(span, init.targets[i] as CaptureId, startTs, this));
  }

  /** {@link SetOperation.holds}: its new spans wait prepared until it is done. */
  holds(set: ReplicationSet): boolean {
    return (this.phase === 'prepare' || this.phase === 'commit') && this.newKeys.has(set.key);
  }

  /** The table it works on. */
  get table(): string {
    return (this.old[0] as ReplicationSet).span.table;
  }

  /** The key range it covers, as one span: the coverage check's unit while it is in flight. */
  get range(): Span {
    const first = this.old[0] as ReplicationSet;
    const last = this.old[this.old.length - 1] as ReplicationSet;
    return { table: first.span.table, start: first.span.start, end: last.span.end };
  }

  /** The sets of its new spans. */
  get sets(): readonly ReplicationSet[] {
    return this.newSets;
  }

  /** True once done or aborted. */
  get settled(): boolean {
    return this.phase === 'done' || this.phase === 'aborted';
  }

  /**
   * One level-triggered step; returns true when the phase changed. Call after the
   * tick's reports and membership changes were applied to the sets.
   */
  step(fx: OperationEffects): boolean {
    switch (this.phase) {
      case 'prepare':
        return this.stepPrepare(fx);
      case 'commit':
        return this.stepCommit(fx);
      case 'done':
      case 'aborted':
        return false;
    }
  }

  /**
   * Gives up before the commit (the owner's tables changed under it, or a step found a
   * failure): new sets are stopped, old ones go on as ordinary sets. Only in prepare.
   */
  abort(reason: string, fx: OperationEffects): void {
    assert(this.phase === 'prepare', `abort of an operation in ${this.phase}`, this.view());
    this.phase = 'aborted';
    this.reason = reason;
    for (const set of this.newSets) fx.dropNew(set);
    for (const set of this.old) fx.release(set);
  }

  private stepPrepare(fx: OperationEffects): boolean {
    for (const set of this.old) {
      // Its capture died or lost the span: the normal failure path re-adds it.
      if (!fx.tracks(set) || set.state !== 'replicating' || set.primary === undefined) {
        this.abort(`${formatSpan(set.span)} lost its primary`, fx);
        return true;
      }
    }
    let prepared = true;
    for (const set of this.newSets) {
      if (!fx.tracks(set) || set.secondary === undefined) {
        this.abort(`the capture preparing ${formatSpan(set.span)} stopped or died`, fx);
        return true;
      }
      // A held set reaches commit exactly when its secondary reported prepared.
      if (set.state !== 'commit' || set.undetermined !== undefined) prepared = false;
    }
    if (!prepared) return false;
    this.phase = 'commit';
    for (const set of this.old) fx.stopOld(set);
    return true;
  }

  private stepCommit(fx: OperationEffects): boolean {
    if (this.old.some((set) => fx.tracks(set))) return false;
    // Every old span is stopped: its checkpoint is final (see the file comment).
    if (this.detached) {
      this.phase = 'aborted';
      this.reason = "the changefeed's spans changed after the commit";
      for (const set of this.newSets) fx.dropNew(set);
      return true;
    }
    let startTs: bigint | undefined;
    for (const set of this.old) startTs = startTs === undefined ? set.checkpointTs : tsMin(startTs, set.checkpointTs);
    this.phase = 'done';
    for (const set of this.newSets) {
      set.raiseCheckpoint(startTs ?? 0n);
      fx.release(set);
    }
    return true;
  }

  /** A plain-data picture, for the API and events. */
  view(): SpanOperationView {
    return {
      id: this.id,
      kind: this.kind,
      phase: this.phase,
      table: this.table,
      from: this.old.map((set) => set.span),
      to: this.newSpans,
      targets: this.targets,
      sinceTick: this.sinceTick,
      ...(this.reason === undefined ? {} : { reason: this.reason }),
    };
  }
}

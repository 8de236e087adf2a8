/**
 * The owner's view of one span: the replication-set state machine (DESIGN.md §3).
 *
 * ```
 * absent ──add(c)──► prepare ──c prepared──► commit ──c promoted──► replicating
 * replicating ──move(d)──► prepare (old primary keeps writing; d catches up)
 * commit: stop old primary ─► wait stopped (take its final checkpoint) ─► promote d
 * replicating ──remove──► removing ──primary stopped──► (deleted)
 * absent ──prepareHeld(c)──► prepare ──c prepared──► commit (held: not promoted until the
 *        split or merge it belongs to is done, see span-operation.ts)
 * prepare | commit, no primary ──retire──► commit (secondary undetermined) ──stopped──► absent
 * ```
 *
 * Roles: at most one `primary` (the only capture that writes to the sink), at most one
 * `secondary` (preparing, not writing), and `undetermined` captures found stopping when
 * an owner rebuilt the set. A plain add dispatches `secondary: false` to the new capture,
 * which the owner records as the secondary until it reports `replicating`: the agent
 * promotes itself once prepared, saving a round trip per span.
 *
 * Handlers are level-triggered and idempotent: every status re-sends whatever request
 * the current state still needs, so lost, duplicated or late messages cost a heartbeat,
 * never correctness. The checkpoint only rises, from the primary's reports or a stopped
 * holder's final checkpoint. Handlers do no I/O: they push {@link SpanCommand}s and
 * violations into the {@link SetEffects} they are given.
 */
import { assert, assertNever } from './assert.ts';
import type { CaptureId, SpanStatus } from './messages.ts';
import type { Span } from './span.ts';
import { formatSpan, spanKey } from './span.ts';
import { tsMax } from './ts.ts';

/** Owner-side state of one span. */
export type ReplicationState = 'absent' | 'prepare' | 'commit' | 'replicating' | 'removing';

/** Every state, in lifecycle order (for counters and display). */
export const replicationStates: readonly ReplicationState[] = ['absent', 'prepare', 'commit', 'replicating', 'removing'];

/** A request for one capture about this set's span; the manager batches them into dispatches. */
export type SpanCommand =
  | { readonly kind: 'add'; readonly to: CaptureId; readonly secondary: boolean; readonly checkpointTs: bigint }
  | { readonly kind: 'remove'; readonly to: CaptureId };

/** Where handlers put their effects. */
export interface SetEffects {
  send(set: ReplicationSet, command: SpanCommand): void;
  /** An invariant of the protocol broke (e.g. two primaries): the changefeed must fail. */
  violation(set: ReplicationSet, message: string): void;
}

/**
 * What a set knows of the operation it belongs to. `holds` is asked on every decision,
 * never copied into the set: a hold cannot outlive its operation.
 */
export interface SetOperation {
  readonly id: number;
  /** True while `set` (a new span of it) must stay prepared and must not be promoted. */
  holds(set: ReplicationSet): boolean;
}

/** What a capture reported about a span, as seen during an owner's rebuild. */
export interface CaptureReport {
  readonly capture: CaptureId;
  readonly status: SpanStatus;
}

/** The owner's state machine for one span. */
export class ReplicationSet {
  readonly span: Span;
  readonly key: string;
  state: ReplicationState = 'absent';
  primary: CaptureId | undefined = undefined;
  secondary: CaptureId | undefined = undefined;
  undetermined: CaptureId[] | undefined = undefined;
  checkpointTs: bigint;
  resolvedTs: bigint;
  /** Set once a removal finished: the manager deletes the set. */
  removed = false;
  /**
   * The owner's outgoing seq to the secondary when it last sent it an add: a report the
   * secondary made before it received that add (its ackSeq is not above this) says
   * nothing about the add, and is ignored.
   */
  secondaryAddSeq = 0;
  /**
   * Undetermined captures that a retire asked to stop (not found stopping at a rebuild).
   * A retired secondary of a plain add promotes itself once prepared, so until a remove
   * reaches it (one may be lost: each of its reports sends another) it may well report
   * `replicating`: not a broken invariant, and adds overlapping the span wait for it.
   */
  retired: CaptureId[] | undefined = undefined;
  /** Manager bookkeeping: the set's index in its primary's list, or -1. */
  primaryIndex = -1;
  /** Manager bookkeeping: the kind of task running on this set, if any. */
  task: 'add' | 'move' | 'remove' | undefined = undefined;
  /**
   * The split or merge this set belongs to, while one is in flight (`span-operation.ts`):
   * the schedulers leave such a set alone, the coverage check counts the operation's
   * range instead, and a new span of it is held (see {@link held}).
   */
  operation: SetOperation | undefined = undefined;

  constructor(span: Span, checkpointTs: bigint, key: string = spanKey(span)) {
    this.span = span;
    this.key = key;
    this.checkpointTs = checkpointTs;
    this.resolvedTs = checkpointTs;
  }

  /** absent -> prepare: ask `capture` to replicate the span from `checkpointTs` on. */
  add(capture: CaptureId, checkpointTs: bigint, fx: SetEffects): void {
    assert(this.state === 'absent', `add on a ${this.state} set`, this.describe());
    this.raiseCheckpoint(checkpointTs);
    this.secondary = capture;
    this.state = 'prepare';
    fx.send(this, { kind: 'add', to: capture, secondary: false, checkpointTs: this.checkpointTs });
  }

  /**
   * absent -> prepare, held: `capture` prepares the span from `checkpointTs` and waits
   * (the new span of a split or merge, whose old span keeps writing). The set reaches
   * commit once the secondary is prepared and is promoted only when its operation stops
   * holding it.
   */
  prepareHeld(capture: CaptureId, checkpointTs: bigint, operation: SetOperation, fx: SetEffects): void {
    assert(this.state === 'absent' && this.holders().length === 0, `held prepare on a ${this.state} set`, this.describe());
    this.operation = operation;
    this.raiseCheckpoint(checkpointTs);
    this.secondary = capture;
    this.state = 'prepare';
    fx.send(this, { kind: 'add', to: capture, secondary: true, checkpointTs: this.checkpointTs });
  }

  /**
   * Released by its operation: a set in commit whose secondary is prepared is promoted
   * now instead of at its next report (one heartbeat sooner). Idempotent.
   */
  kick(fx: SetEffects): void {
    if (this.state === 'commit' && !this.held) this.commitStep(fx);
  }

  /** True while the set's operation holds its secondary prepared. */
  get held(): boolean {
    return this.operation?.holds(this) === true;
  }

  /**
   * A set that is not wanted any more and has no writer: its secondary is asked to stop
   * and waited for like a capture found stopping (so a late report of it cannot be
   * mistaken), then the set is absent (and the manager deletes it). A set with a primary
   * is removed through {@link remove} instead.
   */
  retire(fx: SetEffects): void {
    assert(this.primary === undefined, 'retire of a set with a primary', this.describe());
    if (this.secondary !== undefined) {
      const secondary = this.secondary;
      this.secondary = undefined;
      this.addUndetermined(secondary);
      if (this.retired === undefined) this.retired = [secondary];
      else if (!this.retired.includes(secondary)) this.retired.push(secondary);
      fx.send(this, { kind: 'remove', to: secondary });
    }
    this.state = this.undetermined === undefined ? 'absent' : 'commit';
  }

  /** replicating -> prepare: `to` prepares as a secondary while the primary keeps writing. */
  move(to: CaptureId, fx: SetEffects): void {
    assert(this.state === 'replicating' && this.primary !== undefined && this.primary !== to, 'move on a set that cannot move', this.describe());
    this.secondary = to;
    this.state = 'prepare';
    fx.send(this, { kind: 'add', to, secondary: true, checkpointTs: this.checkpointTs });
  }

  /** replicating -> removing: stop the primary; the set is deleted once it stopped. */
  remove(fx: SetEffects): void {
    assert(this.state === 'replicating' && this.primary !== undefined, 'remove on a set that is not replicating', this.describe());
    this.state = 'removing';
    fx.send(this, { kind: 'remove', to: this.primary });
  }

  /**
   * Handles one status `from` a capture: the heart of the state machine. `ackSeq` is the
   * last owner message the capture had received when it made the report.
   */
  handleStatus(from: CaptureId, status: SpanStatus, ackSeq: number, fx: SetEffects): void {
    if (from === this.secondary && ackSeq <= this.secondaryAddSeq) {
      // Made before the capture saw our latest add: it may be about to start the span,
      // so a stale "stopped" or "absent" must not abort the add.
      return;
    }
    if (this.undetermined?.includes(from)) {
      this.pollUndetermined(from, status, fx);
      return;
    }
    switch (this.state) {
      case 'absent':
        this.pollForeign(from, status, fx);
        return;
      case 'prepare':
        this.pollPrepare(from, status, fx);
        return;
      case 'commit':
        this.pollCommit(from, status, fx);
        return;
      case 'replicating':
        this.pollReplicating(from, status, fx);
        return;
      case 'removing':
        this.pollRemoving(from, status, fx);
        return;
      default:
        assertNever(this.state, 'replication state');
    }
  }

  /** A capture died (its etcd key disappeared): as if it reported every span stopped. */
  handleCaptureGone(capture: CaptureId, fx: SetEffects): void {
    if (!this.involves(capture)) return;
    const stopped: SpanStatus = { span: this.span, state: 'stopped', checkpointTs: this.checkpointTs, resolvedTs: this.resolvedTs };
    this.handleStatus(capture, stopped, Infinity, fx);
  }

  /** True when `capture` holds any role in this set. */
  involves(capture: CaptureId): boolean {
    return this.primary === capture || this.secondary === capture || (this.undetermined?.includes(capture) ?? false);
  }

  /** Every capture holding a role, for heartbeats. */
  holders(): CaptureId[] {
    const holders: CaptureId[] = [];
    if (this.primary !== undefined) holders.push(this.primary);
    if (this.secondary !== undefined) holders.push(this.secondary);
    if (this.undetermined !== undefined) holders.push(...this.undetermined);
    return holders;
  }

  /** A plain-data picture of the set, for errors and logs. */
  describe(): Record<string, unknown> {
    return {
      span: formatSpan(this.span),
      state: this.state,
      primary: this.primary,
      secondary: this.secondary,
      undetermined: this.undetermined,
      checkpointTs: this.checkpointTs.toString(),
      resolvedTs: this.resolvedTs.toString(),
    };
  }

  /**
   * Rebuilds a set after an owner change from what every live capture reported about the
   * span (DESIGN.md §3): replicating -> primary, preparing -> secondary in prepare,
   * prepared -> secondary in commit, stopping -> undetermined. Two primaries is a
   * violation reported through `fx` (the set is still returned, to be shown).
   */
  static rebuild(span: Span, key: string, reports: readonly CaptureReport[], floorTs: bigint, fx: SetEffects): ReplicationSet {
    const set = new ReplicationSet(span, floorTs, key);
    let secondaryPrepared = false;
    for (const { capture, status } of reports) {
      switch (status.state) {
        case 'replicating':
          if (set.primary !== undefined) {
            fx.violation(set, `two primaries for ${formatSpan(span)}: ${set.primary} and ${capture}`);
            continue;
          }
          set.primary = capture;
          set.raiseCheckpoint(status.checkpointTs);
          set.raiseResolved(status.resolvedTs);
          break;
        case 'preparing':
        case 'prepared':
          if (set.secondary === undefined) {
            set.secondary = capture;
            secondaryPrepared = status.state === 'prepared';
          } else {
            // Keep one secondary; stop the others and wait for them like stopping ones.
            set.addUndetermined(capture);
            fx.send(set, { kind: 'remove', to: capture });
          }
          break;
        case 'stopping':
          set.addUndetermined(capture);
          set.raiseCheckpoint(status.checkpointTs);
          break;
        case 'stopped':
          set.raiseCheckpoint(status.checkpointTs);
          break;
        case 'absent':
          break;
        default:
          assertNever(status.state, 'agent span state');
      }
    }
    const undetermined = set.undetermined !== undefined;
    if (set.primary !== undefined && set.secondary === undefined) {
      set.state = undetermined ? 'commit' : 'replicating';
    } else if (set.secondary !== undefined) {
      set.state = secondaryPrepared || undetermined ? 'commit' : 'prepare';
    } else {
      set.state = undetermined ? 'commit' : 'absent';
    }
    return set;
  }

  private pollPrepare(from: CaptureId, status: SpanStatus, fx: SetEffects): void {
    if (from === this.secondary) {
      switch (status.state) {
        case 'preparing':
          return;
        case 'prepared':
          this.state = 'commit';
          this.commitStep(fx);
          return;
        case 'replicating':
          this.acceptPromotedSecondary(status, fx);
          return;
        case 'absent':
          // The add was lost: send it again.
          this.sendAddToSecondary(fx);
          return;
        case 'stopping':
          return;
        case 'stopped':
          // The secondary gave up (or died): abort the add or move.
          this.secondary = undefined;
          this.state = this.primary !== undefined ? 'replicating' : 'absent';
          return;
        default:
          assertNever(status.state, 'agent span state');
      }
    }
    if (from === this.primary) {
      if (this.pollPrimaryKeepsOrStops(status, fx)) {
        // The primary stopped during a move: promote the secondary once it may write.
        this.state = 'commit';
        this.commitStep(fx);
      }
      return;
    }
    this.pollForeign(from, status, fx);
  }

  private pollCommit(from: CaptureId, status: SpanStatus, fx: SetEffects): void {
    if (from === this.secondary) {
      switch (status.state) {
        case 'preparing':
        case 'prepared':
          this.commitStep(fx);
          return;
        case 'replicating':
          this.acceptPromotedSecondary(status, fx);
          return;
        case 'absent':
          this.sendAddToSecondary(fx);
          return;
        case 'stopping':
          return;
        case 'stopped':
          this.secondary = undefined;
          // With a primary, wait for its next report: it may have received the remove.
          if (this.primary === undefined) this.commitStep(fx);
          return;
        default:
          assertNever(status.state, 'agent span state');
      }
    }
    if (from === this.primary) {
      if (status.state === 'replicating') {
        this.raiseCheckpoint(status.checkpointTs);
        this.raiseResolved(status.resolvedTs);
        if (this.secondary !== undefined) {
          fx.send(this, { kind: 'remove', to: from });
        } else {
          // The secondary is gone and the primary never stopped: it stays the writer.
          this.state = 'replicating';
        }
        return;
      }
      if (this.pollPrimaryKeepsOrStops(status, fx)) this.commitStep(fx);
      return;
    }
    this.pollForeign(from, status, fx);
  }

  private pollReplicating(from: CaptureId, status: SpanStatus, fx: SetEffects): void {
    if (from === this.primary) {
      if (this.pollPrimaryKeepsOrStops(status, fx)) this.state = 'absent';
      return;
    }
    this.pollForeign(from, status, fx);
  }

  private pollRemoving(from: CaptureId, status: SpanStatus, fx: SetEffects): void {
    if (from === this.primary) {
      if (status.state === 'replicating') {
        this.raiseCheckpoint(status.checkpointTs);
        fx.send(this, { kind: 'remove', to: from });
        return;
      }
      if (this.pollPrimaryKeepsOrStops(status, fx)) {
        this.state = 'absent';
        this.removed = true;
      }
      return;
    }
    this.pollForeign(from, status, fx);
  }

  private pollUndetermined(from: CaptureId, status: SpanStatus, fx: SetEffects): void {
    switch (status.state) {
      case 'stopping':
        this.raiseCheckpoint(status.checkpointTs);
        return;
      case 'stopped':
      case 'absent':
        if (status.state === 'stopped') this.raiseCheckpoint(status.checkpointTs);
        this.undetermined = this.undetermined?.filter((c) => c !== from);
        if (this.undetermined?.length === 0) this.undetermined = undefined;
        this.retired = this.retired?.filter((c) => c !== from);
        if (this.retired?.length === 0) this.retired = undefined;
        if (this.state === 'commit') this.commitStep(fx);
        return;
      case 'replicating':
        // A retired one promoted itself after a plain add before a remove reached it.
        if (this.retired?.includes(from) !== true) fx.violation(this, `capture ${from} found stopping ${formatSpan(this.span)} reports it replicating`);
        fx.send(this, { kind: 'remove', to: from });
        return;
      case 'preparing':
      case 'prepared':
        fx.send(this, { kind: 'remove', to: from });
        return;
      default:
        assertNever(status.state, 'agent span state');
    }
  }

  /**
   * Shared handling of the primary's report in every state but absent. Returns true when
   * the primary stopped (or lost the span): it is cleared, its final checkpoint taken.
   */
  private pollPrimaryKeepsOrStops(status: SpanStatus, fx: SetEffects): boolean {
    switch (status.state) {
      case 'replicating':
      case 'stopping':
        this.raiseCheckpoint(status.checkpointTs);
        this.raiseResolved(status.resolvedTs);
        return false;
      case 'stopped':
        this.raiseCheckpoint(status.checkpointTs);
        this.primary = undefined;
        return true;
      case 'absent':
        this.primary = undefined;
        return true;
      case 'preparing':
      case 'prepared':
        fx.violation(this, `primary ${status.state} ${formatSpan(this.span)} again without being asked`);
        return false;
      default:
        return assertNever(status.state, 'agent span state');
    }
  }

  /** commit: stop the old primary, then promote the secondary, then replicate. */
  private commitStep(fx: SetEffects): void {
    if (this.primary !== undefined) {
      if (this.secondary !== undefined) fx.send(this, { kind: 'remove', to: this.primary });
      return;
    }
    if (this.undetermined !== undefined) return;
    if (this.secondary !== undefined) {
      // A held secondary stays prepared: its operation's old span still writes.
      if (this.held) return;
      fx.send(this, { kind: 'add', to: this.secondary, secondary: false, checkpointTs: this.checkpointTs });
      return;
    }
    this.state = 'absent';
  }

  private acceptPromotedSecondary(status: SpanStatus, fx: SetEffects): void {
    if (this.held && this.secondary !== undefined) {
      // Never promoted by this owner: a writer now would share keys with the old span.
      fx.violation(this, `held secondary ${this.secondary} replicates ${formatSpan(this.span)}`);
      fx.send(this, { kind: 'remove', to: this.secondary });
      return;
    }
    if (this.primary !== undefined) {
      fx.violation(this, `secondary ${this.secondary ?? '?'} replicates ${formatSpan(this.span)} while ${this.primary} is primary`);
      return;
    }
    this.primary = this.secondary;
    this.secondary = undefined;
    this.raiseCheckpoint(status.checkpointTs);
    this.raiseResolved(status.resolvedTs);
    this.state = 'replicating';
  }

  private sendAddToSecondary(fx: SetEffects): void {
    if (this.secondary === undefined) return;
    const mustWait = this.primary !== undefined || this.undetermined !== undefined || this.held;
    fx.send(this, { kind: 'add', to: this.secondary, secondary: mustWait, checkpointTs: this.checkpointTs });
  }

  /** A capture with no role reports the span: stop it; a second writer is a violation. */
  private pollForeign(from: CaptureId, status: SpanStatus, fx: SetEffects): void {
    switch (status.state) {
      case 'replicating':
        fx.violation(this, `capture ${from} replicates ${formatSpan(this.span)} without a role (state ${this.state}, primary ${this.primary ?? 'none'})`);
        fx.send(this, { kind: 'remove', to: from });
        return;
      case 'preparing':
      case 'prepared':
        fx.send(this, { kind: 'remove', to: from });
        return;
      case 'stopping':
      case 'stopped':
      case 'absent':
        return;
      default:
        assertNever(status.state, 'agent span state');
    }
  }

  private addUndetermined(capture: CaptureId): void {
    if (this.undetermined === undefined) this.undetermined = [capture];
    else if (!this.undetermined.includes(capture)) this.undetermined.push(capture);
  }

  /** Raises the checkpoint (never lowers it); resolved follows so checkpoint <= resolved. */
  raiseCheckpoint(ts: bigint): void {
    if (ts > this.checkpointTs) this.checkpointTs = ts;
    if (this.checkpointTs > this.resolvedTs) this.resolvedTs = this.checkpointTs;
  }

  private raiseResolved(ts: bigint): void {
    this.resolvedTs = tsMax(this.resolvedTs, ts);
  }
}

/**
 * The owner's decisions about one run of a changefeed (one epoch) that lie outside the
 * coordinator: when its checkpoint is written to etcd, and how its failure is persisted.
 * Pure: the owner role (and the simulator) performs the commands it returns and feeds
 * the outcomes back; time is the tick count.
 *
 * Run phases:
 * ```
 * running ──fail(error)──► failing ──failure written──► failed
 *                            └─ write failed or unanswered: written again after a backoff
 * ```
 * Status writes, while running; level-triggered, decided afresh on every tick:
 * ```
 * unknown ──read──► reading ──answered──► known      (failed: read again after a backoff)
 * known ──coordinator above the persisted status──► writing
 * writing ──written──► known (persisted := what was written, at its mod revision)
 *         ──conflict──► unknown (the key changed meanwhile: read it again)
 *         ──failed──► known; the next write after a backoff
 *         ──no answer within writeDeadlineTicks──► known; the write is abandoned and a
 *             newer one may start with the same expected revision: at most one lands
 * ```
 * Every write compares the status key's mod revision with the one last read or
 * written, inside the etcd transaction, and only ever writes a checkpoint at or above
 * the persisted one: the persisted checkpoint can never go back, whatever the cache or
 * a stuck write did. A failed run stays failed until an operator resumes it, which is a
 * new run (a new epoch).
 */
import { assert, assertNever } from './assert.ts';

/** The status key as etcd holds it; `modRevision` 0 when there is no key. */
export interface PersistedStatus {
  readonly checkpointTs: bigint;
  readonly resolvedTs: bigint;
  readonly modRevision: bigint;
}

/** What the shell does for a run. Each carries an id; an outcome names the id it answers. */
export type RunCommand =
  | { readonly kind: 'read-status'; readonly id: number }
  | { readonly kind: 'write-status'; readonly id: number; readonly checkpointTs: bigint; readonly resolvedTs: bigint; readonly expectedModRevision: bigint }
  | { readonly kind: 'write-failure'; readonly id: number; readonly error: string };

/** What became of a command. Outcomes of commands the run gave up on are ignored. */
export type RunOutcome =
  | { readonly kind: 'status-read'; readonly id: number; readonly status: PersistedStatus }
  | { readonly kind: 'status-written'; readonly id: number; readonly modRevision: bigint }
  /** The compare failed: the status key is not at the expected revision. */
  | { readonly kind: 'status-conflict'; readonly id: number }
  /** Read, status write or failure write failed (an etcd error, a deadline). */
  | { readonly kind: 'failed'; readonly id: number }
  /** The failure is persisted, or the run was already ended by an operator. */
  | { readonly kind: 'failure-written'; readonly id: number };

export type RunPhase = 'running' | 'failing' | 'failed';

export interface RunLimits {
  /** Ticks a status write may take before a newer one may replace it. */
  readonly writeDeadlineTicks: number;
  /** Ticks between a failed read or write and the next try. */
  readonly retryBackoffTicks: number;
  /** Fewest ticks between two status writes (bounds etcd load per changefeed). */
  readonly writeIntervalTicks: number;
}

export const runDefaults: RunLimits = {
  writeDeadlineTicks: 20,
  retryBackoffTicks: 4,
  writeIntervalTicks: 2,
};

/** The coordinator's watermark, as the run sees it each tick. */
export interface RunTickInput {
  readonly tick: number;
  readonly checkpointTs: bigint;
  readonly resolvedTs: bigint;
  /** Overrides `writeIntervalTicks` (the owner widens it to bound writes over all changefeeds). */
  readonly writeIntervalTicks?: number;
}

type StatusState =
  | { readonly kind: 'unknown' }
  | { readonly kind: 'reading'; readonly id: number; readonly sinceTick: number }
  | { readonly kind: 'known' }
  | { readonly kind: 'writing'; readonly id: number; readonly sinceTick: number; readonly checkpointTs: bigint; readonly resolvedTs: bigint };

export class ChangefeedRun {
  private phaseNow: RunPhase = 'running';
  private statusState: StatusState = { kind: 'unknown' };
  /** The status etcd holds, as last read or written; undefined until first read. */
  private persistedNow: PersistedStatus | undefined;
  private failure: { error: string; pendingId: number | undefined; sinceTick: number } | undefined;
  /** No read or write starts before this tick (backoff and write interval). */
  private notBeforeTick = 0;
  private nextId = 1;
  private lastTick = 0;
  /** When the last status write was answered. */
  private lastWriteTick = Number.NEGATIVE_INFINITY;

  constructor(private readonly limits: RunLimits = runDefaults) {}

  get phase(): RunPhase {
    return this.phaseNow;
  }

  /** The status etcd holds as far as this run knows (undefined before the first read). */
  get persisted(): PersistedStatus | undefined {
    return this.persistedNow;
  }

  /** Why the run failed, once it is failing. */
  get error(): string | undefined {
    return this.failure?.error;
  }

  /** The run must fail (coordinator failed, its tick threw): idempotent, the first error wins. */
  fail(error: string): void {
    if (this.phaseNow !== 'running') return;
    this.phaseNow = 'failing';
    this.failure = { error, pendingId: undefined, sinceTick: this.lastTick };
    this.notBeforeTick = 0;
  }

  /** The commands due at this tick. */
  tick(input: RunTickInput): RunCommand[] {
    assert(input.tick >= this.lastTick, 'ticks go forward', { tick: input.tick, lastTick: this.lastTick });
    this.lastTick = input.tick;
    switch (this.phaseNow) {
      case 'running':
        return this.statusCommands(input);
      case 'failing':
        return this.failureCommands(input.tick);
      case 'failed':
        return [];
      default:
        return assertNever(this.phaseNow, 'run phase');
    }
  }

  /** Feeds back what became of a command. */
  onOutcome(outcome: RunOutcome): void {
    if (this.phaseNow === 'failing') {
      const failure = this.failure;
      if (failure === undefined || failure.pendingId !== outcome.id) return;
      failure.pendingId = undefined;
      if (outcome.kind === 'failure-written') this.phaseNow = 'failed';
      else this.notBeforeTick = this.lastTick + this.limits.retryBackoffTicks;
      return;
    }
    if (this.phaseNow !== 'running') return;
    const state = this.statusState;
    if ((state.kind !== 'reading' && state.kind !== 'writing') || state.id !== outcome.id) return;
    switch (outcome.kind) {
      case 'status-read':
        this.persistedNow = outcome.status;
        this.statusState = { kind: 'known' };
        return;
      case 'status-written': {
        assert(state.kind === 'writing', 'a write answers a write', { state, outcome });
        this.persistedNow = { checkpointTs: state.checkpointTs, resolvedTs: state.resolvedTs, modRevision: outcome.modRevision };
        this.statusState = { kind: 'known' };
        this.lastWriteTick = this.lastTick;
        return;
      }
      case 'status-conflict':
        this.statusState = { kind: 'unknown' };
        return;
      case 'failed':
        this.statusState = state.kind === 'reading' ? { kind: 'unknown' } : { kind: 'known' };
        this.notBeforeTick = this.lastTick + this.limits.retryBackoffTicks;
        return;
      case 'failure-written':
        return;
      default:
        assertNever(outcome, 'run outcome');
    }
  }

  private statusCommands(input: RunTickInput): RunCommand[] {
    const state = this.statusState;
    switch (state.kind) {
      case 'reading':
        // A read that never answers is given up on and made again.
        if (input.tick - state.sinceTick < this.limits.writeDeadlineTicks) return [];
        this.statusState = { kind: 'unknown' };
        return this.statusCommands(input);
      case 'unknown': {
        if (input.tick < this.notBeforeTick) return [];
        const id = this.nextId++;
        this.statusState = { kind: 'reading', id, sinceTick: input.tick };
        return [{ kind: 'read-status', id }];
      }
      case 'writing':
        if (input.tick - state.sinceTick < this.limits.writeDeadlineTicks) return [];
        // Stuck (say, on a dead etcd leader): give it up; a newer write may replace it.
        this.statusState = { kind: 'known' };
        return this.statusCommands(input);
      case 'known': {
        const persisted = this.persistedNow;
        assert(persisted !== undefined, 'a known status was read', { state });
        if (input.tick < this.notBeforeTick) return [];
        if (input.tick - this.lastWriteTick < (input.writeIntervalTicks ?? this.limits.writeIntervalTicks)) return [];
        // Never below what etcd holds: the coordinator may start below a status that
        // another owner persisted after this one's cache was read.
        if (input.checkpointTs < persisted.checkpointTs) return [];
        const resolvedTs = input.resolvedTs > persisted.resolvedTs ? input.resolvedTs : persisted.resolvedTs;
        if (input.checkpointTs === persisted.checkpointTs && resolvedTs === persisted.resolvedTs) return [];
        const id = this.nextId++;
        this.statusState = { kind: 'writing', id, sinceTick: input.tick, checkpointTs: input.checkpointTs, resolvedTs };
        return [{ kind: 'write-status', id, checkpointTs: input.checkpointTs, resolvedTs, expectedModRevision: persisted.modRevision }];
      }
      default:
        return assertNever(state, 'status state');
    }
  }

  private failureCommands(tick: number): RunCommand[] {
    const failure = this.failure;
    assert(failure !== undefined, 'a failing run has its error');
    if (failure.pendingId !== undefined) {
      if (tick - failure.sinceTick < this.limits.writeDeadlineTicks) return [];
      failure.pendingId = undefined;
    }
    if (tick < this.notBeforeTick) return [];
    failure.pendingId = this.nextId++;
    failure.sinceTick = tick;
    return [{ kind: 'write-failure', id: failure.pendingId, error: failure.error }];
  }
}

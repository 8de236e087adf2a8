/**
 * The simulator's model of the persisted drains in etcd: one key per drained capture and
 * the drains guard key, written by the owners' pure {@link OwnerDrains} through an
 * unreliable client, as the owner role does: a read lists the keys and the guard's
 * revision (moving the guard first when asked), a write compares the guard's revision
 * and moves it, each one fenced transaction. Answers come late, some writes fail before
 * or after they land, some answers never come, a deposed owner's writes are fenced. It keeps the set as of every guard revision, so the simulator can
 * check an owner's set against what etcd held when the owner last read or wrote it.
 */
import type { DrainsCommand, DrainsOutcome, DrainsStep, OwnerDrains } from '../../src/core/owner-drains.ts';
import type { CaptureId } from '../../src/core/messages.ts';
import type { SeededRandom } from '../../src/core/rng.ts';
import type { MetadataFaults, RequestFate } from './sim-faults.ts';
import { drawRequest, lands } from './sim-faults.ts';

/** One owner's drains, as the store sees its writer. */
export interface DrainsWriter {
  readonly drains: OwnerDrains;
  /** True while this writer holds the election key (its writes pass the fence). */
  readonly fenceHolds: () => boolean;
  /** Called when a write of this writer was fenced and the writer heard it. */
  readonly onFenced: () => void;
  /** Handles what the drains return for an outcome (commands to submit, answers). */
  readonly onStep: (step: DrainsStep) => void;
}

/** A drain write that reached etcd. */
export interface LandedDrainWrite {
  readonly captureId: CaptureId;
  readonly draining: boolean;
  readonly departed: boolean;
}

interface PendingOp {
  readonly writer: DrainsWriter;
  readonly command: DrainsCommand & { kind: 'read-drains' | 'write-drain' };
  readonly atStep: number;
  readonly fate: RequestFate;
}

export class SimDrainStore {
  /** The drain keys etcd holds. */
  readonly persisted = new Set<CaptureId>();
  /** The guard key's mod revision (0: no key yet). */
  guardRevision = 0n;
  private etcdRevision = 1000n;
  /** The drain keys as of each guard revision. */
  private readonly history = new Map<bigint, ReadonlySet<CaptureId>>([[0n, new Set()]]);
  private pending: PendingOp[] = [];
  faults: MetadataFaults | undefined;
  readonly stats = { drainReads: 0, drainWrites: 0, drainGuardConflicts: 0, drainFailedAnswers: 0, drainLostAnswers: 0, drainFencedWrites: 0, drainCleanups: 0 };

  constructor(
    private readonly rng: SeededRandom,
    faults: MetadataFaults,
    /** Hears every drain write that lands, before its answer goes out. */
    private readonly onLanded: (write: LandedDrainWrite) => void,
  ) {
    this.faults = faults;
  }

  /** The drain keys etcd held at a guard revision. */
  setAt(guardRevision: bigint): ReadonlySet<CaptureId> | undefined {
    return this.history.get(guardRevision);
  }

  /** Reads and writes go out to etcd (the shell performs resigns itself). */
  submit(writer: DrainsWriter, commands: readonly DrainsCommand[], step: number): void {
    for (const command of commands) {
      if (command.kind === 'resign') continue;
      const { fate, delaySteps } = drawRequest(this.rng, this.faults);
      this.pending.push({ writer, command, atStep: step + delaySteps, fate });
    }
  }

  /** Applies what reaches etcd at this step and answers the drains. */
  step(step: number): void {
    const due = this.pending.filter((op) => op.atStep <= step);
    this.pending = this.pending.filter((op) => op.atStep > step);
    for (const op of due) {
      const outcome = this.apply(op);
      if (op.fate === 'lost' || op.fate === 'lost-applied') {
        this.stats.drainLostAnswers++;
        continue;
      }
      if (op.fate === 'fail-before' || op.fate === 'fail-after') {
        this.stats.drainFailedAnswers++;
        op.writer.onStep(op.writer.drains.onOutcome({ kind: 'failed', id: op.command.id }));
        continue;
      }
      if (outcome.kind === 'fenced') op.writer.onFenced();
      op.writer.onStep(op.writer.drains.onOutcome(outcome));
    }
  }

  /** What etcd does with one op; the answer it would give when the fate lets it through. */
  private apply(op: PendingOp): DrainsOutcome {
    const { command, writer } = op;
    const landed = lands(op.fate);
    if (!writer.fenceHolds()) {
      this.stats.drainFencedWrites++;
      return { kind: 'fenced', id: command.id };
    }
    switch (command.kind) {
      case 'read-drains':
        if (!landed) return { kind: 'failed', id: command.id };
        if (command.moveGuard) this.moveGuard();
        this.stats.drainReads++;
        return { kind: 'drains-read', id: command.id, captureIds: [...this.persisted], guardRevision: this.guardRevision };
      case 'write-drain': {
        if (command.expectedGuardRevision !== this.guardRevision) {
          this.stats.drainGuardConflicts++;
          return { kind: 'failed', id: command.id };
        }
        if (!landed) return { kind: 'failed', id: command.id };
        if (command.draining) this.persisted.add(command.captureId);
        else this.persisted.delete(command.captureId);
        this.moveGuard();
        this.stats.drainWrites++;
        if (command.departed) this.stats.drainCleanups++;
        this.onLanded({ captureId: command.captureId, draining: command.draining, departed: command.departed });
        return { kind: 'written', id: command.id, guardRevision: this.guardRevision };
      }
    }
  }

  private moveGuard(): void {
    this.etcdRevision++;
    this.guardRevision = this.etcdRevision;
    this.history.set(this.guardRevision, new Set(this.persisted));
  }
}

/**
 * The simulator's model of the changefeed's metadata in etcd: the status key (checkpoint)
 * and the info key's state, each with a mod revision, written by the owners' pure
 * {@link ChangefeedRun}s through an unreliable client: answers come late, some writes
 * fail before or after they land, some answers never come, and a deposed owner's writes
 * are fenced. It checks, on every write that lands, that the persisted checkpoint never
 * goes back. (A write a run made before it failed may still land after: its checkpoint
 * was durable when it was made, so that is no harm.)
 */
import type { ChangefeedRun, RunCommand, RunOutcome } from '../../src/core/changefeed-run.ts';
import type { SeededRandom } from '../../src/core/rng.ts';
import { failRun, pause } from '../../src/core/changefeed-lifecycle.ts';
import type { MetadataFaults, RequestFate } from './sim-faults.ts';
import { drawRequest, lands } from './sim-faults.ts';

/** One owner's run, as the metadata sees its writer. */
export interface MetadataWriter {
  readonly run: ChangefeedRun;
  readonly epoch: bigint;
  /** True while this writer holds the election key (its writes pass the fence). */
  readonly fenceHolds: () => boolean;
  /** Called when a write of this writer was fenced: it stops acting. */
  readonly onFenced: () => void;
}

interface PendingOp {
  readonly writer: MetadataWriter;
  readonly command: RunCommand;
  readonly atStep: number;
  readonly fate: RequestFate;
}

export class SimMetadata {
  private etcdRevision = 10n;
  status: { checkpointTs: bigint; resolvedTs: bigint; modRevision: bigint };
  info: { state: 'normal' | 'paused' | 'failed'; epoch: bigint; modRevision: bigint; error: string | undefined };
  private pending: PendingOp[] = [];
  faults: MetadataFaults | undefined;
  readonly violations: string[] = [];
  readonly stats = { statusWrites: 0, statusConflicts: 0, failedWrites: 0, lostAnswers: 0, fencedRunWrites: 0, failuresWritten: 0 };

  constructor(
    private readonly rng: SeededRandom,
    startTs: bigint,
    epoch: bigint,
    faults: MetadataFaults,
  ) {
    this.status = { checkpointTs: startTs, resolvedTs: startTs, modRevision: this.etcdRevision };
    this.info = { state: 'normal', epoch, modRevision: this.etcdRevision, error: undefined };
    this.faults = faults;
  }

  /** A run's commands go out to etcd. */
  submit(writer: MetadataWriter, commands: readonly RunCommand[], step: number): void {
    for (const command of commands) {
      const { fate, delaySteps } = drawRequest(this.rng, this.faults);
      this.pending.push({ writer, command, atStep: step + delaySteps, fate });
    }
  }

  /** An operator pauses the changefeed (compare-and-set on the info, as the API does), as the lifecycle allows. */
  pause(): void {
    const decision = pause('sim', { state: this.info.state, epoch: this.info.epoch, tables: [] });
    if (!decision.ok) return;
    this.etcdRevision++;
    this.info = { ...this.info, state: decision.next.state, modRevision: this.etcdRevision };
  }

  /** An operator resumes a failed or paused changefeed: a new epoch. */
  resume(epoch: bigint): void {
    this.etcdRevision++;
    this.info = { state: 'normal', epoch, modRevision: this.etcdRevision, error: undefined };
  }

  /** Applies what reaches etcd at this step and answers the runs. */
  step(step: number): void {
    const due = this.pending.filter((op) => op.atStep <= step);
    this.pending = this.pending.filter((op) => op.atStep > step);
    for (const op of due) {
      const outcome = this.apply(op);
      if (outcome === undefined) continue;
      if (op.fate === 'lost' || op.fate === 'lost-applied') {
        this.stats.lostAnswers++;
        continue;
      }
      if (op.fate === 'fail-before' || op.fate === 'fail-after') {
        this.stats.failedWrites++;
        op.writer.run.onOutcome({ kind: 'failed', id: op.command.id });
        continue;
      }
      op.writer.run.onOutcome(outcome);
    }
  }

  private apply(op: PendingOp): RunOutcome | undefined {
    const { command, writer } = op;
    const landed = lands(op.fate);
    switch (command.kind) {
      case 'read-status':
        return { kind: 'status-read', id: command.id, status: { ...this.status } };
      case 'write-status': {
        if (!writer.fenceHolds()) {
          this.stats.fencedRunWrites++;
          if (op.fate === 'ok') writer.onFenced();
          return undefined;
        }
        if (command.expectedModRevision !== this.status.modRevision) {
          this.stats.statusConflicts++;
          return { kind: 'status-conflict', id: command.id };
        }
        if (!landed) return { kind: 'failed', id: command.id };
        if (command.checkpointTs < this.status.checkpointTs) {
          this.violations.push(`the persisted checkpoint went back from ${this.status.checkpointTs} to ${command.checkpointTs}`);
        }
        this.etcdRevision++;
        this.status = { checkpointTs: command.checkpointTs, resolvedTs: command.resolvedTs, modRevision: this.etcdRevision };
        this.stats.statusWrites++;
        return { kind: 'status-written', id: command.id, modRevision: this.etcdRevision };
      }
      case 'write-failure': {
        if (!writer.fenceHolds()) {
          this.stats.fencedRunWrites++;
          if (op.fate === 'ok') writer.onFenced();
          return undefined;
        }
        // An operator already ended the run: nothing to write (the lifecycle's rule).
        const decision = failRun({ state: this.info.state, epoch: this.info.epoch, tables: [] }, writer.epoch);
        if (decision.kind === 'ended') return { kind: 'failure-written', id: command.id };
        if (!landed) return { kind: 'failed', id: command.id };
        this.etcdRevision++;
        this.info = { state: decision.next.state, epoch: this.info.epoch, modRevision: this.etcdRevision, error: command.error };
        this.stats.failuresWritten++;
        return { kind: 'failure-written', id: command.id };
      }
    }
  }
}

/**
 * Simulated span pipelines and the sink they write to.
 *
 * A pipeline prepares (reads the source, no writing) for a few steps, then reports
 * `prepared`; once promoted it writes every event after its promotion checkpoint and
 * flushes a random amount each step, never past what the source resolved. Stopping
 * flushes a little more and reports the final checkpoint.
 *
 * The sink model records, per span, the highest position up to which every event is in
 * the sink (`contiguous`): a writer extends it only if it started at or before it. A
 * writer promoted past that position would leave a gap, and the checkpoint invariant
 * (persisted checkpoint <= contiguous of every span) would catch it.
 */
import type { PipelineCommand, PipelineEvent } from '../../src/agent/pipeline.ts';
import type { SeededRandom } from '../../src/core/rng.ts';
import { tsMin } from '../../src/core/ts.ts';

interface SimPipeline {
  readonly key: string;
  readonly startTs: bigint;
  readyAt: number;
  prepared: boolean;
  writing: boolean;
  writeFrom: bigint;
  flushed: bigint;
  resolved: bigint;
  stopAt: number;
}

/** Per span: every event up to this position is in the sink. */
export class SinkModel {
  readonly contiguous = new Map<string, bigint>();

  constructor(keys: readonly string[], startTs: bigint) {
    for (const key of keys) this.contiguous.set(key, startTs);
  }

  /** A writer that started after `writeFrom` flushed everything up to `flushed`. */
  flush(key: string, writeFrom: bigint, flushed: bigint): void {
    const contiguous = this.contiguous.get(key) ?? 0n;
    if (writeFrom <= contiguous && flushed > contiguous) this.contiguous.set(key, flushed);
  }

  /** The lowest contiguous position over all spans. */
  minContiguous(): bigint {
    let min: bigint | undefined;
    for (const value of this.contiguous.values()) if (min === undefined || value < min) min = value;
    return min ?? 0n;
  }
}

/** The pipelines of one capture. */
export class SimPipelines {
  private readonly pipelines = new Map<string, SimPipeline>();
  private readonly rng: SeededRandom;
  private readonly sink: SinkModel;
  private barrierTs: bigint | undefined;

  constructor(rng: SeededRandom, sink: SinkModel) {
    this.rng = rng;
    this.sink = sink;
  }

  /** Applies the agent's commands at `step`. */
  apply(commands: readonly PipelineCommand[], step: number): void {
    for (const command of commands) {
      switch (command.kind) {
        case 'prepare':
          this.pipelines.set(command.key, {
            key: command.key,
            startTs: command.checkpointTs,
            readyAt: step + this.rng.int(3),
            prepared: false,
            writing: false,
            writeFrom: command.checkpointTs,
            flushed: command.checkpointTs,
            resolved: command.checkpointTs,
            stopAt: -1,
          });
          break;
        case 'promote': {
          const pipeline = this.pipelines.get(command.key);
          if (pipeline === undefined) throw new Error(`promote without a pipeline for ${command.key}`);
          pipeline.writing = true;
          pipeline.writeFrom = command.checkpointTs;
          pipeline.flushed = command.checkpointTs;
          break;
        }
        case 'stop': {
          const pipeline = this.pipelines.get(command.key);
          if (pipeline !== undefined && pipeline.stopAt < 0) pipeline.stopAt = step + this.rng.int(3);
          break;
        }
        case 'barrier':
          this.barrierTs = command.barrierTs;
          break;
      }
    }
  }

  /** Advances every pipeline one step; returns the events for the agent. */
  step(step: number, upstreamTs: bigint, failureProbability: number): PipelineEvent[] {
    const events: PipelineEvent[] = [];
    for (const pipeline of [...this.pipelines.values()]) {
      if (failureProbability > 0 && this.rng.chance(failureProbability)) {
        this.pipelines.delete(pipeline.key);
        events.push({ kind: 'failed', key: pipeline.key, error: 'simulated pipeline failure', retryable: true });
        continue;
      }
      if (this.rng.chance(0.8)) pipeline.resolved = upstreamTs - BigInt(this.rng.int(3));
      if (pipeline.resolved < pipeline.startTs) pipeline.resolved = pipeline.startTs;
      if (!pipeline.prepared && step >= pipeline.readyAt) {
        pipeline.prepared = true;
        events.push({ kind: 'prepared', key: pipeline.key, resolvedTs: pipeline.resolved });
      }
      if (pipeline.writing) {
        // A sink a little faster than the upstream on average, so a span that restarts from
        // an older checkpoint (a move, a stale owner cache) catches up.
        let next = pipeline.flushed + BigInt(this.rng.int(8));
        next = tsMin(next, pipeline.resolved);
        if (this.barrierTs !== undefined) next = tsMin(next, this.barrierTs);
        if (next > pipeline.flushed) {
          pipeline.flushed = next;
          this.sink.flush(pipeline.key, pipeline.writeFrom, pipeline.flushed);
        }
      }
      if (pipeline.stopAt >= 0 && step >= pipeline.stopAt) {
        this.pipelines.delete(pipeline.key);
        events.push({ kind: 'stopped', key: pipeline.key, checkpointTs: pipeline.writing ? pipeline.flushed : pipeline.startTs });
        continue;
      }
      if (pipeline.prepared) {
        events.push({
          kind: 'progress',
          key: pipeline.key,
          checkpointTs: pipeline.writing ? pipeline.flushed : pipeline.startTs,
          resolvedTs: pipeline.resolved,
        });
      }
    }
    return events;
  }

  /** A crash: every pipeline vanishes at once. */
  crash(): void {
    this.pipelines.clear();
  }

  /** Keys of the spans this capture is writing to the sink. */
  writingKeys(): string[] {
    const keys: string[] = [];
    for (const pipeline of this.pipelines.values()) if (pipeline.writing) keys.push(pipeline.key);
    return keys;
  }
}

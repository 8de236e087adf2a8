/**
 * Runs the span pipelines of one changefeed on one capture, as the agent commands.
 *
 * Every `intervalMs` each pipeline takes one step: a preparing pipeline learns the
 * source's resolved-ts (reported once as `prepared`); a writing pipeline reads the next
 * events after its position (bounded batch), writes them, flushes, and only then moves
 * its position: the checkpoint it reports is always durable in the sink. A stop waits
 * for the step in progress, so the final checkpoint covers everything written.
 */
import type { PipelineCommand, PipelineEvent } from '../agent/pipeline.ts';
import type { Span } from '../core/span.ts';
import { maxTs, tsMin } from '../core/ts.ts';
import type { Logger } from '../log.ts';
import type { BackfillLimits, BackfillStore } from './backfill.ts';
import type { Sink } from './sink.ts';
import type { Source } from './source.ts';

/** How a changefeed's spans backfill, when they do. */
export interface BackfillPlan {
  /**
   * The snapshot revision of the span's table, undefined when it is not backfilled, or
   * `unknown-table` when this capture's copy of the changefeed does not have the table
   * yet (the owner added it; the capture's read of the info is behind): the pipeline
   * then waits, since deciding "no backfill" on a stale info would skip the copy.
   */
  snapshotTsFor(span: Span): bigint | undefined | 'unknown-table';
  readonly store: BackfillStore;
  readonly limits: BackfillLimits;
}

/** Hooks for metrics. */
export interface PipelineObserver {
  eventsWritten(count: number): void;
  flushed(seconds: number): void;
}

/** A backfill in progress on one pipeline. */
interface BackfillState {
  /** The revision whose state is copied. */
  readonly snapshotTs: bigint;
  /** The table's backfill revision, which names this backfill in its records. */
  readonly generation: bigint;
  afterKey: string | undefined;
  keysDone: number;
  keysTotal: number;
  done: boolean;
}

/** A backfill page failed more often than allowed: the changefeed fails. */
export class BackfillError extends Error {
  override readonly name = 'BackfillError';
  readonly retryable = false;
}

/** Bounds of the runner. */
export interface PipelineLimits {
  readonly intervalMs: number;
  /** Events read and written per pipeline step. */
  readonly batchEventsMax: number;
  /** Pipeline steps running at once. */
  readonly stepsInFlightMax: number;
  /**
   * Failed steps of one pipeline retried in place (a sink or source outage), with
   * exponential backoff, before the pipeline gives the span back for the owner to
   * schedule again (perhaps elsewhere).
   */
  readonly stepRetriesMax: number;
  readonly retryBackoffMinMs: number;
  readonly retryBackoffMaxMs: number;
}

export const pipelineDefaults: PipelineLimits = {
  intervalMs: 50,
  batchEventsMax: 1_000,
  stepsInFlightMax: 256,
  stepRetriesMax: 10,
  retryBackoffMinMs: 100,
  retryBackoffMaxMs: 5_000,
};

interface Pipeline {
  readonly span: Span;
  readonly key: string;
  readonly startTs: bigint;
  prepared: boolean;
  writing: boolean;
  position: bigint;
  resolved: bigint;
  stopping: boolean;
  busy: Promise<void> | undefined;
  /** undefined: not looked up yet; null: nothing to backfill. */
  backfill: BackfillState | null | undefined;
  /** Failed steps in a row, and when the next try may start (ms since the epoch). */
  failures: number;
  retryAt: number;
}

export class PipelineRunner {
  private readonly pipelines = new Map<string, Pipeline>();
  private barrierTs = maxTs;
  private timer: NodeJS.Timeout | undefined;
  private inFlight = 0;
  private cursor = 0;
  eventsWritten = 0;

  constructor(
    private readonly source: Source,
    private readonly sink: Sink,
    private readonly emit: (event: PipelineEvent) => void,
    private readonly limits: PipelineLimits,
    private readonly log: Logger,
    private readonly backfill?: BackfillPlan,
    private readonly observer?: PipelineObserver,
  ) {}

  private backfillsInFlight = 0;

  start(): void {
    this.timer = setInterval(() => this.stepAll(), this.limits.intervalMs);
  }

  /** Applies the agent's commands. */
  apply(commands: readonly PipelineCommand[]): void {
    for (const command of commands) {
      switch (command.kind) {
        case 'prepare':
          this.pipelines.set(command.key, {
            span: command.span,
            key: command.key,
            startTs: command.checkpointTs,
            prepared: false,
            writing: false,
            position: command.checkpointTs,
            resolved: command.checkpointTs,
            stopping: false,
            busy: undefined,
            backfill: undefined,
            failures: 0,
            retryAt: 0,
          });
          // Step at once: the owner waits for `prepared` to go on with the add or move.
          this.kick();
          break;
        case 'promote': {
          const pipeline = this.pipelines.get(command.key);
          if (pipeline === undefined) break;
          pipeline.writing = true;
          pipeline.position = command.checkpointTs;
          // Look the backfill up again: another capture may have advanced it.
          pipeline.backfill = undefined;
          break;
        }
        case 'stop':
          this.stop(command.key);
          break;
        case 'barrier':
          this.barrierTs = command.barrierTs;
          break;
      }
    }
  }

  private kicked = false;

  private kick(): void {
    if (this.kicked) return;
    this.kicked = true;
    setImmediate(() => {
      this.kicked = false;
      this.stepAll();
    });
  }

  /** Spans held, for metrics. */
  get size(): number {
    return this.pipelines.size;
  }

  /** Stops every pipeline at once and forgets them (self-fence or shutdown). */
  async close(): Promise<void> {
    if (this.timer !== undefined) clearInterval(this.timer);
    const busy = [...this.pipelines.values()].map((p) => p.busy).filter((b) => b !== undefined);
    this.pipelines.clear();
    await Promise.allSettled(busy);
    await Promise.allSettled([this.source.close(), this.sink.close()]);
  }

  private stop(key: string): void {
    const pipeline = this.pipelines.get(key);
    if (pipeline === undefined || pipeline.stopping) return;
    pipeline.stopping = true;
    const finish = async (): Promise<void> => {
      await pipeline.busy;
      if (this.pipelines.get(key) !== pipeline) return;
      this.pipelines.delete(key);
      this.source.release?.(pipeline.span);
      this.emit({ kind: 'stopped', key, checkpointTs: pipeline.writing ? pipeline.position : pipeline.startTs });
    };
    void finish();
  }

  /**
   * Starts a step for every idle pipeline, within the in-flight bound. When the bound
   * cuts a round short, the next round starts where this one stopped, so no pipeline
   * starves behind the others.
   */
  private stepAll(): void {
    const all = [...this.pipelines.values()];
    const start = this.cursor % Math.max(1, all.length);
    const now = Date.now();
    for (let i = 0; i < all.length; i++) {
      const pipeline = all[(start + i) % all.length] as Pipeline;
      if (pipeline.busy !== undefined || pipeline.stopping || pipeline.retryAt > now) continue;
      if (this.inFlight >= this.limits.stepsInFlightMax) {
        this.cursor = start + i;
        return;
      }
      this.inFlight++;
      pipeline.busy = this.step(pipeline)
        .catch((error: unknown) => this.onStepFailed(pipeline, error))
        .finally(() => {
          this.inFlight--;
          pipeline.busy = undefined;
        });
    }
  }

  /**
   * A step did what failed before (read the source, wrote and flushed the sink): the
   * outage is over for this pipeline. A step with nothing to do proves nothing.
   */
  private succeeded(pipeline: Pipeline): void {
    if (pipeline.failures === 0) return;
    this.log.info({ span: pipeline.key, failures: pipeline.failures }, 'pipeline recovered');
    pipeline.failures = 0;
    this.emit({ kind: 'recovered', key: pipeline.key });
  }

  /**
   * A failed step: retried in place with backoff while the error is retryable and the
   * tries last (the position has not moved, so the retry reads the same events again
   * with a fresh reader and writes them again; sinks are idempotent); else the pipeline
   * is gone and the agent told.
   */
  private onStepFailed(pipeline: Pipeline, error: unknown): void {
    if (this.pipelines.get(pipeline.key) !== pipeline) return;
    const retryable = (error as { retryable?: unknown }).retryable !== false;
    if (retryable && !pipeline.stopping && pipeline.failures < this.limits.stepRetriesMax) {
      pipeline.failures++;
      const backoffMs = Math.min(this.limits.retryBackoffMaxMs, this.limits.retryBackoffMinMs * 2 ** (pipeline.failures - 1));
      pipeline.retryAt = Date.now() + backoffMs;
      // The failed step may have consumed what it read, or the source's reader may be
      // broken: the retry reads again from the position with a fresh reader.
      this.source.release?.(pipeline.span);
      this.log.warn({ err: error, span: pipeline.key, failures: pipeline.failures, retryInMs: backoffMs }, 'pipeline step failed; retrying in place');
      this.emit({ kind: 'retrying', key: pipeline.key, error: (error as Error).message });
      return;
    }
    this.log.warn({ err: error, span: pipeline.key, failures: pipeline.failures }, 'pipeline failed');
    this.pipelines.delete(pipeline.key);
    this.source.release?.(pipeline.span);
    this.emit({ kind: 'failed', key: pipeline.key, error: (error as Error).message, retryable });
  }

  /**
   * One backfill page, when the span has one to do. Returns true when it took the step.
   * While backfilling, the span reports a checkpoint below the snapshot: the sink does not
   * hold the snapshot yet.
   */
  private async backfillStep(pipeline: Pipeline): Promise<boolean> {
    const plan = this.backfill;
    const snapshots = this.source.snapshots;
    if (plan === undefined || snapshots === undefined) return false;
    if (pipeline.backfill === undefined) {
      const generation = plan.snapshotTsFor(pipeline.span);
      if (generation === 'unknown-table') return true;
      if (generation === undefined) {
        pipeline.backfill = null;
        return false;
      }
      // Records of an earlier backfill of the table (another generation) do not count.
      const stored = await plan.store.load(pipeline.span);
      const ofGeneration = stored !== undefined && BigInt(stored.generation ?? stored.snapshotTs) === generation ? stored : undefined;
      if (ofGeneration?.done === true) {
        // The snapshot is in the sink already: stream after it, not from before it.
        const done = BigInt(ofGeneration.snapshotTs);
        if (pipeline.position < done) pipeline.position = done;
        pipeline.backfill = null;
        return false;
      }
      // A backfill of this generation under way goes on at its snapshot (its token is for
      // that snapshot), as long as the span has not passed it. Else the table's backfill
      // revision; or, for a span that starts past it (a table added to a running
      // changefeed whose checkpoint moved on), its own position: the state there stands
      // for every change up to it, and streaming goes on after it.
      const record = ofGeneration !== undefined && BigInt(ofGeneration.snapshotTs) >= pipeline.position ? ofGeneration : undefined;
      const snapshotTs = record !== undefined ? BigInt(record.snapshotTs) : pipeline.position > generation ? pipeline.position : generation;
      pipeline.backfill = {
        snapshotTs,
        generation,
        afterKey: record?.afterKeyBase64 !== undefined ? Buffer.from(record.afterKeyBase64, 'base64').toString('latin1') : undefined,
        keysDone: record?.keysDone ?? 0,
        keysTotal: record?.keysTotal ?? (await snapshots.countKeys(pipeline.span, snapshotTs)),
        done: false,
      };
      this.log.info({ span: pipeline.key, snapshotTs, keysDone: pipeline.backfill.keysDone, keysTotal: pipeline.backfill.keysTotal }, 'backfill started');
    }
    const state = pipeline.backfill;
    if (state === null || state.done) return false;
    const checkpointTs = state.snapshotTs - 1n < pipeline.position ? state.snapshotTs - 1n : pipeline.position;
    if (this.backfillsInFlight >= plan.limits.spansInFlightMax) {
      this.emit({ kind: 'progress', key: pipeline.key, checkpointTs, resolvedTs: pipeline.resolved });
      return true;
    }
    this.backfillsInFlight++;
    try {
      let page;
      for (let attempt = 1; ; attempt++) {
        try {
          page = await snapshots.snapshot(pipeline.span, state.snapshotTs, state.afterKey, plan.limits.pageKeysMax);
          // Every copied key is stamped with the snapshot revision: the sink then knows
          // which of its keys the snapshot confirmed, and retires the rest after the
          // last page (keys deleted upstream while the changefeed did not see them).
          const snapshotTs = state.snapshotTs;
          if (page.events.length > 0) await this.sink.write(pipeline.span, page.events.map((event) => ({ ...event, ts: snapshotTs })));
          await this.sink.flush(pipeline.span, snapshotTs);
          if (page.nextAfterKey === undefined) await this.sink.retire(pipeline.span, snapshotTs);
          break;
        } catch (error) {
          if (attempt >= plan.limits.pageTriesMax) {
            throw new BackfillError(`backfill of table ${pipeline.span.table} failed ${attempt} times: ${(error as Error).message}`);
          }
          this.log.warn({ err: error, span: pipeline.key, attempt }, 'backfill page failed; retrying');
          await new Promise((resolve) => setTimeout(resolve, Math.min(this.limits.retryBackoffMaxMs, plan.limits.retryBackoffMs * 2 ** (attempt - 1))));
          // A stop or a move waits for this step: do not keep it waiting on more tries.
          if (pipeline.stopping || this.pipelines.get(pipeline.key) !== pipeline) return true;
        }
      }
      if (this.pipelines.get(pipeline.key) !== pipeline) return true;
      state.keysDone += page.events.length;
      state.afterKey = page.nextAfterKey;
      state.done = page.nextAfterKey === undefined;
      const record = {
        snapshotTs: state.snapshotTs.toString(),
        generation: state.generation.toString(),
        ...(state.afterKey === undefined ? {} : { afterKeyBase64: Buffer.from(state.afterKey, 'latin1').toString('base64') }),
        keysDone: state.keysDone,
        keysTotal: Math.max(state.keysTotal, state.keysDone),
        done: state.done,
      };
      await plan.store.save(pipeline.span, record);
      this.succeeded(pipeline);
      if (state.done) {
        // The snapshot is in the sink: stream everything after it.
        if (pipeline.position < state.snapshotTs) pipeline.position = state.snapshotTs;
        this.log.info({ span: pipeline.key, keysDone: state.keysDone }, 'backfill done');
      }
    } finally {
      this.backfillsInFlight--;
    }
    this.emit({ kind: 'progress', key: pipeline.key, checkpointTs: state.done ? pipeline.position : checkpointTs, resolvedTs: pipeline.resolved });
    return true;
  }

  /**
   * Where the span's stream starts: never before its backfill snapshot, which stands for
   * every change up to it (the revisions below it may be compacted, after a resume with
   * backfill). The checkpoint reported meanwhile stays at the position.
   */
  private streamFrom(pipeline: Pipeline): bigint {
    const snapshotTs = this.backfill?.snapshotTsFor(pipeline.span);
    return typeof snapshotTs === 'bigint' && pipeline.position < snapshotTs - 1n ? snapshotTs - 1n : pipeline.position;
  }

  private async step(pipeline: Pipeline): Promise<void> {
    const resolved = await this.source.resolvedTs(pipeline.span, this.streamFrom(pipeline));
    if (resolved > pipeline.resolved) pipeline.resolved = resolved;
    // A pipeline that only reads (a secondary) is well once the source answers.
    if (!pipeline.writing) this.succeeded(pipeline);
    if (!pipeline.prepared) {
      pipeline.prepared = true;
      this.emit({ kind: 'prepared', key: pipeline.key, resolvedTs: pipeline.resolved });
      return;
    }
    if (pipeline.writing && !pipeline.stopping && (await this.backfillStep(pipeline))) return;
    if (pipeline.writing && !pipeline.stopping) {
      const upto = tsMin(pipeline.resolved, this.barrierTs);
      if (upto > pipeline.position) {
        // The resolved-ts is told before the write: a sink that hangs or fails must not
        // hide it, or the owner could not tell a stalled checkpoint from a quiet source.
        this.emit({ kind: 'progress', key: pipeline.key, checkpointTs: pipeline.position, resolvedTs: pipeline.resolved });
        const { events, readUpToTs } = await this.source.read(pipeline.span, pipeline.position, upto, this.limits.batchEventsMax);
        if (events.length > 0) await this.sink.write(pipeline.span, events);
        const flushStarted = performance.now();
        await this.sink.flush(pipeline.span, readUpToTs);
        this.observer?.flushed((performance.now() - flushStarted) / 1000);
        this.eventsWritten += events.length;
        if (events.length > 0) this.observer?.eventsWritten(events.length);
        // Only now is everything up to readUpToTs durable.
        if (this.pipelines.get(pipeline.key) === pipeline && readUpToTs > pipeline.position) {
          pipeline.position = readUpToTs;
          this.succeeded(pipeline);
        }
      }
    }
    if (this.pipelines.get(pipeline.key) !== pipeline) return;
    this.emit({
      kind: 'progress',
      key: pipeline.key,
      checkpointTs: pipeline.writing ? pipeline.position : pipeline.startTs,
      resolvedTs: pipeline.resolved,
    });
  }
}

/**
 * The span pipelines of one changefeed on one capture, pure: applies the agent's
 * commands (prepare, promote, stop, barrier) to one {@link SpanPipeline} per span, and
 * bounds the work over all of them (effects in flight, backfill pages in flight). The
 * runner performs the effects and feeds the outcomes back; the simulator does the same
 * with simulated sources and sinks.
 */
import type { Span } from '../core/span.ts';
import { maxTs } from '../core/ts.ts';
import { assertNever } from '../core/assert.ts';
import type { PipelineCommand } from './pipeline.ts';
import { SpanPipeline } from './span-pipeline.ts';
import type { BackfillGeneration, PipelineContext, PipelineOutcome, PipelineOutput, SpanPipelineLimits } from './span-pipeline.ts';
import { spanPipelineDefaults } from './span-pipeline.ts';

export interface SpanPipelinesLimits extends SpanPipelineLimits {
  /** Effects (source or sink calls) in flight over all pipelines. */
  readonly stepsInFlightMax: number;
  /** Backfill pages in flight over all pipelines. */
  readonly backfillsInFlightMax: number;
}

export const spanPipelinesDefaults: SpanPipelinesLimits = { ...spanPipelineDefaults, stepsInFlightMax: 256, backfillsInFlightMax: 4 };

/** The table's backfill revision for a span, as the capture's copy of the changefeed says. */
export type GenerationOf = (span: Span) => BackfillGeneration;

/** The lower bound of an incremental backfill of the span's table; undefined for a full one. */
export type SinceTsOf = (span: Span) => bigint | undefined;

const full: SinceTsOf = () => undefined;

export class SpanPipelines {
  private readonly pipelines = new Map<string, SpanPipeline>();
  /** Pipelines with an effect in flight (bounded by `stepsInFlightMax`). */
  private readonly busy = new Set<SpanPipeline>();
  /**
   * Every other live pipeline, in the order it gets its next step: one that starts a
   * step leaves, one that ends it (or could not start one) goes to the back. A tick
   * visits the busy ones and the front of this queue, never every pipeline: at 33,000
   * spans a capture walked them all 20 times a second.
   */
  private readonly ready = new Set<SpanPipeline>();
  /**
   * New pipelines until their first step: served before `ready`, because the owner
   * waits for their `prepared` to go on with an add or a move (behind 33,000 spans in
   * line, a new span waited a whole round of steps for its first).
   */
  private readonly fresh = new Set<SpanPipeline>();
  /** Which pipeline an effect belongs to, until its outcome comes. */
  private readonly owners = new Map<number, SpanPipeline>();
  private barrierTs = maxTs;
  private lastEffectId = 0;
  private backfillSlotsUsed = 0;

  constructor(private readonly limits: SpanPipelinesLimits) {}

  get size(): number {
    return this.pipelines.size;
  }

  /** The pipeline of a span key, for progress reporting. */
  get(key: string): SpanPipeline | undefined {
    return this.pipelines.get(key);
  }

  values(): IterableIterator<SpanPipeline> {
    return this.pipelines.values();
  }

  /** Applies the agent's commands. */
  apply(commands: readonly PipelineCommand[], nowMs: number, generationOf: GenerationOf, sinceTsOf: SinceTsOf = full): PipelineOutput {
    const out: PipelineOutput = { effects: [], events: [] };
    for (const command of commands) {
      switch (command.kind) {
        case 'prepare': {
          const old = this.pipelines.get(command.key);
          if (old !== undefined) this.forget(old);
          const pipeline = new SpanPipeline(command.span, command.key, command.checkpointTs, this.limits);
          this.pipelines.set(command.key, pipeline);
          this.fresh.add(pipeline);
          break;
        }
        case 'promote':
          this.pipelines.get(command.key)?.promote(command.checkpointTs);
          break;
        case 'stop': {
          const pipeline = this.pipelines.get(command.key);
          if (pipeline !== undefined) this.collect(pipeline, pipeline.stop(this.context(nowMs, generationOf(pipeline.span), sinceTsOf(pipeline.span))), out);
          break;
        }
        case 'barrier':
          this.barrierTs = command.barrierTs;
          break;
        default:
          assertNever(command, 'pipeline command');
      }
    }
    return out;
  }

  /**
   * Checks the deadlines of the busy pipelines, then starts a step for those at the
   * front of the lines (`fresh`, then `ready`) while the in-flight bound allows (the rest wait their turn,
   * in order): O(busy + pipelines visited), not O(pipelines).
   */
  tick(nowMs: number, generationOf: GenerationOf, sinceTsOf: SinceTsOf = full): PipelineOutput {
    const out: PipelineOutput = { effects: [], events: [] };
    // Deadlines first: an abandoned call frees its place in the bound for this tick.
    for (const pipeline of [...this.busy]) {
      this.collect(pipeline, pipeline.tick(this.context(nowMs, generationOf(pipeline.span), sinceTsOf(pipeline.span))), out);
    }
    // Each waiting pipeline is visited at most once: one that does not start a step
    // (backing off, waiting for its table) goes to the back and waits for the next tick.
    for (const line of [this.fresh, this.ready]) {
      for (let visits = line.size; visits > 0 && this.busy.size < this.limits.stepsInFlightMax; visits--) {
        const pipeline = line.values().next().value as SpanPipeline;
        line.delete(pipeline);
        this.collect(pipeline, pipeline.tick(this.context(nowMs, generationOf(pipeline.span), sinceTsOf(pipeline.span))), out);
      }
    }
    return out;
  }

  /** Applies an effect's outcome to its pipeline. */
  onOutcome(outcome: PipelineOutcome, nowMs: number, generationOf: GenerationOf, sinceTsOf: SinceTsOf = full): PipelineOutput {
    const out: PipelineOutput = { effects: [], events: [] };
    const pipeline = this.owners.get(outcome.id);
    if (pipeline === undefined) return out;
    this.owners.delete(outcome.id);
    this.collect(pipeline, pipeline.onOutcome(outcome, this.context(nowMs, generationOf(pipeline.span), sinceTsOf(pipeline.span))), out);
    return out;
  }

  /** Forgets every pipeline (a self-fence or shutdown); their outcomes are ignored. */
  clear(): void {
    for (const pipeline of [...this.pipelines.values()]) this.forget(pipeline);
    this.owners.clear();
  }

  private forget(pipeline: SpanPipeline): void {
    if (pipeline.forget()) this.backfillSlotsUsed--;
    this.busy.delete(pipeline);
    this.ready.delete(pipeline);
    this.fresh.delete(pipeline);
    if (this.pipelines.get(pipeline.key) === pipeline) this.pipelines.delete(pipeline.key);
  }

  private collect(pipeline: SpanPipeline, result: PipelineOutput, out: PipelineOutput): void {
    for (const effect of result.effects) {
      if (effect.kind !== 'release') this.owners.set(effect.id, pipeline);
      out.effects.push(effect);
    }
    for (const event of result.events) out.events.push(event);
    if (pipeline.phase === 'gone') {
      this.busy.delete(pipeline);
      this.ready.delete(pipeline);
      this.fresh.delete(pipeline);
      if (this.pipelines.get(pipeline.key) === pipeline) this.pipelines.delete(pipeline.key);
    } else if (pipeline.busy) {
      this.busy.add(pipeline);
      this.ready.delete(pipeline);
      this.fresh.delete(pipeline);
    } else if (this.busy.delete(pipeline) || !(this.ready.has(pipeline) || this.fresh.has(pipeline))) {
      // Its step ended (or it did not start one): to the back of its line. One that has
      // not been prepared yet (its first step failed) stays in the first line.
      (pipeline.everPrepared ? this.ready : this.fresh).add(pipeline);
    }
  }

  private readonly takeBackfillSlot = (): boolean => {
    if (this.backfillSlotsUsed >= this.limits.backfillsInFlightMax) return false;
    this.backfillSlotsUsed++;
    return true;
  };

  private readonly releaseBackfillSlot = (): void => {
    this.backfillSlotsUsed--;
  };

  private readonly nextId = (): number => ++this.lastEffectId;

  private context(nowMs: number, generation: BackfillGeneration, sinceTs: bigint | undefined): PipelineContext {
    return { nowMs, barrierTs: this.barrierTs, generation, sinceTs, takeBackfillSlot: this.takeBackfillSlot, releaseBackfillSlot: this.releaseBackfillSlot, nextId: this.nextId };
  }

  /** Backfill pages in flight (for tests and invariants). */
  get backfillsInFlight(): number {
    return this.backfillSlotsUsed;
  }
}

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
import type { QuietCheck, QuietLimits, QuietOutcome } from './quiet-spans.ts';
import { quietDefaults } from './quiet-spans.ts';

export interface SpanPipelinesLimits extends SpanPipelineLimits, Partial<QuietLimits> {
  /** Effects (source or sink calls) in flight over all pipelines. */
  readonly stepsInFlightMax: number;
  /** Backfill pages in flight over all pipelines. */
  readonly backfillsInFlightMax: number;
}

export const spanPipelinesDefaults: SpanPipelinesLimits = { ...spanPipelineDefaults, ...quietDefaults, stepsInFlightMax: 256, backfillsInFlightMax: 4 };

/** A bulk check in flight: its spans, where each was asked from, and its deadline. */
interface CheckInFlight {
  readonly members: readonly SpanPipeline[];
  readonly afterTs: readonly bigint[];
  readonly deadlineMs: number;
}

/**
 * The table's backfill revision for a span, as the capture's copy of the changefeed says:
 * a function of the span's table only (a bulk check asks once per table).
 */
export type GenerationOf = (span: Span) => BackfillGeneration;

/** The lower bound of an incremental backfill of the span's table (of the table only); undefined for a full one. */
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
  /**
   * Quiet pipelines (see quiet-spans.ts), in the order they came, with when they came:
   * moved on by bulk checks, not steps. Off when `quietBatchMax` is 0 (or absent).
   */
  private readonly quiet = new Map<SpanPipeline, number>();
  /** Pipelines in a check in flight, and the checks by id. */
  private readonly checking = new Set<SpanPipeline>();
  private readonly checks = new Map<number, CheckInFlight>();
  private readonly quietLimits: QuietLimits;
  /** Which pipeline an effect belongs to, until its outcome comes. */
  private readonly owners = new Map<number, SpanPipeline>();
  private barrierTs = maxTs;
  private lastEffectId = 0;
  private backfillSlotsUsed = 0;

  constructor(private readonly limits: SpanPipelinesLimits) {
    this.quietLimits = {
      quietBatchMax: limits.quietBatchMax ?? 0,
      quietChecksInFlightMax: limits.quietChecksInFlightMax ?? quietDefaults.quietChecksInFlightMax,
      quietIntervalMs: limits.quietIntervalMs ?? quietDefaults.quietIntervalMs,
    };
  }

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
          if (pipeline !== undefined) {
            const ctx = this.context(nowMs, generationOf(pipeline.span), sinceTsOf(pipeline.span));
            this.collect(pipeline, pipeline.stop(ctx), out, ctx);
          }
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
      const ctx = this.context(nowMs, generationOf(pipeline.span), sinceTsOf(pipeline.span));
      this.collect(pipeline, pipeline.tick(ctx), out, ctx);
    }
    this.expireChecks(nowMs);
    return this.startSteps(nowMs, generationOf, sinceTsOf, out);
  }

  /**
   * Starts steps and checks, without looking at deadlines: what the runner does as soon
   * as calls return, so the places they free are used at once, not at the next tick (at
   * 33,000 spans a capture, 256 places a tick of 50 ms were fewer steps than the spans
   * with events needed, and the lag grew whenever ticks came late).
   */
  startSteps(nowMs: number, generationOf: GenerationOf, sinceTsOf: SinceTsOf = full, out: PipelineOutput = { effects: [], events: [] }): PipelineOutput {    // Checks first: a span that is no longer quiet goes to `ready` in time for this tick.
    const checks = this.takeChecks(nowMs, generationOf);
    // Each waiting pipeline is visited at most once: one that does not start a step
    // (backing off, waiting for its table) goes to the back and waits for the next tick.
    for (const line of [this.fresh, this.ready]) {
      for (let visits = line.size; visits > 0 && this.busy.size < this.limits.stepsInFlightMax; visits--) {
        const pipeline = line.values().next().value as SpanPipeline;
        line.delete(pipeline);
        const ctx = this.context(nowMs, generationOf(pipeline.span), sinceTsOf(pipeline.span));
        this.collect(pipeline, pipeline.tick(ctx), out, ctx);
      }
    }
    return checks.length === 0 ? out : { ...out, quietChecks: checks };
  }

  /**
   * Bulk checks for the front of the quiet line: the pipelines that waited at least
   * `quietIntervalMs` there, at most `quietBatchMax` a check and
   * `quietChecksInFlightMax` checks in flight. One that is no longer quiet (promoted
   * anew, its table's backfill changed) takes a step instead.
   */
  private takeChecks(nowMs: number, generationOf: GenerationOf): QuietCheck[] {
    const { quietBatchMax, quietChecksInFlightMax, quietIntervalMs } = this.quietLimits;
    const checks: QuietCheck[] = [];
    while (this.checks.size < quietChecksInFlightMax && this.quiet.size > 0) {
      const members: SpanPipeline[] = [];
      const afterTs: bigint[] = [];
      for (const [pipeline, sinceMs] of this.quiet) {
        if (members.length >= quietBatchMax || nowMs - sinceMs < quietIntervalMs) break;
        this.quiet.delete(pipeline);
        if (!pipeline.quietFor(generationOf(pipeline.span))) {
          this.ready.add(pipeline);
          continue;
        }
        members.push(pipeline);
        afterTs.push(pipeline.streamPosition);
        this.checking.add(pipeline);
      }
      if (members.length === 0) {
        // Only non-quiet ones were at the front (moved to `ready`): look again, or stop
        // when the front waited too little.
        const front = this.quiet.values().next();
        if (front.done === true || nowMs - front.value < quietIntervalMs) break;
        continue;
      }
      const id = this.nextId();
      this.checks.set(id, { members, afterTs, deadlineMs: nowMs + this.limits.stepDeadlineMs });
      checks.push({ id, requests: members.map((pipeline, i) => ({ span: pipeline.span, afterTs: afterTs[i] as bigint })) });
    }
    return checks;
  }

  /** A check past its deadline is given up: its pipelines take steps (which time out on their own if the source hangs). */
  private expireChecks(nowMs: number): void {
    for (const [id, check] of this.checks) {
      if (nowMs < check.deadlineMs) continue;
      this.checks.delete(id);
      for (const pipeline of check.members) if (this.checking.delete(pipeline) && pipeline.phase !== 'gone') this.ready.add(pipeline);
    }
  }

  /**
   * Applies a bulk check's answers: each pipeline moves on without a call, waits in the
   * quiet line again, or takes a step (an event next, or it changed meanwhile). A failed
   * check, or one whose answers do not match its requests, sends them all to steps.
   */
  onQuietOutcome(outcome: QuietOutcome, nowMs: number, generationOf: GenerationOf, sinceTsOf: SinceTsOf = full): PipelineOutput {
    const out: PipelineOutput = { effects: [], events: [] };
    const check = this.checks.get(outcome.id);
    if (check === undefined) return out;
    this.checks.delete(outcome.id);
    const answers = outcome.kind === 'quiet-checked' && outcome.answers.length === check.members.length ? outcome.answers : undefined;
    // One context per table: what it holds depends only on the span's table, and a check
    // moves thousands of spans of few tables.
    const contexts = new Map<string, PipelineContext>();
    const { members, afterTs } = check;
    for (let i = 0; i < members.length; i++) {
      const pipeline = members[i] as SpanPipeline;
      if (!this.checking.delete(pipeline) || pipeline.phase === 'gone') continue;
      const answer = answers?.[i];
      if (answer === undefined || pipeline.streamPosition !== afterTs[i] || answer.quietTs < pipeline.streamPosition) {
        this.ready.add(pipeline);
        continue;
      }
      const table = pipeline.span.table;
      let ctx = contexts.get(table);
      if (ctx === undefined) contexts.set(table, (ctx = this.context(nowMs, generationOf(pipeline.span), sinceTsOf(pipeline.span))));
      const verdict = pipeline.advanceQuiet(answer.quietTs, answer.needsStep, ctx, out);
      if (verdict === 'step') this.ready.add(pipeline);
      else this.quiet.set(pipeline, nowMs);
    }
    return out;
  }

  /** Applies an effect's outcome to its pipeline. */
  onOutcome(outcome: PipelineOutcome, nowMs: number, generationOf: GenerationOf, sinceTsOf: SinceTsOf = full): PipelineOutput {
    const out: PipelineOutput = { effects: [], events: [] };
    const pipeline = this.owners.get(outcome.id);
    if (pipeline === undefined) return out;
    this.owners.delete(outcome.id);
    const ctx = this.context(nowMs, generationOf(pipeline.span), sinceTsOf(pipeline.span));
    this.collect(pipeline, pipeline.onOutcome(outcome, ctx), out, ctx);
    return out;
  }

  /** Forgets every pipeline (a self-fence or shutdown); their outcomes are ignored. */
  clear(): void {
    for (const pipeline of [...this.pipelines.values()]) this.forget(pipeline);
    this.owners.clear();
    this.checks.clear();
  }

  private forget(pipeline: SpanPipeline): void {
    if (pipeline.forget()) this.backfillSlotsUsed--;
    this.leaveLines(pipeline);
    if (this.pipelines.get(pipeline.key) === pipeline) this.pipelines.delete(pipeline.key);
  }

  private leaveLines(pipeline: SpanPipeline): void {
    this.busy.delete(pipeline);
    this.ready.delete(pipeline);
    this.fresh.delete(pipeline);
    this.quiet.delete(pipeline);
    this.checking.delete(pipeline);
  }

  private collect(pipeline: SpanPipeline, result: PipelineOutput, out: PipelineOutput, ctx: PipelineContext): void {
    for (const effect of result.effects) {
      if (effect.kind !== 'release') this.owners.set(effect.id, pipeline);
      out.effects.push(effect);
    }
    for (const event of result.events) out.events.push(event);
    if (pipeline.phase === 'gone') {
      this.leaveLines(pipeline);
      if (this.pipelines.get(pipeline.key) === pipeline) this.pipelines.delete(pipeline.key);
    } else if (pipeline.busy) {
      this.leaveLines(pipeline);
      this.busy.add(pipeline);
    } else if (this.checking.has(pipeline)) {
      // In a bulk check: its answer decides where it goes.
    } else if (this.busy.delete(pipeline) || !(this.ready.has(pipeline) || this.fresh.has(pipeline) || this.quiet.has(pipeline))) {
      // Its step ended (or it did not start one): to the back of its line. One that has
      // not been prepared yet (its first step failed) stays in the first line; a quiet
      // one waits for a bulk check.
      if (this.quietLimits.quietBatchMax > 0 && pipeline.quietFor(ctx.generation)) this.quiet.set(pipeline, ctx.nowMs);
      else (pipeline.everPrepared ? this.ready : this.fresh).add(pipeline);
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

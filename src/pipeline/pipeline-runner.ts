/**
 * Runs the span pipelines of one changefeed on one capture: performs the effects the
 * pure {@link SpanPipelines} returns (source reads, sink writes and flushes, backfill
 * pages and records) and feeds their outcomes back. Every decision — what is read,
 * what may be reported as flushed, retries, deadlines, give-back, the backfill — is
 * made there; this file only moves data and time in and out.
 *
 * Calls for one span never overlap: an effect of a span starts after the span's
 * previous one settled, even one the pipeline abandoned at its deadline, so a hung
 * sink call and its retry never write the same span at once.
 */
import type { PipelineCommand, PipelineEvent } from '../agent/pipeline.ts';
import type { BackfillGeneration, PipelineEffect, PipelineOutcome, PipelineOutput } from '../agent/span-pipeline.ts';
import { spanPipelineDefaults } from '../agent/span-pipeline.ts';
import { SpanPipelines } from '../agent/span-pipelines.ts';
import type { QuietCheck, QuietLimits, QuietOutcome } from '../agent/quiet-spans.ts';
import { quietDefaults } from '../agent/quiet-spans.ts';
import { assertNever } from '../core/assert.ts';
import type { Span } from '../core/span.ts';
import type { Logger } from '../log.ts';
import type { BackfillLimits, BackfillStore } from './backfill.ts';
import { backfillDefaults, fromBackfillProgress, incrementalRetireRange, toBackfillProgress } from './backfill.ts';
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
  /** The lower bound of an incremental backfill of the span's table; undefined for a full one. */
  sinceTsFor?(span: Span): bigint | undefined;
  readonly store: BackfillStore;
  readonly limits: BackfillLimits;
}

/** Hooks for metrics. */
export interface PipelineObserver {
  eventsWritten(count: number): void;
  flushed(seconds: number): void;
  /** Keys a backfill page copied. */
  keysCopied?(count: number): void;
  /** A bulk check of quiet spans answered: how many spans it asked about, and how many it moved on. */
  quietChecked?(spans: number, moved: number): void;
}

/** Bounds of the runner; the quiet checks' (quiet-spans.ts) apply when the source can answer them. */
export interface PipelineLimits extends QuietLimits {
  readonly intervalMs: number;
  /** Events read and written per pipeline step. */
  readonly batchEventsMax: number;
  /** Source and sink calls in flight at once over all pipelines. */
  readonly stepsInFlightMax: number;
  /**
   * Failed steps of one pipeline retried in place (a sink or source outage), with
   * exponential backoff, before the pipeline gives the span back for the owner to
   * schedule again (perhaps elsewhere).
   */
  readonly stepRetriesMax: number;
  readonly retryBackoffMinMs: number;
  readonly retryBackoffMaxMs: number;
  /** The longest one source or sink call may take before it counts as a failed step. */
  readonly stepDeadlineMs: number;
}

export const pipelineDefaults: PipelineLimits = {
  intervalMs: 50,
  batchEventsMax: spanPipelineDefaults.batchEventsMax,
  stepsInFlightMax: 256,
  stepRetriesMax: spanPipelineDefaults.stepRetriesMax,
  retryBackoffMinMs: spanPipelineDefaults.retryBackoffMinMs,
  retryBackoffMaxMs: spanPipelineDefaults.retryBackoffMaxMs,
  stepDeadlineMs: spanPipelineDefaults.stepDeadlineMs,
  ...quietDefaults,
};

export class PipelineRunner {
  private readonly pipelines: SpanPipelines;
  private timer: NodeJS.Timeout | undefined;
  private closed = false;
  /** The last call of each span, settled or not: the next call of that span waits for it. */
  private readonly tails = new Map<string, Promise<void>>();
  eventsWritten = 0;

  constructor(
    private readonly source: Source,
    private readonly sink: Sink,
    private readonly emit: (events: readonly PipelineEvent[]) => void,
    private readonly limits: PipelineLimits,
    private readonly log: Logger,
    private readonly backfill?: BackfillPlan,
    private readonly observer?: PipelineObserver,
  ) {
    const backfillLimits = backfill?.limits ?? backfillDefaults;
    this.pipelines = new SpanPipelines({
      batchEventsMax: limits.batchEventsMax,
      pageKeysMax: backfillLimits.pageKeysMax,
      stepRetriesMax: limits.stepRetriesMax,
      retryBackoffMinMs: limits.retryBackoffMinMs,
      retryBackoffMaxMs: limits.retryBackoffMaxMs,
      stepDeadlineMs: limits.stepDeadlineMs,
      keySampleMax: spanPipelineDefaults.keySampleMax,
      stepsInFlightMax: limits.stepsInFlightMax,
      backfillsInFlightMax: backfillLimits.spansInFlightMax,
      quietBatchMax: source.quietUpTo === undefined ? 0 : limits.quietBatchMax,
      quietChecksInFlightMax: limits.quietChecksInFlightMax,
      quietIntervalMs: limits.quietIntervalMs,
    });
  }

  start(): void {
    this.timer = setInterval(() => this.tick(), this.limits.intervalMs);
  }

  /** Applies the agent's commands. */
  apply(commands: readonly PipelineCommand[]): void {
    if (this.closed) return;
    this.handle(this.pipelines.apply(commands, Date.now(), this.generationOf, this.sinceTsOf));
    // Step at once: the owner waits for `prepared` to go on with an add or a move.
    if (commands.some((c) => c.kind === 'prepare')) this.kick();
  }

  /** Spans held, for metrics. */
  get size(): number {
    return this.pipelines.size;
  }

  /**
   * Stops every pipeline at once and forgets them (self-fence or shutdown); waits for
   * the calls in flight, at most one step deadline, then for source and sink to close,
   * at most one step deadline too: a call that never returns can keep the close waiting
   * for ever as well (a pg pool's `end()` waits for a client stuck in a query), and a
   * self-fence waits for this before the capture joins again.
   */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.timer !== undefined) clearInterval(this.timer);
    this.pipelines.clear();
    await settledWithin([...this.tails.values()], this.limits.stepDeadlineMs);
    await settledWithin([this.source.close(), this.sink.close()], this.limits.stepDeadlineMs);
  }

  private kicked = false;

  /** Starts what can start, once the current I/O callbacks are done (coalesced: one per turn of the event loop). */
  private kick(): void {
    if (this.kicked) return;
    this.kicked = true;
    setImmediate(() => {
      this.kicked = false;
      if (this.closed) return;
      this.handle(this.pipelines.startSteps(Date.now(), this.generationOf, this.sinceTsOf));
    });
  }

  private tick(): void {
    if (this.closed) return;
    this.handle(this.pipelines.tick(Date.now(), this.generationOf, this.sinceTsOf));
  }

  /** The table's backfill revision for a span, as this capture's copy of the changefeed says. */
  private readonly generationOf = (span: Span): BackfillGeneration => {
    if (this.backfill === undefined || this.source.snapshots === undefined) return 'none';
    const generation = this.backfill.snapshotTsFor(span);
    return generation === undefined ? 'none' : generation;
  };

  /** The lower bound of an incremental backfill of the span's table. */
  private readonly sinceTsOf = (span: Span): bigint | undefined => this.backfill?.sinceTsFor?.(span);

  private handle(out: PipelineOutput): void {
    for (const effect of out.effects) this.perform(effect);
    for (const check of out.quietChecks ?? []) this.check(check);
    if (out.events.length === 0) return;
    for (const event of out.events) {
      if (event.kind === 'retrying') this.log.warn({ span: event.key, error: event.error }, 'pipeline step failed; retrying in place');
      else if (event.kind === 'recovered') this.log.info({ span: event.key }, 'pipeline recovered');
      else if (event.kind === 'failed') this.log.warn({ span: event.key, error: event.error, retryable: event.retryable }, 'pipeline failed');
    }
    // All of them at once: a bulk check moves thousands of quiet spans in one answer.
    this.emit(out.events);
  }

  /** Starts one effect after the span's previous call settled; its outcome goes back to the pipelines. */
  private perform(effect: PipelineEffect): void {
    if (effect.kind === 'release') {
      this.source.release?.(effect.span);
      return;
    }
    const previous = this.tails.get(effect.key);
    const run = previous === undefined ? this.run(effect) : previous.then(() => this.run(effect));
    const tail = run.then(
      () => undefined,
      () => undefined,
    );
    this.tails.set(effect.key, tail);
    void tail.then(() => {
      if (this.tails.get(effect.key) === tail) this.tails.delete(effect.key);
    });
    run.then(
      (outcome) => this.deliver(outcome),
      (error: unknown) =>
        this.deliver({
          kind: 'failed',
          id: effect.id,
          error: (error as Error)?.message ?? String(error),
          retryable: (error as { retryable?: unknown })?.retryable !== false,
        }),
    );
  }

  /** Puts a bulk check of quiet spans to the source; read-only, so it needs no place in a span's order of calls. */
  private check(check: QuietCheck): void {
    const quietUpTo = this.source.quietUpTo?.bind(this.source);
    const answered = quietUpTo === undefined ? Promise.reject(new Error('the source cannot check quiet spans')) : Promise.resolve().then(() => quietUpTo(check.requests));
    answered.then(
      (answers) => this.deliverQuiet({ kind: 'quiet-checked', id: check.id, answers }),
      (error: unknown) => this.deliverQuiet({ kind: 'failed', id: check.id, error: (error as Error)?.message ?? String(error) }),
    );
  }

  private deliverQuiet(outcome: QuietOutcome): void {
    if (this.closed) return;
    try {
      const out = this.pipelines.onQuietOutcome(outcome, Date.now(), this.generationOf, this.sinceTsOf);
      // A span the check moved on says so in exactly one progress event.
      if (outcome.kind === 'quiet-checked') this.observer?.quietChecked?.(outcome.answers.length, out.events.filter((e) => e.kind === 'progress').length);
      this.handle(out);
      this.kick();
    } catch (error) {
      this.log.error({ err: error, outcome: outcome.kind }, 'pipeline decision failed');
    }
  }

  private deliver(outcome: PipelineOutcome): void {
    if (this.closed) return;
    try {
      this.handle(this.pipelines.onOutcome(outcome, Date.now(), this.generationOf, this.sinceTsOf));
      // A step that ended frees its place: the next one starts now, not at the next tick.
      this.kick();
    } catch (error) {
      // A bug in the pipelines must not end the process: this changefeed's pipelines
      // stop deciding, the owner sees them go silent.
      this.log.error({ err: error, outcome: outcome.kind }, 'pipeline decision failed');
    }
  }

  /** Performs one source or sink call. */
  private async run(effect: Exclude<PipelineEffect, { kind: 'release' }>): Promise<PipelineOutcome> {
    const { span, id } = effect;
    switch (effect.kind) {
      case 'resolve':
        return { kind: 'resolved', id, resolvedTs: await this.source.resolvedTs(span, effect.afterTs) };
      case 'load-backfill': {
        const record = await this.backfillPlan().store.load(span);
        return { kind: 'backfill-loaded', id, progress: record === undefined ? undefined : toBackfillProgress(record) };
      }
      case 'count-keys':
        return { kind: 'keys-counted', id, keys: await this.snapshots().countKeys(span, effect.snapshotTs) };
      case 'copy-page': {
        const page = await this.snapshots().snapshot(span, effect.snapshotTs, effect.afterKey, effect.limit, effect.sinceTs);
        // Every copied key is stamped with the snapshot revision: the sink then knows
        // which of its keys the snapshot confirmed, and retires the rest after the last
        // page (keys deleted upstream while the changefeed did not see them).
        const snapshotTs = effect.snapshotTs;
        if (page.events.length > 0) await this.sink.write(span, page.events.map((event) => ({ ...event, ts: snapshotTs })));
        await this.sink.flush(span, snapshotTs);
        if (effect.sinceTs !== undefined) {
          // Incremental: the page's key range loses the keys it no longer has; its
          // unchanged keys, not copied, stay.
          // Without the page's keys the range cannot be retired safely: fail, never guess.
          if (page.keys === undefined) throw Object.assign(new Error('the source cannot read incremental snapshots'), { retryable: false });
          const range = incrementalRetireRange(span, effect.afterKey, page.keys.at(-1), page.nextAfterKey === undefined);
          await this.sink.retire(span, snapshotTs, { ...range, keep: new Set(page.keys) });
        } else if (page.nextAfterKey === undefined) {
          await this.sink.retire(span, snapshotTs);
        }
        this.observer?.keysCopied?.(page.events.length);
        // An incremental page counts the keys it went through; only the changed were copied.
        return { kind: 'page-copied', id, keys: page.keys?.length ?? page.events.length, nextAfterKey: page.nextAfterKey };
      }
      case 'save-backfill':
        await this.backfillPlan().store.save(span, fromBackfillProgress(effect.progress));
        if (effect.progress.done) this.log.info({ span: effect.key, keysDone: effect.progress.keysDone }, 'backfill done');
        return { kind: 'backfill-saved', id };
      case 'stream': {
        const { events, readUpToTs } = await this.source.read(span, effect.afterTs, effect.uptoTs, effect.limit);
        if (events.length > 0) await this.sink.write(span, events);
        const flushStarted = performance.now();
        await this.sink.flush(span, readUpToTs);
        this.observer?.flushed((performance.now() - flushStarted) / 1000);
        this.eventsWritten += events.length;
        if (events.length > 0) this.observer?.eventsWritten(events.length);
        // The keys feed the span's key sample (its split key), the lengths its bytes a second.
        const keys: string[] = [];
        let bytes = 0;
        for (const event of events) {
          keys.push(event.key);
          bytes += event.key.length + (event.value?.length ?? 0);
        }
        return { kind: 'streamed', id, events: events.length, readUpToTs, keys, bytes };
      }
      default:
        return assertNever(effect, 'pipeline effect');
    }
  }

  private backfillPlan(): BackfillPlan {
    if (this.backfill === undefined) throw new Error('no backfill plan');
    return this.backfill;
  }

  private snapshots(): NonNullable<Source['snapshots']> {
    if (this.source.snapshots === undefined) throw new Error('the source cannot backfill');
    return this.source.snapshots;
  }
}

/** Waits until every promise has settled, or `ms` have passed. */
async function settledWithin(promises: readonly Promise<unknown>[], ms: number): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<void>((resolve) => {
    timer = setTimeout(resolve, ms);
  });
  try {
    await Promise.race([Promise.allSettled(promises), deadline]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * The decisions of one span pipeline on one capture, pure: where streaming starts, the
 * backfill (generation, snapshot, pages, resume token), the checkpoint it may report
 * (only what the sink has flushed), retries with backoff, step deadlines and give-back.
 * The runner (`src/pipeline/pipeline-runner.ts`) and the simulator perform the effects
 * it returns and feed their outcomes back; time is an input (`nowMs`).
 *
 * Phases:
 * ```
 * preparing ──resolved──► prepared ──promote──► writing
 *     └──────────────promote────────────────────────┘
 * preparing | prepared | writing ──stop──► stopping ──no effect in flight──► gone (stopped)
 * any ──a non-retryable failure, or more than stepRetriesMax in a row──► gone (failed)
 * ```
 * A step, taken when the pipeline is idle (not waiting, not backing off):
 * ```
 * resolve ──► [writing] backfill? ──lookup──► count ──► copy page ──► save token ──► progress
 *                          └── none / done ──► stream (read, write, flush) ──► progress
 * ```
 * Every effect has a deadline (`stepDeadlineMs`). One that passes it counts as a failed
 * step and is abandoned: its outcome, if it ever comes, is ignored, and no new effect
 * of this pipeline starts until it has come (a hung sink call is not multiplied by the
 * retries); each retry meanwhile counts as one more failure, so a hung span is given
 * back after its retries like a failing one. A stop waits for the effect in flight at
 * most until its deadline, and reports the checkpoint that was durable before it.
 */
import type { Span } from '../core/span.ts';
import { tsMin } from '../core/ts.ts';
import { assertNever } from '../core/assert.ts';
import type { PipelineEvent } from './pipeline.ts';
import type { QuietCheck } from './quiet-spans.ts';
import type { SplitKeyEstimate } from './key-sample.ts';
import { KeySample } from './key-sample.ts';

/** The shortest window a span's events-a-second figure is measured over. */
const rateWindowMs = 1_000;

/** A backfill's resume record as the pipeline reads and writes it (keys are binary strings). */
export interface BackfillProgress {
  /** The table's backfill revision this backfill belongs to. */
  readonly generation: bigint;
  /** The revision whose state is copied. */
  readonly snapshotTs: bigint;
  /** The last key already written (exclusive resume token); undefined: from the start. */
  readonly afterKey: string | undefined;
  readonly keysDone: number;
  readonly keysTotal: number;
  readonly done: boolean;
  /** An incremental backfill's lower bound: only keys modified after it are copied. */
  readonly sinceTs: bigint | undefined;
  /** When this backfill started (ms since the epoch, the runner's clock), and when its last page was copied. */
  readonly startedAtMs: number | undefined;
  readonly finishedAtMs: number | undefined;
}

/**
 * The table's backfill revision as the capture's copy of the changefeed says: a bigint
 * when the span's table is backfilled, `none` when it is not, `unknown-table` when the
 * capture's copy does not have the table yet (the pipeline waits: deciding "no backfill"
 * on a stale copy would skip the copy).
 */
export type BackfillGeneration = bigint | 'none' | 'unknown-table';

/** What the shell does for a pipeline; each effect but `release` answers with an outcome of its id. */
export type PipelineEffect =
  /** The source's resolved-ts for the span's history after `afterTs`. */
  | { readonly kind: 'resolve'; readonly id: number; readonly key: string; readonly span: Span; readonly afterTs: bigint }
  /** Read the span's backfill record. */
  | { readonly kind: 'load-backfill'; readonly id: number; readonly key: string; readonly span: Span }
  /** Count the span's keys at `snapshotTs`. */
  | { readonly kind: 'count-keys'; readonly id: number; readonly key: string; readonly span: Span; readonly snapshotTs: bigint }
  /**
   * Copy one snapshot page: read at most `limit` keys at `snapshotTs` after `afterKey`,
   * write them stamped `snapshotTs`, flush; after the last page retire the span before
   * `snapshotTs` (keys deleted upstream meanwhile). With `sinceTs` (an incremental
   * backfill) only the keys modified after it are read and written, and each page
   * retires its own key range except the page's keys (the unchanged ones stay).
   */
  | {
      readonly kind: 'copy-page';
      readonly id: number;
      readonly key: string;
      readonly span: Span;
      readonly snapshotTs: bigint;
      readonly afterKey: string | undefined;
      readonly limit: number;
      readonly sinceTs: bigint | undefined;
    }
  /** Store the backfill's resume record. */
  | { readonly kind: 'save-backfill'; readonly id: number; readonly key: string; readonly span: Span; readonly progress: BackfillProgress }
  /** Read events after `afterTs` up to `uptoTs` (at most `limit`), write them, flush. */
  | { readonly kind: 'stream'; readonly id: number; readonly key: string; readonly span: Span; readonly afterTs: bigint; readonly uptoTs: bigint; readonly limit: number }
  /** Drop what the source holds for reading the span (it is read again from its position, or not at all). */
  | { readonly kind: 'release'; readonly id: number; readonly key: string; readonly span: Span };

/** What became of an effect. */
export type PipelineOutcome =
  | { readonly kind: 'resolved'; readonly id: number; readonly resolvedTs: bigint }
  | { readonly kind: 'backfill-loaded'; readonly id: number; readonly progress: BackfillProgress | undefined }
  | { readonly kind: 'keys-counted'; readonly id: number; readonly keys: number }
  | { readonly kind: 'page-copied'; readonly id: number; readonly keys: number; readonly nextAfterKey: string | undefined }
  | { readonly kind: 'backfill-saved'; readonly id: number }
  /**
   * Everything of the span with ts <= `readUpToTs` is durable in the sink. `keys`: the
   * written events' keys (for the key sample), `bytes`: their keys' and values' length.
   */
  | { readonly kind: 'streamed'; readonly id: number; readonly events: number; readonly readUpToTs: bigint; readonly keys?: readonly string[]; readonly bytes?: number }
  | { readonly kind: 'failed'; readonly id: number; readonly error: string; readonly retryable: boolean };

/** Bounds of one pipeline. */
export interface SpanPipelineLimits {
  /** Events read and written per stream step. */
  readonly batchEventsMax: number;
  /** Keys copied per backfill page. */
  readonly pageKeysMax: number;
  /** Failed steps in a row retried in place before the span is given back. */
  readonly stepRetriesMax: number;
  readonly retryBackoffMinMs: number;
  readonly retryBackoffMaxMs: number;
  /** The longest one source or sink call may take before it counts as failed. */
  readonly stepDeadlineMs: number;
  /** Keys kept per rate window in the sample a split key is taken from (0: none). */
  readonly keySampleMax: number;
}

export const spanPipelineDefaults: SpanPipelineLimits = {
  batchEventsMax: 1_000,
  pageKeysMax: 1_000,
  stepRetriesMax: 10,
  retryBackoffMinMs: 100,
  retryBackoffMaxMs: 5_000,
  stepDeadlineMs: 30_000,
  keySampleMax: 64,
};

export type SpanPipelinePhase = 'preparing' | 'prepared' | 'writing' | 'stopping' | 'gone';


/** The backfill of a writing pipeline. */
type BackfillState =
  /** Not looked up since the promote. */
  | { readonly kind: 'unknown' }
  /** Nothing (more) to copy: stream. */
  | { readonly kind: 'none' }
  /** Copying `snapshotTs`; `keysTotal` undefined until counted. */
  | {
      readonly kind: 'copying';
      readonly generation: bigint;
      readonly snapshotTs: bigint;
      afterKey: string | undefined;
      keysDone: number;
      keysTotal: number | undefined;
      saved: boolean;
      done: boolean;
      readonly sinceTs: bigint | undefined;
      readonly startedAtMs: number;
      finishedAtMs: number | undefined;
    };

/** The stage of the step in progress. */
type Stage = 'idle' | 'resolve' | 'work';

interface InFlight {
  readonly effect: PipelineEffect;
  readonly deadlineMs: number;
}

/** What one input produced: effects for the shell, events for the agent. */
export interface PipelineOutput {
  readonly effects: PipelineEffect[];
  readonly events: PipelineEvent[];
  /** Bulk checks of quiet spans for the shell (see quiet-spans.ts); only the collection makes them. */
  readonly quietChecks?: QuietCheck[];
}

/** Context the collection gives a pipeline for one decision. */
export interface PipelineContext {
  readonly nowMs: number;
  readonly barrierTs: bigint;
  readonly generation: BackfillGeneration;
  /** The lower bound of the table's backfill when it is incremental. */
  readonly sinceTs: bigint | undefined;
  /** Takes a backfill slot (bounded over all pipelines); false when none is free. */
  readonly takeBackfillSlot: () => boolean;
  readonly releaseBackfillSlot: () => void;
  readonly nextId: () => number;
}

export class SpanPipeline {
  phase: SpanPipelinePhase = 'preparing';
  /** The position everything up to which is durable in the sink (when writing). */
  private position: bigint;
  private resolved: bigint;
  /** Events written over the current rate window, which started at `rateWindowStartMs`. */
  private rateWindowEvents = 0;
  private rateWindowStartMs: number | undefined;
  /** Events written a second over the last whole window: shown, never decided on. */
  private eventsPerSecond = 0;
  private rateMeasured = false;
  /** Bytes (keys and values) written over the current window; -1 until an outcome said any. */
  private rateWindowBytes = -1;
  private bytesPerSecond: number | undefined;
  /** Keys written over the current window, sampled; and what the last whole window's sample said. */
  private readonly keySample: KeySample;
  private splitEstimate: SplitKeyEstimate | undefined;
  private backfill: BackfillState = { kind: 'unknown' };
  /** The table's backfill generation the backfill decision was made for. */
  private decidedFor: BackfillGeneration | undefined;
  private stage: Stage = 'idle';
  private inFlight: InFlight | undefined;
  /** An effect given up on at its deadline whose outcome has not come yet, and why it was. */
  private abandonedId: number | undefined;
  private abandonedError = '';
  /** Failed steps in a row, and when the next try may start. */
  failures = 0;
  private retryAtMs = 0;

  constructor(
    readonly span: Span,
    readonly key: string,
    /** Where the pipeline was prepared: reported until it writes. */
    readonly startTs: bigint,
    private readonly limits: SpanPipelineLimits,
  ) {
    this.position = startTs;
    this.resolved = startTs;
    this.keySample = new KeySample(limits.keySampleMax, key);
  }

  /** The checkpoint it may report: never past what is flushed, nor into an unfinished snapshot. */
  get checkpointTs(): bigint {
    if (!this.writing) return this.startTs;
    const backfill = this.backfill;
    if (backfill.kind === 'copying' && !(backfill.done && backfill.saved)) return tsMin(this.position, backfill.snapshotTs - 1n);
    return this.position;
  }

  get resolvedTs(): bigint {
    return this.resolved;
  }

  /** True once the source answered (it reported `prepared`). */
  get everPrepared(): boolean {
    return this.prepared;
  }

  /** True while it is promoted and not gone: it writes to the sink. */
  get writes(): boolean {
    return this.writing && this.phase !== 'gone';
  }

  /** True while an effect of it is in flight (not abandoned). */
  get busy(): boolean {
    return this.inFlight !== undefined;
  }

  /**
   * True when a bulk check of quiet spans may move it on instead of a step: it writes,
   * streams (its backfill decided and done, for the table's current backfill
   * generation), is between steps, and nothing failed or hangs.
   */
  quietFor(generation: BackfillGeneration): boolean {
    return (
      this.phase === 'writing' &&
      this.stage === 'idle' &&
      this.inFlight === undefined &&
      this.abandonedId === undefined &&
      this.failures === 0 &&
      this.backfill.kind === 'none' &&
      generation === this.decidedFor
    );
  }

  /** Where a quiet check asks from: everything up to here is in the sink. */
  get streamPosition(): bigint {
    return this.position;
  }

  /**
   * A bulk check's answer: the span has no events in (its position, `quietTs`] and its
   * history is complete up to there; `needsStep` says an event follows (or the source
   * goes on reading the span only with a call). With nothing
   * to write the checkpoint moves to `quietTs` (not past the barrier) without a source
   * or sink call (`moved`), or stays where it is (`waiting`: nothing new yet); an event
   * next, or a pipeline that changed meanwhile, takes a step (`step`).
   */
  advanceQuiet(quietTs: bigint, needsStep: boolean, ctx: PipelineContext, out: PipelineOutput): 'moved' | 'waiting' | 'step' {
    if (!this.quietFor(ctx.generation)) return 'step';
    if (quietTs > this.resolved) this.resolved = quietTs;
    const upto = tsMin(quietTs, ctx.barrierTs);
    const moved = upto > this.position;
    if (moved) {
      this.position = upto;
      this.countEvents(ctx.nowMs, 0);
      out.events.push(this.progressEvent());
    }
    if (needsStep && upto === quietTs) return 'step';
    return moved ? 'moved' : 'waiting';
  }

  /** True while the backfill copies (a page in flight holds a slot). */
  get backfilling(): boolean {
    return this.backfill.kind === 'copying' && !this.backfill.done;
  }

  /** The backfill's progress, when it copies. */
  get backfillProgress(): BackfillProgress | undefined {
    const b = this.backfill;
    if (b.kind !== 'copying') return undefined;
    return {
      generation: b.generation,
      snapshotTs: b.snapshotTs,
      afterKey: b.afterKey,
      keysDone: b.keysDone,
      keysTotal: Math.max(b.keysTotal ?? 0, b.keysDone),
      done: b.done,
      sinceTs: b.sinceTs,
      startedAtMs: b.startedAtMs,
      finishedAtMs: b.finishedAtMs,
    };
  }

  /** Promoted: writes to the sink. */
  private writing = false;
  /** The source answered once (`prepared` was reported). */
  private prepared = false;

  /** Start writing every event after `checkpointTs` (a promote). */
  promote(checkpointTs: bigint): void {
    if (this.phase === 'stopping' || this.phase === 'gone') return;
    this.writing = true;
    if (this.prepared) this.phase = 'writing';
    this.position = checkpointTs;
    // Looked up again at the next step: another capture may have advanced the backfill.
    this.backfill = { kind: 'unknown' };
  }

  /** Stop: gone at once when nothing is in flight, else once it answers or its deadline passes. */
  stop(ctx: PipelineContext): PipelineOutput {
    const out: PipelineOutput = { effects: [], events: [] };
    if (this.phase === 'stopping' || this.phase === 'gone') return out;
    this.phase = 'stopping';
    if (this.inFlight === undefined) this.finishStop(ctx, out);
    return out;
  }

  /**
   * Drops the pipeline without a word (replaced, or the runner closes): true when it
   * held a backfill slot, which the caller gives back.
   */
  forget(): boolean {
    const heldSlot = this.inFlight?.effect.kind === 'copy-page';
    this.inFlight = undefined;
    this.phase = 'gone';
    return heldSlot;
  }

  /**
   * Checks the deadline of the effect in flight, and starts a step when idle. Called on
   * every tick of the runner.
   */
  tick(ctx: PipelineContext): PipelineOutput {
    const out: PipelineOutput = { effects: [], events: [] };
    if (this.phase === 'gone') return out;
    const inFlight = this.inFlight;
    if (inFlight !== undefined) {
      if (ctx.nowMs < inFlight.deadlineMs) return out;
      this.inFlight = undefined;
      this.abandonedId = inFlight.effect.id;
      this.abandonedError = `${inFlight.effect.kind} did not return within ${this.limits.stepDeadlineMs} ms`;
      if (inFlight.effect.kind === 'copy-page') ctx.releaseBackfillSlot();
      this.onFailure(ctx, out, this.abandonedError, true);
      return out;
    }
    if (this.phase === 'stopping') {
      this.finishStop(ctx, out);
      return out;
    }
    if (this.stage !== 'idle' || ctx.nowMs < this.retryAtMs) return out;
    if (this.abandonedId !== undefined) {
      // The abandoned call still runs: another one would only pile up behind it.
      // Named after the abandoned call, not the previous failure (which is this message again).
      this.onFailure(ctx, out, `a step that failed with: ${this.abandonedError} has not returned`, true);
      return out;
    }
    this.stage = 'resolve';
    this.issue(ctx, out, { kind: 'resolve', id: ctx.nextId(), key: this.key, span: this.span, afterTs: this.streamFrom(ctx.generation) });
    return out;
  }

  /** Applies an outcome; outcomes of abandoned or unknown effects are ignored. */
  onOutcome(outcome: PipelineOutcome, ctx: PipelineContext): PipelineOutput {
    const out: PipelineOutput = { effects: [], events: [] };
    if (outcome.id === this.abandonedId) {
      this.abandonedId = undefined;
      return out;
    }
    const inFlight = this.inFlight;
    if (inFlight === undefined || inFlight.effect.id !== outcome.id || this.phase === 'gone') return out;
    this.inFlight = undefined;
    if (inFlight.effect.kind === 'copy-page') ctx.releaseBackfillSlot();
    if (outcome.kind === 'failed') {
      if (this.phase === 'stopping') this.finishStop(ctx, out);
      else this.onFailure(ctx, out, outcome.error, outcome.retryable);
      return out;
    }
    if (this.phase === 'stopping') {
      // Only what the answer made durable counts; nothing new starts.
      if (outcome.kind === 'streamed' && outcome.readUpToTs > this.position) this.position = outcome.readUpToTs;
      this.finishStop(ctx, out);
      return out;
    }
    this.apply(outcome, ctx, out);
    if (this.inFlight === undefined) this.endStep(out);
    return out;
  }

  private apply(outcome: Exclude<PipelineOutcome, { kind: 'failed' }>, ctx: PipelineContext, out: PipelineOutput): void {
    switch (outcome.kind) {
      case 'resolved': {
        if (outcome.resolvedTs > this.resolved) this.resolved = outcome.resolvedTs;
        if (!this.prepared) {
          this.prepared = true;
          this.phase = this.writing ? 'writing' : 'prepared';
          out.events.push({ kind: 'prepared', key: this.key, resolvedTs: this.resolved });
          this.succeeded(out);
          this.stage = 'idle';
          return;
        }
        // A pipeline that only reads is well once the source answers.
        if (!this.writing) this.succeeded(out);
        if (this.phase === 'writing') this.work(ctx, out);
        return;
      }
      case 'backfill-loaded':
        this.chooseBackfill(outcome.progress, ctx, out);
        return;
      case 'keys-counted': {
        const b = this.backfill;
        if (b.kind === 'copying') b.keysTotal = outcome.keys;
        this.work(ctx, out);
        return;
      }
      case 'page-copied': {
        const b = this.backfill;
        if (b.kind !== 'copying') return;
        b.keysDone += outcome.keys;
        b.afterKey = outcome.nextAfterKey;
        b.done = outcome.nextAfterKey === undefined;
        if (b.done) b.finishedAtMs = ctx.nowMs;
        b.saved = false;
        const progress = this.backfillProgress;
        if (progress !== undefined) this.issue(ctx, out, { kind: 'save-backfill', id: ctx.nextId(), key: this.key, span: this.span, progress });
        return;
      }
      case 'backfill-saved': {
        const b = this.backfill;
        if (b.kind !== 'copying') return;
        b.saved = true;
        this.succeeded(out);
        if (b.done) {
          // The snapshot is in the sink: stream everything after it.
          if (this.position < b.snapshotTs) this.position = b.snapshotTs;
          this.backfill = { kind: 'none' };
        }
        return;
      }
      case 'streamed':
        if (outcome.keys !== undefined) this.keySample.add(outcome.keys);
        if (outcome.bytes !== undefined) this.rateWindowBytes = Math.max(0, this.rateWindowBytes) + outcome.bytes;
        this.countEvents(ctx.nowMs, outcome.events);
        // Only now is everything up to readUpToTs durable.
        if (outcome.readUpToTs > this.position) {
          this.position = outcome.readUpToTs;
          this.succeeded(out);
        } else if (outcome.events > 0) {
          this.succeeded(out);
        }
        return;
      default:
        assertNever(outcome, 'pipeline outcome');
    }
  }

  /** The writing part of a step, after the source answered. */
  private work(ctx: PipelineContext, out: PipelineOutput): void {
    this.stage = 'work';
    if (this.backfill.kind !== 'unknown' && ctx.generation !== 'unknown-table' && ctx.generation !== this.decidedFor) {
      // The table's backfill changed since the decision: this capture's copy of the info
      // was behind (a table removed and added back, backfilled anew). Decide again, or
      // the span would stream on without the new copy and its records would name a
      // generation the table no longer has (found by the simulator).
      this.backfill = { kind: 'unknown' };
    }
    const b = this.backfill;
    switch (b.kind) {
      case 'unknown': {
        const generation = ctx.generation;
        if (generation === 'unknown-table') return;
        if (generation === 'none') {
          this.backfill = { kind: 'none' };
          this.decidedFor = generation;
          this.stream(ctx, out);
          return;
        }
        this.issue(ctx, out, { kind: 'load-backfill', id: ctx.nextId(), key: this.key, span: this.span });
        return;
      }
      case 'none':
        this.stream(ctx, out);
        return;
      case 'copying':
        if (b.keysTotal === undefined) {
          this.issue(ctx, out, { kind: 'count-keys', id: ctx.nextId(), key: this.key, span: this.span, snapshotTs: b.snapshotTs });
          return;
        }
        if (b.done) {
          // The last page is copied but its record not saved yet (a failed save): save it.
          const progress = this.backfillProgress;
          if (progress !== undefined) this.issue(ctx, out, { kind: 'save-backfill', id: ctx.nextId(), key: this.key, span: this.span, progress });
          return;
        }
        if (!ctx.takeBackfillSlot()) return;
        this.issue(ctx, out, { kind: 'copy-page', id: ctx.nextId(), key: this.key, span: this.span, snapshotTs: b.snapshotTs, afterKey: b.afterKey, limit: this.limits.pageKeysMax, sinceTs: b.sinceTs });
        return;
      default:
        assertNever(b, 'backfill state');
    }
  }

  /**
   * Which backfill the span does, from its stored record. A record of another generation
   * (an earlier backfill of the table) does not count. A done one: stream after its
   * snapshot. One under way goes on at its snapshot (its token is for that snapshot) as
   * long as the span has not passed it. Else the generation's revision; or, for a span
   * that starts past it (a table added to a running changefeed whose checkpoint moved
   * on), its own position: the state there stands for every change up to it.
   */
  private chooseBackfill(stored: BackfillProgress | undefined, ctx: PipelineContext, out: PipelineOutput): void {
    const generation = ctx.generation;
    if (typeof generation !== 'bigint') {
      this.backfill = { kind: 'unknown' };
      this.work(ctx, out);
      return;
    }
    this.decidedFor = generation;
    const ofGeneration = stored !== undefined && stored.generation === generation ? stored : undefined;
    if (ofGeneration?.done === true) {
      if (this.position < ofGeneration.snapshotTs) this.position = ofGeneration.snapshotTs;
      this.backfill = { kind: 'none' };
      this.stream(ctx, out);
      return;
    }
    const record = ofGeneration !== undefined && ofGeneration.snapshotTs >= this.position ? ofGeneration : undefined;
    const snapshotTs = record !== undefined ? record.snapshotTs : this.position > generation ? this.position : generation;
    this.backfill = {
      kind: 'copying',
      generation,
      snapshotTs,
      afterKey: record?.afterKey,
      keysDone: record?.keysDone ?? 0,
      keysTotal: record?.keysTotal,
      saved: true,
      done: false,
      sinceTs: ctx.sinceTs,
      // A backfill taken over from another capture keeps its start: its duration and rate
      // are the backfill's, not this capture's part of it.
      startedAtMs: record?.startedAtMs ?? ctx.nowMs,
      finishedAtMs: undefined,
    };
    this.work(ctx, out);
  }

  private stream(ctx: PipelineContext, out: PipelineOutput): void {
    const upto = tsMin(this.resolved, ctx.barrierTs);
    if (upto <= this.position) return;
    this.issue(ctx, out, { kind: 'stream', id: ctx.nextId(), key: this.key, span: this.span, afterTs: this.position, uptoTs: upto, limit: this.limits.batchEventsMax });
  }

  /**
   * Where the span's stream starts: never before its backfill snapshot, which stands for
   * every change up to it (the revisions below it may be compacted, after a resume with
   * backfill).
   */
  private streamFrom(generation: BackfillGeneration): bigint {
    const position = this.writing ? this.position : this.startTs;
    return typeof generation === 'bigint' && position < generation - 1n ? generation - 1n : position;
  }

  private issue(ctx: PipelineContext, out: PipelineOutput, effect: PipelineEffect): void {
    this.inFlight = { effect, deadlineMs: ctx.nowMs + this.limits.stepDeadlineMs };
    out.effects.push(effect);
  }

  /** The step is over: report where the span is. */
  private endStep(out: PipelineOutput): void {
    this.stage = 'idle';
    if (!this.prepared) return;
    out.events.push(this.progressEvent());
  }

  /** Where the span is; the rates and the split key only once a window was measured. */
  private progressEvent(): PipelineEvent {
    if (!this.rateMeasured) return { kind: 'progress', key: this.key, checkpointTs: this.checkpointTs, resolvedTs: this.resolved };
    // One literal of one shape, no spreads: a quiet span makes one of these per check.
    const estimate = this.splitEstimate;
    const splitKey = estimate?.splitKey;
    return {
      kind: 'progress',
      key: this.key,
      checkpointTs: this.checkpointTs,
      resolvedTs: this.resolved,
      eventsPerSecond: this.eventsPerSecond,
      bytesPerSecond: this.bytesPerSecond,
      splitKey,
      sampleKeys: splitKey === undefined ? undefined : estimate?.distinctKeys,
    };
  }

  /** Counts written events into the rate, over windows of at least `rateWindowMs`. */
  private countEvents(nowMs: number, events: number): void {
    if (this.rateWindowStartMs === undefined) this.rateWindowStartMs = nowMs;
    this.rateWindowEvents += events;
    const elapsed = nowMs - this.rateWindowStartMs;
    if (elapsed < rateWindowMs) return;
    this.eventsPerSecond = (this.rateWindowEvents * 1_000) / elapsed;
    this.rateMeasured = true;
    this.rateWindowEvents = 0;
    this.rateWindowStartMs = nowMs;
    if (this.rateWindowBytes >= 0) {
      this.bytesPerSecond = (this.rateWindowBytes * 1_000) / elapsed;
      this.rateWindowBytes = 0;
    }
    this.splitEstimate = this.keySample.close(this.span.start);
  }

  /** A step did what failed before: the outage is over for this pipeline. */
  private succeeded(out: PipelineOutput): void {
    if (this.failures === 0) return;
    this.failures = 0;
    out.events.push({ kind: 'recovered', key: this.key });
  }

  /**
   * A failed step: retried in place with backoff while the error is retryable and the
   * tries last (the position has not moved, so the retry reads the same events again with
   * a fresh reader and writes them again; sinks are idempotent; a backfill keeps its
   * token); else the pipeline is gone and the agent told.
   */
  private onFailure(ctx: PipelineContext, out: PipelineOutput, error: string, retryable: boolean): void {
    this.stage = 'idle';
    if (this.phase === 'stopping') {
      // The stop releases the source's reader (once).
      this.finishStop(ctx, out);
      return;
    }
    out.effects.push({ kind: 'release', id: ctx.nextId(), key: this.key, span: this.span });
    if (retryable && this.failures < this.limits.stepRetriesMax) {
      this.failures++;
      this.retryAtMs = ctx.nowMs + this.backoffMs(this.failures);
      out.events.push({ kind: 'retrying', key: this.key, error });
      // Where the span is, the resolved-ts too: a sink that keeps failing or hangs must
      // not hide how far the source got, or the owner could not tell a stalled
      // checkpoint from a quiet source.
      if (this.prepared) out.events.push(this.progressEvent());
      return;
    }
    this.phase = 'gone';
    out.events.push({ kind: 'failed', key: this.key, error, retryable });
  }

  /** The wait before try `failures` + 1: exponential from the minimum, capped. */
  backoffMs(failures: number): number {
    return Math.min(this.limits.retryBackoffMaxMs, this.limits.retryBackoffMinMs * 2 ** Math.min(30, failures - 1));
  }

  private finishStop(ctx: PipelineContext, out: PipelineOutput): void {
    if (this.phase === 'gone') return;
    this.phase = 'gone';
    out.effects.push({ kind: 'release', id: ctx.nextId(), key: this.key, span: this.span });
    out.events.push({ kind: 'stopped', key: this.key, checkpointTs: this.writing ? this.position : this.startTs });
  }
}

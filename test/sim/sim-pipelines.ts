/**
 * Simulated span pipelines: the real pure {@link SpanPipelines} of every capture, whose
 * effects run against a simulated upstream (key history, compaction, snapshots), a
 * simulated sink (a durable log of every entry written, with retires) and a simulated
 * store of backfill records. Effects take a few steps; with faults on, some fail before
 * or midway (a prefix of their writes durable), some hang far past their deadline, and
 * saves land but answer failed. As the runner does, the effects of one span on one
 * capture run one after another.
 *
 * The sink is a log, not a table: its state at a ts is, per key, the entry with the
 * highest ts at or below it, less the keys a retire at or below it removed; that is
 * what a reader of the file sink (and the verifier) computes. Writing a true upstream
 * event twice, late, or out of order never changes a state, so only a missing write can
 * make the sink differ from the upstream at a checkpoint, which is what the cluster checks.
 */
import type { PipelineCommand, PipelineEvent } from '../../src/agent/pipeline.ts';
import type { BackfillGeneration, BackfillProgress, PipelineEffect, PipelineOutcome } from '../../src/agent/span-pipeline.ts';
import { SpanPipelines } from '../../src/agent/span-pipelines.ts';
import type { SpanPipelinesLimits } from '../../src/agent/span-pipelines.ts';
import type { QuietAnswer, QuietCheck, QuietOutcome } from '../../src/agent/quiet-spans.ts';
import type { SeededRandom } from '../../src/core/rng.ts';
import type { Span, TableRange } from '../../src/core/span.ts';
import { fromBackfillProgress, incrementalRetireRange, supersedes } from '../../src/pipeline/backfill.ts';

/** One version of a key: a value, or undefined for a delete. */
interface Version {
  readonly ts: bigint;
  readonly value: string | undefined;
}

/** A change event of the upstream. */
interface UpstreamEvent extends Version {
  readonly key: string;
}

/** The keys each of the first spans holds (`<span start>-<n>`), a few per span. */
const keysPerSpan = 4;

/** True when `key` (`<table>\0<local key>`) lies in `span`. */
export function keyInSpan(key: string, span: Span): boolean {
  if (!key.startsWith(`${span.table}\u0000`)) return false;
  const local = key.slice(span.table.length + 1);
  return local >= span.start && (span.end === '' || local < span.end);
}

/** The latest version at or before `ts` of a sorted list (searched from the end: most reads are recent). */
function versionAt(versions: readonly Version[] | undefined, ts: bigint): Version | undefined {
  if (versions === undefined) return undefined;
  for (let i = versions.length - 1; i >= 0; i--) {
    const version = versions[i] as Version;
    if (version.ts <= ts) return version;
  }
  return undefined;
}

/** The index of the first event with ts > `afterTs` in a sorted list. */
function firstAfter(events: readonly UpstreamEvent[], afterTs: bigint): number {
  let low = 0;
  let high = events.length;
  while (low < high) {
    const mid = (low + high) >>> 1;
    if ((events[mid] as UpstreamEvent).ts <= afterTs) low = mid + 1;
    else high = mid;
  }
  return low;
}

/**
 * The upstream: a few keys per span of the first tiling, and one event history per
 * table, shared by every capture's source. Reads and states are by key range, so spans
 * split and merged at run time read exactly the keys inside them.
 */
export class SimUpstream {
  ts: bigint;
  /** Revisions below this cannot be read any more (an etcd compaction). */
  compactedTs = 0n;
  private readonly events = new Map<string, UpstreamEvent[]>();
  private readonly versions = new Map<string, Version[]>();
  private readonly spans: readonly Span[];
  /** Per table, every key it can hold, sorted. */
  private readonly keys = new Map<string, string[]>();

  constructor(
    private readonly rng: SeededRandom,
    spans: readonly Span[],
    startTs: bigint,
  ) {
    this.spans = spans;
    for (const span of spans) {
      this.events.set(span.table, []);
      let keys = this.keys.get(span.table);
      if (keys === undefined) this.keys.set(span.table, (keys = []));
      for (let n = 0; n < keysPerSpan; n++) keys.push(`${span.table}\u0000${span.start}-${n}`);
    }
    for (const keys of this.keys.values()) keys.sort();
    // Keys that exist before the changefeed starts: only a backfill brings them over.
    this.ts = 0n;
    while (this.ts < startTs) this.advance(this.ts + 1n, 0.6);
  }

  /** The revision moves to `toTs`; some revisions change a key. */
  advance(toTs: bigint, changeProbability = 0.5): void {
    while (this.ts < toTs) {
      this.ts++;
      if (!this.rng.chance(changeProbability)) continue;
      const span = this.rng.pick(this.spans);
      const key = `${span.table}\u0000${span.start}-${this.rng.int(keysPerSpan)}`;
      const value = this.rng.chance(0.2) ? undefined : `v${this.ts}`;
      const event: UpstreamEvent = { ts: this.ts, key, value };
      this.events.get(span.table)?.push(event);
      let list = this.versions.get(key);
      if (list === undefined) this.versions.set(key, (list = []));
      list.push(event);
    }
  }

  /** The events of `span` with afterTs < ts <= uptoTs, at most `limit`, and how far they go. */
  read(span: Span, afterTs: bigint, uptoTs: bigint, limit: number): { events: UpstreamEvent[]; readUpToTs: bigint } {
    const all = this.events.get(span.table) ?? [];
    const events: UpstreamEvent[] = [];
    for (let i = firstAfter(all, afterTs); i < all.length; i++) {
      const event = all[i] as UpstreamEvent;
      if (event.ts > uptoTs) break;
      if (!keyInSpan(event.key, span)) continue;
      events.push(event);
      if (events.length >= limit) return { events, readUpToTs: event.ts };
    }
    return { events, readUpToTs: uptoTs };
  }

  /**
   * A quiet check of `span` from `afterTs` with the history complete up to `resolvedTs`:
   * empty up to just before its next event, or up to `resolvedTs`; a step when an event
   * comes first, or when its revisions are compacted (the step then fails for good, as
   * the real source's would).
   */
  quietUpTo(span: Span, afterTs: bigint, resolvedTs: bigint): QuietAnswer {
    if (afterTs < this.compactedTs) return { quietTs: afterTs, needsStep: true };
    if (resolvedTs <= afterTs) return { quietTs: afterTs, needsStep: false };
    const all = this.events.get(span.table) ?? [];
    for (let i = firstAfter(all, afterTs); i < all.length; i++) {
      const event = all[i] as UpstreamEvent;
      if (event.ts > resolvedTs) break;
      if (keyInSpan(event.key, span)) return { quietTs: event.ts - 1n, needsStep: true };
    }
    return { quietTs: resolvedTs, needsStep: false };
  }

  /** The keys of `span` and their values at `ts` (deleted keys absent), by key. */
  stateAt(span: Span, ts: bigint): Map<string, string> {
    const state = new Map<string, string>();
    for (const [key, version] of this.versionsAt(span, ts)) if (version.value !== undefined) state.set(key, version.value);
    return state;
  }

  /** The keys of `span` that exist at `ts`, with the version they have there. */
  versionsAt(span: Span, ts: bigint): Map<string, Version> {
    const versions = new Map<string, Version>();
    for (const key of this.keysIn(span)) {
      const version = versionAt(this.versions.get(key), ts);
      if (version?.value !== undefined) versions.set(key, version);
    }
    return versions;
  }

  /** Every key `span` can hold, sorted. */
  keysIn(span: Span): string[] {
    return (this.keys.get(span.table) ?? []).filter((key) => keyInSpan(key, span));
  }
}

/**
 * A retire: every key of `span` in [start, end) whose entry is older than `beforeTs` is
 * gone from `beforeTs` on, except the `keep` keys (an incremental backfill's page).
 */
interface Retire {
  readonly span: Span;
  readonly beforeTs: bigint;
  readonly start: string;
  readonly end: string;
  readonly keep: ReadonlySet<string> | undefined;
}

/** The sink: every entry ever made durable, per key, and the retires. */
export class SimSinkLog {
  private readonly entries = new Map<string, Version[]>();

  /** `keysIn`: the upstream keys a span can hold (the sink only ever holds those). */
  constructor(private readonly keysIn: (span: Span) => readonly string[]) {}
  private readonly retires: Retire[] = [];
  entriesWritten = 0;

  /** Makes entries durable (a flushed write). */
  write(entries: readonly UpstreamEvent[]): void {
    for (const entry of entries) {
      let list = this.entries.get(entry.key);
      if (list === undefined) this.entries.set(entry.key, (list = []));
      // Kept sorted by ts; an entry at a ts is the same value whoever wrote it.
      let at = list.length;
      while (at > 0 && (list[at - 1] as Version).ts > entry.ts) at--;
      if (at > 0 && (list[at - 1] as Version).ts === entry.ts) continue;
      list.splice(at, 0, { ts: entry.ts, value: entry.value });
      this.entriesWritten++;
    }
  }

  retire(span: Span, beforeTs: bigint, scope?: { start: string; end: string; keep: ReadonlySet<string> }): void {
    this.retires.push({ span, beforeTs, start: scope?.start ?? '', end: scope?.end ?? '', keep: scope?.keep });
  }

  /** What a reader of the sink sees for `span` at `ts`. */
  stateAt(span: Span, ts: bigint): Map<string, string> {
    const state = new Map<string, string>();
    // A retire acts on the keys of its span's range (spans are split and merged).
    const retires = this.retires.filter((r) => r.beforeTs <= ts && r.span.table === span.table);
    // The sink only ever holds upstream keys: the span's few.
    for (const key of this.keysIn(span)) {
      const version = versionAt(this.entries.get(key), ts);
      if (version === undefined || version.value === undefined) continue;
      const local = key.slice(span.table.length + 1);
      const retired = (r: Retire): boolean => version.ts < r.beforeTs && keyInSpan(key, r.span) && local >= r.start && (r.end === '' || local < r.end) && r.keep?.has(key) !== true;
      if (retires.some(retired)) continue;
      state.set(key, version.value);
    }
    return state;
  }
}

/** How an effect ends. */
type Fate = 'ok' | 'fail' | 'fail-midway' | 'fail-after';

interface QueuedEffect {
  readonly effect: Exclude<PipelineEffect, { kind: 'release' }>;
  readonly fate: Fate;
  /** Steps it takes once it starts (a hang: far past the deadline). */
  readonly steps: number;
  /** When it ends; set once the span's earlier effects have ended. */
  dueAt: number;
}

/** The shared world the pipelines of every capture act on. */
export interface SimWorld {
  readonly upstream: SimUpstream;
  readonly sink: SimSinkLog;
  /** Backfill records by span key (etcd). */
  readonly records: Map<string, BackfillProgress>;
  /**
   * Per span key and backfill generation, the lowest snapshot a done record of it was
   * saved with: what the backfill achieved, whatever a late write did to the record since.
   */
  readonly doneAt: Map<string, Map<bigint, bigint>>;

  readonly stats: Record<string, number>;
}

/** A capture's copy of the changefeed info's tables: backfill revisions and incremental bounds. */
export interface CaptureInfoView {
  generations: ReadonlyMap<string, bigint>;
  since: ReadonlyMap<string, bigint>;
  /** The changefeed's tables as this capture last read them: adds outside them are refused. */
  tables: ReadonlyMap<string, TableRange>;
}

/** Step length in ms: the pure pipelines' clock. */
export const simStepMs = 50;

export const simPipelineLimits: SpanPipelinesLimits = {
  batchEventsMax: 6,
  pageKeysMax: 2,
  stepRetriesMax: 4,
  retryBackoffMinMs: simStepMs,
  retryBackoffMaxMs: 8 * simStepMs,
  stepDeadlineMs: 10 * simStepMs,
  keySampleMax: 8,
  stepsInFlightMax: 8,
  backfillsInFlightMax: 2,
  // Small, so that most checks are cut short and spans wait their turn in the quiet line.
  quietBatchMax: 3,
  quietChecksInFlightMax: 2,
  quietIntervalMs: 2 * simStepMs,
};

/** A bulk check of quiet spans in flight, and when it answers. */
interface QueuedCheck {
  readonly check: QuietCheck;
  readonly fate: 'ok' | 'fail';
  readonly dueAt: number;
}

/** The pipelines of one capture. */
export class SimPipelines {
  private pipelines = new SpanPipelines(simPipelineLimits);
  /** The effects of each span, in order; the head runs. */
  private readonly queues = new Map<string, QueuedEffect[]>();
  /** Bulk checks in flight: read-only, they run beside the spans' own calls. */
  private checks: QueuedCheck[] = [];
  private readonly generationOf: (span: Span) => BackfillGeneration;
  private readonly sinceTsOf: (span: Span) => bigint | undefined;

  constructor(
    private readonly rng: SeededRandom,
    private readonly world: SimWorld,
    /** The changefeed's info as this capture last read it: each table's backfill. */
    view: CaptureInfoView,
  ) {
    this.generationOf = (span) => view.generations.get(span.table) ?? 'unknown-table';
    this.sinceTsOf = (span) => view.since.get(span.table);
  }

  /** Applies the agent's commands at `step`; returns what they made the pipelines say. */
  apply(commands: readonly PipelineCommand[], step: number, faultsOn: boolean): PipelineEvent[] {
    return this.take(this.pipelines.apply(commands, step * simStepMs, this.generationOf, this.sinceTsOf), step, faultsOn);
  }

  /** One step: effects that end now answer, then every pipeline ticks. */
  step(step: number, faultsOn: boolean): PipelineEvent[] {
    const events: PipelineEvent[] = [];
    for (const [key, queue] of [...this.queues]) {
      const head = queue[0];
      if (head === undefined || head.dueAt > step) continue;
      queue.shift();
      if (queue.length === 0) this.queues.delete(key);
      else (queue[0] as QueuedEffect).dueAt = step + (queue[0] as QueuedEffect).steps;
      const outcome = this.perform(head);
      events.push(...this.take(this.pipelines.onOutcome(outcome, step * simStepMs, this.generationOf, this.sinceTsOf), step, faultsOn));
    }
    const due = this.checks.filter((c) => c.dueAt <= step);
    this.checks = this.checks.filter((c) => c.dueAt > step);
    for (const { check, fate } of due) {
      const outcome: QuietOutcome =
        fate === 'fail'
          ? { kind: 'failed', id: check.id, error: 'simulated failure of a quiet check' }
          : { kind: 'quiet-checked', id: check.id, answers: check.requests.map(({ span, afterTs }) => this.world.upstream.quietUpTo(span, afterTs, this.world.upstream.ts - BigInt(this.rng.int(3)))) };
      this.world.stats.quietChecks = (this.world.stats.quietChecks ?? 0) + 1;
      events.push(...this.take(this.pipelines.onQuietOutcome(outcome, step * simStepMs, this.generationOf, this.sinceTsOf), step, faultsOn));
    }
    events.push(...this.take(this.pipelines.tick(step * simStepMs, this.generationOf, this.sinceTsOf), step, faultsOn));
    return events;
  }

  /** A crash: every pipeline and every call in flight vanish at once. */
  crash(): void {
    this.pipelines.clear();
    this.pipelines = new SpanPipelines(simPipelineLimits);
    this.queues.clear();
    this.checks = [];
  }

  /** Keys of the spans this capture writes to the sink. */
  writingKeys(): string[] {
    const keys: string[] = [];
    for (const pipeline of this.pipelines.values()) if (pipeline.writes) keys.push(pipeline.key);
    return keys;
  }

  /** The spans this capture writes to the sink. */
  writingSpans(): Span[] {
    const spans: Span[] = [];
    for (const pipeline of this.pipelines.values()) if (pipeline.writes) spans.push(pipeline.span);
    return spans;
  }

  /** Queues the effects; returns the events. */
  private take(out: { effects: PipelineEffect[]; events: PipelineEvent[]; quietChecks?: QuietCheck[] }, step: number, faultsOn: boolean): PipelineEvent[] {
    for (const check of out.quietChecks ?? []) {
      // With faults, some fail and some hang far past their deadline (the pipelines give them up).
      const fate = faultsOn && this.rng.chance(0.03) ? 'fail' : 'ok';
      const steps = faultsOn && this.rng.chance(0.004) ? 15 + this.rng.int(90) : this.rng.int(3);
      this.checks.push({ check, fate, dueAt: step + steps });
    }
    for (const effect of out.effects) {
      if (effect.kind === 'release') continue;
      let fate: Fate = 'ok';
      let steps = this.rng.int(3);
      if (faultsOn) {
        if (this.rng.chance(0.03)) fate = this.rng.pick<Fate>(['fail', 'fail-midway', 'fail-after']);
        if (this.rng.chance(0.004)) {
          steps = 15 + this.rng.int(90);
          this.world.stats.hungCalls = (this.world.stats.hungCalls ?? 0) + 1;
        }
      }
      let queue = this.queues.get(effect.key);
      if (queue === undefined) this.queues.set(effect.key, (queue = []));
      queue.push({ effect, fate, steps, dueAt: queue.length === 0 ? step + steps : Number.MAX_SAFE_INTEGER });
    }
    return out.events;
  }

  /** Runs one effect against the world, with its fate. */
  private perform(queued: QueuedEffect): PipelineOutcome {
    const { effect, fate } = queued;
    const { upstream, sink, records, stats } = this.world;
    const failed = (error: string, retryable = true): PipelineOutcome => ({ kind: 'failed', id: effect.id, error, retryable });
    if (fate === 'fail') return failed('simulated failure');
    switch (effect.kind) {
      case 'resolve': {
        const lag = BigInt(this.rng.int(3));
        const resolved = upstream.ts - lag;
        return { kind: 'resolved', id: effect.id, resolvedTs: resolved > effect.afterTs ? resolved : effect.afterTs };
      }
      case 'load-backfill':
        return { kind: 'backfill-loaded', id: effect.id, progress: records.get(effect.key) };
      case 'count-keys':
        if (effect.snapshotTs < upstream.compactedTs) return failed(`revision ${effect.snapshotTs} compacted`, false);
        return { kind: 'keys-counted', id: effect.id, keys: upstream.stateAt(effect.span, effect.snapshotTs).size };
      case 'copy-page': {
        if (effect.snapshotTs < upstream.compactedTs) return failed(`revision ${effect.snapshotTs} compacted`, false);
        const keys = [...upstream.versionsAt(effect.span, effect.snapshotTs)].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
        const after = keys.filter(([key]) => effect.afterKey === undefined || key > effect.afterKey);
        const page = after.slice(0, effect.limit);
        // An incremental page copies only what changed after its lower bound.
        const since = effect.sinceTs;
        const copied = since === undefined ? page : page.filter(([, version]) => version.ts > since);
        const entries = copied.map(([key, version]) => ({ key, value: version.value, ts: effect.snapshotTs }));
        const last = after.length <= effect.limit;
        if (fate === 'fail-midway') {
          sink.write(entries.slice(0, this.rng.int(entries.length + 1)));
          return failed('simulated failure midway through a page');
        }
        sink.write(entries);
        if (since !== undefined) {
          const local = (key: string): string => key.slice(effect.span.table.length + 1);
          const lastKey = page.at(-1)?.[0];
          const range = incrementalRetireRange(effect.span, effect.afterKey === undefined ? undefined : local(effect.afterKey), lastKey === undefined ? undefined : local(lastKey), last);
          sink.retire(effect.span, effect.snapshotTs, { ...range, keep: new Set(page.map(([key]) => key)) });
          stats.incrementalPages = (stats.incrementalPages ?? 0) + 1;
        } else if (last) {
          sink.retire(effect.span, effect.snapshotTs);
        }
        stats.pagesCopied = (stats.pagesCopied ?? 0) + 1;
        stats.valuesCopied = (stats.valuesCopied ?? 0) + entries.length;
        if (fate === 'fail-after') return failed('simulated failure after the page was flushed');
        const nextAfterKey = last ? undefined : (page[page.length - 1] as [string, Version])[0];
        return { kind: 'page-copied', id: effect.id, keys: page.length, nextAfterKey };
      }
      case 'save-backfill':
        if (fate === 'fail-midway') return failed('simulated failure of a record write');
        {
          // The store's rule: a late save of an older token is dropped.
          const current = records.get(effect.key);
          if (supersedes(current === undefined ? undefined : fromBackfillProgress(current), fromBackfillProgress(effect.progress))) records.set(effect.key, effect.progress);
        }
        if (effect.progress.done) {
          stats.backfillsDone = (stats.backfillsDone ?? 0) + 1;
          let done = this.world.doneAt.get(effect.key);
          if (done === undefined) this.world.doneAt.set(effect.key, (done = new Map()));
          const { generation, snapshotTs } = effect.progress;
          if ((done.get(generation) ?? snapshotTs) >= snapshotTs) done.set(generation, snapshotTs);
        }
        if (fate === 'fail-after') return failed('simulated failure after the record landed');
        return { kind: 'backfill-saved', id: effect.id };
      case 'stream': {
        if (effect.afterTs < upstream.compactedTs) return failed(`revision ${effect.afterTs} compacted`, false);
        const { events, readUpToTs } = upstream.read(effect.span, effect.afterTs, effect.uptoTs, effect.limit);
        if (fate === 'fail-midway') {
          sink.write(events.slice(0, this.rng.int(events.length + 1)));
          return failed('simulated failure midway through a write');
        }
        sink.write(events);
        if (fate === 'fail-after') return failed('simulated failure after the flush');
        // The keys in the span's own key space (`<table>\0` off), for its key sample.
        const keys = events.map((event) => event.key.slice(effect.span.table.length + 1));
        return { kind: 'streamed', id: effect.id, events: events.length, readUpToTs, keys, bytes: keys.length };
      }
      default: {
        const never: never = effect;
        throw new Error(`unknown effect ${JSON.stringify(never)}`);
      }
    }
  }
}

/** Where a sink's state at `ts` differs from the upstream's for `span`; undefined when equal. */
export function stateDifference(upstream: SimUpstream, sink: SimSinkLog, span: Span, ts: bigint): string | undefined {
  const want = upstream.stateAt(span, ts);
  const have = sink.stateAt(span, ts);
  const problems: string[] = [];
  for (const [key, value] of want) {
    const got = have.get(key);
    if (got === undefined) problems.push(`missing ${JSON.stringify(key)}=${value}`);
    else if (got !== value) problems.push(`mismatched ${JSON.stringify(key)}: ${got} instead of ${value}`);
  }
  for (const [key, value] of have) if (!want.has(key)) problems.push(`extra ${JSON.stringify(key)}=${value}`);
  return problems.length === 0 ? undefined : problems.join(', ');
}

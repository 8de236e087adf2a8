/**
 * The owner's drain decisions outside the coordinators: which captures are drained (the
 * set every coordinator applies), how that set is read from and written to etcd, the
 * queue of operator requests that change it, the cleanup of drains of captures that
 * left, and when a drained owner resigns. Pure: the owner role (and the simulator)
 * performs the commands it returns and feeds the outcomes back by id; time is the tick
 * count.
 *
 * Phases:
 * ```
 * loading ──drains read──► loaded ──write failed or unanswered──► loading
 *    └─ read failed: read again after a backoff; unanswered: read again
 * (any) ──fenced, or stop()──► stopped
 * ```
 * While loaded, jobs run one at a time, in the order they came:
 * ```
 * queue ──head──► decided at once (ok, unknown-capture, last-capture)
 *               └► writing ──written──► the set takes the change, answered ok; next job
 *                          ──failed / no answer within writeDeadlineTicks──► loading:
 *                              answered not-persisted, the queued ones drains-loading
 * ```
 * The set changes only after etcd took the change, so it always says what the next owner
 * will read. A write that failed or never answered may still have landed, so the set is
 * read again before anything else. Every drain write compares the drains guard key's
 * revision as last read or written, and moves it; the re-read after a write given up on
 * moves it too (the shell lists the drains in the same fenced transaction): that write
 * either landed before the re-read (which then sees it) or never lands (its compare
 * fails). So once a read has answered, no write of this owner lands that the set does not
 * show. A new owner's first read need not move the guard: earlier owners' writes are
 * fenced by their election keys, gone before this owner was elected.
 *
 * Requests get an id at once; their answers come back in the `answers` of a later (or
 * the same) step, by id. Drains of captures that left are deleted one at a time, through
 * the same queue. The owner resigns, asked once (again only after a failed resign), when
 * its own capture is drained, it holds no span, and no drain job waits.
 */
import { assert, assertNever, InvariantError } from './assert.ts';
import type { CaptureId } from './messages.ts';

/** An operator's request. */
export interface DrainRequest {
  readonly kind: 'drain' | 'undrain';
  readonly captureId: CaptureId;
}

/**
 * Why a request was refused: `unknown-capture` (not live), `last-capture` (draining it
 * would leave no capture to take spans), `not-persisted` (the write failed or never
 * answered; it may have landed), `drains-loading` (the set is being read), `busy` (too
 * many requests wait). The last three are worth a retry.
 */
export type DrainRefusal = 'unknown-capture' | 'last-capture' | 'not-persisted' | 'drains-loading' | 'busy';

/** The answer to a request; ok means the set (and etcd) now says what was asked. */
export type DrainAnswer = { readonly ok: true } | { readonly ok: false; readonly code: DrainRefusal };

/** A request answered, by its id. */
export interface AnsweredRequest {
  readonly requestId: number;
  readonly request: DrainRequest;
  readonly answer: DrainAnswer;
}

/** What the shell does. Each carries an id; an outcome names the id it answers. */
export type DrainsCommand =
  /**
   * List every drain key and the guard's revision, in one fenced transaction; with
   * `moveGuard`, move the guard in it first (after a write given up on).
   */
  | { readonly kind: 'read-drains'; readonly id: number; readonly moveGuard: boolean }
  /**
   * Put (`draining`) or delete the capture's drain key, fenced, only while the guard key
   * is at `expectedGuardRevision`, moving the guard in the same transaction. `departed`:
   * the cleanup of a capture that left.
   */
  | { readonly kind: 'write-drain'; readonly id: number; readonly captureId: CaptureId; readonly draining: boolean; readonly expectedGuardRevision: bigint; readonly departed: boolean }
  /** Hand ownership away. */
  | { readonly kind: 'resign'; readonly id: number };

/** What became of a command. Outcomes of commands given up on are ignored. */
export type DrainsOutcome =
  /** The drained captures and the guard's revision (0: no guard key yet). */
  | { readonly kind: 'drains-read'; readonly id: number; readonly captureIds: readonly CaptureId[]; readonly guardRevision: bigint }
  /** The write landed; the guard is now at `guardRevision`. */
  | { readonly kind: 'written'; readonly id: number; readonly guardRevision: bigint }
  /** A read, write or resign failed (an etcd error, a deadline, a guard conflict); a write may have landed. */
  | { readonly kind: 'failed'; readonly id: number }
  /** The owner lost its election key: it must stop acting. */
  | { readonly kind: 'fenced'; readonly id: number };

export type DrainsPhase = 'loading' | 'loaded' | 'stopped';

/** Every bound of the drains, in requests and ticks. */
export interface DrainsLimits {
  /** Jobs waiting or being written (requests and the departed cleanup); more requests are answered busy. */
  readonly requestsQueuedMax: number;
  /** Ticks a read may take before it is given up and made again. */
  readonly readDeadlineTicks: number;
  /** Ticks a write may take; no answer within it counts as failed (it may still land, before the re-read). */
  readonly writeDeadlineTicks: number;
  /** Ticks between a failed read (or a failed resign) and the next try. */
  readonly retryBackoffTicks: number;
}

/** Defaults, for a 50 ms tick. */
export const drainsDefaults: DrainsLimits = {
  requestsQueuedMax: 64,
  readDeadlineTicks: 101,
  writeDeadlineTicks: 101,
  retryBackoffTicks: 4,
};

/** What a coordinator offers the drains: its two drain requests (idempotent, refusals ignored). */
export interface DrainTarget {
  requestDrain(captureId: CaptureId): unknown;
  cancelDrain(captureId: CaptureId): unknown;
}

/** What the drains see on each tick. */
export interface DrainsTickInput {
  readonly tick: number;
  /** The live captures (registered in etcd). */
  readonly captures: readonly CaptureId[];
  /** Spans the owner's own capture holds over all changefeeds; null while not known. */
  readonly ownerRemainingSpans: number | null;
}

/** The commands to perform and the requests answered by one call. */
export interface DrainsStep {
  readonly commands: DrainsCommand[];
  readonly answers: AnsweredRequest[];
}

type Job =
  | { readonly kind: 'request'; readonly requestId: number; readonly request: DrainRequest }
  | { readonly kind: 'cleanup'; readonly captureId: CaptureId };

type ResignState =
  | { readonly kind: 'not-asked'; readonly notBeforeTick: number }
  | { readonly kind: 'asked'; readonly id: number };

export class OwnerDrains {
  private phaseNow: DrainsPhase = 'loading';
  private readonly set = new Set<CaptureId>();
  /** The guard key's revision as last read or written; undefined before the first read. */
  private guardRevisionNow: bigint | undefined;
  private reading: { readonly id: number; readonly sinceTick: number; readonly moveGuard: boolean } | undefined;
  /** A write was given up on (it may land late): reads move the guard until one answers. */
  private guardMoveNeeded = false;
  /** No read starts before this tick (backoff after a failed read). */
  private readNotBeforeTick = 0;
  private writing: { readonly id: number; readonly sinceTick: number; readonly job: Job; readonly draining: boolean } | undefined;
  private queue: Job[] = [];
  private resign: ResignState = { kind: 'not-asked', notBeforeTick: 0 };
  private live: ReadonlySet<CaptureId> = new Set();
  private lastTick = 0;
  private nextId = 1;
  private nextRequestId = 1;
  private versionNow = 0;

  constructor(
    private readonly ownerId: CaptureId,
    private readonly limits: DrainsLimits = drainsDefaults,
  ) {}

  get phase(): DrainsPhase {
    return this.phaseNow;
  }

  /** True once the set is read (and until a write fails): coordinators may schedule. */
  get loaded(): boolean {
    return this.phaseNow === 'loaded';
  }

  /** The drained captures as of the last read or write (live or not). */
  get draining(): ReadonlySet<CaptureId> {
    return this.set;
  }

  /** The guard's revision as of the last read or write. */
  get guardRevision(): bigint | undefined {
    return this.guardRevisionNow;
  }

  /** Counts changes of the set: the shell re-applies cancels to coordinators when it moves. */
  get version(): number {
    return this.versionNow;
  }

  /** True while a write is out (answered or given up on, it ends). */
  get writeInFlight(): boolean {
    return this.writing !== undefined;
  }

  /** Jobs waiting or being written. */
  get jobs(): number {
    return this.queue.length + (this.writing === undefined ? 0 : 1);
  }

  /** The commands due at this tick, and requests answered by a deadline. */
  tick(input: DrainsTickInput): DrainsStep {
    assert(input.tick >= this.lastTick, 'ticks go forward', { tick: input.tick, lastTick: this.lastTick });
    this.lastTick = input.tick;
    this.live = new Set(input.captures);
    const step: DrainsStep = { commands: [], answers: [] };
    if (this.phaseNow === 'loaded') {
      const writing = this.writing;
      if (writing !== undefined && input.tick - writing.sinceTick >= this.limits.writeDeadlineTicks) {
        this.writeFailed(step);
      } else {
        this.queueCleanup();
        this.advance(step);
        this.resignWhenDrained(input, step);
      }
    }
    switch (this.phaseNow) {
      case 'loading':
        this.readCommands(input.tick, step);
        return step;
      case 'loaded':
      case 'stopped':
        return step;
      default:
        return assertNever(this.phaseNow, 'drains phase');
    }
  }

  /** An operator's request: its id, and what is due at once (maybe its answer). */
  request(request: DrainRequest, captures: readonly CaptureId[]): DrainsStep & { readonly requestId: number } {
    this.live = new Set(captures);
    const requestId = this.nextRequestId++;
    const step: DrainsStep = { commands: [], answers: [] };
    const refuse = (code: DrainRefusal): DrainsStep & { readonly requestId: number } => {
      step.answers.push({ requestId, request, answer: { ok: false, code } });
      return { requestId, ...step };
    };
    switch (this.phaseNow) {
      case 'stopped':
        return refuse('not-persisted');
      case 'loading':
        return refuse('drains-loading');
      case 'loaded':
        if (this.jobs >= this.limits.requestsQueuedMax) return refuse('busy');
        this.queue.push({ kind: 'request', requestId, request });
        this.advance(step);
        return { requestId, ...step };
      default:
        return assertNever(this.phaseNow, 'drains phase');
    }
  }

  /** Feeds back what became of a command; the step says what follows. */
  onOutcome(outcome: DrainsOutcome): DrainsStep {
    const step: DrainsStep = { commands: [], answers: [] };
    if (this.phaseNow === 'stopped') return step;
    const reading = this.reading;
    const writing = this.writing;
    if (reading !== undefined && reading.id === outcome.id) {
      this.reading = undefined;
      switch (outcome.kind) {
        case 'drains-read':
          if (reading.moveGuard) this.guardMoveNeeded = false;
          this.set.clear();
          for (const id of outcome.captureIds) this.set.add(id);
          this.guardRevisionNow = outcome.guardRevision;
          this.versionNow++;
          this.phaseNow = 'loaded';
          return step;
        case 'failed':
          this.readNotBeforeTick = this.lastTick + this.limits.retryBackoffTicks;
          return step;
        case 'fenced':
          this.stopAll(step);
          return step;
        case 'written':
          throw new InvariantError('a read is answered by a read', { reading, outcome });
        default:
          return assertNever(outcome, 'drains outcome');
      }
    }
    if (writing !== undefined && writing.id === outcome.id) {
      switch (outcome.kind) {
        case 'written': {
          this.writing = undefined;
          const captureId = writing.job.kind === 'request' ? writing.job.request.captureId : writing.job.captureId;
          if (writing.draining) this.set.add(captureId);
          else this.set.delete(captureId);
          this.guardRevisionNow = outcome.guardRevision;
          this.versionNow++;
          if (writing.job.kind === 'request') step.answers.push({ requestId: writing.job.requestId, request: writing.job.request, answer: { ok: true } });
          this.advance(step);
          return step;
        }
        case 'failed':
          this.writeFailed(step);
          return step;
        case 'fenced':
          this.stopAll(step);
          return step;
        case 'drains-read':
          throw new InvariantError('a write is answered by a write', { writing, outcome });
        default:
          return assertNever(outcome, 'drains outcome');
      }
    }
    const resign = this.resign;
    if (resign.kind === 'asked' && resign.id === outcome.id) {
      // A resign that succeeded stops the owner; only a failure comes back.
      if (outcome.kind === 'failed') this.resign = { kind: 'not-asked', notBeforeTick: this.lastTick + this.limits.retryBackoffTicks };
      return step;
    }
    // A late, duplicated or given-up-on outcome.
    return step;
  }

  /** The owner stops acting: every request still waiting is answered not-persisted. */
  stop(): DrainsStep {
    const step: DrainsStep = { commands: [], answers: [] };
    if (this.phaseNow !== 'stopped') this.stopAll(step);
    return step;
  }

  /**
   * Makes a coordinator drain exactly the set's live captures: every live member is asked
   * again (a capture the coordinator does not know yet is drained once it does; a refusal
   * such as last-capture is asked again next time), and every other live capture is
   * cancelled once after each change of the set. Call it only while loaded. Returns the
   * version applied, to pass in next time (-1 for a coordinator that has had none).
   */
  applyTo(target: DrainTarget, live: ReadonlySet<CaptureId> | ReadonlyMap<CaptureId, unknown>, appliedVersion: number): number {
    assert(this.phaseNow === 'loaded', 'drains apply once loaded', { phase: this.phaseNow });
    if (appliedVersion !== this.versionNow) {
      for (const id of live.keys()) if (!this.set.has(id)) target.cancelDrain(id);
    }
    for (const id of this.set) if (live.has(id)) target.requestDrain(id);
    return this.versionNow;
  }

  /** Throws an InvariantError with the state when the bookkeeping disagrees. */
  checkInvariants(): void {
    const state = (): unknown => ({
      phase: this.phaseNow,
      set: [...this.set],
      reading: this.reading,
      writing: this.writing,
      queue: this.queue,
      guardRevision: this.guardRevisionNow,
    });
    assert(this.jobs <= this.limits.requestsQueuedMax, 'jobs within requestsQueuedMax', state());
    if (this.phaseNow !== 'loaded') assert(this.jobs === 0, 'jobs wait only while loaded', state());
    if (this.phaseNow !== 'loading') assert(this.reading === undefined, 'reads only while loading', state());
    if (this.phaseNow === 'loaded') assert(this.guardRevisionNow !== undefined, 'a loaded set has its guard revision', state());
    const cleanups = this.queue.filter((job) => job.kind === 'cleanup').length + (this.writing?.job.kind === 'cleanup' ? 1 : 0);
    assert(cleanups <= 1, 'one departed cleanup at a time', state());
    if (this.writing === undefined && this.phaseNow === 'loaded') {
      // Jobs left waiting while nothing is written would wait for the next tick for nothing.
      assert(this.queue.length === 0, 'queued jobs start once nothing is written', state());
    }
  }

  private readCommands(tick: number, step: DrainsStep): void {
    const reading = this.reading;
    if (reading !== undefined) {
      if (tick - reading.sinceTick < this.limits.readDeadlineTicks) return;
      // A read that never answers is given up on and made again.
      this.reading = undefined;
    }
    if (tick < this.readNotBeforeTick) return;
    const id = this.nextId++;
    const moveGuard = this.guardMoveNeeded;
    this.reading = { id, sinceTick: tick, moveGuard };
    step.commands.push({ kind: 'read-drains', id, moveGuard });
  }

  /** Runs queued jobs until one needs a write or none is left. */
  private advance(step: DrainsStep): void {
    while (this.phaseNow === 'loaded' && this.writing === undefined) {
      const job = this.queue.shift();
      if (job === undefined) return;
      this.decide(job, step);
    }
  }

  private decide(job: Job, step: DrainsStep): void {
    const answer = (answer: DrainAnswer): void => {
      assert(job.kind === 'request', 'only requests are answered', job);
      step.answers.push({ requestId: job.requestId, request: job.request, answer });
    };
    switch (job.kind) {
      case 'request': {
        const { kind, captureId } = job.request;
        if (!this.live.has(captureId)) return answer({ ok: false, code: 'unknown-capture' });
        switch (kind) {
          case 'drain': {
            if (this.set.has(captureId)) return answer({ ok: true });
            let staying = false;
            for (const id of this.live) if (id !== captureId && !this.set.has(id)) staying = true;
            if (!staying) return answer({ ok: false, code: 'last-capture' });
            return this.write(job, captureId, true, step);
          }
          case 'undrain':
            if (!this.set.has(captureId)) return answer({ ok: true });
            return this.write(job, captureId, false, step);
          default:
            return assertNever(kind, 'drain request');
        }
      }
      case 'cleanup':
        if (this.live.has(job.captureId) || !this.set.has(job.captureId)) return;
        return this.write(job, job.captureId, false, step);
      default:
        return assertNever(job, 'drain job');
    }
  }

  private write(job: Job, captureId: CaptureId, draining: boolean, step: DrainsStep): void {
    const expectedGuardRevision = this.guardRevisionNow;
    assert(expectedGuardRevision !== undefined, 'a write follows a read', { job });
    const id = this.nextId++;
    this.writing = { id, sinceTick: this.lastTick, job, draining };
    step.commands.push({ kind: 'write-drain', id, captureId, draining, expectedGuardRevision, departed: job.kind === 'cleanup' });
  }

  /**
   * A write failed or never answered: it may have landed, so the set is read again
   * before anything else; the waiting request may not say ok, the queued ones retry.
   */
  private writeFailed(step: DrainsStep): void {
    const writing = this.writing;
    assert(writing !== undefined, 'a write failed', { phase: this.phaseNow });
    this.writing = undefined;
    this.phaseNow = 'loading';
    this.guardMoveNeeded = true;
    this.readNotBeforeTick = this.lastTick;
    if (writing.job.kind === 'request') step.answers.push({ requestId: writing.job.requestId, request: writing.job.request, answer: { ok: false, code: 'not-persisted' } });
    for (const job of this.queue.splice(0)) {
      if (job.kind === 'request') step.answers.push({ requestId: job.requestId, request: job.request, answer: { ok: false, code: 'drains-loading' } });
    }
  }

  private stopAll(step: DrainsStep): void {
    const jobs = [...(this.writing === undefined ? [] : [this.writing.job]), ...this.queue.splice(0)];
    this.writing = undefined;
    this.reading = undefined;
    this.phaseNow = 'stopped';
    for (const job of jobs) {
      if (job.kind === 'request') step.answers.push({ requestId: job.requestId, request: job.request, answer: { ok: false, code: 'not-persisted' } });
    }
  }

  /** Queues the deletion of one drain of a capture that left, when none is under way. */
  private queueCleanup(): void {
    if (this.jobs >= this.limits.requestsQueuedMax) return;
    if (this.writing?.job.kind === 'cleanup' || this.queue.some((job) => job.kind === 'cleanup')) return;
    for (const id of this.set) {
      if (this.live.has(id)) continue;
      this.queue.push({ kind: 'cleanup', captureId: id });
      return;
    }
  }

  /**
   * A drained owner hands ownership away once it holds no span and no drain job waits,
   * and only to a capture that is not draining too: when every live capture drains (the
   * ones that were not left since), ownership would go round them for ever, each owner
   * resigning before it could write a checkpoint (the simulator found that).
   */
  private resignWhenDrained(input: DrainsTickInput, step: DrainsStep): void {
    const resign = this.resign;
    if (resign.kind !== 'not-asked' || input.tick < resign.notBeforeTick) return;
    if (!this.set.has(this.ownerId) || input.ownerRemainingSpans !== 0 || this.jobs > 0) return;
    if (input.captures.every((id) => id === this.ownerId || this.set.has(id))) return;
    const id = this.nextId++;
    this.resign = { kind: 'asked', id };
    step.commands.push({ kind: 'resign', id });
  }
}

/**
 * The lifecycle of a changefeed's info, pure: which state allows which change, what the
 * change makes of the info (state, epoch, each table's backfill), and when a run's
 * failure still has to be written. The changefeed service performs what these return as
 * compare-and-set writes in etcd (`src/server/changefeed-service.ts`); the owner role
 * asks `failRun` before it persists a run's failure; the simulator drives the same
 * functions for its pauses, resumes and failures.
 *
 * ```
 * normal | failed ──pause──► paused ──resume──► normal (epoch + 1)
 * normal ──a run of this epoch fails──► failed ──resume──► normal (epoch + 1)
 * normal | paused | failed ──remove──► gone
 * ```
 * An epoch fences every message of the run before it, so a resume is always a new one.
 * A resume with a backfill copies every table again at `atTs` (optionally only the keys
 * modified after `sinceTs`, when the sink is known to hold every table whole as of the
 * checkpoint); a table update keeps the backfill of the tables it keeps and backfills
 * the ones it adds at `atTs` when asked. An update may also turn the split policy
 * (`autoSplit`) on or off, in any state, alone (the tables, their split and so their
 * spans stay exactly as they are) or with new tables.
 */

export type LifecycleState = 'normal' | 'paused' | 'failed';

/** A table as the lifecycle sees it: its backfill revision and incremental bound, if any. */
export interface LifecycleTable {
  readonly name: string;
  readonly backfillTs?: bigint;
  readonly backfillSinceTs?: bigint;
}

/** The part of a changefeed's info the lifecycle decides on. */
export interface LifecycleView {
  readonly state: LifecycleState;
  readonly epoch: bigint;
  readonly targetTs?: bigint;
  readonly tables: readonly LifecycleTable[];
  /** Whether the owner's split policy runs on the changefeed's spans; absent: off. */
  readonly autoSplit?: boolean;
}

/** A change refused: `conflict` (the state does not allow it) or `invalid` (the request cannot be met). */
export interface LifecycleRefusal {
  readonly ok: false;
  readonly kind: 'conflict' | 'invalid';
  readonly code: string;
  readonly message: string;
}

/** What a change makes of the info. */
export type LifecycleDecision = { readonly ok: true; readonly next: LifecycleView } | LifecycleRefusal;

function refuse(kind: LifecycleRefusal['kind'], code: string, message: string): LifecycleRefusal {
  return { ok: false, kind, code, message };
}

/** Pause a normal or failed changefeed (a failed one keeps its error until resumed). */
export function pause(id: string, view: LifecycleView): LifecycleDecision {
  if (view.state === 'paused') return refuse('conflict', 'already-paused', `changefeed ${id} is already paused`);
  return { ok: true, next: { ...view, state: 'paused' } };
}

/** How a resume copies the tables again, when it does. */
export interface ResumeBackfill {
  /** The revision every table is copied at (the source's current one). */
  readonly atTs: bigint;
  /** Copy only keys modified after this (incremental); at most the checkpoint. */
  readonly sinceTs?: bigint;
}

/**
 * Resume a paused or failed changefeed as a new epoch; with `backfill`, every table is
 * copied again. An incremental backfill needs the sink to hold every table whole as of
 * the checkpoint: each table's last backfill finished at or below it (a table never
 * backfilled lacks the keys written before the changefeed started), and the bound is at
 * most the checkpoint (the sink holds nothing after it).
 */
export function resume(id: string, view: LifecycleView, checkpointTs: bigint, backfill?: ResumeBackfill): LifecycleDecision {
  if (view.state === 'normal') return refuse('conflict', 'not-paused', `changefeed ${id} is running`);
  let tables = view.tables;
  if (backfill !== undefined) {
    if (view.targetTs !== undefined && backfill.atTs > view.targetTs) {
      return refuse('conflict', 'past-target', `a backfill at revision ${backfill.atTs} is past the changefeed's targetTs ${view.targetTs}: it would never finish`);
    }
    const sinceTs = backfill.sinceTs;
    if (sinceTs !== undefined) {
      if (sinceTs > checkpointTs) {
        return refuse('invalid', 'invalid', `backfill.sinceTs ${sinceTs} is above the changefeed's checkpoint ${checkpointTs}: the sink holds nothing after the checkpoint, so the changes between them would be lost`);
      }
      for (const table of view.tables) {
        if (table.backfillTs === undefined || table.backfillTs > checkpointTs) {
          const why = table.backfillTs === undefined ? 'was never backfilled' : `has a backfill at ${table.backfillTs} that the checkpoint ${checkpointTs} has not passed`;
          return refuse('invalid', 'invalid', `an incremental backfill needs the sink to hold every table whole as of the checkpoint, but table ${table.name} ${why}: resume with {"backfill": true}`);
        }
      }
    }
    tables = view.tables.map(({ backfillSinceTs: _since, ...t }) => ({ ...t, backfillTs: backfill.atTs, ...(sinceTs === undefined ? {} : { backfillSinceTs: sinceTs }) }));
  }
  return { ok: true, next: { ...view, tables, state: 'normal', epoch: view.epoch + 1n } };
}

/**
 * Replace the tables: the ones kept keep their backfill, the ones added are backfilled at
 * `backfillAtTs` when given (refused past the target: the copy would never finish).
 */
export function updateTables<T extends LifecycleTable>(view: LifecycleView, asked: readonly T[], backfillAtTs?: bigint): LifecycleDecision & { readonly removed?: readonly string[] } {
  if (backfillAtTs !== undefined && view.targetTs !== undefined && backfillAtTs > view.targetTs) {
    return refuse('conflict', 'past-target', `a backfill at revision ${backfillAtTs} is past the changefeed's targetTs ${view.targetTs}: it would never finish`);
  }
  const previous = new Map(view.tables.map((t) => [t.name, t]));
  const tables = asked.map((t): LifecycleTable => {
    const old = previous.get(t.name);
    if (old?.backfillTs !== undefined) return { ...t, backfillTs: old.backfillTs, ...(old.backfillSinceTs === undefined ? {} : { backfillSinceTs: old.backfillSinceTs }) };
    return old === undefined && backfillAtTs !== undefined ? { ...t, backfillTs: backfillAtTs } : t;
  });
  const removed = view.tables.filter((t) => !asked.some((kept) => kept.name === t.name)).map((t) => t.name);
  return { ok: true, next: { ...view, tables }, removed };
}

/** What an operator's update asks: a new table list, the split policy on or off, or both. */
export interface ChangefeedUpdate<T extends LifecycleTable> {
  readonly tables?: readonly T[];
  readonly autoSplit?: boolean;
  /** Where tables new to the changefeed are backfilled, when asked; only with `tables`. */
  readonly backfillAtTs?: bigint;
}

/**
 * An operator's update (`PUT`): the tables as `updateTables` replaces them, when given,
 * and `autoSplit` as asked, when given. Without `tables` the view's tables are the very
 * same objects, so nothing about them (split boundaries, backfills, spans) changes.
 * Refused when it asks for nothing, or for a backfill without tables to add.
 */
export function update<T extends LifecycleTable>(view: LifecycleView, request: ChangefeedUpdate<T>): LifecycleDecision & { readonly removed?: readonly string[] } {
  if (request.tables === undefined && request.autoSplit === undefined) return refuse('invalid', 'invalid', 'an update needs "tables", "autoSplit" or both');
  if (request.tables === undefined && request.backfillAtTs !== undefined) return refuse('invalid', 'invalid', 'a backfill goes with "tables": it copies the tables an update adds');
  let next = view;
  let removed: readonly string[] = [];
  if (request.tables !== undefined) {
    const decision = updateTables(view, request.tables, request.backfillAtTs);
    if (!decision.ok) return decision;
    next = decision.next;
    removed = decision.removed ?? [];
  }
  if (request.autoSplit !== undefined) next = { ...next, autoSplit: request.autoSplit };
  return { ok: true, next, removed };
}

/**
 * A run of `runEpoch` failed: the failure is written only over the info of that run,
 * still normal. A run an operator already ended (paused, removed, resumed as a new epoch)
 * needs no failure: `ended`, and the run counts its failure as written.
 */
export function failRun(view: LifecycleView | undefined, runEpoch: bigint): { readonly kind: 'write'; readonly next: LifecycleView } | { readonly kind: 'ended' } {
  if (view === undefined || view.state !== 'normal' || view.epoch !== runEpoch) return { kind: 'ended' };
  return { kind: 'write', next: { ...view, state: 'failed' } };
}

/**
 * The changefeed lifecycle as operators drive it: create, update tables, pause, resume,
 * remove. The rules (which state allows what, epochs, backfill revisions) are pure, in
 * `src/core/changefeed-lifecycle.ts`; this file reads what they need (the source's
 * revision, the checkpoint), performs their decisions as etcd writes, and maps refusals
 * to errors; the HTTP API only maps requests and errors.
 *
 * Every write is compare-and-set in etcd: a create requires that the info key does not
 * exist, every other change requires the info's mod revision that was read. Two
 * requests that race (a duplicate create, a PUT and a resume) cannot both land: the
 * loser answers `conflict` and changes nothing. The checks that read the source (which
 * may be slow) run before a request joins the owner's write queue, so only etcd writes,
 * which have deadlines, wait in it.
 */
import type { Etcd3 } from 'etcd3';
import type { ChangefeedCache, Versioned } from '../cluster/changefeed-cache.ts';
import type { ClusterKeys } from '../cluster/keys.ts';
import { openSource } from '../pipeline/registry.ts';
import type { Source } from '../pipeline/source.ts';
import type { TableRange } from '../core/span.ts';
import type { PipelineBounds } from '../pipeline/bounds.ts';
import { BoundsError } from '../pipeline/bounds.ts';
import { checkChangefeedBounds } from '../pipeline/guard.ts';
import type { ChangefeedInfo, ChangefeedStatus, TableSpec } from './changefeed-info.ts';
import * as lifecycle from '../core/changefeed-lifecycle.ts';
import type { LifecycleDecision, LifecycleTable, LifecycleView } from '../core/changefeed-lifecycle.ts';
import { ValidationError, parseCreateRequest, parseUpdateRequest, tableRange, validateId } from './changefeed-info.ts';
import type { OwnerRole, SplitKeySampler, WriteResult } from './owner-role.ts';

/** Why a lifecycle request was refused; the API maps `kind` to an HTTP status. */
export type ServiceErrorKind = 'invalid' | 'not-found' | 'conflict' | 'unavailable';

/** A refused request: `code` is a stable word for clients, `message` says what to do. */
export class ServiceError extends Error {
  override readonly name = 'ServiceError';
  constructor(
    readonly kind: ServiceErrorKind,
    readonly code: string,
    message: string,
  ) {
    super(message);
  }

  get retryable(): boolean {
    return this.kind === 'unavailable';
  }
}

/** What the service needs of the capture it runs in. */
export interface ServiceContext {
  readonly cache: ChangefeedCache;
  readonly client: Etcd3;
  readonly keys: ClusterKeys;
  /** The acting owner role; throws a ServiceError when this capture is not it. */
  readonly owner: () => OwnerRole;
  /** Where sources and sinks may reach; checked on create, update and resume. */
  readonly bounds: PipelineBounds;
}

export class ChangefeedService {
  constructor(private readonly ctx: ServiceContext) {}

  /** A changefeed's info with its mod revision, or `not-found`. */
  find(id: string | undefined): Versioned<ChangefeedInfo> {
    validateId(id, 'changefeed id');
    const entry = this.ctx.cache.info(id as string);
    if (entry === undefined) throw new ServiceError('not-found', 'unknown-changefeed', `no changefeed ${JSON.stringify(id)}`);
    return entry;
  }

  async create(body: unknown): Promise<ChangefeedInfo> {
    this.ctx.owner();
    const request = parseCreateRequest(body);
    if (this.ctx.cache.info(request.id) !== undefined) throw exists(request.id);
    // Before the source is opened: a host outside --allowed-endpoints is never dialled.
    await this.inBounds(request.source.uri, request.sink.uri, request.tables);
    const source = openSource(request.source.uri, { credentialsRoot: this.ctx.bounds.credentialsRoot });
    let startTs: bigint;
    let tables: TableSpec[];
    const canSnapshot = source.snapshots !== undefined;
    try {
      if (request.start === 'now') startTs = await source.currentTs();
      else if (request.start === 'earliest') startTs = source.earliestTs === undefined ? await source.currentTs() : await source.earliestTs();
      else {
        startTs = BigInt(request.start);
        // A snapshot cannot be read at a revision etcd has not reached.
        if (request.backfill && canSnapshot) {
          const current = await source.currentTs();
          if (startTs > current) throw new ServiceError('invalid', 'invalid', `a backfill cannot start at revision ${startTs}: the source is at ${current}`);
        }
      }
      // Where the changes will be: a backfill copies the keys at its start, so they are
      // sampled there; a changefeed that only streams from a past revision gets the
      // changes made since, which are on the keys there are now (a table filled after
      // its start would otherwise be cut at raw bytes, all of its keys in one span; one
      // that starts ahead has no keys there to read yet).
      const backfills = request.backfill && canSnapshot;
      tables = await withSampledBoundaries(source, request.tables, [], async () => (backfills ? startTs : source.currentTs()));
    } finally {
      await source.close();
    }
    if (request.targetTs !== undefined && BigInt(request.targetTs) <= startTs) throw new ServiceError('invalid', 'invalid', 'targetTs must be after the start');
    if (request.backfill && !canSnapshot) throw new ServiceError('invalid', 'invalid', 'this source cannot backfill');
    if (request.backfill && startTs === 0n) throw new ServiceError('invalid', 'invalid', 'a backfill needs a start revision above 0');
    return this.queued(async () => {
      if (this.ctx.cache.info(request.id) !== undefined) throw exists(request.id);
      const info: ChangefeedInfo = {
        id: request.id,
        source: request.source,
        sink: request.sink,
        // A backfilled table is first copied as it stands at the start revision.
        tables: request.backfill ? tables.map((t) => ({ ...t, backfillTs: startTs.toString() })) : tables,
        start: request.start,
        startTs: startTs.toString(),
        ...(request.targetTs === undefined ? {} : { targetTs: request.targetTs }),
        ...(request.autoSplit ? { autoSplit: true } : {}),
        state: 'normal',
        epoch: (await this.freshEpoch()).toString(),
        createdAt: new Date().toISOString(),
      };
      // With a backfill nothing is in the sink yet, not even the start revision's state.
      const initialTs = request.backfill ? startTs - 1n : startTs;
      const status: ChangefeedStatus = { checkpointTs: initialTs.toString(), resolvedTs: initialTs.toString(), updatedAt: new Date().toISOString() };
      const result = await this.ctx.owner().writeInfo(info, { expectedModRevision: 0n, status });
      if (result === 'conflict') throw exists(request.id);
      refuseUnwritten(result, info.id);
      return info;
    });
  }

  /**
   * Replaces the tables (with `backfill`, tables new to the changefeed are copied first),
   * turns the split policy on or off (`autoSplit`), or both. An update of `autoSplit`
   * alone samples nothing and writes the tables back exactly as stored, so no span moves.
   */
  async update(id: string | undefined, body: unknown): Promise<ChangefeedInfo> {
    const { value: info } = this.find(id);
    const { tables: parsed, backfill, autoSplit } = parseUpdateRequest(body);
    const request = (tables: readonly TableSpec[] | undefined, backfillAtTs?: bigint): lifecycle.ChangefeedUpdate<ReturnType<typeof tableView>> => ({
      ...(tables === undefined ? {} : { tables: tables.map(tableView) }),
      ...(autoSplit === undefined ? {} : { autoSplit }),
      ...(backfillAtTs === undefined ? {} : { backfillAtTs }),
    });
    // Asked before the source is (it may be slow): an update that asks for nothing.
    decided(info.id, lifecycle.update(viewOf(info), request(parsed)));
    let asked: TableSpec[] | undefined;
    let backfillAtTs: bigint | undefined;
    if (parsed !== undefined) {
      await this.inBounds(info.source.uri, info.sink.uri, parsed);
      // Kept tables keep their split; added or re-split ones are sampled now.
      const source = openSource(info.source.uri, { credentialsRoot: this.ctx.bounds.credentialsRoot });
      try {
        asked = await withSampledBoundaries(source, parsed, info.tables, () => source.currentTs());
      } finally {
        await source.close();
      }
      // Tables kept keep their backfill; new ones are backfilled at the current revision when asked.
      if (backfill === true && asked.some((t) => !info.tables.some((old) => old.name === t.name))) backfillAtTs = await backfillRevision(info, this.ctx.bounds.credentialsRoot);
    }
    return this.queued(async () => {
      const latest = this.find(id);
      const decision = lifecycle.update(viewOf(latest.value), request(asked, backfillAtTs));
      const made = infoOf(latest.value, decided(latest.value.id, decision));
      // Without new tables the stored ones are written back as they are, byte for byte:
      // the owner then sees no table change, so it neither re-derives nor moves a span.
      const updated: ChangefeedInfo = asked === undefined ? { ...made, tables: latest.value.tables } : made;
      refuseUnwritten(await this.ctx.owner().writeInfo(updated, { expectedModRevision: latest.modRevision, removedTables: decision.removed ?? [] }), updated.id);
      return updated;
    });
  }

  async remove(id: string | undefined): Promise<string> {
    this.find(id);
    return this.queued(async () => {
      const latest = this.find(id);
      refuseUnwritten(await this.ctx.owner().deleteChangefeed(latest.value.id, latest.modRevision), latest.value.id);
      return latest.value.id;
    });
  }

  async pause(id: string | undefined, body: unknown): Promise<ChangefeedInfo> {
    this.find(id);
    if (body !== undefined && (typeof body !== 'object' || body === null || Array.isArray(body) || Object.keys(body).length > 0)) {
      throw new ValidationError('pause takes no body (or an empty JSON object)');
    }
    return this.queued(async () => {
      const latest = this.find(id);
      const updated = infoOf(latest.value, decided(latest.value.id, lifecycle.pause(latest.value.id, viewOf(latest.value))));
      refuseUnwritten(await this.ctx.owner().writeInfo(updated, { expectedModRevision: latest.modRevision }), updated.id);
      return updated;
    });
  }

  /**
   * Resumes a paused or failed changefeed in a new epoch, which fences every message of
   * the previous run. With `{"backfill": true}` every table is copied again at the current
   * revision R, the way out of a checkpoint the source compacted: spans stream from R on,
   * each span's backfill retires, in the sink, the keys deleted meanwhile, and the
   * checkpoint holds still until every span has its snapshot, then moves past R.
   */
  async resume(id: string | undefined, body: unknown): Promise<ChangefeedInfo> {
    const { value: info } = this.find(id);
    let backfill = false;
    let sinceTs: bigint | undefined;
    if (body !== undefined) {
      if (typeof body !== 'object' || body === null || Array.isArray(body)) throw new ValidationError('the body must be a JSON object {"backfill"?: boolean | {"sinceTs": "<revision>"}}');
      for (const key of Object.keys(body)) if (key !== 'backfill') throw new ValidationError(`unknown field "${key}"; resume takes only "backfill"`);
      const value = (body as { backfill?: unknown }).backfill;
      if (typeof value === 'object' && value !== null && !Array.isArray(value)) {
        sinceTs = parseSinceTs(value);
        backfill = true;
      } else {
        if (value !== undefined && typeof value !== 'boolean') throw new ValidationError('backfill must be true, false or {"sinceTs": "<revision>"}');
        backfill = value === true;
      }
    }
    // Asked before the source is (it may be slow): the lifecycle's refusal of a running changefeed.
    decided(info.id, lifecycle.resume(info.id, viewOf(info), 0n));
    await this.inBounds(info.source.uri, info.sink.uri, info.tables);
    // Asked outside the queue: the source may be slow.
    const atTs = backfill ? await backfillRevision(info, this.ctx.bounds.credentialsRoot) : undefined;
    return this.queued(async () => {
      const latest = this.find(id);
      const checkpointTs = BigInt(this.ctx.cache.status(latest.value.id)?.value.checkpointTs ?? latest.value.startTs);
      const decision = lifecycle.resume(latest.value.id, viewOf(latest.value), checkpointTs, atTs === undefined ? undefined : { atTs, ...(sinceTs === undefined ? {} : { sinceTs }) });
      const { error: _error, ...rest } = infoOf(latest.value, decided(latest.value.id, decision));
      const updated: ChangefeedInfo = rest;
      refuseUnwritten(await this.ctx.owner().writeInfo(updated, { expectedModRevision: latest.modRevision }), updated.id);
      return updated;
    });
  }

  /** Refuses (400) a source or sink outside the capture's bounds for these tables. */
  private async inBounds(sourceUri: string, sinkUri: string, tables: readonly TableSpec[]): Promise<void> {
    try {
      await checkChangefeedBounds(sourceUri, sinkUri, tables.map(tableRange).map((r) => ({ table: r.name, start: r.start, end: r.end })), this.ctx.bounds);
    } catch (error) {
      if (error instanceof BoundsError && !error.retryable) throw new ValidationError(error.message);
      if (error instanceof BoundsError) throw new ServiceError('unavailable', 'bounds-unchecked', error.message);
      throw error;
    }
  }

  /** Runs a write in the owner's bounded queue, one at a time; `busy` when it is full. */
  private queued<T>(write: () => Promise<T>): Promise<T> {
    const queued = this.ctx.owner().queueInfoWrite(write);
    if (queued === undefined) throw new ServiceError('unavailable', 'busy', 'too many changefeed changes are waiting; retry');
    return queued;
  }

  /**
   * The first epoch of a new changefeed: above every epoch an earlier changefeed of the
   * same id can have had. Each of its epochs came from a write (a create or a resume,
   * each +1), so none exceeds the etcd revision it was written at, below the current one.
   * A capture that never saw the old changefeed's deletion then cannot mistake the new
   * one's messages for the old one's.
   */
  private async freshEpoch(): Promise<bigint> {
    const response = await this.ctx.client.get(this.ctx.keys.changefeedInfo('-')).exec();
    return BigInt(response.header.revision) + 1n;
  }
}

/**
 * The owner's split-key sampler (a split without `at`): the median of a sample of the
 * span's keys at the source's current revision, as at create (`sampleBoundaries` with 2
 * spans); undefined when the source has no sample or the span too few keys. The source
 * is checked against the capture's bounds before it is dialled, as on create.
 */
export function splitKeySampler(bounds: PipelineBounds): SplitKeySampler {
  return async (info, span) => {
    await checkChangefeedBounds(info.source.uri, info.sink.uri, [{ table: span.table, start: span.start, end: span.end }], bounds);
    const source = openSource(info.source.uri, { credentialsRoot: bounds.credentialsRoot });
    try {
      if (source.sampleBoundaries === undefined) return undefined;
      const [key] = await source.sampleBoundaries({ name: span.table, start: span.start, end: span.end }, 2, await source.currentTs());
      return key;
    } finally {
      await source.close();
    }
  };
}

function exists(id: string): ServiceError {
  return new ServiceError('conflict', 'changefeed-exists', `changefeed ${id} already exists`);
}

/** A write that did not land: someone changed the changefeed meanwhile, or ownership was lost. */
function refuseUnwritten(result: WriteResult, id: string): void {
  if (result === 'conflict') throw new ServiceError('conflict', 'changed-meanwhile', `changefeed ${id} was changed by another request meanwhile; read it again and retry`);
  if (result === 'fenced') throw new ServiceError('unavailable', 'not-owner', 'ownership was lost; retry');
}

/** The revision a backfill of the changefeed's tables would copy now: its source's current one. */
async function backfillRevision(info: ChangefeedInfo, credentialsRoot: string): Promise<bigint> {
  const source = openSource(info.source.uri, { credentialsRoot });
  try {
    if (source.snapshots === undefined) throw new ServiceError('invalid', 'invalid', 'this source cannot backfill');
    return await source.currentTs();
  } finally {
    await source.close();
  }
}

/** `{"sinceTs": "<revision>"}`: the lower bound of an incremental backfill, as a revision. */
function parseSinceTs(value: object): bigint {
  for (const key of Object.keys(value)) if (key !== 'sinceTs') throw new ValidationError(`unknown field "backfill.${key}"; an incremental backfill takes only "sinceTs"`);
  const since = (value as { sinceTs?: unknown }).sinceTs;
  const text = typeof since === 'number' && Number.isSafeInteger(since) ? String(since) : since;
  if (typeof text !== 'string' || !/^\d{1,20}$/.test(text)) throw new ValidationError('backfill.sinceTs must be a revision: a decimal string of up to 20 digits');
  return BigInt(text);
}

/** The lifecycle's view of a stored info (revisions as bigints). */
/**
 * The tables with their boundaries: given ones as they are; a table kept as it was (same
 * range and span count) keeps its stored split, so an update never moves its spans;
 * any other table of more than one span is cut where the source's keys say, as of
 * `atTs()` (asked once, and only when a table needs sampling), when the source can tell
 * (else at evenly spaced raw bytes, with no boundaries stored). A sample that finds too
 * few keys for every boundary stores none either.
 */
async function withSampledBoundaries(source: Source, tables: readonly TableSpec[], previous: readonly TableSpec[], atTs: () => Promise<bigint>): Promise<TableSpec[]> {
  const out: TableSpec[] = [];
  let sampledAt: Promise<bigint> | undefined;
  for (const table of tables) {
    const spans = table.spans ?? 1;
    if (table.boundaries !== undefined || spans <= 1) {
      out.push(table);
      continue;
    }
    const old = previous.find((p) => p.name === table.name);
    const range = tableRange(table);
    if (old !== undefined && (old.spans ?? 1) === spans && sameRange(tableRange(old), range)) {
      out.push(old.boundaries === undefined ? table : { ...table, boundaries: old.boundaries });
      continue;
    }
    let boundaries: string[] | undefined;
    try {
      if (source.sampleBoundaries !== undefined) {
        sampledAt ??= atTs();
        boundaries = await source.sampleBoundaries(range, spans, await sampledAt);
      }
    } catch (error) {
      throw new ServiceError('unavailable', 'source-unavailable', `cannot sample the keys of table ${table.name} to split it: ${(error as Error).message}`);
    }
    out.push(boundaries !== undefined && boundaries.length === spans - 1 ? { ...table, boundaries } : table);
  }
  return out;
}

function sameRange(a: TableRange, b: TableRange): boolean {
  return a.start === b.start && a.end === b.end;
}

function viewOf(info: ChangefeedInfo): LifecycleView {
  return {
    state: info.state,
    epoch: BigInt(info.epoch),
    ...(info.targetTs === undefined ? {} : { targetTs: BigInt(info.targetTs) }),
    tables: info.tables.map(tableView),
    ...(info.autoSplit === true ? { autoSplit: true } : {}),
  };
}

function tableView(table: TableSpec): LifecycleTable & Omit<TableSpec, 'backfillTs' | 'backfillSinceTs'> {
  const { backfillTs, backfillSinceTs, ...rest } = table;
  return { ...rest, ...(backfillTs === undefined ? {} : { backfillTs: BigInt(backfillTs) }), ...(backfillSinceTs === undefined ? {} : { backfillSinceTs: BigInt(backfillSinceTs) }) };
}

/** The info a lifecycle decision makes of `info` (revisions back as decimal strings). */
function infoOf(info: ChangefeedInfo, view: LifecycleView): ChangefeedInfo {
  const tables = view.tables.map((table): TableSpec => {
    const { backfillTs, backfillSinceTs, ...rest } = table as LifecycleTable & Omit<TableSpec, 'backfillTs' | 'backfillSinceTs'>;
    return { ...rest, ...(backfillTs === undefined ? {} : { backfillTs: backfillTs.toString() }), ...(backfillSinceTs === undefined ? {} : { backfillSinceTs: backfillSinceTs.toString() }) };
  });
  // Stored as at create: `autoSplit: true`, or no field when off.
  const { autoSplit: _autoSplit, ...rest } = info;
  return { ...rest, state: view.state, epoch: view.epoch.toString(), tables, ...(view.autoSplit === true ? { autoSplit: true } : {}) };
}

/** The decided view, or the refusal as a ServiceError (`invalid` 400, `conflict` 409). */
function decided(id: string, decision: LifecycleDecision): LifecycleView {
  if (decision.ok) return decision.next;
  if (decision.kind === 'invalid') throw new ValidationError(decision.message);
  throw new ServiceError('conflict', decision.code, decision.code === 'past-target' ? `changefeed ${id}: ${decision.message}` : decision.message);
}

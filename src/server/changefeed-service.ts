/**
 * The changefeed lifecycle as operators drive it: create, update tables, pause, resume,
 * remove. The rules (which state allows what, epochs, backfill revisions) and the etcd
 * writes live here; the HTTP API only maps requests and errors.
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
import type { ChangefeedInfo, ChangefeedStatus } from './changefeed-info.ts';
import { ValidationError, parseCreateRequest, parseTables, validateId } from './changefeed-info.ts';
import type { OwnerRole, WriteResult } from './owner-role.ts';

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
    const source = openSource(request.source.uri);
    let startTs: bigint;
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
        tables: request.backfill ? request.tables.map((t) => ({ ...t, backfillTs: startTs.toString() })) : request.tables,
        start: request.start,
        startTs: startTs.toString(),
        ...(request.targetTs === undefined ? {} : { targetTs: request.targetTs }),
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

  /** Replaces the tables; with `backfill`, tables new to the changefeed are copied first. */
  async update(id: string | undefined, body: unknown): Promise<ChangefeedInfo> {
    const { value: info } = this.find(id);
    if (typeof body !== 'object' || body === null || Array.isArray(body)) throw new ValidationError('the body must be a JSON object {"tables": [...]}');
    for (const key of Object.keys(body)) if (key !== 'tables' && key !== 'backfill') throw new ValidationError(`unknown field "${key}"; only "tables" (and "backfill") can be updated`);
    const backfill = (body as { backfill?: unknown }).backfill;
    if (backfill !== undefined && typeof backfill !== 'boolean') throw new ValidationError('backfill must be true or false');
    const asked = parseTables((body as { tables?: unknown }).tables);
    // Tables kept keep their backfill; new ones are backfilled at the current revision when asked.
    let backfillTs: string | undefined;
    if (backfill === true && asked.some((t) => !info.tables.some((old) => old.name === t.name))) {
      const at = await backfillRevision(info);
      refusePastTarget(info, at);
      backfillTs = at.toString();
    }
    return this.queued(async () => {
      const latest = this.find(id);
      const previous = new Map(latest.value.tables.map((t) => [t.name, t]));
      const tables = asked.map((t) => {
        const old = previous.get(t.name);
        if (old?.backfillTs !== undefined) return { ...t, backfillTs: old.backfillTs };
        return old === undefined && backfillTs !== undefined ? { ...t, backfillTs } : t;
      });
      const updated: ChangefeedInfo = { ...latest.value, tables };
      const removedTables = latest.value.tables.filter((t) => !tables.some((kept) => kept.name === t.name)).map((t) => t.name);
      refuseUnwritten(await this.ctx.owner().writeInfo(updated, { expectedModRevision: latest.modRevision, removedTables }), updated.id);
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
      if (latest.value.state === 'paused') throw new ServiceError('conflict', 'already-paused', `changefeed ${latest.value.id} is already paused`);
      const updated: ChangefeedInfo = { ...latest.value, state: 'paused' };
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
        sinceTs = incrementalSince(value, info, this.ctx.cache.status(info.id)?.value.checkpointTs ?? info.startTs);
        backfill = true;
      } else {
        if (value !== undefined && typeof value !== 'boolean') throw new ValidationError('backfill must be true, false or {"sinceTs": "<revision>"}');
        backfill = value === true;
      }
    }
    if (info.state === 'normal') throw notPaused(info.id);
    // Asked outside the queue: the source may be slow.
    const snapshotTs = backfill ? await backfillRevision(info) : undefined;
    return this.queued(async () => {
      const latest = this.find(id);
      if (latest.value.state === 'normal') throw notPaused(latest.value.id);
      const { error: _error, ...rest } = latest.value;
      let tables = rest.tables;
      if (snapshotTs !== undefined) {
        refusePastTarget(latest.value, snapshotTs);
        tables = rest.tables.map(({ backfillSinceTs: _since, ...t }) => ({
          ...t,
          backfillTs: snapshotTs.toString(),
          ...(sinceTs === undefined ? {} : { backfillSinceTs: sinceTs.toString() }),
        }));
      }
      const updated: ChangefeedInfo = { ...rest, tables, state: 'normal', epoch: (BigInt(rest.epoch) + 1n).toString() };
      refuseUnwritten(await this.ctx.owner().writeInfo(updated, { expectedModRevision: latest.modRevision }), updated.id);
      return updated;
    });
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

function exists(id: string): ServiceError {
  return new ServiceError('conflict', 'changefeed-exists', `changefeed ${id} already exists`);
}

function notPaused(id: string): ServiceError {
  return new ServiceError('conflict', 'not-paused', `changefeed ${id} is running`);
}

/** A write that did not land: someone changed the changefeed meanwhile, or ownership was lost. */
function refuseUnwritten(result: WriteResult, id: string): void {
  if (result === 'conflict') throw new ServiceError('conflict', 'changed-meanwhile', `changefeed ${id} was changed by another request meanwhile; read it again and retry`);
  if (result === 'fenced') throw new ServiceError('unavailable', 'not-owner', 'ownership was lost; retry');
}

/** The revision a backfill of the changefeed's tables would copy now: its source's current one. */
async function backfillRevision(info: ChangefeedInfo): Promise<bigint> {
  const source = openSource(info.source.uri);
  try {
    if (source.snapshots === undefined) throw new ServiceError('invalid', 'invalid', 'this source cannot backfill');
    return await source.currentTs();
  } finally {
    await source.close();
  }
}

/** A backfill at `revision` would write past the changefeed's targetTs: conflict. */
function refusePastTarget(info: ChangefeedInfo, revision: bigint): void {
  if (info.targetTs !== undefined && BigInt(info.targetTs) < revision) {
    throw new ServiceError('conflict', 'past-target', `changefeed ${info.id} stops at targetTs ${info.targetTs}, below the current revision ${revision}: a backfill there would pass it`);
  }
}

/**
 * The lower bound of an incremental backfill, `{"sinceTs": "<revision>"}`: at most the
 * persisted checkpoint, since the sink holds everything up to that and no more; a bound
 * above it would skip the changes between the two.
 */
function incrementalSince(value: object, info: ChangefeedInfo, checkpointTs: string): bigint {
  for (const key of Object.keys(value)) if (key !== 'sinceTs') throw new ValidationError(`unknown field "backfill.${key}"; an incremental backfill takes only "sinceTs"`);
  const since = (value as { sinceTs?: unknown }).sinceTs;
  const text = typeof since === 'number' && Number.isSafeInteger(since) ? String(since) : since;
  if (typeof text !== 'string' || !/^\d{1,20}$/.test(text)) throw new ValidationError('backfill.sinceTs must be a revision: a decimal string of up to 20 digits');
  const ts = BigInt(text);
  if (ts > BigInt(checkpointTs)) {
    throw new ValidationError(`backfill.sinceTs ${ts} is above the changefeed's checkpoint ${checkpointTs}: the sink holds nothing after the checkpoint, so the changes between them would be lost`);
  }
  // The unchanged keys are not copied: the sink must hold every table whole as of the
  // checkpoint, which only a backfill that finished at or below it guarantees (a table
  // never backfilled lacks the keys written before the changefeed started).
  for (const table of info.tables) {
    if (table.backfillTs === undefined || BigInt(table.backfillTs) > BigInt(checkpointTs)) {
      const why = table.backfillTs === undefined ? 'was never backfilled' : `has a backfill at ${table.backfillTs} that the checkpoint ${checkpointTs} has not passed`;
      throw new ValidationError(`an incremental backfill needs the sink to hold every table whole as of the checkpoint, but table ${table.name} ${why}: resume with {"backfill": true}`);
    }
  }
  return ts;
}

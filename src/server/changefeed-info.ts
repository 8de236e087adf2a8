/**
 * A changefeed's configuration as stored in etcd (`/changefeeds/<id>/info`), its
 * validation (every field, with a message saying what is wrong), and how its tables
 * split into spans.
 */
import type { Span, TableRange } from '../core/span.ts';
import { prefixEnd } from '../core/span.ts';
import { boundariesProblem, splitAtBoundaries, splitRange } from '../core/split.ts';
import { validateSinkUri, validateSourceUri } from '../pipeline/registry.ts';
import { BadUriError } from '../pipeline/uri.ts';

/** A table of a changefeed: a key prefix or a [start, end) range, split into spans. */
export interface TableSpec {
  readonly name: string;
  readonly prefix?: string;
  readonly start?: string;
  readonly end?: string;
  readonly spans?: number;
  /**
   * Where the spans start after the first: `spans - 1` keys, strictly increasing, inside
   * the table's range. Given by the user, or chosen at create from a sample of the
   * table's keys (each span then holds about as many keys); without them the range is
   * cut at evenly spaced raw bytes.
   */
  readonly boundaries?: readonly string[];
  /** Set by the owner when the table is backfilled: the snapshot revision. */
  readonly backfillTs?: string;
  /**
   * Set with `backfillTs` for an incremental backfill (a resume with `{"backfill":
   * {"sinceTs": R}}`): only keys modified after R are copied.
   */
  readonly backfillSinceTs?: string;
}

export type ChangefeedState = 'normal' | 'paused' | 'failed';

/** What is stored under `/changefeeds/<id>/info`. Timestamps are decimal strings. */
export interface ChangefeedInfo {
  readonly id: string;
  readonly source: { readonly uri: string };
  readonly sink: { readonly uri: string };
  readonly tables: readonly TableSpec[];
  readonly start: string;
  readonly startTs: string;
  readonly targetTs?: string;
  readonly state: ChangefeedState;
  readonly error?: string;
  /** Bumped on every resume: fences messages of the previous run. */
  readonly epoch: string;
  readonly createdAt: string;
  /** The owner's split policy splits hot spans and merges quiet ones (issue 12); absent: off. */
  readonly autoSplit?: boolean;
}

/** What is stored under `/changefeeds/<id>/status`. */
export interface ChangefeedStatus {
  readonly checkpointTs: string;
  readonly resolvedTs: string;
  readonly updatedAt: string;
}

/** Bad input from a user: the API answers 400 with this message. */
export class ValidationError extends Error {
  override readonly name = 'ValidationError';
  readonly retryable = false;
}

/** Bounds on what a changefeed may ask for. */
export const changefeedLimits = {
  tablesMax: 10_000,
  spansPerTableMax: 100_000,
  spansMax: 1_000_000,
  idLengthMax: 128,
} as const;

const idPattern = /^[a-zA-Z0-9][a-zA-Z0-9._-]*$/;
const tsPattern = /^\d{1,20}$/;

/** Checks an id used in paths and keys. */
export function validateId(id: unknown, what: string): string {
  if (typeof id !== 'string' || id.length === 0 || id.length > changefeedLimits.idLengthMax || !idPattern.test(id)) {
    throw new ValidationError(`${what} must be 1-${changefeedLimits.idLengthMax} characters of letters, digits, ".", "_" or "-", starting with a letter or digit`);
  }
  return id;
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function rejectUnknown(value: Record<string, unknown>, allowed: readonly string[], where: string): void {
  for (const key of Object.keys(value)) {
    if (!allowed.includes(key)) throw new ValidationError(`unknown field "${key}" in ${where}`);
  }
}

/** Parses a decimal uint64 timestamp. */
export function parseTs(value: unknown, what: string): bigint {
  if (typeof value !== 'string' || !tsPattern.test(value) || BigInt(value) > (1n << 64n) - 1n) {
    throw new ValidationError(`${what} must be a decimal string of an unsigned 64-bit integer`);
  }
  return BigInt(value);
}

function parseUriField(value: unknown, where: string, validate: (uri: string) => void): { uri: string } {
  if (!isObject(value)) throw new ValidationError(`${where} must be an object {"uri": "..."}`);
  rejectUnknown(value, ['uri'], where);
  if (typeof value.uri !== 'string' || value.uri.length === 0 || value.uri.length > 4096) throw new ValidationError(`${where}.uri must be a non-empty string`);
  try {
    validate(value.uri);
  } catch (error) {
    if (error instanceof BadUriError) throw new ValidationError(error.message);
    throw error;
  }
  return { uri: value.uri };
}

/** Validates a table list (create and update). */
export function parseTables(value: unknown): TableSpec[] {
  if (!Array.isArray(value) || value.length === 0) throw new ValidationError('tables must be a non-empty array');
  if (value.length > changefeedLimits.tablesMax) throw new ValidationError(`at most ${changefeedLimits.tablesMax} tables`);
  const names = new Set<string>();
  let spans = 0;
  const tables = value.map((raw, i): TableSpec => {
    const where = `tables[${i}]`;
    if (!isObject(raw)) throw new ValidationError(`${where} must be an object`);
    rejectUnknown(raw, ['name', 'prefix', 'start', 'end', 'spans', 'boundaries'], where);
    const name = validateId(raw.name, `${where}.name`);
    if (names.has(name)) throw new ValidationError(`table "${name}" appears twice`);
    names.add(name);
    for (const field of ['prefix', 'start', 'end'] as const) {
      if (raw[field] !== undefined && (typeof raw[field] !== 'string' || (raw[field] as string).length > 1024)) {
        throw new ValidationError(`${where}.${field} must be a string of at most 1024 characters`);
      }
    }
    if (raw.prefix !== undefined && (raw.start !== undefined || raw.end !== undefined)) throw new ValidationError(`${where}: give either prefix or start/end, not both`);
    if (raw.start !== undefined && raw.end !== undefined && raw.end !== '' && !((raw.start as string) < (raw.end as string))) {
      throw new ValidationError(`${where}: start must sort before end`);
    }
    const boundaries = parseBoundaries(raw.boundaries, `${where}.boundaries`);
    const count = raw.spans ?? (boundaries === undefined ? 1 : boundaries.length + 1);
    if (typeof count !== 'number' || !Number.isSafeInteger(count) || count < 1 || count > changefeedLimits.spansPerTableMax) {
      throw new ValidationError(`${where}.spans must be an integer from 1 to ${changefeedLimits.spansPerTableMax}`);
    }
    if (boundaries !== undefined && boundaries.length !== count - 1) {
      throw new ValidationError(`${where}: ${count} spans need ${count - 1} boundaries, got ${boundaries.length}`);
    }
    spans += count;
    const spec: { -readonly [K in keyof TableSpec]: TableSpec[K] } = { name, spans: count };
    if (raw.prefix !== undefined) spec.prefix = raw.prefix as string;
    if (raw.start !== undefined) spec.start = raw.start as string;
    if (raw.end !== undefined) spec.end = raw.end as string;
    if (boundaries !== undefined) {
      const problem = boundariesProblem(tableRange(spec), boundaries);
      if (problem !== undefined) throw new ValidationError(`${where}.boundaries: ${problem}`);
      spec.boundaries = boundaries;
    }
    return spec;
  });
  if (spans > changefeedLimits.spansMax) throw new ValidationError(`at most ${changefeedLimits.spansMax} spans in all`);
  return tables;
}

/** A table's explicit boundaries: at most `spansPerTableMax - 1` keys of at most 1024 characters. */
function parseBoundaries(value: unknown, where: string): string[] | undefined {
  if (value === undefined) return undefined;
  if (!Array.isArray(value)) throw new ValidationError(`${where} must be an array of keys`);
  if (value.length > changefeedLimits.spansPerTableMax - 1) throw new ValidationError(`${where} may hold at most ${changefeedLimits.spansPerTableMax - 1} keys`);
  for (const [i, key] of value.entries()) {
    if (typeof key !== 'string' || key.length === 0 || key.length > 1024) throw new ValidationError(`${where}[${i}] must be a non-empty string of at most 1024 characters`);
  }
  return value as string[];
}

/** The validated body of `POST /api/v1/changefeeds`. */
export interface CreateRequest {
  readonly id: string;
  readonly source: { readonly uri: string };
  readonly sink: { readonly uri: string };
  readonly tables: TableSpec[];
  readonly start: string;
  readonly targetTs?: string;
  readonly backfill: boolean;
  /** True: the split policy runs for this changefeed. */
  readonly autoSplit: boolean;
}

/** Validates a create request. */
export function parseCreateRequest(body: unknown): CreateRequest {
  if (!isObject(body)) throw new ValidationError('the body must be a JSON object');
  rejectUnknown(body, ['id', 'source', 'sink', 'tables', 'start', 'targetTs', 'backfill', 'autoSplit'], 'the body');
  if (body.backfill !== undefined && typeof body.backfill !== 'boolean') throw new ValidationError('backfill must be true or false');
  if (body.autoSplit !== undefined && typeof body.autoSplit !== 'boolean') throw new ValidationError('autoSplit must be true or false');
  const id = validateId(body.id, 'id');
  const source = parseUriField(body.source, 'source', validateSourceUri);
  const sink = parseUriField(body.sink, 'sink', validateSinkUri);
  const tables = parseTables(body.tables);
  const start = body.start ?? 'now';
  if (typeof start !== 'string' || !(start === 'now' || start === 'earliest' || tsPattern.test(start))) {
    throw new ValidationError('start must be "now", "earliest" or a decimal timestamp');
  }
  if (tsPattern.test(start)) parseTs(start, 'start');
  const request: CreateRequest = { id, source, sink, tables, start, backfill: body.backfill === true, autoSplit: body.autoSplit === true };
  if (body.targetTs !== undefined) {
    parseTs(body.targetTs, 'targetTs');
    return { ...request, targetTs: body.targetTs as string };
  }
  return request;
}

/** The validated body of `PUT /api/v1/changefeeds/{id}`: new tables, the split policy, or both. */
export interface UpdateRequest {
  readonly tables?: TableSpec[];
  /** Backfill the tables the update adds; only with `tables`. */
  readonly backfill: boolean;
  /** On or off; absent: as it is. */
  readonly autoSplit?: boolean;
}

/**
 * Validates an update request's shape. Whether it asks for anything is the lifecycle's
 * rule (`update` in src/core/changefeed-lifecycle.ts); a backfill without tables is
 * refused here, since only tables can be backfilled.
 */
export function parseUpdateRequest(body: unknown): UpdateRequest {
  if (!isObject(body)) throw new ValidationError('the body must be a JSON object {"tables"?: [...], "backfill"?: boolean, "autoSplit"?: boolean}');
  for (const key of Object.keys(body)) {
    if (key !== 'tables' && key !== 'backfill' && key !== 'autoSplit') throw new ValidationError(`unknown field "${key}"; only "tables" (with "backfill") and "autoSplit" can be updated`);
  }
  if (body.backfill !== undefined && typeof body.backfill !== 'boolean') throw new ValidationError('backfill must be true or false');
  if (body.autoSplit !== undefined && typeof body.autoSplit !== 'boolean') throw new ValidationError('autoSplit must be true or false');
  if (body.tables === undefined && body.backfill !== undefined) throw new ValidationError('backfill goes with "tables": it copies the tables an update adds');
  return {
    ...(body.tables === undefined ? {} : { tables: parseTables(body.tables) }),
    backfill: body.backfill === true,
    ...(body.autoSplit === undefined ? {} : { autoSplit: body.autoSplit as boolean }),
  };
}

/** The key range of a table: its prefix (default `<name>/`) or its start/end. */
export function tableRange(spec: TableSpec): TableRange {
  if (spec.start !== undefined || spec.end !== undefined) return { name: spec.name, start: spec.start ?? '', end: spec.end ?? '' };
  const prefix = spec.prefix ?? `${spec.name}/`;
  return { name: spec.name, start: prefix, end: prefixEnd(prefix) };
}

/** Every table range and span of a changefeed. */
export function changefeedSpans(info: Pick<ChangefeedInfo, 'tables'>): { tables: TableRange[]; spans: Span[] } {
  const tables: TableRange[] = [];
  const spans: Span[] = [];
  for (const spec of info.tables) {
    tables.push(tableRange(spec));
    spans.push(...tableSpans(spec));
  }
  return { tables, spans };
}

/** The spans of one table: at its boundaries, or at evenly spaced raw bytes. */
export function tableSpans(spec: TableSpec): Span[] {
  const range = tableRange(spec);
  return spec.boundaries === undefined ? splitRange(range, spec.spans ?? 1) : splitAtBoundaries(range, spec.boundaries);
}

/**
 * The table spec that stores `spans` as its tiling (`spans` is their count, `boundaries`
 * where each after the first starts), so that every owner derives exactly these spans;
 * undefined when they do not tile the table's range exactly (sorted, touching, from its
 * start to its end), e.g. because the table was cut anew meanwhile.
 */
export function specWithTiling(spec: TableSpec, spans: readonly Span[]): TableSpec | undefined {
  const range = tableRange(spec);
  if (spans.length === 0 || spans.length > changefeedLimits.spansPerTableMax) return undefined;
  let at = range.start;
  for (const span of spans) {
    if (span.table !== spec.name || span.start !== at || (span.end !== '' && !(span.start < span.end))) return undefined;
    at = span.end;
  }
  if (at !== range.end) return undefined;
  const { boundaries: _boundaries, ...rest } = spec;
  if (spans.length === 1) return { ...rest, spans: 1 };
  return { ...rest, spans: spans.length, boundaries: spans.slice(1).map((span) => span.start) };
}

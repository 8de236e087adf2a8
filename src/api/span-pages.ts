/**
 * The query of `GET /api/v1/changefeeds/{id}/spans`: a page size, an opaque cursor and
 * filters, checked into a {@link SpansPageQuery} or refused with a {@link ValidationError}
 * (a 400), and the cursor's encoding. The page itself comes from the replication
 * manager's span order (src/core/span-order.ts), never from a sort per request.
 */
import { replicationStates } from '../core/replication-set.ts';
import type { ReplicationState } from '../core/replication-set.ts';
import type { Span } from '../core/span.ts';
import { ValidationError } from '../server/changefeed-info.ts';

/** The bounds of one page of spans. */
export interface SpansPageLimits {
  /** Spans per page when `limit` is not given. */
  readonly limitDefault: number;
  /** The largest `limit` accepted. */
  readonly limitMax: number;
  /**
   * Spans looked at per page when filtering by capture or state: a rare state among a
   * million spans must not be one synchronous walk. A page that reaches it is short (even
   * empty) but has a `nextCursor`; only `nextCursor: null` says the list is done.
   */
  readonly scanMax: number;
}

export const spansPageDefaults: SpansPageLimits = { limitDefault: 1_000, limitMax: 10_000, scanMax: 100_000 };

/** A checked query. */
export interface SpansPageQuery {
  readonly limit: number;
  readonly after: Span | undefined;
  readonly table: string | undefined;
  readonly capture: string | undefined;
  readonly state: ReplicationState | undefined;
}

const knownParams = ['limit', 'cursor', 'table', 'capture', 'state'];

/** Checks the query string; throws ValidationError (400) with what is wrong. */
export function parseSpansPageQuery(query: URLSearchParams, limits: SpansPageLimits = spansPageDefaults): SpansPageQuery {
  const seen = new Set<string>();
  for (const name of query.keys()) {
    if (!knownParams.includes(name)) throw new ValidationError(`unknown query parameter "${name}" (known: ${knownParams.join(', ')})`);
    if (seen.has(name)) throw new ValidationError(`query parameter "${name}" is given more than once`);
    seen.add(name);
  }
  const rawLimit = query.get('limit');
  let limit = limits.limitDefault;
  if (rawLimit !== null) {
    limit = Number(rawLimit);
    if (!/^\d+$/.test(rawLimit) || !Number.isSafeInteger(limit) || limit < 1 || limit > limits.limitMax) {
      throw new ValidationError(`limit=${JSON.stringify(rawLimit)} must be an integer from 1 to ${limits.limitMax}`);
    }
  }
  const state = query.get('state') ?? undefined;
  if (state !== undefined && !(replicationStates as readonly string[]).includes(state)) {
    throw new ValidationError(`state=${JSON.stringify(state)} must be one of ${replicationStates.join(', ')}`);
  }
  const cursor = query.get('cursor') ?? undefined;
  return {
    limit,
    after: cursor === undefined ? undefined : decodeSpanCursor(cursor),
    table: query.get('table') ?? undefined,
    capture: query.get('capture') ?? undefined,
    state: state as ReplicationState | undefined,
  };
}

/** The cursor after `span`: opaque to clients (base64url of the span), stable across owners. */
export function encodeSpanCursor(span: Span): string {
  return Buffer.from(JSON.stringify([span.table, span.start, span.end]), 'utf8').toString('base64url');
}

/** The span a cursor continues after; throws ValidationError for anything not made by {@link encodeSpanCursor}. */
export function decodeSpanCursor(cursor: string): Span {
  const bad = (): ValidationError => new ValidationError(`cursor=${JSON.stringify(cursor.slice(0, 64))} is not a cursor this API gave (pass nextCursor back as it is)`);
  if (!/^[A-Za-z0-9_-]{1,8192}$/.test(cursor)) throw bad();
  let parsed: unknown;
  try {
    parsed = JSON.parse(Buffer.from(cursor, 'base64url').toString('utf8'));
  } catch {
    throw bad();
  }
  if (!Array.isArray(parsed) || parsed.length !== 3 || !parsed.every((part) => typeof part === 'string')) throw bad();
  const [table, start, end] = parsed as [string, string, string];
  return { table, start, end };
}

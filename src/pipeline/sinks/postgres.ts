/**
 * The `postgres` sink (with the `pg` library): one SQL table per changefeed table,
 * created if missing, holding the latest state per key with the revision that set it.
 * `postgres://user:password@host:port/database[?poolMax=<n>]`.
 *
 * Table `"<table>"`: `key bytea primary key, value bytea, ts numeric(20,0), deleted
 * boolean`. Every event is an upsert guarded by its timestamp, so a replayed older event
 * (at-least-once delivery) never overwrites a newer one. A delete keeps a tombstone row
 * (`deleted = true`, `value` null) with its revision: without it, a replayed older put
 * could bring a deleted key back. Readers select `where not deleted`.
 *
 * Each write is one statement in its own transaction, durable once it returns, so
 * `flush` has nothing left to do. `retire` tombstones the span's older rows.
 */
import pg from 'pg';
import type { Span } from '../../core/span.ts';
import type { RetireScope, Sink } from '../sink.ts';
import type { ChangeEvent } from '../source.ts';
import { BadUriError, intParam, parseUri } from '../uri.ts';

export interface PostgresSinkOptions {
  readonly connectionString: string;
  readonly poolMax: number;
}

export function parsePostgresSinkUri(uri: string): PostgresSinkOptions {
  const url = parseUri(uri, ['postgres', 'postgresql'], 'sink');
  if (url.hostname === '' || url.pathname.length < 2) throw new BadUriError(`sink uri must be postgres://user:password@host:port/database`);
  const poolMax = intParam(url, 'poolMax', 4, 1, 100);
  url.searchParams.delete('poolMax');
  return { connectionString: url.toString(), poolMax };
}

/** A SQL identifier for a table name (names are letters, digits, ".", "_", "-"). */
export function tableIdentifier(table: string): string {
  return `"${table.replaceAll('"', '""')}"`;
}

/** Rows written per statement. */
const rowsPerStatement = 500;

export class PostgresSink implements Sink {
  private readonly pool: pg.Pool;
  private readonly created = new Map<string, Promise<void>>();

  constructor(options: PostgresSinkOptions) {
    this.pool = new pg.Pool({ connectionString: options.connectionString, max: options.poolMax, connectionTimeoutMillis: 10_000 });
    // An idle client's error (the server restarted) must not kill the process.
    this.pool.on('error', () => undefined);
  }

  async write(span: Span, events: readonly ChangeEvent[]): Promise<void> {
    if (events.length === 0) return;
    await this.ensureTable(span.table);
    // Only the last event per key matters within one write.
    const latest = new Map<string, ChangeEvent>();
    for (const event of events) latest.set(event.key, event);
    const rows = [...latest.values()];
    const table = tableIdentifier(span.table);
    for (let i = 0; i < rows.length; i += rowsPerStatement) {
      const chunk = rows.slice(i, i + rowsPerStatement);
      const values: unknown[] = [];
      const tuples = chunk.map((event, j) => {
        values.push(Buffer.from(event.key, 'latin1'), event.op === 'put' ? Buffer.from(event.value ?? '', 'latin1') : null, event.ts.toString(), event.op === 'delete');
        return `($${j * 4 + 1}, $${j * 4 + 2}, $${j * 4 + 3}::numeric, $${j * 4 + 4})`;
      });
      await this.pool.query(
        `insert into ${table} as t (key, value, ts, deleted) values ${tuples.join(', ')}
         on conflict (key) do update set value = excluded.value, ts = excluded.ts, deleted = excluded.deleted
         where t.ts < excluded.ts`,
        values,
      );
    }
  }

  async flush(): Promise<void> {}

  /** Tombstones, at `beforeTs`, every live row of the span older than it. */
  async retire(span: Span, beforeTs: bigint, scope?: RetireScope): Promise<void> {
    await this.ensureTable(span.table);
    const range = scope ?? span;
    const keep = scope?.keep;
    const values: unknown[] = [beforeTs.toString(), Buffer.from(range.start, 'latin1')];
    let where = 'not deleted and ts < $1::numeric and key >= $2';
    if (range.end !== '') {
      values.push(Buffer.from(range.end, 'latin1'));
      where += ` and key < $${values.length}`;
    }
    if (keep !== undefined && keep.size > 0) {
      values.push([...keep].map((key) => Buffer.from(key, 'latin1')));
      where += ` and not (key = any($${values.length}::bytea[]))`;
    }
    await this.pool.query(`update ${tableIdentifier(span.table)} set value = null, deleted = true, ts = $1::numeric where ${where}`, values);
  }

  async close(): Promise<void> {
    await this.pool.end();
  }

  private ensureTable(table: string): Promise<void> {
    let created = this.created.get(table);
    if (created === undefined) {
      created = this.pool
        .query(`create table if not exists ${tableIdentifier(table)} (key bytea primary key, value bytea, ts numeric(20,0) not null, deleted boolean not null default false)`)
        .then(() => undefined)
        .catch((error: unknown) => {
          // Two captures creating the same table at once: the loser sees a duplicate.
          if ((error as { code?: string }).code === '23505' || (error as { code?: string }).code === '42P07') return;
          this.created.delete(table);
          throw error;
        });
      this.created.set(table, created);
    }
    return created;
  }
}

/** Reads a table's live rows (for the verifier): key -> {value, ts}, and tombstones. */
export async function readPostgresTable(options: PostgresSinkOptions, table: string): Promise<{ rows: Map<string, { value: string | undefined; ts: bigint }> }> {
  const client = new pg.Client({ connectionString: options.connectionString });
  await client.connect();
  try {
    const rows = new Map<string, { value: string | undefined; ts: bigint }>();
    const exists = await client.query(`select to_regclass($1) as name`, [tableIdentifier(table)]);
    if ((exists.rows[0] as { name: string | null }).name === null) return { rows };
    const result = await client.query(`select key, value, ts::text as ts, deleted from ${tableIdentifier(table)}`);
    for (const row of result.rows as { key: Buffer; value: Buffer | null; ts: string; deleted: boolean }[]) {
      rows.set(row.key.toString('latin1'), { value: row.deleted || row.value === null ? undefined : row.value.toString('latin1'), ts: BigInt(row.ts) });
    }
    return { rows };
  } finally {
    await client.end();
  }
}

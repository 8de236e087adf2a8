/**
 * The `postgres` sink (with the `pg` library): one SQL table per changefeed table,
 * created if missing, holding the latest state per key with the revision that set it.
 * `postgres://user:password@host:port/database[?poolMax=<n>][&rowsPerStatementMax=<n>][&passwordFile=<path>]`.
 * With `passwordFile` the password is read from that file (its first line) each time a
 * connection is opened, so it appears in no URI, answer or log; the URI then has none.
 *
 * Table `"<table>"`: `key bytea primary key, value bytea, ts numeric(20,0), deleted
 * boolean`. Every event is an upsert guarded by its timestamp, so a replayed older event
 * (at-least-once delivery) never overwrites a newer one. A delete keeps a tombstone row
 * (`deleted = true`, `value` null) with its revision: without it, a replayed older put
 * could bring a deleted key back. Readers select `where not deleted`.
 *
 * A write keeps the last event per key and sends its rows as four arrays (keys, values,
 * revisions, deleted flags) to one prepared statement, `insert ... select from unnest(...)
 * on conflict (key) do update ... where t.ts < excluded.ts`: one round trip and one commit
 * for up to `rowsPerStatementMax` rows, whatever their count (the statement text, and so
 * its plan, never changes with it). The unnest rows never hold a key twice: `on conflict
 * do update` refuses to touch a row twice in one statement. A write of more rows runs its
 * statements in one transaction, so still one commit. Durable once it returns, so `flush`
 * has nothing left to do. `retire` tombstones the span's older rows.
 */
import pg from 'pg';
import type { Span } from '../../core/span.ts';
import { readPasswordFile } from '../../security/password-file.ts';
import type { RetireScope, Sink, SinkContext } from '../sink.ts';
import type { ChangeEvent } from '../source.ts';
import { checkCredentialFile } from '../bounds.ts';
import { credentialPathProblem } from '../etcd-uri-security.ts';
import { BadUriError, intParam, parseUri } from '../uri.ts';

export { readPasswordFile };

export interface PostgresSinkOptions {
  readonly connectionString: string;
  readonly poolMax: number;
  /** Rows one upsert statement carries; a write of more runs several in one transaction. */
  readonly rowsPerStatementMax: number;
  /** Where the password is read from at each connect, instead of the URI. */
  readonly passwordFile?: string;
}

/**
 * Rows per statement: 10,000 is ten of the pipeline's default steps (1,000 events), so a
 * step is one statement, and keeps one statement's arrays to a few MiB.
 */
export const postgresSinkDefaults = { rowsPerStatementMax: 10_000 } as const;

export function parsePostgresSinkUri(uri: string): PostgresSinkOptions {
  const url = parseUri(uri, ['postgres', 'postgresql'], 'sink');
  if (url.hostname === '' || url.pathname.length < 2) throw new BadUriError(`sink uri must be postgres://user@host:port/database, the password after the user (user:password@) or in a file (passwordFile=<path>)`);
  // libpq parameters that would connect somewhere else than the URI's host (and past --allowed-endpoints).
  for (const name of ['host', 'hostaddr', 'port']) {
    if (url.searchParams.has(name)) throw new BadUriError(`postgres sink uri parameter ${JSON.stringify(name)} is not allowed: give the host and port in the URI`);
  }
  if (url.searchParams.has('password')) throw new BadUriError('postgres sink uri parameter "password" is not allowed: put the password in a file and use passwordFile=<path>');
  const poolMax = intParam(url, 'poolMax', 4, 1, 100);
  url.searchParams.delete('poolMax');
  const rowsPerStatementMax = intParam(url, 'rowsPerStatementMax', postgresSinkDefaults.rowsPerStatementMax, 1, 1_000_000);
  url.searchParams.delete('rowsPerStatementMax');
  const passwordFile = url.searchParams.get('passwordFile');
  url.searchParams.delete('passwordFile');
  if (passwordFile === null) return { connectionString: url.toString(), poolMax, rowsPerStatementMax };
  if (url.password !== '') throw new BadUriError('postgres sink uri: give either a password or passwordFile, not both');
  const problem = credentialPathProblem(passwordFile);
  if (problem !== undefined) throw new BadUriError(`postgres sink uri parameter passwordFile=${JSON.stringify(passwordFile.slice(0, 200))} ${problem}`);
  return { connectionString: url.toString(), poolMax, rowsPerStatementMax, passwordFile };
}

/** The host and port a postgres sink connects to. */
export function postgresEndpoint(options: PostgresSinkOptions): { host: string; port: number } {
  const url = new URL(options.connectionString);
  return { host: url.hostname, port: url.port === '' ? 5432 : Number(url.port) };
}

/**
 * Makes a client read its password from the file when it connects. pg takes a password
 * function in its config, but a connection string's empty password replaces it there, so
 * it is set on the client itself, where pg looks for a function at connect.
 */
function usePasswordFile(client: pg.Client, path: string, credentialsRoot: string | undefined): void {
  Object.defineProperty(client, 'password', { value: () => readBoundedPasswordFile(path, credentialsRoot), writable: true, configurable: true, enumerable: false });
}

/**
 * The password file's first line; with a credentials root (a capture's sink), only once
 * the file is checked to lie under it, at every read (a symlink changed meanwhile does
 * not escape).
 */
async function readBoundedPasswordFile(path: string, credentialsRoot: string | undefined): Promise<string> {
  return readPasswordFile(credentialsRoot === undefined ? path : await checkCredentialFile(path, credentialsRoot, 'passwordFile'));
}

/** A client class whose clients read their password from `path`. */
function passwordFileClient(path: string, credentialsRoot: string | undefined): typeof pg.Client {
  return class extends pg.Client {
    constructor(config?: pg.ClientConfig) {
      super(config);
      usePasswordFile(this, path, credentialsRoot);
    }
  };
}

/** A SQL identifier for a table name (names are letters, digits, ".", "_", "-"). */
export function tableIdentifier(table: string): string {
  return `"${table.replaceAll('"', '""')}"`;
}

/**
 * The guarded upsert of one table, as a named statement (pg prepares it once per
 * connection): every row from four parallel arrays, applied only over an older revision.
 * Revisions are numeric(20,0), text in JS: they are bigints up to 2^64.
 */
function upsertStatement(table: string): { name: string; text: string } {
  const identifier = tableIdentifier(table);
  return {
    // One name per table: pg refuses to prepare one name with two texts on a connection.
    name: `spanfeed-upsert-${table}`,
    text: `insert into ${identifier} as t (key, value, ts, deleted)
      select * from unnest($1::bytea[], $2::bytea[], $3::numeric[], $4::boolean[])
      on conflict (key) do update set value = excluded.value, ts = excluded.ts, deleted = excluded.deleted
      where t.ts < excluded.ts`,
  };
}

/** The four arrays of the upsert: key, value (null on a delete), revision, deleted. */
function upsertArrays(rows: readonly ChangeEvent[]): [Buffer[], (Buffer | null)[], string[], boolean[]] {
  const keys: Buffer[] = new Array<Buffer>(rows.length);
  const values: (Buffer | null)[] = new Array<Buffer | null>(rows.length);
  const revisions: string[] = new Array<string>(rows.length);
  const deleted: boolean[] = new Array<boolean>(rows.length);
  for (let i = 0; i < rows.length; i++) {
    const event = rows[i] as ChangeEvent;
    keys[i] = Buffer.from(event.key, 'latin1');
    values[i] = event.op === 'put' ? Buffer.from(event.value ?? '', 'latin1') : null;
    revisions[i] = event.ts.toString();
    deleted[i] = event.op === 'delete';
  }
  return [keys, values, revisions, deleted];
}

export class PostgresSink implements Sink {
  private readonly pool: pg.Pool;
  private readonly created = new Map<string, Promise<void>>();

  constructor(
    private readonly options: PostgresSinkOptions,
    context: SinkContext = {},
  ) {
    const passwordFile = options.passwordFile;
    this.pool = new pg.Pool({
      connectionString: options.connectionString,
      max: options.poolMax,
      connectionTimeoutMillis: 10_000,
      ...(passwordFile === undefined ? {} : { Client: passwordFileClient(passwordFile, context.credentialsRoot) }),
    });
    // An idle client's error (the server restarted) must not kill the process.
    this.pool.on('error', () => undefined);
  }

  async write(span: Span, events: readonly ChangeEvent[]): Promise<void> {
    if (events.length === 0) return;
    await this.ensureTable(span.table);
    // Only the last event per key matters within one write, and a statement may hold a key once.
    const latest = new Map<string, ChangeEvent>();
    for (const event of events) latest.set(event.key, event);
    const rows = [...latest.values()];
    const statement = upsertStatement(span.table);
    const rowsMax = this.options.rowsPerStatementMax;
    if (rows.length <= rowsMax) {
      await this.pool.query({ ...statement, values: upsertArrays(rows) });
      return;
    }
    const client = await this.pool.connect();
    let broken: unknown;
    try {
      await client.query('begin');
      for (let i = 0; i < rows.length; i += rowsMax) await client.query({ ...statement, values: upsertArrays(rows.slice(i, i + rowsMax)) });
      await client.query('commit');
    } catch (error) {
      broken = error;
      // A failed statement left the transaction aborted: it is rolled back, and a client
      // whose rollback fails too (the connection is gone) leaves the pool.
      await client.query('rollback').then(
        () => (broken = undefined),
        () => undefined,
      );
      throw error;
    } finally {
      client.release(broken === undefined ? undefined : (broken as Error));
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
export async function readPostgresTable(options: PostgresSinkOptions, table: string, credentialsRoot?: string): Promise<{ rows: Map<string, { value: string | undefined; ts: bigint }> }> {
  const client = new pg.Client({ connectionString: options.connectionString });
  if (options.passwordFile !== undefined) usePasswordFile(client, options.passwordFile, credentialsRoot);
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

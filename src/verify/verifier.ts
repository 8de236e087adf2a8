/**
 * The verifier: compares the upstream state of a changefeed's tables at a timestamp
 * with the state the sink holds at that timestamp. Nothing at or below the persisted
 * checkpoint may be missing (DESIGN.md §8).
 *
 * Upstream (etcd): a range read of each table at revision `atTs`, page by page. Sink
 * (file): every NDJSON line of the table's directory replayed, keeping per key the
 * event with the highest ts <= atTs; a delete removes the key, a retire every key of its
 * range last written before it.
 *
 * A file sink with retention (`retainFiles`, `retainHours`) keeps every change above its
 * *horizon* (the highest ts of a retired file, from the table's `retention.log`) but not
 * the full history: only keys changed above the horizon are compared, on either side
 * (upstream: mod revision above it; sink: last line above it). A key last changed at or
 * below it is counted in `keysBelowHorizon`, not checked. Verifying at a ts below the
 * horizon is refused ({@link RetentionHorizonError}): the lines needed are gone.
 */
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Etcd3 } from 'etcd3';
import type { TableRange } from '../core/span.ts';
import { prefixEnd } from '../core/span.ts';
import { createEtcdClient } from '../cluster/etcd-client.ts';
import { mirrorRevisionsPrefix, parseEtcdSinkUri } from '../pipeline/sinks/etcd.ts';
import { parseFileSinkUri } from '../pipeline/sinks/file.ts';
import { readRetentionHorizon } from '../pipeline/sinks/file-retention.ts';
import { parsePostgresSinkUri, readPostgresTable } from '../pipeline/sinks/postgres.ts';
import { parseEtcdSourceUri } from '../pipeline/sources/etcd.ts';
import { loadEtcdUriSecurity } from '../pipeline/etcd-uri-security.ts';

/** What the verifier may read besides the URIs. */
export interface VerifyOptions {
  /** Files the URIs name (`ca`, `cert`, `key`, `passwordFile`) must lie under it; undefined: they may name none. */
  readonly credentialsRoot?: string | undefined;
}

/** What the verifier prints. */
export interface VerifyResult {
  readonly atTs: string;
  readonly tables: number;
  readonly keysChecked: number;
  readonly missing: number;
  readonly mismatched: number;
  readonly extra: number;
  /** File sink with retention: the highest horizon over the tables, and the keys left unchecked below their table's. */
  readonly horizonTs?: string;
  readonly keysBelowHorizon?: number;
}

/** `atTs` is below a table's retention horizon: the sink no longer holds what the state there needs. */
export class RetentionHorizonError extends Error {
  override readonly name = 'RetentionHorizonError';
  /** A later ts (the checkpoint moved on) may be verified. */
  readonly retryable = true;

  constructor(
    readonly table: string,
    readonly horizonTs: bigint,
    readonly atTs: bigint,
  ) {
    super(`the file sink retired table ${table}'s files up to ts ${horizonTs} (retention), past the ts to verify ${atTs}: verify at ${horizonTs} or later`);
  }
}

/** Keys read per upstream page. */
export const verifyPageKeysMax = 5_000;

/**
 * Every key -> value (binary strings) in [start, end), at `atTs` (or now), page by page;
 * with `modRevisions`, each key's mod revision there too.
 */
async function rangeState(client: Etcd3, startKey: string, endKey: string, atTs?: bigint, modRevisions?: Map<string, bigint>): Promise<Map<string, string>> {
  const state = new Map<string, string>();
  let start = Buffer.from(startKey, 'latin1');
  const end = endKey === '' ? Buffer.from([0]) : Buffer.from(endKey, 'latin1');
  for (;;) {
    const query = client.getAll().inRange({ start, end }).limit(verifyPageKeysMax);
    if (atTs !== undefined) query.revision(atTs.toString());
    const response = await query.exec();
    for (const kv of response.kvs) {
      state.set(kv.key.toString('latin1'), kv.value.toString('latin1'));
      modRevisions?.set(kv.key.toString('latin1'), BigInt(kv.mod_revision));
    }
    const last = response.kvs.at(-1);
    if (!response.more || last === undefined) return state;
    start = Buffer.concat([last.key, Buffer.from([0])]);
  }
}

function decodeField(line: Record<string, unknown>, name: 'key' | 'value' | 'start' | 'end'): string | undefined {
  if (typeof line[name] === 'string') return Buffer.from(line[name] as string, 'utf8').toString('latin1');
  const b64 = line[`${name}Base64`];
  if (typeof b64 === 'string') return Buffer.from(b64, 'base64').toString('latin1');
  return undefined;
}

/** The keys a retire line keeps (an incremental backfill's unchanged keys), binary strings. */
function decodeKeep(line: Record<string, unknown>): ReadonlySet<string> | undefined {
  if (Array.isArray(line.keep)) return new Set(line.keep.filter((k): k is string => typeof k === 'string').map((k) => Buffer.from(k, 'utf8').toString('latin1')));
  if (Array.isArray(line.keepBase64)) return new Set(line.keepBase64.filter((k): k is string => typeof k === 'string').map((k) => Buffer.from(k, 'base64').toString('latin1')));
  return undefined;
}

/**
 * The lines of a file sink file that count: those ended by a newline. The unterminated
 * tail, if any, is torn (a write cut by a crash or a full disk) or still being written;
 * it was never flushed as a whole, and the sink writes its events again elsewhere.
 */
export function completeLines(text: string): string[] {
  const end = text.lastIndexOf('\n');
  if (end < 0) return [];
  return text.slice(0, end).split('\n').filter((line) => line !== '');
}

/** Per key, the ts of its last line at or below the ts read, and its value (undefined: deleted or retired). */
export type FileSinkLatest = Map<string, { readonly ts: bigint; readonly value: string | undefined }>;

/**
 * The file sink's view of one table at `atTs`: per key its last line, and the table's
 * retention horizon (undefined: nothing was ever retired). A file retired while the
 * directory is read is skipped; the horizon, read after the files, covers it.
 */
export async function fileSinkView(dir: string, table: string, atTs: bigint): Promise<{ latest: FileSinkLatest; horizonTs: bigint | undefined }> {
  const latest: FileSinkLatest = new Map();
  const retires: { start: string; end: string; ts: bigint; keep: ReadonlySet<string> | undefined }[] = [];
  let names: string[] = [];
  try {
    names = (await readdir(join(dir, table))).filter((n) => n.endsWith('.ndjson')).sort();
  } catch {
    // No directory: the sink holds nothing for this table.
  }
  for (const name of names) {
    let text: string;
    try {
      text = await readFile(join(dir, table, name), 'utf8');
    } catch (error) {
      // Retired since the listing: wholly at or below the horizon read below.
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') continue;
      throw error;
    }
    for (const raw of completeLines(text)) {
      let line: Record<string, unknown>;
      try {
        line = JSON.parse(raw) as Record<string, unknown>;
      } catch {
        // Not a line the sink writes (the file sink never appends after a torn write).
        continue;
      }
      if (typeof line.ts !== 'string') continue;
      const ts = BigInt(line.ts);
      if (ts > atTs) continue;
      if (line.op === 'retire') {
        const start = decodeField(line, 'start');
        if (start !== undefined) retires.push({ start, end: decodeField(line, 'end') ?? '', ts, keep: decodeKeep(line) });
        continue;
      }
      const key = decodeField(line, 'key');
      if (key === undefined) continue;
      const previous = latest.get(key);
      if (previous !== undefined && previous.ts > ts) continue;
      latest.set(key, { ts, value: line.op === 'delete' ? undefined : decodeField(line, 'value') });
    }
  }
  // A retire at ts deletes every key of its range last written before ts, whatever the
  // order of the files: that is a delete at ts which a line at the same ts outranks.
  for (const retire of retires) {
    for (const [key, entry] of latest) {
      if (entry.ts < retire.ts && key >= retire.start && (retire.end === '' || key < retire.end) && retire.keep?.has(key) !== true) latest.set(key, { ts: retire.ts, value: undefined });
    }
  }
  return { latest, horizonTs: await readRetentionHorizon(join(dir, table)) };
}

/** The file sink's state of one table at `atTs` (a full replay: exact only without retention). */
export async function fileSinkState(dir: string, table: string, atTs: bigint): Promise<Map<string, string>> {
  const state = new Map<string, string>();
  for (const [key, { value }] of (await fileSinkView(dir, table, atTs)).latest) if (value !== undefined) state.set(key, value);
  return state;
}

/**
 * The etcd sink's mirror of one table, in upstream key space. A key whose mirrored
 * revision is past `atTs` changed after it: it is left out of the comparison (listed in
 * `newer`), on both sides.
 */
export async function etcdSinkState(sinkUri: string, table: TableRange, atTs: bigint, options: VerifyOptions): Promise<{ state: Map<string, string>; newer: Set<string> }> {
  const sink = parseEtcdSinkUri(sinkUri);
  const client = createEtcdClient({ endpoints: sink.endpoints, callTimeoutMs: 30_000, security: await loadEtcdUriSecurity(sink.security, options.credentialsRoot) });
  try {
    const prefix = sink.targetPrefix;
    const end = table.end === '' ? prefixEnd(prefix) : prefix + table.end;
    const mirrored = await rangeState(client, prefix + table.start, end);
    const markers = await rangeState(client, mirrorRevisionsPrefix + prefix + table.start, end === '' ? prefixEnd(mirrorRevisionsPrefix + prefix) : mirrorRevisionsPrefix + end);
    const state = new Map<string, string>();
    const newer = new Set<string>();
    for (const [key, value] of mirrored) state.set(key.slice(prefix.length), value);
    for (const [key, rev] of markers) if (BigInt(rev) > atTs) newer.add(key.slice(mirrorRevisionsPrefix.length + prefix.length));
    return { state, newer };
  } finally {
    client.close();
  }
}

/** Verifies an etcd-sourced changefeed against its file or etcd sink at `atTs`. */
export async function verify(sourceUri: string, sinkUri: string, tables: readonly TableRange[], atTs: bigint, options: VerifyOptions = {}): Promise<VerifyResult> {
  const source = parseEtcdSourceUri(sourceUri);
  const client = createEtcdClient({ endpoints: source.endpoints, callTimeoutMs: 30_000, security: await loadEtcdUriSecurity(source.security, options.credentialsRoot) });
  let keysChecked = 0;
  let missing = 0;
  let mismatched = 0;
  let extra = 0;
  let horizonMax: bigint | undefined;
  let keysBelowHorizon = 0;
  try {
    for (const table of tables) {
      const modRevisions = new Map<string, bigint>();
      const upstream = await rangeState(client, table.start, table.end, atTs, modRevisions);
      let copy: Map<string, string>;
      let newer = new Set<string>();
      if (sinkUri.startsWith('file:')) {
        const { latest, horizonTs } = await fileSinkView(parseFileSinkUri(sinkUri).dir, table.name, atTs);
        copy = new Map();
        for (const [key, { value }] of latest) if (value !== undefined) copy.set(key, value);
        if (horizonTs !== undefined) {
          if (atTs < horizonTs) throw new RetentionHorizonError(table.name, horizonTs, atTs);
          if (horizonMax === undefined || horizonTs > horizonMax) horizonMax = horizonTs;
          // Only keys changed above the horizon are known on both sides; the rest are
          // left out like keys changed past atTs.
          const below = new Set<string>();
          for (const [key, revision] of modRevisions) if (revision <= horizonTs && (latest.get(key)?.ts ?? 0n) <= horizonTs) below.add(key);
          for (const [key, { ts }] of latest) if (ts <= horizonTs && (modRevisions.get(key) ?? 0n) <= horizonTs) below.add(key);
          keysBelowHorizon += below.size;
          newer = below;
        }
      } else if (sinkUri.startsWith('etcd:')) {
        ({ state: copy, newer } = await etcdSinkState(sinkUri, table, atTs, options));
      } else if (sinkUri.startsWith('postgres')) {
        // Latest state per key with its revision: rows applied past atTs are left out.
        const { rows } = await readPostgresTable(parsePostgresSinkUri(sinkUri), table.name, options.credentialsRoot);
        copy = new Map();
        for (const [key, row] of rows) {
          if (row.ts > atTs) newer.add(key);
          else if (row.value !== undefined) copy.set(key, row.value);
        }
      } else {
        throw new Error(`cannot verify sink ${JSON.stringify(sinkUri)}: the verifier reads file://, etcd:// and postgres:// sinks`);
      }
      for (const key of newer) {
        upstream.delete(key);
        copy.delete(key);
      }
      for (const [key, value] of upstream) {
        keysChecked++;
        const copied = copy.get(key);
        if (copied === undefined) missing++;
        else if (copied !== value) mismatched++;
      }
      for (const key of copy.keys()) if (!upstream.has(key)) extra++;
    }
  } finally {
    client.close();
  }
  const result = { atTs: atTs.toString(), tables: tables.length, keysChecked, missing, mismatched, extra };
  return horizonMax === undefined ? result : { ...result, horizonTs: horizonMax.toString(), keysBelowHorizon };
}

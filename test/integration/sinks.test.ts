/**
 * The idempotent sinks never go backwards: a replayed older event (at-least-once
 * delivery) cannot overwrite a newer one, and a deleted key is not brought back by an
 * older put; a retire removes exactly a span's keys older than its revision. Against a
 * real PostgreSQL, a real etcd and real files.
 */
import { mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Etcd3 } from 'etcd3';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Span } from '../../src/core/span.ts';
import { LocalEtcd } from '../../src/dev/local-cluster.ts';
import { LocalPostgres } from '../../src/dev/local-postgres.ts';
import { EtcdSink, parseEtcdSinkUri } from '../../src/pipeline/sinks/etcd.ts';
import { FileSink, eventLine, parseFileSinkUri, retireLine } from '../../src/pipeline/sinks/file.ts';
import { PostgresSink, parsePostgresSinkUri } from '../../src/pipeline/sinks/postgres.ts';
import type { Sink } from '../../src/pipeline/sink.ts';
import type { ChangeEvent } from '../../src/pipeline/source.ts';
import { fileSinkState } from '../../src/verify/verifier.ts';

const span: Span = { table: 'kv', start: '', end: '' };
const put = (key: string, value: string, ts: bigint): ChangeEvent => ({ table: 'kv', key, value, op: 'put', ts });
const del = (key: string, ts: bigint): ChangeEvent => ({ table: 'kv', key, op: 'delete', ts });

/**
 * Retire: table `rt` holds a, b, c (ts 10), cc (ts 40) and d (ts 10); retiring the span
 * [b, d) before 30 removes b and c only (cc is newer, a and d are outside), and a replayed
 * older put of b does not bring it back. Every sink must end with `retiredState`.
 */
const retired: Span = { table: 'rt', start: 'b', end: 'd' };
const rtPut = (key: string, ts: bigint): ChangeEvent => ({ table: 'rt', key, value: `${key}${ts}`, op: 'put', ts });
const retiredState = { a: 'a10', cc: 'cc40', d: 'd10', sa: 'sa10', sc: 'sc10', se: 'se10', sf: 'sf40' };
async function exerciseRetire(sink: Sink): Promise<void> {
  await sink.write(retired, [rtPut('a', 10n), rtPut('b', 10n), rtPut('c', 10n), rtPut('cc', 40n), rtPut('d', 10n)]);
  await sink.flush(retired, 40n);
  await sink.retire(retired, 30n);
  await sink.retire(retired, 30n);
  await sink.write(retired, [rtPut('b', 10n)]);
  await sink.flush(retired, 40n);
  // An incremental backfill's page: [sb, sf] loses its keys older than 30 but the kept
  // sc (unchanged upstream) and sf (newer); sa and se lie outside the page's range.
  const spanS: Span = { table: 'rt', start: 's', end: 't' };
  await sink.write(spanS, [rtPut('sa', 10n), rtPut('sb', 10n), rtPut('sc', 10n), rtPut('sd', 10n), rtPut('se', 10n), rtPut('sf', 40n)]);
  await sink.flush(spanS, 40n);
  await sink.retire(spanS, 30n, { start: 'sb', end: 'se', keep: new Set(['sc']) });
  await sink.flush(spanS, 40n);
}

let postgres: LocalPostgres;
let etcd: LocalEtcd;

beforeAll(async () => {
  postgres = await LocalPostgres.start();
  etcd = await LocalEtcd.start();
}, 120_000);

afterAll(async () => {
  await postgres?.stop();
  await etcd?.stop();
});

describe('postgres sink', () => {
  it('keeps the newest state per key through replays and deletes', async () => {
    const sink = new PostgresSink(parsePostgresSinkUri(postgres.url));
    try {
      await sink.write(span, [put('a', '1', 10n), put('b', '1', 10n), put('c', '1', 10n)]);
      await sink.write(span, [put('a', '2', 20n), del('b', 20n)]);
      // Replays of older events change nothing.
      await sink.write(span, [put('a', '1', 10n), put('b', '1', 10n), put('c', '0', 5n)]);
      const client = new pg.Client({ connectionString: postgres.url });
      await client.connect();
      const rows = (await client.query('select convert_from(key, \'UTF8\') as key, convert_from(value, \'UTF8\') as value, ts::text as ts, deleted from kv order by key')).rows;
      await client.end();
      expect(rows).toEqual([
        { key: 'a', value: '2', ts: '20', deleted: false },
        { key: 'b', value: null, ts: '20', deleted: true },
        { key: 'c', value: '1', ts: '10', deleted: false },
      ]);
    } finally {
      await sink.close();
    }
  });

  it('retires the keys of a span older than a revision, as tombstones', async () => {
    const sink = new PostgresSink(parsePostgresSinkUri(postgres.url));
    try {
      await exerciseRetire(sink);
      const client = new pg.Client({ connectionString: postgres.url });
      await client.connect();
      const rows = (await client.query('select convert_from(key, \'UTF8\') as key, convert_from(value, \'UTF8\') as value, ts::text as ts from rt where not deleted order by key')).rows as { key: string; value: string }[];
      const tombstones = (await client.query('select ts::text as ts from rt where deleted')).rows;
      await client.end();
      expect(Object.fromEntries(rows.map((r) => [r.key, r.value]))).toEqual(retiredState);
      expect(tombstones).toEqual([{ ts: '30' }, { ts: '30' }, { ts: '30' }, { ts: '30' }]);
    } finally {
      await sink.close();
    }
  });

  /** Every row of `table` with its tuple's xmin: a row a statement rewrote has a new one. */
  async function tableRows(table: string): Promise<{ key: string; value: string | null; ts: string; deleted: boolean; xmin: string }[]> {
    const client = new pg.Client({ connectionString: postgres.url });
    await client.connect();
    try {
      return (await client.query(`select convert_from(key, 'UTF8') as key, convert_from(value, 'UTF8') as value, ts::text as ts, deleted, xmin::text as xmin from ${table} order by key`)).rows;
    } finally {
      await client.end();
    }
  }

  const rowKeys = (count: number): string[] => Array.from({ length: count }, (_, i) => `k${String(i).padStart(3, '0')}`);

  it('a replayed older batch changes nothing, over several statements, deletes included', async () => {
    const replaySpan: Span = { table: 'replay', start: '', end: '' };
    const at = (key: string, value: string, ts: bigint): ChangeEvent => ({ table: 'replay', key, value, op: 'put', ts });
    const sink = new PostgresSink(parsePostgresSinkUri(`${postgres.url}?rowsPerStatementMax=7`));
    try {
      const keys = rowKeys(50);
      await sink.write(replaySpan, keys.map((k) => at(k, 'old', 10n)));
      const newerBatch = keys.map((k, i): ChangeEvent => (i % 5 === 0 ? { table: 'replay', key: k, op: 'delete', ts: 20n } : at(k, 'new', 20n)));
      await sink.write(replaySpan, newerBatch);
      const newer = await tableRows('replay');
      expect(newer).toHaveLength(50);
      expect(newer.filter((r) => r.deleted)).toHaveLength(10);
      expect(newer.every((r) => r.ts === '20' && (r.deleted ? r.value === null : r.value === 'new'))).toBe(true);
      // The older batch again, older still, and the newer one delivered twice: no row is
      // rewritten (same xmin), no deleted one comes back.
      await sink.write(replaySpan, keys.map((k) => at(k, 'old', 10n)));
      await sink.write(replaySpan, newerBatch);
      await sink.write(replaySpan, keys.map((k) => at(k, 'older', 5n)));
      expect(await tableRows('replay')).toEqual(newer);
    } finally {
      await sink.close();
    }
  });

  it('applies a mixed batch to the rows behind it only, the last event of a key repeated in it', async () => {
    const mixedSpan: Span = { table: 'mixed', start: '', end: '' };
    const at = (key: string, value: string, ts: bigint): ChangeEvent => ({ table: 'mixed', key, value, op: 'put', ts });
    const sink = new PostgresSink(parsePostgresSinkUri(postgres.url));
    try {
      await sink.write(mixedSpan, [at('a', 'v30', 30n), at('b', 'v5', 5n), { table: 'mixed', key: 'c', op: 'delete', ts: 5n }]);
      // b twice and d three times in one statement: on conflict may not touch a row twice.
      await sink.write(mixedSpan, [at('a', 'v10', 10n), at('b', 'v8', 8n), at('c', 'v10', 10n), at('d', 'v9', 9n), at('b', 'v10', 10n), { table: 'mixed', key: 'd', op: 'delete', ts: 10n }, at('e', 'v10', 10n)]);
      expect((await tableRows('mixed')).map(({ xmin: _, ...row }) => row)).toEqual([
        { key: 'a', value: 'v30', ts: '30', deleted: false },
        { key: 'b', value: 'v10', ts: '10', deleted: false },
        { key: 'c', value: 'v10', ts: '10', deleted: false },
        { key: 'd', value: null, ts: '10', deleted: true },
        { key: 'e', value: 'v10', ts: '10', deleted: false },
      ]);
    } finally {
      await sink.close();
    }
  });

  it('runs the statements of a large write in one transaction: a failed one undoes the others', async () => {
    const txSpan: Span = { table: 'atomic', start: '', end: '' };
    const at = (key: string, ts: bigint): ChangeEvent => ({ table: 'atomic', key, value: `v${ts}`, op: 'put', ts });
    // One connection: a client left in an aborted transaction would fail the next write.
    const sink = new PostgresSink(parsePostgresSinkUri(`${postgres.url}?rowsPerStatementMax=2&poolMax=1`));
    try {
      // The third row's revision overflows numeric(20,0): the second statement fails.
      await expect(sink.write(txSpan, [at('a', 1n), at('b', 1n), at('c', 10n ** 20n), at('d', 1n)])).rejects.toThrow(/numeric field overflow/);
      expect(await tableRows('atomic')).toEqual([]);
      await sink.write(txSpan, [at('a', 2n), at('b', 2n), at('c', 2n), at('d', 2n), at('e', 2n)]);
      expect((await tableRows('atomic')).map((r) => `${r.key}=${r.value}`)).toEqual(['a=v2', 'b=v2', 'c=v2', 'd=v2', 'e=v2']);
    } finally {
      await sink.close();
    }
  });

  it('takes rowsPerStatementMax from the URI, and keeps it out of the connection string', () => {
    expect(parsePostgresSinkUri('postgres://u@h/db')).toMatchObject({ rowsPerStatementMax: 10_000, connectionString: 'postgres://u@h/db' });
    expect(parsePostgresSinkUri('postgres://u@h/db?rowsPerStatementMax=50&poolMax=2')).toMatchObject({ rowsPerStatementMax: 50, poolMax: 2, connectionString: 'postgres://u@h/db' });
    expect(() => parsePostgresSinkUri('postgres://u@h/db?rowsPerStatementMax=0')).toThrow(/rowsPerStatementMax="0" must be an integer from 1 to 1000000/);
  });

  it('rejects a URI without a database', () => {
    expect(() => parsePostgresSinkUri('postgres://127.0.0.1:5432')).toThrow(/postgres:\/\/user@host:port\/database/);
  });
});

describe('etcd sink', () => {
  it('mirrors under the target prefix and never goes backwards', async () => {
    const sink = new EtcdSink(parseEtcdSinkUri(`etcd://${etcd.endpoint}/m/`));
    const client = new Etcd3({ hosts: `http://${etcd.endpoint}` });
    try {
      await sink.write(span, [put('a', '1', 10n), put('b', '1', 10n)]);
      await sink.write(span, [put('a', '2', 20n), del('b', 20n)]);
      await sink.write(span, [put('a', '1', 10n), put('b', '1', 10n)]);
      expect(await client.getAll().prefix('m/').strings()).toEqual({ 'm/a': '2' });
    } finally {
      await sink.close();
      client.close();
    }
  });

  it('retires the keys of a span older than a revision', async () => {
    const sink = new EtcdSink(parseEtcdSinkUri(`etcd://${etcd.endpoint}/r/`));
    const client = new Etcd3({ hosts: `http://${etcd.endpoint}` });
    try {
      await exerciseRetire(sink);
      expect(await client.getAll().prefix('r/').strings()).toEqual(Object.fromEntries(Object.entries(retiredState).map(([k, v]) => [`r/${k}`, v])));
    } finally {
      await sink.close();
      client.close();
    }
  });

  it('needs a target prefix', () => {
    expect(() => parseEtcdSinkUri('etcd://127.0.0.1:2379')).toThrow(/target prefix/);
  });

  /** The etcd revision now: each committed transaction adds one. */
  async function revisionOf(client: Etcd3): Promise<bigint> {
    return BigInt((await client.get('\u0000').exec()).header.revision);
  }

  /** The mirrored values and revision markers under `prefix`. */
  async function mirrorOf(client: Etcd3, prefix: string): Promise<{ values: Record<string, string>; markers: Record<string, string> }> {
    const values = await client.getAll().prefix(prefix).strings();
    const markers = await client.getAll().prefix(`/spanfeed-mirror-revisions/${prefix}`).strings();
    return { values, markers: Object.fromEntries(Object.entries(markers).map(([k, v]) => [k.slice('/spanfeed-mirror-revisions/'.length), String(Number(v))])) };
  }

  const keys = (count: number): string[] => Array.from({ length: count }, (_, i) => `k${String(i).padStart(3, '0')}`);

  it('batches keys into transactions of txnOpsMax / 2 keys, and of at most about txnBytesMax bytes', async () => {
    const client = new Etcd3({ hosts: `http://${etcd.endpoint}` });
    const byOps = new EtcdSink(parseEtcdSinkUri(`etcd://${etcd.endpoint}/bo/?txnOpsMax=8`));
    const byBytes = new EtcdSink(parseEtcdSinkUri(`etcd://${etcd.endpoint}/bb/?txnBytesMax=2400`));
    try {
      let before = await revisionOf(client);
      await byOps.write(span, keys(20).map((k) => put(k, 'v', 10n)));
      // 4 keys (8 operations) a transaction: 20 keys in 5, not 20.
      expect(await revisionOf(client)).toBe(before + 5n);
      before = await revisionOf(client);
      await byBytes.write(span, keys(6).map((k) => put(k, 'x'.repeat(900), 10n)));
      // Two 900-byte values with their keys and markers (about 1,080 bytes each) fit in 2,400 bytes, three do not: 6 keys in 3.
      expect(await revisionOf(client)).toBe(before + 3n);
      expect(Object.keys((await mirrorOf(client, 'bo/')).values)).toHaveLength(20);
      expect(Object.keys((await mirrorOf(client, 'bb/')).values)).toHaveLength(6);
    } finally {
      await byOps.close();
      await byBytes.close();
      client.close();
    }
  });

  it('a replayed older batch changes nothing, over several transactions and from a sink that never saw the keys', async () => {
    const client = new Etcd3({ hosts: `http://${etcd.endpoint}` });
    const sink = new EtcdSink(parseEtcdSinkUri(`etcd://${etcd.endpoint}/rp/?txnOpsMax=16`));
    // A second sink (another capture's, or this one after a restart): it knows no key, so
    // its first compare of each batch expects no marker and fails on every one.
    const fresh = new EtcdSink(parseEtcdSinkUri(`etcd://${etcd.endpoint}/rp/?txnOpsMax=16`));
    try {
      const all = keys(50);
      await sink.write(span, all.map((k) => put(k, 'old', 10n)));
      await sink.write(span, [...all.map((k, i) => (i % 10 === 0 ? del(k, 20n) : put(k, 'new', 20n)))]);
      const newer = await mirrorOf(client, 'rp/');
      expect(Object.keys(newer.values)).toHaveLength(45);
      expect(new Set(Object.values(newer.values))).toEqual(new Set(['new']));
      expect(new Set(Object.values(newer.markers))).toEqual(new Set(['20']));
      const before = await revisionOf(client);
      for (const replayer of [sink, fresh]) await replayer.write(span, all.map((k) => put(k, 'old', 10n)));
      // Nothing moved back, the deleted keys stayed deleted, and no transaction committed.
      expect(await mirrorOf(client, 'rp/')).toEqual(newer);
      expect(await revisionOf(client)).toBe(before);
    } finally {
      await sink.close();
      await fresh.close();
      client.close();
    }
  });

  it('applies a mixed batch to the keys behind it only: newer markers stay, older and absent ones move', async () => {
    const client = new Etcd3({ hosts: `http://${etcd.endpoint}` });
    const sink = new EtcdSink(parseEtcdSinkUri(`etcd://${etcd.endpoint}/mx/`));
    const fresh = new EtcdSink(parseEtcdSinkUri(`etcd://${etcd.endpoint}/mx/`));
    try {
      // a*: newer (30) than the batch; b*: older (5); c*: deleted at 5; d*: never mirrored.
      await sink.write(span, [...['a1', 'a2', 'a3'].map((k) => put(k, 'v30', 30n)), ...['b1', 'b2', 'b3'].map((k) => put(k, 'v5', 5n)), ...['c1', 'c2'].map((k) => del(k, 5n))]);
      const before = await revisionOf(client);
      const batch = ['a1', 'b1', 'c1', 'd1', 'a2', 'b2', 'c2', 'd2', 'a3', 'b3'].map((k) => put(k, 'v10', 10n));
      await fresh.write(span, batch);
      const after = await mirrorOf(client, 'mx/');
      expect(after.values).toEqual({ 'mx/a1': 'v30', 'mx/a2': 'v30', 'mx/a3': 'v30', 'mx/b1': 'v10', 'mx/b2': 'v10', 'mx/b3': 'v10', 'mx/c1': 'v10', 'mx/c2': 'v10', 'mx/d1': 'v10', 'mx/d2': 'v10' });
      expect(after.markers).toEqual({ 'mx/a1': '30', 'mx/a2': '30', 'mx/a3': '30', 'mx/b1': '10', 'mx/b2': '10', 'mx/b3': '10', 'mx/c1': '10', 'mx/c2': '10', 'mx/d1': '10', 'mx/d2': '10' });
      // One transaction committed: the first failed whole, the second carried the seven keys behind.
      expect(await revisionOf(client)).toBe(before + 1n);
      // The same batch again is a replay now: nothing changes.
      await sink.write(span, batch);
      expect(await mirrorOf(client, 'mx/')).toEqual(after);
    } finally {
      await sink.close();
      await fresh.close();
      client.close();
    }
  });

  it('two writers racing over the same keys end at the newer of each', async () => {
    const client = new Etcd3({ hosts: `http://${etcd.endpoint}` });
    const one = new EtcdSink(parseEtcdSinkUri(`etcd://${etcd.endpoint}/race/?txnOpsMax=16&txnsInFlightMax=4`));
    const two = new EtcdSink(parseEtcdSinkUri(`etcd://${etcd.endpoint}/race/?txnOpsMax=16&txnsInFlightMax=4`));
    try {
      const all = keys(200);
      // One writes every key at 10 then 30; two at 20 then (even keys only) 40, at the same time.
      await Promise.all([
        (async () => {
          await one.write(span, all.map((k) => put(k, 'v10', 10n)));
          await one.write(span, all.map((k) => put(k, 'v30', 30n)));
        })(),
        (async () => {
          await two.write(span, all.map((k) => put(k, 'v20', 20n)));
          await two.write(span, all.filter((_, i) => i % 2 === 0).map((k) => put(k, 'v40', 40n)));
        })(),
      ]);
      const { values, markers } = await mirrorOf(client, 'race/');
      expect(values).toEqual(Object.fromEntries(all.map((k, i) => [`race/${k}`, i % 2 === 0 ? 'v40' : 'v30'])));
      expect(markers).toEqual(Object.fromEntries(all.map((k, i) => [`race/${k}`, i % 2 === 0 ? '40' : '30'])));
    } finally {
      await one.close();
      await two.close();
      client.close();
    }
  });

  it('refuses transaction bounds it cannot use', () => {
    expect(parseEtcdSinkUri('etcd://127.0.0.1:2379/m/')).toMatchObject({ txnsInFlightMax: 64, txnOpsMax: 128, txnBytesMax: 1024 * 1024 });
    expect(parseEtcdSinkUri('etcd://127.0.0.1:2379/m/?txnOpsMax=512&txnBytesMax=4096')).toMatchObject({ txnOpsMax: 512, txnBytesMax: 4096 });
    expect(() => parseEtcdSinkUri('etcd://127.0.0.1:2379/m/?txnOpsMax=1')).toThrow(/txnOpsMax="1" must be an integer from 2 to/);
    expect(() => parseEtcdSinkUri('etcd://127.0.0.1:2379/m/?txnBytesMax=1mb')).toThrow(/txnBytesMax="1mb" must be an integer/);
    expect(() => parseEtcdSinkUri('etcd://127.0.0.1:2379/m/?putsPerTxn=8')).toThrow(/"putsPerTxn" is not known/);
  });
});

describe('file sink', () => {
  it('writes one NDJSON line per event, base64 where bytes are not UTF-8', () => {
    expect(eventLine(put('k', 'v', 7n))).toBe('{"table":"kv","key":"k","op":"put","ts":"7","value":"v"}\n');
    expect(eventLine(del('k', 8n))).toBe('{"table":"kv","key":"k","op":"delete","ts":"8"}\n');
    expect(JSON.parse(eventLine(put('\u00ff\u0000', 'x', 9n)))).toMatchObject({ keyBase64: Buffer.from([0xff, 0]).toString('base64'), value: 'x' });
  });

  it('rotates files by size and makes them durable on flush', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'spanfeed-file-'));
    const sink = new FileSink(parseFileSinkUri(`file://${dir}?maxFileBytes=1024`));
    try {
      for (let i = 0; i < 50; i++) await sink.write(span, [put(`key${i}`, 'x'.repeat(40), BigInt(i + 1))]);
      await sink.flush(span);
      const files = readdirSync(join(dir, 'kv'));
      expect(files.length).toBeGreaterThan(1);
      const lines = files.flatMap((f) => readFileSync(join(dir, 'kv', f), 'utf8').split('\n').filter((l) => l !== ''));
      expect(lines).toHaveLength(50);
    } finally {
      await sink.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('writes a retire line that the verifier replays in any file order', async () => {
    expect(retireLine(retired, 30n)).toBe('{"table":"rt","op":"retire","start":"b","end":"d","ts":"30"}\n');
    expect(retireLine({ table: 'rt', start: 'b', end: '' }, 30n)).toBe('{"table":"rt","op":"retire","start":"b","ts":"30"}\n');
    const dir = mkdtempSync(join(tmpdir(), 'spanfeed-file-'));
    const sink = new FileSink(parseFileSinkUri(`file://${dir}`));
    try {
      await exerciseRetire(sink);
      expect(Object.fromEntries(await fileSinkState(dir, 'rt', 100n))).toEqual(retiredState);
      // Read before the retire, the state is what it was.
      expect(Object.fromEntries(await fileSinkState(dir, 'rt', 29n))).toEqual({ a: 'a10', b: 'b10', c: 'c10', d: 'd10', sa: 'sa10', sb: 'sb10', sc: 'sc10', sd: 'sd10', se: 'se10' });
    } finally {
      await sink.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('rejects a relative path', () => {
    expect(() => parseFileSinkUri('file://relative/dir')).toThrow(/file:\/\/\/absolute\/dir/);
  });
});

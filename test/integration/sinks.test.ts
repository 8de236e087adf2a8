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

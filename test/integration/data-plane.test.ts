/**
 * Real data: an upstream etcd's key ranges streamed by three captures into a file sink,
 * a real PostgreSQL and an etcd mirror, while a writer makes 20,000 changes (puts, overwrites, deletes) in three tables; a
 * capture is SIGKILLed and spans are moved mid-stream; then the whole cluster is stopped
 * and restarted while writes go on; then paused past a compaction and recovered with a
 * backfill. After each phase the verifier must find nothing missing, mismatched or extra
 * at the persisted checkpoint.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Etcd3 } from 'etcd3';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SeededRandom } from '../../src/core/rng.ts';
import { LocalPostgres } from '../../src/dev/local-postgres.ts';
import type { ChangefeedView, SpanPage, SpanView } from './harness.ts';
import { TestCapture, TestEtcd, api, callAny, waitFor } from './harness.ts';

const bin = fileURLToPath(new URL('../../bin/spanfeed', import.meta.url));
const cluster = `data${process.pid}`;
const tableNames = ['orders', 'users', 'items'];

let etcd: TestEtcd;
let client: Etcd3;
let sinkDir: string;
let postgres: LocalPostgres;
const captures: TestCapture[] = [];
let lastRevision = 0n;
let writes = 0;

function call<T = any>(method: string, path: string, body?: unknown): Promise<{ status: number; body: T }> {
  return callAny<T>(captures, method, path, body);
}

/** Keys the captures' backfills copied, summed over every capture's metric. */
async function keysCopied(): Promise<number> {
  let total = 0;
  for (const capture of captures) {
    // Tried twice: the first fetch may reuse a pooled connection the capture closed while
    // the verifier blocked this process (spawnSync), and fail with "other side closed".
    const text = await api<string>(capture.url, 'GET', '/metrics').catch(() => api<string>(capture.url, 'GET', '/metrics')).then((a) => String(a.body));
    for (const match of text.matchAll(/^spanfeed_backfill_keys_copied_total\{[^}]*\} (\d+)$/gm)) total += Number(match[1]);
  }
  return total;
}

/** Writes `count` changes: mostly puts over 2,000 keys per table, some deletes. */
async function write(count: number, seed: number): Promise<void> {
  const rng = new SeededRandom(seed);
  const next = (n: number): number => rng.int(n);
  const batch = 50;
  for (let done = 0; done < count; done += batch) {
    const ops = [];
    for (let i = 0; i < Math.min(batch, count - done); i++) {
      const table = tableNames[next(3)] as string;
      const key = `up/${table}/${String(next(2_000)).padStart(5, '0')}`;
      ops.push(
        next(10) === 0
          ? client.delete().key(key).exec().then((r) => r.header.revision)
          : client.put(key).value(`v${seed}-${done + i}`).exec().then((r) => r.header.revision),
      );
    }
    for (const revision of await Promise.all(ops)) if (BigInt(revision) > lastRevision) lastRevision = BigInt(revision);
    writes += ops.length;
  }
}

async function waitCheckpointPast(revision: bigint, timeoutMs = 60_000, id = 'cf'): Promise<ChangefeedView> {
  return waitFor(`the checkpoint of ${id} to reach revision ${revision}`, async () => {
    const answer = await call<ChangefeedView>('GET', `/api/v1/changefeeds/${id}`);
    return answer.status === 200 && BigInt(answer.body.checkpointTs) >= revision ? answer.body : undefined;
  }, timeoutMs, 100);
}

function runVerifier(id = 'cf'): { status: number | null; result: Record<string, unknown> } {
  const out = spawnSync(process.execPath, [bin, 'verify', '--changefeed', id, '--etcd', etcd.endpoint, '--cluster', cluster], { encoding: 'utf8' });
  let result: Record<string, unknown> = {};
  try {
    result = JSON.parse(out.stdout.trim().split('\n').at(-1) ?? '{}') as Record<string, unknown>;
  } catch {
    result = { stdout: out.stdout, stderr: out.stderr };
  }
  return { status: out.status, result };
}

beforeAll(async () => {
  etcd = await TestEtcd.start();
  client = new Etcd3({ hosts: `http://${etcd.endpoint}` });
  sinkDir = mkdtempSync(join(tmpdir(), 'spanfeed-sink-'));
  postgres = await LocalPostgres.start();
  for (let i = 0; i < 3; i++) captures.push(await TestCapture.start(etcd, { cluster }));
}, 120_000);

afterAll(async () => {
  await Promise.all(captures.map((c) => c.stop()));
  client?.close();
  await etcd?.stop();
  await postgres?.stop();
  if (sinkDir !== undefined) rmSync(sinkDir, { recursive: true, force: true });
});

describe('etcd source to file sink', () => {
  it('streams 20,000 changes through a capture crash and moves, with nothing lost', async () => {
    await waitFor('an owner', async () => ((await call('GET', '/api/v1/captures')).status === 200 ? true : undefined));
    const created = await call('POST', '/api/v1/changefeeds', {
      id: 'cf',
      source: { uri: `etcd://${etcd.endpoint}` },
      sink: { uri: `file://${sinkDir}?maxFileBytes=65536` },
      tables: tableNames.map((name) => ({ name, prefix: `up/${name}/`, spans: 4 })),
    });
    expect(created.status).toBe(201);
    // The same tables mirrored into the same etcd under mirror/ (etcd sink).
    const mirror = await call('POST', '/api/v1/changefeeds', {
      id: 'cf-mirror',
      source: { uri: `etcd://${etcd.endpoint}` },
      sink: { uri: `etcd://${etcd.endpoint}/mirror/` },
      tables: tableNames.map((name) => ({ name, prefix: `up/${name}/`, spans: 2 })),
    });
    expect(mirror.status).toBe(201);
    // And into PostgreSQL.
    const pgFeed = await call('POST', '/api/v1/changefeeds', {
      id: 'cf-pg',
      source: { uri: `etcd://${etcd.endpoint}` },
      sink: { uri: postgres.url },
      tables: tableNames.map((name) => ({ name, prefix: `up/${name}/`, spans: 2 })),
    });
    expect(pgFeed.status).toBe(201);
    await waitFor('the changefeed to advance', async () => ((await call<ChangefeedView>('GET', '/api/v1/changefeeds/cf')).body.watermark.state === 'advancing' ? true : undefined), 30_000, 100);

    await write(7_000, 1);
    // SIGKILL a capture that is not the owner, mid-stream.
    let victim: TestCapture | undefined;
    for (const capture of captures) if (!(await capture.status()).isOwner) victim = capture;
    victim?.proc.signal('SIGKILL');
    await write(5_000, 2);
    // Move a few spans while writes go on.
    const spans = (await call<SpanPage>('GET', '/api/v1/changefeeds/cf/spans')).body.spans;
    const live = captures.filter((c) => c !== victim);
    for (const span of spans.slice(0, 4)) {
      const target = live.find((c) => c.id !== span.primary);
      if (target !== undefined) await call('POST', '/api/v1/changefeeds/cf/spans/move', { table: span.table, start: span.start, captureId: target.id });
    }
    await write(8_000, 3);
    expect(writes).toBe(20_000);
    const caughtUp = await waitCheckpointPast(lastRevision, 90_000);
    // Revision timestamps still get a lag in ms: since the resolved-ts reached the checkpoint.
    expect(typeof caughtUp.checkpointLagMs).toBe('number');
    const { status, result } = runVerifier();
    expect(result).toMatchObject({ missing: 0, mismatched: 0, extra: 0, tables: 3 });
    expect(result.keysChecked as number).toBeGreaterThan(3_000);
    expect(status).toBe(0);
    await waitCheckpointPast(lastRevision, 90_000, 'cf-mirror');
    const mirrored = runVerifier('cf-mirror');
    expect(mirrored.result).toMatchObject({ missing: 0, mismatched: 0, extra: 0, tables: 3 });
    expect(mirrored.result.keysChecked as number).toBeGreaterThan(3_000);
    expect(mirrored.status).toBe(0);
    await waitCheckpointPast(lastRevision, 90_000, 'cf-pg');
    const inPostgres = runVerifier('cf-pg');
    expect(inPostgres.result).toMatchObject({ missing: 0, mismatched: 0, extra: 0, tables: 3 });
    expect(inPostgres.result.keysChecked as number).toBeGreaterThan(3_000);
    expect(inPostgres.status).toBe(0);
  });

  it('resumes after the whole cluster stopped and restarted, strictly after the checkpoint', async () => {
    const before = await waitCheckpointPast(lastRevision);
    await Promise.all(captures.map((c) => c.stop()));
    captures.splice(0, captures.length);
    await write(2_000, 4);
    for (let i = 0; i < 3; i++) captures.push(await TestCapture.start(etcd, { cluster }));
    const after = await waitCheckpointPast(lastRevision, 90_000);
    expect(BigInt(after.checkpointTs) >= BigInt(before.checkpointTs)).toBe(true);
    const { status, result } = runVerifier();
    expect(result).toMatchObject({ missing: 0, mismatched: 0, extra: 0 });
    expect(status).toBe(0);
    await waitCheckpointPast(lastRevision, 90_000, 'cf-mirror');
    expect(runVerifier('cf-mirror').result).toMatchObject({ missing: 0, mismatched: 0, extra: 0 });
    await waitCheckpointPast(lastRevision, 90_000, 'cf-pg');
    expect(runVerifier('cf-pg').result).toMatchObject({ missing: 0, mismatched: 0, extra: 0 });
  });

  it('fails a changefeed whose start revision etcd compacted, naming the revision', async () => {
    const current = BigInt((await client.get('\u0000').exec()).header.revision);
    await client.kv.compact({ revision: current.toString(), physical: true });
    const created = await call('POST', '/api/v1/changefeeds', {
      id: 'cf-compacted',
      source: { uri: `etcd://${etcd.endpoint}` },
      sink: { uri: `file://${sinkDir}-compacted` },
      tables: [{ name: 'orders', prefix: 'up/orders/' }],
      start: '5',
    });
    expect(created.status).toBe(201);
    const failed = await waitFor('the changefeed to fail', async () => {
      const view = await call<ChangefeedView & { error?: string }>('GET', '/api/v1/changefeeds/cf-compacted');
      return view.body.state === 'failed' ? view.body : undefined;
    }, 30_000, 100);
    expect(failed.error).toMatch(/revision 6 of table orders was compacted/);
    // Resume with a backfill recovers it: the table is copied at the current revision.
    const recovered = await call<ChangefeedView>('POST', '/api/v1/changefeeds/cf-compacted/resume', { backfill: true });
    expect(recovered.status).toBe(202);
    expect(recovered.body.state).toBe('normal');
    await waitCheckpointPast(lastRevision, 60_000, 'cf-compacted');
    const verified = runVerifier('cf-compacted');
    expect(verified.result).toMatchObject({ missing: 0, mismatched: 0, extra: 0, tables: 1 });
    expect(verified.result.keysChecked as number).toBeGreaterThan(1_000);
    expect((await call('DELETE', '/api/v1/changefeeds/cf-compacted')).status).toBe(200);
    rmSync(`${sinkDir}-compacted`, { recursive: true, force: true });
    // "earliest" starts at the oldest revision etcd still keeps, so it does not fail.
    const earliest = await call<{ startTs: string }>('POST', '/api/v1/changefeeds', {
      id: 'cf-earliest',
      source: { uri: `etcd://${etcd.endpoint}` },
      sink: { uri: 'blackhole://' },
      tables: [{ name: 'orders', prefix: 'up/orders/' }],
      start: 'earliest',
    });
    expect(earliest.status).toBe(201);
    expect(earliest.body.startTs).toBe((current - 1n).toString());
    await waitFor('the earliest changefeed to advance', async () => ((await call<ChangefeedView>('GET', '/api/v1/changefeeds/cf-earliest')).body.watermark.state === 'advancing' ? true : undefined), 30_000, 100);
    expect((await call('DELETE', '/api/v1/changefeeds/cf-earliest')).status).toBe(200);
  });

  it('recovers every sink from a compacted checkpoint with resume and backfill, dropping keys deleted meanwhile', async () => {
    const feeds = ['cf', 'cf-mirror', 'cf-pg'];
    for (const id of feeds) await waitCheckpointPast(lastRevision, 60_000, id);
    for (const id of feeds) expect((await call('POST', `/api/v1/changefeeds/${id}/pause`)).status).toBe(202);
    // While paused: changes, and deletes of keys every sink holds.
    const held = await client.getAll().prefix('up/users/').limit(100).keys();
    expect(held.length).toBe(100);
    for (const key of held) lastRevision = BigInt((await client.delete().key(key).exec()).header.revision);
    await write(1_000, 6);
    const compactedAt = BigInt((await client.get('\u0000').exec()).header.revision);
    await client.kv.compact({ revision: compactedAt.toString(), physical: true });
    for (const id of feeds) {
      const before = BigInt((await call<ChangefeedView>('GET', `/api/v1/changefeeds/${id}`)).body.checkpointTs);
      // A plain resume cannot go on from its checkpoint: never a silent gap.
      expect((await call('POST', `/api/v1/changefeeds/${id}/resume`)).status).toBe(202);
      const failed = await waitFor(`${id} to fail`, async () => {
        const view = await call<ChangefeedView & { error?: string }>('GET', `/api/v1/changefeeds/${id}`);
        return view.body.state === 'failed' ? view.body : undefined;
      }, 30_000, 100);
      expect(failed.error).toMatch(/revision \d+ of table \w+ was compacted/);
      const resumed = await call<ChangefeedView>('POST', `/api/v1/changefeeds/${id}/resume`, { backfill: true });
      expect(resumed.status).toBe(202);
      // The checkpoint holds still until the snapshot is in the sink.
      expect(BigInt(resumed.body.checkpointTs)).toBe(before);
      // Whenever it runs, the verifier finds the copy clean: a table whose snapshot the
      // checkpoint has not reached is pending (its old checkpoint is compacted upstream).
      const early = runVerifier(id);
      expect({ id, ...early.result }).toMatchObject({ id, missing: 0, mismatched: 0, extra: 0 });
      expect((early.result.tables as number) + (early.result.tablesPending as number)).toBe(3);
      expect(early.status).toBe(0);
    }
    await write(500, 7);
    for (const id of feeds) {
      await waitCheckpointPast(lastRevision, 90_000, id);
      const { status, result } = runVerifier(id);
      expect({ id, ...result }).toMatchObject({ id, missing: 0, mismatched: 0, extra: 0, tables: 3 });
      expect(status).toBe(0);
    }
  });

  it('recovers a compacted changefeed incrementally: copies only the keys changed since its checkpoint, and still drops deleted ones', async () => {
    const feeds = ['cf', 'cf-mirror', 'cf-pg'];
    for (const id of feeds) await waitCheckpointPast(lastRevision, 60_000, id);
    for (const id of feeds) expect((await call('POST', `/api/v1/changefeeds/${id}/pause`)).status).toBe(202);
    const checkpoints = new Map<string, string>();
    for (const id of feeds) checkpoints.set(id, (await call<ChangefeedView>('GET', `/api/v1/changefeeds/${id}`)).body.checkpointTs);
    // A bound above the checkpoint would skip what the sink never got: refused, nothing changes.
    const above = await call<{ error: string }>('POST', '/api/v1/changefeeds/cf/resume', { backfill: { sinceTs: (BigInt(checkpoints.get('cf') ?? '0') + 1n).toString() } });
    expect(above.status).toBe(400);
    expect(JSON.stringify(above.body)).toMatch(/above the changefeed's checkpoint/);
    expect((await call<ChangefeedView>('GET', '/api/v1/changefeeds/cf')).body.state).toBe('paused');
    // While paused: deletes of keys every sink holds, and changes.
    const held = await client.getAll().prefix('up/orders/').limit(50).keys();
    expect(held.length).toBe(50);
    for (const key of held) lastRevision = BigInt((await client.delete().key(key).exec()).header.revision);
    await write(300, 9);
    const keysUpstream = await client.getAll().prefix('up/').count();
    const compactedAt = BigInt((await client.get('\u0000').exec()).header.revision);
    await client.kv.compact({ revision: compactedAt.toString(), physical: true });
    const copiedBefore = await keysCopied();
    for (const id of feeds) {
      expect((await call('POST', `/api/v1/changefeeds/${id}/resume`)).status).toBe(202);
      await waitFor(`${id} to fail`, async () => ((await call<ChangefeedView>('GET', `/api/v1/changefeeds/${id}`)).body.state === 'failed' ? true : undefined), 30_000, 100);
      const resumed = await call<ChangefeedView>('POST', `/api/v1/changefeeds/${id}/resume`, { backfill: { sinceTs: checkpoints.get(id) } });
      expect(resumed.status).toBe(202);
    }
    await write(200, 10);
    for (const id of feeds) {
      await waitCheckpointPast(lastRevision, 90_000, id);
      const { status, result } = runVerifier(id);
      expect({ id, ...result }).toMatchObject({ id, missing: 0, mismatched: 0, extra: 0, tables: 3 });
      expect(status).toBe(0);
    }
    // Each changefeed copied the values of at most the 300 keys changed since its
    // checkpoint, where a full backfill copies every key upstream.
    const copied = (await keysCopied()) - copiedBefore;
    process.stderr.write(`incremental backfill: ${copied} values copied over ${feeds.length} changefeeds; a full one copies ${keysUpstream} per changefeed (${feeds.length * keysUpstream})\n`);
    expect(copied).toBeGreaterThan(0);
    expect(copied).toBeLessThanOrEqual(feeds.length * 300);
    expect(copied * 5).toBeLessThan(feeds.length * keysUpstream);
  });

  it('rides out a PostgreSQL outage: spans stay where they are, retry in place, and nothing is lost', async () => {
    await waitCheckpointPast(lastRevision, 60_000, 'cf-pg');
    const where = (s: SpanView): string => `${s.table}\u0000${s.start}`;
    const placed = new Map((await call<SpanPage>('GET', '/api/v1/changefeeds/cf-pg/spans')).body.spans.map((s) => [where(s), s.primary]));
    const admin = new pg.Client({ connectionString: postgres.url.replace(/\/spanfeed$/, '/postgres') });
    await admin.connect();
    try {
      // The outage: every connection to the sink database dropped, new ones refused.
      await admin.query('alter database spanfeed allow_connections false');
      await admin.query("select pg_terminate_backend(pid) from pg_stat_activity where datname = 'spanfeed'");
      await write(1_000, 8);
      await new Promise((resolve) => setTimeout(resolve, 3_000));
      const during = (await call<ChangefeedView>('GET', '/api/v1/changefeeds/cf-pg')).body;
      expect(during.state).toBe('normal');
      // The operator sees why the checkpoint holds.
      expect(during.warning?.failingSpans).toBeGreaterThan(0);
      expect(during.warning?.error).toMatch(/connection|terminat|accepting/i);
      expect(BigInt(during.checkpointTs) < lastRevision).toBe(true);
      const spans = (await call<SpanPage>('GET', '/api/v1/changefeeds/cf-pg/spans')).body.spans;
      expect(spans.filter((s) => s.state !== 'replicating' || placed.get(where(s)) !== s.primary)).toEqual([]);
    } finally {
      await admin.query('alter database spanfeed allow_connections true');
      await admin.end();
    }
    await waitCheckpointPast(lastRevision, 60_000, 'cf-pg');
    await waitFor('the warning to clear', async () => ((await call<{ warning: unknown }>('GET', '/api/v1/changefeeds/cf-pg')).body.warning === null ? true : undefined), 10_000, 100);
    const { status, result } = runVerifier('cf-pg');
    expect(result).toMatchObject({ missing: 0, mismatched: 0, extra: 0, tables: 3 });
    expect(status).toBe(0);
  });

  it('the verifier notices a sink that lost data', async () => {
    await write(500, 5);
    await waitCheckpointPast(lastRevision);
    const copy = mkdtempSync(join(tmpdir(), 'spanfeed-empty-sink-'));
    try {
      const tables = JSON.stringify(tableNames.map((name) => ({ name, prefix: `up/${name}/` })));
      const out = spawnSync(process.execPath, [bin, 'verify', '--source', `etcd://${etcd.endpoint}`, '--sink', `file://${copy}`, '--tables', tables, '--at', lastRevision.toString()], { encoding: 'utf8' });
      const result = JSON.parse(out.stdout.trim()) as { missing: number };
      expect(result.missing).toBeGreaterThan(0);
      expect(out.status).toBe(1);
    } finally {
      rmSync(copy, { recursive: true, force: true });
    }
  });
});

/**
 * Backfill (initial scan) of 50,000 existing keys by three captures into a file sink,
 * with a capture SIGKILLed mid-backfill: its spans continue from their resume token on
 * other captures (per-span progress never goes back), streaming picks up the changes
 * made meanwhile, and the verifier finds the copy exact.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Etcd3 } from 'etcd3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { clusterKeys } from '../../src/cluster/keys.ts';
import type { BackfillRecord } from '../../src/pipeline/backfill.ts';
import { backfillTablePrefix } from '../../src/pipeline/backfill.ts';
import type { ChangefeedView, SpanPage, SpanView } from './harness.ts';
import { TestCapture, TestEtcd, callAny, waitFor } from './harness.ts';

const bin = fileURLToPath(new URL('../../bin/spanfeed', import.meta.url));
const cluster = `bf${process.pid}`;
const keys = clusterKeys(cluster);

let etcd: TestEtcd;
let client: Etcd3;
let sinkDir: string;
const captures: TestCapture[] = [];

/** A backfill's timing as the API shows it. */
interface Timed {
  startedAt: string | null;
  finishedAt: string | null;
  durationMs: number | null;
  keysPerSecond: number | null;
  etaMs: number | null;
}

function call<T = any>(method: string, path: string, body?: unknown): Promise<{ status: number; body: T }> {
  return callAny<T>(captures, method, path, body);
}

async function records(): Promise<Map<string, BackfillRecord>> {
  const all = await client.getAll().prefix(keys.backfillPrefix('bf')).strings();
  return new Map(Object.entries(all).map(([k, v]) => [k, JSON.parse(v) as BackfillRecord]));
}

async function putAll(prefix: string, count: number, value: (i: number) => string): Promise<bigint> {
  let last = 0n;
  for (let done = 0; done < count; done += 100) {
    const ops = [];
    for (let i = done; i < Math.min(count, done + 100); i++) ops.push(client.put(`${prefix}${String(i).padStart(6, '0')}`).value(value(i)).exec());
    for (const r of await Promise.all(ops)) if (BigInt(r.header.revision) > last) last = BigInt(r.header.revision);
  }
  return last;
}

beforeAll(async () => {
  etcd = await TestEtcd.start();
  client = new Etcd3({ hosts: `http://${etcd.endpoint}` });
  sinkDir = mkdtempSync(join(tmpdir(), 'spanfeed-backfill-'));
  await putAll('bf/a/', 25_000, (i) => `a${i}`);
  await putAll('bf/b/', 25_000, (i) => `b${i}`);
  await putAll('bf/c/', 3_000, (i) => `c${i}`);
  for (let i = 0; i < 3; i++) captures.push(await TestCapture.start(etcd, { cluster }));
}, 120_000);

afterAll(async () => {
  await Promise.all(captures.map((c) => c.stop()));
  client?.close();
  await etcd?.stop();
  if (sinkDir !== undefined) rmSync(sinkDir, { recursive: true, force: true });
});

describe('backfill', () => {
  it('copies 50,000 existing keys, resuming from the token after a capture dies mid-way', async () => {
    await waitFor('an owner', async () => ((await call('GET', '/api/v1/captures')).status === 200 ? true : undefined));
    const createdAt = Date.now();
    const created = await call('POST', '/api/v1/changefeeds', {
      id: 'bf',
      source: { uri: `etcd://${etcd.endpoint}?backfillPageKeys=50&backfillSpansInFlight=1` },
      sink: { uri: `file://${sinkDir}` },
      tables: [
        { name: 'a', prefix: 'bf/a/', spans: 4 },
        { name: 'b', prefix: 'bf/b/', spans: 4 },
      ],
      backfill: true,
    });
    expect(created.status).toBe(201);

    // Watch every span's progress: it must never go back. One read at a time, so each
    // answer is of a later state than the one before (overlapping reads may answer out
    // of order and look like a step back).
    const highest = new Map<string, number>();
    const regressions: string[] = [];
    let watching = true;
    const watcher = (async () => {
      while (watching) {
        const all = await records().catch(() => new Map<string, BackfillRecord>());
        for (const [key, record] of all) {
          if (record.keysDone < (highest.get(key) ?? 0)) regressions.push(`${key}: ${highest.get(key)} -> ${record.keysDone}`);
          highest.set(key, Math.max(highest.get(key) ?? 0, record.keysDone));
        }
        await new Promise((resolve) => setTimeout(resolve, 25));
      }
    })();
    try {
      const midway = await waitFor('the backfill to be under way', async () => {
        const view = await call<ChangefeedView & { backfill: Timed & { keysDone: number; keysTotal: number; state: string } }>('GET', '/api/v1/changefeeds/bf');
        return view.body.backfill !== null && view.body.backfill.keysDone >= 5_000 ? view.body.backfill : undefined;
      }, 60_000, 25);
      expect(midway.state).toBe('running');
      // The spans counted so far (two copy at once; the split from the keys gives each a share).
      expect(midway.keysTotal).toBeGreaterThanOrEqual(midway.keysDone);
      expect(midway.keysTotal).toBeLessThanOrEqual(50_000);

      // Kill a non-owner capture that holds spans still backfilling.
      const spans = (await call<SpanPage<SpanView & { backfill: { state: string; keysDone: number } }>>('GET', '/api/v1/changefeeds/bf/spans')).body.spans;
      let victim: TestCapture | undefined;
      for (const capture of captures) {
        if ((await capture.status()).isOwner) continue;
        if (spans.some((s) => s.primary === capture.id && s.backfill.state === 'running')) victim = capture;
      }
      expect(victim).toBeDefined();
      const interrupted = spans.filter((s) => s.primary === victim?.id && s.backfill.state === 'running' && s.backfill.keysDone > 0);
      victim?.proc.signal('SIGKILL');
      // Changes while the backfill runs are streamed after it.
      const last = await putAll('bf/a/', 2_000, (i) => `changed${i}`);

      const done = await waitFor('the backfill to finish and the checkpoint to pass the changes', async () => {
        const view = await call<ChangefeedView & { backfill: Timed & { state: string; keysDone: number } }>('GET', '/api/v1/changefeeds/bf');
        return view.body.backfill?.state === 'done' && BigInt(view.body.checkpointTs) >= last ? view.body : undefined;
      }, 120_000, 100);
      expect(done.backfill.keysDone).toBeGreaterThanOrEqual(50_000);
      // Progress as people who run backfills read it: when, how long, how fast, how much left.
      expect(midway.state).toBe('running');
      expect(Date.parse(midway.startedAt ?? '')).toBeGreaterThan(createdAt - 1_000);
      expect(midway.finishedAt).toBeNull();
      expect(midway.keysPerSecond).toBeGreaterThan(0);
      expect(midway.etaMs).toBeGreaterThan(0);
      expect(done.backfill.startedAt).toBe(midway.startedAt);
      const finishedAt = Date.parse(done.backfill.finishedAt ?? '');
      expect(finishedAt).toBeGreaterThan(Date.parse(midway.startedAt ?? ''));
      expect(finishedAt).toBeLessThanOrEqual(Date.now());
      expect(done.backfill.durationMs).toBe(finishedAt - Date.parse(midway.startedAt ?? ''));
      expect(done.backfill.etaMs).toBe(0);
      // The spans that were interrupted went on from their tokens, not from zero.
      expect(interrupted.length).toBeGreaterThan(0);
      expect(regressions).toEqual([]);
    } finally {
      watching = false;
      await watcher;
    }
    const out = spawnSync(process.execPath, [bin, 'verify', '--changefeed', 'bf', '--etcd', etcd.endpoint, '--cluster', cluster], { encoding: 'utf8' });
    expect(out.stderr).toBe('');
    const result = JSON.parse(out.stdout.trim().split('\n').at(-1) ?? '{}') as Record<string, number>;
    expect(result).toMatchObject({ missing: 0, mismatched: 0, extra: 0 });
    expect(result.keysChecked).toBe(50_000);
    expect(out.status).toBe(0);
  });

  it('backfills a table added to the running changefeed, and drops a removed one', async () => {
    const updated = await call('PUT', '/api/v1/changefeeds/bf', {
      tables: [
        { name: 'a', prefix: 'bf/a/', spans: 4 },
        { name: 'c', prefix: 'bf/c/', spans: 2 },
      ],
      backfill: true,
    });
    expect(updated.status).toBe(200);
    const last = await putAll('bf/c/', 500, (i) => `c-changed${i}`);
    await waitFor('table c to be backfilled and b removed', async () => {
      const view = await call<ChangefeedView & { backfill: { state: string } }>('GET', '/api/v1/changefeeds/bf');
      const spans = (await call<SpanPage>('GET', '/api/v1/changefeeds/bf/spans')).body.spans;
      const tables = new Set(spans.map((s) => s.table));
      return view.body.backfill.state === 'done' && BigInt(view.body.checkpointTs) >= last && !tables.has('b') && tables.has('c') && spans.length === 6 ? true : undefined;
    }, 60_000, 100);
    const out = spawnSync(process.execPath, [bin, 'verify', '--changefeed', 'bf', '--etcd', etcd.endpoint, '--cluster', cluster], { encoding: 'utf8' });
    expect(out.stderr).toBe('');
    const result = JSON.parse(out.stdout.trim()) as Record<string, number>;
    expect(result).toMatchObject({ tables: 2, keysChecked: 28_000, missing: 0, mismatched: 0, extra: 0 });
    // The removed table's backfill records are gone with it; the others stay.
    const left = [...(await records()).keys()];
    expect(left.some((k) => k.startsWith(backfillTablePrefix(keys.backfillPrefix('bf'), 'b')))).toBe(false);
    expect(left.some((k) => k.startsWith(backfillTablePrefix(keys.backfillPrefix('bf'), 'a')))).toBe(true);
    expect(left.filter((k) => k.startsWith(backfillTablePrefix(keys.backfillPrefix('bf'), 'c')))).toHaveLength(2);
  });

  it('copies a table added while the checkpoint is already past its backfill revision', async () => {
    // Keys that exist before the table joins, and a checkpoint that has caught up with
    // them: the spans of the new table may start past the revision the update chose.
    const before = await putAll('bf/d/', 300, (i) => `d${i}`);
    await waitFor('the checkpoint to pass the keys of d', async () => (BigInt((await call<ChangefeedView>('GET', '/api/v1/changefeeds/bf')).body.checkpointTs) >= before ? true : undefined), 30_000, 50);
    const updated = await call('PUT', '/api/v1/changefeeds/bf', {
      tables: [
        { name: 'a', prefix: 'bf/a/', spans: 4 },
        { name: 'c', prefix: 'bf/c/', spans: 2 },
        { name: 'd', prefix: 'bf/d/', spans: 2 },
      ],
      backfill: true,
    });
    expect(updated.status).toBe(200);
    await waitFor('table d to be backfilled', async () => {
      const view = await call<ChangefeedView & { backfill: { state: string } }>('GET', '/api/v1/changefeeds/bf');
      const spans = (await call<SpanPage>('GET', '/api/v1/changefeeds/bf/spans')).body.spans;
      return view.body.backfill.state === 'done' && spans.length === 8 ? true : undefined;
    }, 60_000, 100);
    const verified = await waitFor('the verifier to check all three tables', async () => {
      const out = spawnSync(process.execPath, [bin, 'verify', '--changefeed', 'bf', '--etcd', etcd.endpoint, '--cluster', cluster], { encoding: 'utf8' });
      const result = JSON.parse(out.stdout.trim()) as Record<string, number>;
      return result.tablesPending === 0 ? result : undefined;
    }, 30_000, 200);
    expect(verified).toMatchObject({ tables: 3, keysChecked: 28_300, missing: 0, mismatched: 0, extra: 0 });
  });

  it('starts an "earliest" changefeed at revision 0 when etcd compacted nothing', async () => {
    const early = await call<{ startTs: string }>('POST', '/api/v1/changefeeds', {
      id: 'bf-earliest',
      source: { uri: `etcd://${etcd.endpoint}` },
      sink: { uri: 'blackhole://' },
      tables: [{ name: 'a', prefix: 'bf/a/' }],
      start: 'earliest',
    });
    expect(early.status).toBe(201);
    expect(early.body.startTs).toBe('0');
    expect((await call('DELETE', '/api/v1/changefeeds/bf-earliest')).status).toBe(200);
    // A backfill at a revision etcd has not reached is refused, not failed later.
    const future = await call<{ error: { message: string } }>('POST', '/api/v1/changefeeds', {
      id: 'bf-future',
      source: { uri: `etcd://${etcd.endpoint}` },
      sink: { uri: 'blackhole://' },
      tables: [{ name: 'a', prefix: 'bf/a/' }],
      start: '99999999',
      backfill: true,
    });
    expect(future.status).toBe(400);
    expect(future.body.error.message).toMatch(/cannot start at revision 99999999: the source is at \d+/);
  });
});

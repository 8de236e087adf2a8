/**
 * The owner's shell on a real cluster (real etcd, three `spanfeed server` processes):
 * checkpoint writes that never stop, a failing changefeed that ends nothing else and
 * stays failed across an owner change, compare-and-set changefeed writes, drain counts
 * that are never 0 too early, and a drained owner that hands ownership away.
 */
import { Etcd3 } from 'etcd3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { clusterKeys } from '../../src/cluster/keys.ts';
import type { ApiAnswer, ChangefeedView, SpanPage } from './harness.ts';
import { TestCapture, TestEtcd, api, ownerAmong, waitFor } from './harness.ts';
import { callChecked } from './openapi-check.ts';

const cluster = `own${process.pid}`;
const keys = clusterKeys(cluster);
const ttlS = 3;

let etcd: TestEtcd;
let client: Etcd3;
const captures: TestCapture[] = [];

/** Any running capture's API (non-owners forward to the owner), every answer checked against the OpenAPI document. */
const call = <T = any>(method: string, path: string, body?: unknown): Promise<ApiAnswer<T>> => callChecked<T>(captures, method, path, body);

async function view(id: string): Promise<ChangefeedView & { error?: string; moves: { queued: number } }> {
  const answer = await call<ChangefeedView & { error?: string; moves: { queued: number } }>('GET', `/api/v1/changefeeds/${id}`);
  if (answer.status !== 200) throw new Error(`GET ${id}: ${answer.status} ${JSON.stringify(answer.body)}`);
  return answer.body;
}

async function persistedCheckpoint(id: string): Promise<bigint> {
  const value = await client.get(keys.changefeedStatus(id)).string();
  return value === null ? 0n : BigInt((JSON.parse(value) as { checkpointTs: string }).checkpointTs);
}

const owner = (): Promise<TestCapture> => ownerAmong(captures);

async function advancing(id: string, timeoutMs = 30_000): Promise<void> {
  await waitFor(`${id} advancing`, async () => ((await view(id)).watermark.state === 'advancing' ? true : undefined), timeoutMs, 100);
}

/** Waits until the persisted checkpoint of `id` has moved `times` times. */
async function persistedMoves(id: string, times: number, timeoutMs = 15_000): Promise<void> {
  let last = await persistedCheckpoint(id);
  let moves = 0;
  await waitFor(`the persisted checkpoint of ${id} to move ${times} times`, async () => {
    const now = await persistedCheckpoint(id);
    if (now > last) moves++;
    last = now;
    return moves >= times ? true : undefined;
  }, timeoutMs, 200);
}

const datagen = (id: string, tables: { name: string; spans: number }[] = [{ name: 't', spans: 4 }]) => ({
  id,
  source: { uri: 'datagen://?rate=10' },
  sink: { uri: 'blackhole://' },
  tables,
});

beforeAll(async () => {
  etcd = await TestEtcd.start();
  client = new Etcd3({ hosts: `http://${etcd.endpoint}` });
  for (let i = 0; i < 3; i++) captures.push(await TestCapture.start(etcd, { cluster, leaseTtlS: ttlS }));
  await owner();
}, 60_000);

afterAll(async () => {
  await Promise.all(captures.map((c) => c.stop()));
  client?.close();
  await etcd?.stop();
});

describe('the owner shell', () => {
  it('keeps writing the checkpoint through table updates', async () => {
    expect((await call('POST', '/api/v1/changefeeds', datagen('upd'))).status).toBe(201);
    await advancing('upd');
    // Each update rebuilt the owner's record, which once kept a stale "write in flight"
    // flag: no checkpoint of the changefeed was written again.
    for (let i = 0; i < 30; i++) {
      const answer = await call('PUT', '/api/v1/changefeeds/upd', { tables: [{ name: 't', spans: 4 }, ...(i % 2 === 0 ? [{ name: `x${i}`, spans: 2 }] : [])] });
      expect(answer.status).toBe(200);
    }
    await persistedMoves('upd', 3);
  });

  it('a failing changefeed ends no process, stops no other changefeed, and stays failed across an owner change', async () => {
    // A source whose start revision is compacted: an error retrying cannot fix.
    for (let i = 0; i < 20; i++) await client.put(`up/compacted/${i}`).value(`v${i}`);
    const { header } = await client.put('up/compacted/last').value('x').exec();
    const compactedAt = BigInt(header.revision);
    await client.kv.compact({ revision: compactedAt.toString(), physical: true });
    expect((await call('POST', '/api/v1/changefeeds', datagen('healthy'))).status).toBe(201);
    const created = await call('POST', '/api/v1/changefeeds', {
      id: 'doomed',
      source: { uri: `etcd://${etcd.endpoint}` },
      sink: { uri: 'blackhole://' },
      tables: [{ name: 'compacted', prefix: 'up/compacted/' }],
      start: (compactedAt - 10n).toString(),
    });
    expect(created.status, JSON.stringify(created.body)).toBe(201);
    const failed = await waitFor('the doomed changefeed to fail', async () => {
      const v = await view('doomed');
      return v.state === 'failed' ? v : undefined;
    }, 30_000, 200);
    expect(failed.error).toMatch(/compact/i);
    // Nothing else suffered: every capture runs, the healthy changefeed advances.
    await advancing('healthy');
    await persistedMoves('healthy', 2);
    expect(captures.every((c) => c.proc.running)).toBe(true);
    // It stays failed: not run again by this owner, nor by the next one.
    const old = await owner();
    old.proc.signal('SIGKILL');
    await old.proc.exited;
    captures.splice(captures.indexOf(old), 1);
    const next = await owner();
    expect(next.id).not.toBe(old.id);
    await advancing('healthy');
    for (let i = 0; i < 10; i++) {
      const v = await view('doomed');
      expect(v.state).toBe('failed');
      expect(v.spans).toBe(0);
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
    captures.push(await TestCapture.start(etcd, { cluster, leaseTtlS: ttlS }));
    expect((await call('DELETE', '/api/v1/changefeeds/doomed')).status).toBe(200);
  });

  it('creates a changefeed once when the same create races through every capture', async () => {
    // Many rounds: a check against a cache that a concurrent read just made stale let a
    // second create overwrite the first (its info and its status).
    for (let round = 0; round < 15; round++) {
      const id = `dup${round}`;
      const answers = await Promise.all(captures.flatMap((c) => [0, 1, 2].map(() => api(c.url, 'POST', '/api/v1/changefeeds', datagen(id)))));
      const statuses = answers.map((a) => a.status).sort();
      expect(statuses.filter((s) => s === 201), JSON.stringify(statuses)).toHaveLength(1);
      // The others are told it exists (or, from a capture that has not seen the owner yet, to retry).
      expect(statuses.filter((s) => s !== 201).every((s) => s === 409 || s === 503), JSON.stringify(answers)).toBe(true);
      if (round > 0) expect((await call('DELETE', `/api/v1/changefeeds/dup${round - 1}`)).status).toBe(200);
    }
    const id = 'dup14';
    // A pause and a resume racing: each lands whole or answers 409, and the info stays one of theirs.
    await advancing(id);
    const racing = await Promise.all([call('POST', `/api/v1/changefeeds/${id}/pause`), call('PUT', `/api/v1/changefeeds/${id}`, { tables: [{ name: 't', spans: 2 }] })]);
    expect(racing.map((a) => a.status).every((s) => s === 202 || s === 200 || s === 409)).toBe(true);
    const info = JSON.parse((await client.get(keys.changefeedInfo(id)).string()) ?? '{}') as { state: string };
    expect(info.state).toBe(racing[0]?.status === 202 ? 'paused' : 'normal');
    expect((await call('DELETE', `/api/v1/changefeeds/${id}`)).status).toBe(200);
  });

  it('never answers a drain with 0 spans while the capture still holds some, even right after an owner change', async () => {
    const old = await owner();
    await advancing('healthy');
    const target = captures.find((c) => c !== old && c.proc.running) as TestCapture;
    old.proc.signal('SIGKILL');
    await old.proc.exited;
    captures.splice(captures.indexOf(old), 1);
    await owner();
    // Ask at once: the new owner has not heard from the captures yet.
    const first = await waitFor('a drain answer from the new owner', async () => {
      const answer = await call<{ remainingSpans: number | null }>('POST', `/api/v1/captures/${target.id}/drain`);
      return answer.status === 202 ? answer : answer.status === 409 || answer.status === 404 ? undefined : undefined;
    }, 20_000, 20);
    expect(first.body.remainingSpans === null || first.body.remainingSpans > 0).toBe(true);
    await waitFor('the drain to finish', async () => {
      const answer = await call<{ remainingSpans: number | null }>('POST', `/api/v1/captures/${target.id}/drain`);
      return answer.body.remainingSpans === 0 ? true : undefined;
    }, 30_000, 200);
    const spans = await call<SpanPage<{ primary: string | null; secondaries: string[] }>>('GET', '/api/v1/changefeeds/healthy/spans');
    expect(spans.body.spans.filter((s) => s.primary === target.id || s.secondaries.includes(target.id))).toEqual([]);
    expect((await call('DELETE', `/api/v1/captures/${target.id}/drain`)).status).toBe(200);
    captures.push(await TestCapture.start(etcd, { cluster, leaseTtlS: ttlS }));
  });

  it('a drained owner resigns once its spans are gone', async () => {
    await advancing('healthy');
    await call('POST', '/api/v1/changefeeds/healthy/rebalance');
    const old = await owner();
    const drained = await call<{ remainingSpans: number | null }>('POST', `/api/v1/captures/${old.id}/drain`);
    expect(drained.status).toBe(202);
    const next = await waitFor('ownership to move away from the drained owner', async () => {
      const current = await owner();
      return current.id !== old.id ? current : undefined;
    }, 30_000, 200);
    expect(next.id).not.toBe(old.id);
    const spans = await call<SpanPage<{ primary: string | null }>>('GET', '/api/v1/changefeeds/healthy/spans');
    expect(spans.body.spans.filter((s) => s.primary === old.id)).toEqual([]);
    // The next owner keeps the drain: it is persisted.
    const list = await call<{ id: string; draining: boolean }[]>('GET', '/api/v1/captures');
    expect(list.body.find((c) => c.id === old.id)?.draining).toBe(true);
    expect((await call('DELETE', `/api/v1/captures/${old.id}/drain`)).status).toBe(200);
    expect(captures.every((c) => c.proc.running)).toBe(true);
  });
});

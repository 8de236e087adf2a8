/**
 * Split points from the data (issue 12, item 1) on a real etcd and capture: a table of
 * the demo's keys split into 4 spans at create has each span holding 15-35% of its keys;
 * the boundaries are stored in the info; explicit boundaries are taken as given and bad
 * ones refused (400, nothing created); an update that keeps a table keeps its split, and
 * a table added by the update is sampled.
 */
import { Etcd3 } from 'etcd3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { SpanView } from './harness.ts';
import { TestCapture, TestEtcd, callAny, waitFor } from './harness.ts';

const cluster = `split${process.pid}`;
let meta: TestEtcd;
let upstream: TestEtcd;
let client: Etcd3;
const captures: TestCapture[] = [];
const call = <T = any>(method: string, path: string, body?: unknown) => callAny<T>(captures, method, path, body);

async function keysIn(span: SpanView): Promise<number> {
  const end = span.end === '' ? '\u0000' : span.end;
  return Number(await client.getAll().inRange({ start: span.start, end }).count());
}

beforeAll(async () => {
  [meta, upstream] = await Promise.all([TestEtcd.start(), TestEtcd.start()]);
  client = new Etcd3({ hosts: `http://${upstream.endpoint}` });
  for (const table of ['orders', 'users']) {
    for (let i = 0; i < 500; i += 50) await Promise.all(Array.from({ length: 50 }, (_, j) => client.put(`demo/${table}/${String(i + j).padStart(4, '0')}`).value('v').exec()));
  }
  captures.push(await TestCapture.start(meta, { cluster }));
  await waitFor('an owner', async () => ((await call('GET', '/api/v1/captures')).status === 200 ? true : undefined));
}, 60_000);

afterAll(async () => {
  await Promise.all(captures.map((c) => c.stop()));
  client?.close();
  await Promise.all([meta?.stop(), upstream?.stop()]);
});

describe('split points from the data', () => {
  it('cuts a table of the demo\'s keys into 4 spans of 15-35% each, and keeps the split across an update', async () => {
    const created = await call('POST', '/api/v1/changefeeds', {
      id: 'cf',
      source: { uri: `etcd://${upstream.endpoint}` },
      sink: { uri: 'blackhole://' },
      tables: [{ name: 'orders', prefix: 'demo/orders/', spans: 4 }],
    });
    expect(created.status, JSON.stringify(created.body)).toBe(201);
    const boundaries = created.body.tables[0].boundaries as string[];
    expect(boundaries).toHaveLength(3);
    const spans = await waitFor('4 spans', async () => {
      const list = (await call<SpanView[] | { spans: SpanView[] }>('GET', '/api/v1/changefeeds/cf/spans')).body;
      const items = Array.isArray(list) ? list : list.spans;
      return items.length === 4 ? items : undefined;
    });
    for (const span of spans) {
      const share = (await keysIn(span)) / 500;
      expect(share, `${span.start}..${span.end}`).toBeGreaterThanOrEqual(0.15);
      expect(share, `${span.start}..${span.end}`).toBeLessThanOrEqual(0.35);
    }
    // Keep orders, add users: orders keeps its boundaries, users is sampled.
    const updated = await call('PUT', '/api/v1/changefeeds/cf', { tables: [{ name: 'orders', prefix: 'demo/orders/', spans: 4 }, { name: 'users', prefix: 'demo/users/', spans: 2 }] });
    expect(updated.status, JSON.stringify(updated.body)).toBe(200);
    expect(updated.body.tables[0].boundaries).toEqual(boundaries);
    expect(updated.body.tables[1].boundaries).toEqual(['demo/users/0250']);
  }, 60_000);

  it('takes explicit boundaries, refuses bad ones, and cuts an empty table at raw bytes', async () => {
    const explicit = await call('POST', '/api/v1/changefeeds', {
      id: 'explicit',
      source: { uri: `etcd://${upstream.endpoint}` },
      sink: { uri: 'blackhole://' },
      tables: [{ name: 'orders', prefix: 'demo/orders/', boundaries: ['demo/orders/0100', 'demo/orders/0400'] }],
    });
    expect(explicit.status, JSON.stringify(explicit.body)).toBe(201);
    expect(explicit.body.tables[0]).toMatchObject({ spans: 3, boundaries: ['demo/orders/0100', 'demo/orders/0400'] });
    for (const [table, message] of [
      [{ name: 'o', prefix: 'demo/orders/', boundaries: ['demo/orders/2', 'demo/orders/1'] }, /strictly increasing/],
      [{ name: 'o', prefix: 'demo/orders/', boundaries: ['demo/x'] }, /not before the table's end/],
      [{ name: 'o', prefix: 'demo/orders/', spans: 4, boundaries: ['demo/orders/1'] }, /4 spans need 3 boundaries/],
      [{ name: 'o', prefix: 'demo/orders/', boundaries: [''] }, /boundaries/],
    ] as const) {
      const refused = await call('POST', '/api/v1/changefeeds', { id: 'bad', source: { uri: `etcd://${upstream.endpoint}` }, sink: { uri: 'blackhole://' }, tables: [table] });
      expect(refused.status, JSON.stringify(refused.body)).toBe(400);
      expect(JSON.stringify(refused.body)).toMatch(message);
    }
    expect((await call('GET', '/api/v1/changefeeds/bad')).status).toBe(404);
    const empty = await call('POST', '/api/v1/changefeeds', { id: 'empty', source: { uri: `etcd://${upstream.endpoint}` }, sink: { uri: 'blackhole://' }, tables: [{ name: 'none', prefix: 'nothing/', spans: 4 }] });
    expect(empty.status).toBe(201);
    expect(empty.body.tables[0].boundaries).toBeUndefined();
    expect(empty.body.tables[0].spans).toBe(4);
  }, 60_000);
});

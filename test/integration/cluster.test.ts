/**
 * A real three-capture cluster: real etcd, real `spanfeed server` processes talking gRPC
 * on loopback, a datagen -> blackhole changefeed of 300 spans. The tests run in order on
 * one cluster; a monitor reads the persisted checkpoint from etcd all along and the last
 * test asserts it never decreased and stayed <= resolved.
 */
import { Etcd3 } from 'etcd3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Election } from '../../src/cluster/election.ts';
import { clusterKeys } from '../../src/cluster/keys.ts';
import type { ApiAnswer, ChangefeedView, SpanPage, SpanView } from './harness.ts';
import { TestCapture, TestEtcd, api, ownerAmong, waitFor } from './harness.ts';
import { callChecked } from './openapi-check.ts';

const cluster = `it${process.pid}`;
const keys = clusterKeys(cluster);
const changefeedId = 'cf1';
const ttlS = 3;

let etcd: TestEtcd;
let client: Etcd3;
const captures: TestCapture[] = [];
const persisted: { checkpointTs: bigint; resolvedTs: bigint }[] = [];
/** Every (method, path, status) whose answer was checked against the OpenAPI document. */
const checkedAnswers = new Set<string>();
let monitor: NodeJS.Timeout | undefined;

/** Any running capture's API (non-owners forward to the owner), every answer checked against the OpenAPI document. */
const call = <T = any>(method: string, path: string, body?: unknown): Promise<ApiAnswer<T>> => callChecked<T>(captures, method, path, body, checkedAnswers);

async function changefeed(): Promise<ChangefeedView> {
  const answer = await call<ChangefeedView>('GET', `/api/v1/changefeeds/${changefeedId}`);
  if (answer.status !== 200) throw new Error(`GET changefeed: ${answer.status} ${JSON.stringify(answer.body)}`);
  return answer.body;
}

async function spans(): Promise<SpanView[]> {
  const answer = await call<SpanPage>('GET', `/api/v1/changefeeds/${changefeedId}/spans`);
  if (answer.status !== 200) throw new Error(`GET spans: ${answer.status}`);
  return answer.body.spans;
}

/** Waits until every span replicates and the persisted checkpoint passes `after`. */
async function waitAdvancing(after: bigint, timeoutMs = 30_000): Promise<ChangefeedView> {
  return waitFor(
    `all 300 spans replicating and the checkpoint passing ${after}`,
    async () => {
      const view = await changefeed();
      return view.spansByState?.replicating === 300 && view.watermark.state === 'advancing' && BigInt(view.checkpointTs) > after ? view : undefined;
    },
    timeoutMs,
    100,
  );
}

const owner = (): Promise<TestCapture> => ownerAmong(captures);

const lastCheckpoint = (): bigint => persisted.at(-1)?.checkpointTs ?? 0n;

beforeAll(async () => {
  etcd = await TestEtcd.start();
  client = new Etcd3({ hosts: `http://${etcd.endpoint}` });
  for (let i = 0; i < 3; i++) captures.push(await TestCapture.start(etcd, { cluster, leaseTtlS: ttlS }));
  monitor = setInterval(() => {
    void client
      .get(keys.changefeedStatus(changefeedId))
      .string()
      .then((value) => {
        if (value === null) return;
        const status = JSON.parse(value) as { checkpointTs: string; resolvedTs: string };
        persisted.push({ checkpointTs: BigInt(status.checkpointTs), resolvedTs: BigInt(status.resolvedTs) });
      })
      .catch(() => undefined);
  }, 50);
}, 60_000);

afterAll(async () => {
  if (monitor !== undefined) clearInterval(monitor);
  await Promise.all(captures.map((c) => c.stop()));
  client?.close();
  await etcd?.stop();
});

describe('a three-capture cluster', () => {
  it('elects exactly one owner, places 300 spans on all three, and advances the checkpoint', async () => {
    const answer = await waitFor('one owner and three captures', async () => {
      const list = await call<{ id: string; isOwner: boolean }[]>('GET', '/api/v1/captures');
      return list.status === 200 && list.body.length === 3 ? list.body : undefined;
    });
    expect(answer.filter((c) => c.isOwner)).toHaveLength(1);

    const created = await call('POST', '/api/v1/changefeeds', {
      id: changefeedId,
      source: { uri: 'datagen://?rate=20&keys=50&seed=7' },
      sink: { uri: 'blackhole://' },
      tables: [
        { name: 'orders', spans: 100 },
        { name: 'users', spans: 100 },
        { name: 'items', spans: 100 },
      ],
    });
    expect(created.status).toBe(201);
    const start = BigInt((created.body as { startTs: string }).startTs);
    await waitAdvancing(start);
    const holders = new Set((await spans()).map((s) => s.primary));
    expect(holders.size).toBe(3);
    expect(new Set(captures.map((c) => c.id))).toEqual(holders);
  });

  it('serves Prometheus metrics on every capture', async () => {
    const owning = await owner();
    const text = await (await fetch(`${owning.url}/metrics`)).text();
    expect(text).toMatch(/spanfeed_changefeed_checkpoint_ts\{changefeed="cf1"\} \d+/);
    expect(text).toMatch(/spanfeed_changefeed_checkpoint_lag_seconds\{changefeed="cf1"\} [\d.]+/);
    expect(text).toContain('spanfeed_changefeed_spans{changefeed="cf1",state="replicating"} 300');
    expect(text).toMatch(/spanfeed_owner_tick_duration_seconds_count \d+/);
    expect(text).toContain('spanfeed_owner_elections_total 1');
    const other = captures.find((c) => c !== owning) as TestCapture;
    const response = await fetch(`${other.url}/metrics`);
    expect(response.headers.get('content-type')).toContain('text/plain');
    const otherText = await response.text();
    expect(otherText).toMatch(/spanfeed_capture_spans_held\{changefeed="cf1"\} \d+/);
    expect(otherText).toMatch(/spanfeed_sink_flush_duration_seconds_count\{changefeed="cf1"\} \d+/);
    expect(otherText).toMatch(/spanfeed_source_events_total\{changefeed="cf1"\} \d+/);
    // Its spans move on by bulk checks of the source between their steps (quiet-spans.ts).
    const counter = (text: string, name: string): number => Number(new RegExp(`^${name}\\{changefeed="cf1"\\} (\\d+)$`, 'm').exec(text)?.[1] ?? 0);
    await waitFor('quiet checks that moved spans on', async () => {
      const now = await (await fetch(`${other.url}/metrics`)).text();
      return counter(now, 'spanfeed_pipeline_quiet_checks_total') > 0 && counter(now, 'spanfeed_pipeline_quiet_spans_moved_total') > 0 ? true : undefined;
    }, 15_000, 200);
  });

  it('streams watermark changes as server-sent events, also through a non-owner', async () => {
    const owning = await owner();
    const other = captures.find((c) => c !== owning) as TestCapture;
    const abort = new AbortController();
    try {
      const response = await fetch(`${other.url}/api/v1/changefeeds/${changefeedId}/watermark/stream`, { signal: abort.signal });
      expect(response.headers.get('content-type')).toContain('text/event-stream');
      const reader = (response.body as ReadableStream<Uint8Array>).getReader();
      let text = '';
      while ((text.match(/\n\n/g) ?? []).length < 3) {
        const { value, done } = await reader.read();
        if (done) break;
        text += Buffer.from(value).toString();
      }
      const events = text.split('\n\n').filter((e) => e.startsWith('event: watermark')).map((e) => JSON.parse(e.split('data: ')[1] as string) as { checkpointTs: string });
      expect(events.length).toBeGreaterThanOrEqual(3);
      for (let i = 1; i < events.length; i++) expect(BigInt((events[i] as { checkpointTs: string }).checkpointTs) >= BigInt((events[i - 1] as { checkpointTs: string }).checkpointTs)).toBe(true);
    } finally {
      abort.abort();
    }
  });

  it('moves one span with the watermark withheld while the move is in flight', async () => {
    const list = await spans();
    const span = list[0] as SpanView;
    const target = captures.find((c) => c.id !== span.primary) as TestCapture;
    const moved = await call('POST', `/api/v1/changefeeds/${changefeedId}/spans/move`, { table: span.table, start: span.start, captureId: target.id });
    expect(moved.status).toBe(202);
    const during = await waitFor('the watermark to show the move in flight', async () => {
      const view = await changefeed();
      return view.watermark.state === 'cannot-proceed' ? view : undefined;
    }, 5_000, 5);
    expect(during.watermark.code).toBe('span-not-replicating');
    await waitAdvancing(lastCheckpoint());
    const after = (await spans()).find((s) => s.table === span.table && s.start === span.start);
    expect(after?.primary).toBe(target.id);
  });

  it('rebalances until no capture holds more than its share', async () => {
    // Pile 30 spans onto one capture first.
    const target = captures[0] as TestCapture;
    const others = (await spans()).filter((s) => s.primary !== target.id).slice(0, 30);
    for (const span of others) {
      const answer = await call('POST', `/api/v1/changefeeds/${changefeedId}/spans/move`, { table: span.table, start: span.start, captureId: target.id });
      expect([202, 409]).toContain(answer.status);
    }
    await waitFor('the moves to finish', async () => ((await spans()).filter((s) => s.primary === target.id).length >= 120 ? true : undefined), 30_000, 100);
    expect((await call('POST', `/api/v1/changefeeds/${changefeedId}/rebalance`)).status).toBe(202);
    await waitFor('balance', async () => {
      const list = await spans();
      const counts = new Map<string, number>();
      for (const s of list) if (s.state === 'replicating' && s.primary !== null) counts.set(s.primary, (counts.get(s.primary) ?? 0) + 1);
      return list.every((s) => s.state === 'replicating') && [...counts.values()].every((n) => n <= 100) ? counts : undefined;
    }, 30_000, 100);
    await waitAdvancing(lastCheckpoint());
  });

  it('drains a capture to 0 spans, and refuses to drain the last one', async () => {
    const owning = await owner();
    const drained = captures.find((c) => c !== owning) as TestCapture;
    const first = await call<{ remainingSpans: number }>('POST', `/api/v1/captures/${drained.id}/drain`);
    expect(first.status).toBe(202);
    expect(first.body.remainingSpans).toBeGreaterThan(0);
    await waitFor('the drain to finish', async () => {
      const answer = await call<{ remainingSpans: number }>('POST', `/api/v1/captures/${drained.id}/drain`);
      return answer.body.remainingSpans === 0 ? true : undefined;
    }, 60_000, 200);
    expect((await spans()).some((s) => s.primary === drained.id)).toBe(false);
    await waitAdvancing(lastCheckpoint());
    const third = captures.find((c) => c !== owning && c !== drained) as TestCapture;
    expect((await call('POST', `/api/v1/captures/${third.id}/drain`)).status).toBe(202);
    const last = await call<{ error: { code: string } }>('POST', `/api/v1/captures/${owning.id}/drain`);
    expect(last.status).toBe(409);
    expect(last.body.error.code).toBe('last-capture');
    // A restarted capture replaces the drained ones (draining is an operator's first step of a restart).
    await drained.stop();
    await third.stop();
    captures.splice(captures.indexOf(drained), 1);
    captures.splice(captures.indexOf(third), 1);
    captures.push(await TestCapture.start(etcd, { cluster, leaseTtlS: ttlS }));
    captures.push(await TestCapture.start(etcd, { cluster, leaseTtlS: ttlS }));
    await waitAdvancing(lastCheckpoint());
    // The drains of the captures that left are forgotten.
    await waitFor('drains of departed captures to be cleaned up', async () => {
      const left = await client.getAll().prefix(keys.drainingPrefix).keys();
      return left.some((k) => k.endsWith(drained.id) || k.endsWith(third.id)) ? undefined : true;
    }, 30_000, 100);
  });

  it('survives SIGKILL of the owner: a new owner rebuilds without restarting healthy spans, and keeps drains', async () => {
    const old = await owner();
    // A drain asked of this owner must survive it: a capture that just joined holds no span.
    const newest = await TestCapture.start(etcd, { cluster, leaseTtlS: ttlS });
    captures.push(newest);
    const drainAsked = await waitFor('the owner to know the new capture', async () => {
      const answer = await call<{ remainingSpans: number | null }>('POST', `/api/v1/captures/${newest.id}/drain`);
      // null until every changefeed heard from the capture: then the count is known.
      return answer.status === 202 && answer.body.remainingSpans !== null ? answer : undefined;
    }, 20_000, 100);
    expect(drainAsked.body.remainingSpans).toBe(0);
    expect(await client.get(keys.draining(newest.id)).string()).not.toBeNull();
    const before = await spans();
    const survivors = new Map(before.filter((s) => s.primary !== old.id).map((s) => [`${s.table}\u0000${s.start}`, s.primary]));
    old.proc.signal('SIGKILL');
    await old.proc.exited;
    captures.splice(captures.indexOf(old), 1);
    const next = await owner();
    expect(next.id).not.toBe(old.id);
    await waitAdvancing(lastCheckpoint());
    const after = await spans();
    const kept = after.filter((s) => survivors.get(`${s.table}\u0000${s.start}`) === s.primary).length;
    expect(kept).toBe(survivors.size);
    const list = await call<{ id: string; draining: boolean }[]>('GET', '/api/v1/captures');
    expect(list.body.find((c) => c.id === newest.id)?.draining).toBe(true);
    // Cancelling the drain is persisted too, before the answer.
    const undrained = await call<{ draining: boolean }>('DELETE', `/api/v1/captures/${newest.id}/drain`);
    expect(undrained.status).toBe(200);
    expect(undrained.body.draining).toBe(false);
    expect(await client.get(keys.draining(newest.id)).string()).toBeNull();
    captures.push(await TestCapture.start(etcd, { cluster, leaseTtlS: ttlS }));
  });

  it('survives SIGKILL of a non-owner: its spans are re-added elsewhere', async () => {
    const owning = await owner();
    const list = await spans();
    // The victim: the non-owner holding the most spans.
    const victim = captures
      .filter((c) => c !== owning)
      .map((c) => ({ c, held: list.filter((s) => s.primary === c.id).length }))
      .sort((a, b) => b.held - a.held)[0]?.c as TestCapture;
    const held = list.filter((s) => s.primary === victim.id).length;
    expect(held).toBeGreaterThan(0);
    victim.proc.signal('SIGKILL');
    await victim.proc.exited;
    captures.splice(captures.indexOf(victim), 1);
    // Its death is seen when its lease expires; then its spans go elsewhere.
    await waitFor('the dead capture to hold no span', async () => ((await spans()).some((s) => s.primary === victim.id) ? undefined : true), 30_000, 100);
    await waitAdvancing(lastCheckpoint(), 40_000);
    captures.push(await TestCapture.start(etcd, { cluster, leaseTtlS: ttlS }));
  });

  it('fences an owner paused past its lease: a successor takes over, the old one comes back as a follower', async () => {
    const paused = await owner();
    const oldId = paused.id;
    paused.proc.signal('SIGSTOP');
    try {
      const next = await waitFor('a successor owner', async () => {
        for (const capture of captures) {
          if (capture === paused) continue;
          if ((await capture.status()).isOwner) return capture;
        }
        return undefined;
      }, 30_000, 200);
      expect(next).not.toBe(paused);
      await waitAdvancing(lastCheckpoint(), 40_000);
    } finally {
      paused.proc.signal('SIGCONT');
    }
    // It notices it lost its lease, stops everything, and rejoins as a new capture.
    const rejoined = await waitFor('the paused capture to rejoin with a new id', async () => {
      const status = await paused.status();
      return status.id !== oldId ? status : undefined;
    }, 30_000, 200);
    expect(rejoined.isOwner).toBe(false);
    await paused.refreshId();
    await waitAdvancing(lastCheckpoint(), 30_000);
  });

  it('rejects a deposed owner writes in etcd (fenced transaction)', async () => {
    const lease = client.lease(ttlS);
    const leaseId = await lease.grant();
    const session = { leaseId, leaseIdHex: BigInt(leaseId).toString(16) } as unknown as import('../../src/cluster/session.ts').EtcdSession;
    const election = new Election(client, keys, session, 'fake-owner');
    await election.campaign();
    const key = keys.ownerKey(session.leaseIdHex);
    const kv = await client.get(key).exec();
    const revision = BigInt(kv.kvs[0]?.create_revision ?? '0');
    const me = { captureId: 'fake-owner', revision, key };
    expect(await election.fencedPut(me, [{ key: `${keys.root}/fence-test`, value: 'a' }])).toBe(true);
    await lease.revoke();
    expect(await election.fencedPut(me, [{ key: `${keys.root}/fence-test`, value: 'b' }])).toBe(false);
    expect(await client.get(`${keys.root}/fence-test`).string()).toBe('a');
  });

  it('answers bad API input with a 4xx JSON error and changes nothing', async () => {
    const infoBefore = await client.getAll().prefix(keys.changefeedsPrefix).strings();
    const infoKeys = (all: Record<string, string>): Record<string, string> => Object.fromEntries(Object.entries(all).filter(([k]) => k.endsWith('/info')));
    const bad: [string, string, unknown, number][] = [
      ['POST', '/api/v1/changefeeds', { id: 'x' }, 400],
      ['POST', '/api/v1/changefeeds', { id: 'bad id!', source: { uri: 'datagen://' }, sink: { uri: 'blackhole://' }, tables: [{ name: 't' }] }, 400],
      ['POST', '/api/v1/changefeeds', { id: 'x', source: { uri: 'nope://' }, sink: { uri: 'blackhole://' }, tables: [{ name: 't' }] }, 400],
      ['POST', '/api/v1/changefeeds', { id: 'x', source: { uri: 'datagen://?rate=1001' }, sink: { uri: 'blackhole://' }, tables: [{ name: 't' }] }, 400],
      ['POST', '/api/v1/changefeeds', { id: 'x', source: { uri: 'datagen://' }, sink: { uri: 'blackhole://' }, tables: [] }, 400],
      ['POST', '/api/v1/changefeeds', { id: 'x', source: { uri: 'datagen://' }, sink: { uri: 'blackhole://' }, tables: [{ name: 't', spans: 0 }] }, 400],
      ['POST', '/api/v1/changefeeds', { id: 'x', source: { uri: 'datagen://' }, sink: { uri: 'blackhole://' }, tables: [{ name: 't' }], extra: 1 }, 400],
      ['POST', '/api/v1/changefeeds', { id: 'x', source: { uri: 'datagen://' }, sink: { uri: 'blackhole://' }, tables: [{ name: 't' }], start: 'yesterday' }, 400],
      ['POST', '/api/v1/changefeeds', { id: changefeedId, source: { uri: 'datagen://' }, sink: { uri: 'blackhole://' }, tables: [{ name: 't' }] }, 409],
      ['GET', '/api/v1/changefeeds/nope', undefined, 404],
      ['DELETE', '/api/v1/changefeeds/nope', undefined, 404],
      ['POST', '/api/v1/changefeeds/nope/pause', undefined, 404],
      ['POST', `/api/v1/changefeeds/${changefeedId}/resume`, undefined, 409],
      ['POST', `/api/v1/changefeeds/${changefeedId}/spans/move`, { table: 'orders' }, 400],
      ['POST', `/api/v1/changefeeds/${changefeedId}/spans/move`, { table: 'orders', start: 'zz', captureId: 'x' }, 404],
      ['POST', '/api/v1/captures/nope/drain', undefined, 404],
      ['PUT', `/api/v1/changefeeds/${changefeedId}`, { tables: 'no' }, 400],
      ['GET', '/api/v1/nothing-here', undefined, 404],
      ['PATCH', '/api/v1/changefeeds', undefined, 405],
      ['GET', `/api/v1/changefeeds/${changefeedId}/spans?limit=0`, undefined, 400],
      ['GET', `/api/v1/changefeeds/${changefeedId}/spans?limit=10001`, undefined, 400],
      ['GET', `/api/v1/changefeeds/${changefeedId}/spans?limit=x`, undefined, 400],
      ['GET', `/api/v1/changefeeds/${changefeedId}/spans?state=running`, undefined, 400],
      ['GET', `/api/v1/changefeeds/${changefeedId}/spans?cursor=!!`, undefined, 400],
      ['GET', `/api/v1/changefeeds/${changefeedId}/spans?cursor=bm90LWpzb24`, undefined, 400],
      ['GET', `/api/v1/changefeeds/${changefeedId}/spans?sort=desc`, undefined, 400],
      ['GET', '/api/v1/changefeeds/nope/spans/summary', undefined, 404],
    ];
    for (const [method, path, body, status] of bad) {
      const answer = await call<{ error: { code: string; message: string } }>(method, path, body);
      expect(answer.status, `${method} ${path} ${JSON.stringify(body)}`).toBe(status);
      expect(typeof answer.body.error.message).toBe('string');
    }
    const capture = captures.find((c) => c.proc.running) as TestCapture;
    const invalidJson = await api(capture.url, 'POST', '/api/v1/changefeeds', undefined, '{not json');
    expect(invalidJson.status).toBe(400);
    const span = (await spans())[0] as SpanView;
    const notReady = await call('POST', `/api/v1/changefeeds/${changefeedId}/spans/move`, { table: span.table, start: span.start, captureId: span.primary });
    expect(notReady.status).toBe(409);
    const infoAfter = await client.getAll().prefix(keys.changefeedsPrefix).strings();
    expect(infoKeys(infoAfter)).toEqual(infoKeys(infoBefore));
  });

  it('pages GET /spans in span order with a cursor and filters, and sums them up', async () => {
    const all = await spans();
    expect(all).toHaveLength(300);
    const order = (a: SpanView, b: SpanView): number => (a.table !== b.table ? (a.table < b.table ? -1 : 1) : a.start < b.start ? -1 : a.start > b.start ? 1 : 0);
    expect([...all].sort(order)).toEqual(all);
    // Pages of 7 (the last one short), each span once, the same order.
    const paged: SpanView[] = [];
    let cursor: string | null = null;
    let pages = 0;
    do {
      const answer: ApiAnswer<SpanPage> = await call<SpanPage>('GET', `/api/v1/changefeeds/${changefeedId}/spans?limit=7${cursor === null ? '' : `&cursor=${cursor}`}`);
      expect(answer.status).toBe(200);
      expect(answer.body.spans.length).toBeLessThanOrEqual(7);
      paged.push(...answer.body.spans);
      cursor = answer.body.nextCursor;
      pages++;
    } while (cursor !== null);
    expect(pages).toBe(Math.ceil(300 / 7));
    expect(paged.map((s) => [s.table, s.start])).toEqual(all.map((s) => [s.table, s.start]));
    // Filters: by table, by primary, by state; and the summary agrees with the list.
    const table = (all[0] as SpanView).table;
    const holder = (all[0] as SpanView).primary as string;
    const ofTable = await call<SpanPage>('GET', `/api/v1/changefeeds/${changefeedId}/spans?table=${encodeURIComponent(table)}&limit=10000`);
    expect(ofTable.body.spans.every((s) => s.table === table)).toBe(true);
    expect(ofTable.body.spans.length).toBe(all.filter((s) => s.table === table).length);
    const ofCapture = await call<SpanPage>('GET', `/api/v1/changefeeds/${changefeedId}/spans?capture=${encodeURIComponent(holder)}&state=replicating&limit=10000`);
    expect(ofCapture.body.spans.length).toBeGreaterThan(0);
    expect(ofCapture.body.spans.every((s) => s.primary === holder && s.state === 'replicating')).toBe(true);
    const summary = await call<{ spans: number; byState: Record<string, number>; tables: { table: string; spans: number }[]; captures: { captureId: string | null; spans: number }[] }>(
      'GET',
      `/api/v1/changefeeds/${changefeedId}/spans/summary`,
    );
    expect(summary.status).toBe(200);
    expect(summary.body.spans).toBe(300);
    expect(summary.body.tables.find((t) => t.table === table)?.spans).toBe(ofTable.body.spans.length);
    expect(summary.body.captures.reduce((n, c) => n + c.spans, 0)).toBe(300);
  });

  it('SIGTERM moves the capture spans away, deregisters it and exits 0', async () => {
    const owning = await owner();
    const list = await spans();
    const leaving = captures
      .filter((c) => c !== owning && c.proc.running)
      .map((c) => ({ c, held: list.filter((s) => s.primary === c.id).length }))
      .sort((a, b) => b.held - a.held)[0]?.c as TestCapture;
    leaving.proc.signal('SIGTERM');
    const code = await Promise.race([leaving.proc.exited, new Promise((resolve) => setTimeout(() => resolve('still running'), 45_000))]);
    expect(code, leaving.proc.output.slice(-3_000)).toBe(0);
    captures.splice(captures.indexOf(leaving), 1);
    const registered = await client.getAll().prefix(keys.capturesPrefix).keys();
    expect(registered.some((k) => k.endsWith(leaving.id))).toBe(false);
    await waitAdvancing(lastCheckpoint(), 30_000);
  });

  it('serves its OpenAPI document, and every answer above matched it', async () => {
    const doc = await call<{ openapi: string; paths: Record<string, unknown> }>('GET', '/api/v1/openapi.json');
    expect(doc.body.openapi).toBe('3.1.0');
    expect(Object.keys(doc.body.paths)).toContain('/api/v1/changefeeds/{id}/spans/move');
    expect(checkedAnswers.size).toBeGreaterThan(15);
  });

  it('kept the persisted checkpoint monotonic and <= resolved the whole time', () => {
    expect(persisted.length).toBeGreaterThan(50);
    for (let i = 1; i < persisted.length; i++) {
      const previous = persisted[i - 1] as { checkpointTs: bigint };
      const current = persisted[i] as { checkpointTs: bigint; resolvedTs: bigint };
      expect(current.checkpointTs >= previous.checkpointTs).toBe(true);
      expect(current.checkpointTs <= current.resolvedTs).toBe(true);
    }
  });
});

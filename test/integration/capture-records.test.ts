/**
 * Keys under `/captures/` that no live capture owns: a record written without a lease (by
 * hand, or by a changefeed whose sink is the cluster's own etcd) and a leased record whose
 * JSON does not fit its key. Neither may count as a capture: the owner would wait for its
 * first heartbeat answer forever and no changefeed would ever advance.
 */
import { Etcd3 } from 'etcd3';
import type { Lease } from 'etcd3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { clusterKeys } from '../../src/cluster/keys.ts';
import type { ChangefeedView } from './harness.ts';
import { TestCapture, TestEtcd, callAny, waitFor } from './harness.ts';

const cluster = `records${process.pid}`;
const keys = clusterKeys(cluster);
const record = (id: string): string =>
  JSON.stringify({ id, grpcAddr: '127.0.0.1:1', httpAddr: '127.0.0.1:1', version: '0.0.0', startedAt: new Date().toISOString() });

let etcd: TestEtcd | undefined;
let client: Etcd3 | undefined;
let lease: Lease | undefined;
const captures: TestCapture[] = [];

beforeAll(async () => {
  etcd = await TestEtcd.start();
  client = new Etcd3({ hosts: `http://${etcd.endpoint}` });
  // A plain put: no lease, so nothing will ever remove it.
  await client.put(keys.capture('leaseless')).value(record('leaseless'));
  // An owner candidate key without a lease, older than every real one: it would win
  // every election for a capture that does not exist.
  await client.put(keys.ownerKey('deadbeef')).value('leaseless');
  // Held by a live lease, but its id is not its key's.
  lease = client.lease(60, { autoKeepAlive: true });
  await lease.put(keys.capture('mismatched')).value(record('someone-else'));
  for (let i = 0; i < 2; i++) captures.push(await TestCapture.start(etcd, { cluster }));
}, 60_000);

afterAll(async () => {
  await Promise.all(captures.map((c) => c.stop()));
  await lease?.revoke().catch(() => undefined);
  client?.close();
  await etcd?.stop();
});

describe('capture records nobody owns', () => {
  it('are ignored: a changefeed advances and the API lists only the real captures', async () => {
    const created = await waitFor('the changefeed to be created', async () => {
      const answer = await callAny(captures, 'POST', '/api/v1/changefeeds', {
        id: 'cf1',
        source: { uri: 'datagen://?rate=20&keys=50&seed=3' },
        sink: { uri: 'blackhole://' },
        tables: [{ name: 'orders', spans: 4 }],
      });
      return answer.status === 201 ? answer : undefined;
    });
    expect(created.status).toBe(201);
    const view = await waitFor(
      'the changefeed to advance',
      async () => {
        const answer = await callAny<ChangefeedView>(captures, 'GET', '/api/v1/changefeeds/cf1');
        return answer.status === 200 && answer.body.watermark.state === 'advancing' ? answer.body : undefined;
      },
      30_000,
      100,
    );
    expect(view.watermark.state).toBe('advancing');

    const listed = await callAny<{ id: string }[]>(captures, 'GET', '/api/v1/captures');
    expect(listed.status).toBe(200);
    expect(listed.body.map((c) => c.id).sort()).toEqual(captures.map((c) => c.id).sort());

    // Every change under the prefix re-reads it: another lease-less key makes every
    // capture read the first one again, and still log it only once.
    await client?.put(keys.capture('leaseless2')).value(record('leaseless2'));
    await waitFor('every capture to log the second key', () =>
      captures.every((c) => c.proc.output.includes(`"key":"${keys.capture('leaseless2')}"`)) ? true : undefined,
    );
    for (const capture of captures) {
      const lines = capture.proc.output.split('\n');
      expect(lines.filter((l) => l.includes('"ignoring capture record without a lease"') && l.includes(`"key":"${keys.capture('leaseless')}"`))).toHaveLength(1);
      expect(lines.filter((l) => l.includes('"ignoring invalid capture record"') && l.includes(`"key":"${keys.capture('mismatched')}"`))).toHaveLength(1);
    }
  }, 90_000);
});

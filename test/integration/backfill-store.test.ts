/**
 * The backfill store on a real etcd: a late save of an older token (a capture that lost
 * the span while its save was in flight) never sets a span's progress back, a new
 * generation starts over, and two writers racing on one record both leave it forward.
 */
import { Etcd3 } from 'etcd3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { BackfillRecord } from '../../src/pipeline/backfill.ts';
import { EtcdBackfillStore, supersedes } from '../../src/pipeline/backfill.ts';
import type { Span } from '../../src/core/span.ts';
import { TestEtcd } from './harness.ts';

let etcd: TestEtcd;
let client: Etcd3;
const span: Span = { table: 't', start: 'a', end: 'b' };
const record = (keysDone: number, extra: Partial<BackfillRecord> = {}): BackfillRecord => ({ snapshotTs: '10', generation: '10', keysDone, keysTotal: 5_000, done: false, ...extra });

beforeAll(async () => {
  etcd = await TestEtcd.start();
  client = new Etcd3({ hosts: `http://${etcd.endpoint}` });
}, 60_000);

afterAll(async () => {
  client?.close();
  await etcd?.stop();
});

describe('backfill store', () => {
  it('keeps the furthest token of a generation and starts over for a new one', async () => {
    const store = new EtcdBackfillStore(client, `/bs${process.pid}/a/`);
    await store.save(span, record(1_800));
    await store.save(span, record(1_750));
    expect((await store.load(span))?.keysDone).toBe(1_800);
    await store.save(span, record(5_000, { done: true }));
    await store.save(span, record(5_000, { done: false }));
    expect((await store.load(span))?.done).toBe(true);
    await store.save(span, record(0, { snapshotTs: '20', generation: '20' }));
    expect(await store.load(span)).toMatchObject({ generation: '20', keysDone: 0 });
  });

  it('leaves a record forward when writers race', async () => {
    const store = new EtcdBackfillStore(client, `/bs${process.pid}/b/`);
    const other = new EtcdBackfillStore(client, `/bs${process.pid}/b/`);
    const saves: Promise<void>[] = [];
    for (let i = 1; i <= 40; i++) saves.push((i % 2 === 0 ? store : other).save(span, record(i * 50)));
    await Promise.all(saves);
    expect((await store.load(span))?.keysDone).toBe(2_000);
  });

  it('states the rule the store applies', () => {
    expect(supersedes(undefined, record(0))).toBe(true);
    expect(supersedes(record(100), record(100))).toBe(true);
    expect(supersedes(record(100), record(99))).toBe(false);
    expect(supersedes(record(100, { done: true }), record(200))).toBe(false);
    expect(supersedes(record(100), record(50, { generation: '11' }))).toBe(true);
  });
});

/**
 * The backfill progress the API shows: read from etcd in pages, kept for `maxAgeMs`,
 * shared by concurrent requests, read again for a new backfill generation, and only the
 * records of each table's current generation count.
 */
import type { Etcd3 } from 'etcd3';
import { describe, expect, it } from 'vitest';
import { BackfillProgressCache } from '../../src/api/backfill-progress.ts';
import type { ChangefeedInfo } from '../../src/server/changefeed-info.ts';

const prefix = '/sf/backfill/cf/';
const hex = (spanKey: string): string => Buffer.from(spanKey, 'latin1').toString('hex');

/** A fake etcd with just the range read the cache uses; counts the requests. */
class FakeEtcd {
  readonly data = new Map<string, string>();
  requests = 0;

  client(): Etcd3 {
    const fake = {
      getAll: () => ({
        inRange: ({ start, end }: { start: Buffer; end: Buffer }) => ({
          limit: (n: number) => ({
            exec: async () => {
              this.requests++;
              const keys = [...this.data.keys()].filter((k) => Buffer.compare(Buffer.from(k), start) >= 0 && Buffer.compare(Buffer.from(k), end) < 0).sort();
              return { kvs: keys.slice(0, n).map((k) => ({ key: Buffer.from(k), value: Buffer.from(this.data.get(k) as string) })), more: keys.length > n };
            },
          }),
        }),
      }),
    };
    return fake as unknown as Etcd3;
  }
}

function info(generation: string): ChangefeedInfo {
  return {
    id: 'cf',
    source: { uri: 'etcd://x' },
    sink: { uri: 'blackhole://' },
    tables: [{ name: 't', spans: 5, backfillTs: generation }, { name: 'u' }],
    start: 'now',
    startTs: '1',
    state: 'normal',
    epoch: '1',
    createdAt: '2026-01-01T00:00:00Z',
  } as ChangefeedInfo;
}

describe('BackfillProgressCache', () => {
  it('reads in pages, keeps the answer for maxAgeMs, shares a read in flight, and reads a new generation again', async () => {
    const etcd = new FakeEtcd();
    for (let i = 0; i < 5; i++) etcd.data.set(`${prefix}${hex(`t\u0000${i}`)}`, JSON.stringify({ snapshotTs: '10', keysDone: i, keysTotal: 10, done: i === 4 }));
    // Another generation's record and a key outside the prefix do not count.
    etcd.data.set(`${prefix}${hex('t\u00009')}`, JSON.stringify({ snapshotTs: '7', keysDone: 1, keysTotal: 1, done: true }));
    etcd.data.set('/sf/backfill/cg/00', '{}');
    const cache = new BackfillProgressCache(() => etcd.client(), () => prefix, { maxAgeMs: 1_000, pageKeysMax: 2 });
    const now = Date.now();
    const [a, b] = await Promise.all([cache.get(info('10'), now), cache.get(info('10'), now)]);
    expect(a).toBe(b);
    expect([...(a?.records.keys() ?? [])].sort()).toEqual([0, 1, 2, 3, 4].map((i) => `t\u0000${i}`));
    // Six keys under the prefix in pages of two: three requests, once for both callers.
    expect(etcd.requests).toBe(3);
    expect(await cache.get(info('10'), now + 999)).toBe(a);
    expect(etcd.requests).toBe(3);
    const later = await cache.get(info('10'), now + 60_000);
    expect(later).not.toBe(a);
    expect(etcd.requests).toBe(6);
    const other = await cache.get(info('7'), now + 60_000);
    expect([...(other?.records.keys() ?? [])]).toEqual(['t\u00009']);
    expect(etcd.requests).toBe(9);
    // A read nobody asks about for 30 ages is dropped with the next request of any changefeed.
    expect(cache.size).toBe(1);
    expect(await cache.get({ ...info('1'), id: 'other', tables: [{ name: 'u' }] } as ChangefeedInfo, Date.now() + 31_000)).toBeUndefined();
    expect(cache.size).toBe(0);
  });

  it('answers undefined without a read for a changefeed that backfills nothing', async () => {
    const etcd = new FakeEtcd();
    const cache = new BackfillProgressCache(() => etcd.client(), () => prefix);
    expect(await cache.get({ ...info('1'), tables: [{ name: 'u' }] } as ChangefeedInfo)).toBeUndefined();
    expect(etcd.requests).toBe(0);
  });
});

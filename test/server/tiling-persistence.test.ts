/**
 * The shell's side of split and merge, without I/O: how a settled tiling is stored in a
 * table spec, and which spans the coordinator is given while one waits to be persisted.
 */
import { describe, expect, it } from 'vitest';
import type { Span } from '../../src/core/span.ts';
import type { ChangefeedInfo, TableSpec } from '../../src/server/changefeed-info.ts';
import { changefeedSpans, parseTables, specWithTiling } from '../../src/server/changefeed-info.ts';
import { newTilingWrites, settledSpans } from '../../src/server/owner-role.ts';

const orders: TableSpec = { name: 'orders', prefix: 'orders/', spans: 2, boundaries: ['orders/5'] };
const users: TableSpec = { name: 'users', prefix: 'users/', spans: 1 };
const span = (table: string, start: string, end: string): Span => ({ table, start, end });
const split: Span[] = [span('orders', 'orders/', 'orders/2'), span('orders', 'orders/2', 'orders/5'), span('orders', 'orders/5', 'orders0')];

function info(tables: TableSpec[]): ChangefeedInfo {
  return { id: 'cf', source: { uri: 'etcd://127.0.0.1:2379' }, sink: { uri: 'blackhole://' }, tables, start: 'now', startTs: '1', state: 'normal', epoch: '1', createdAt: '2026-01-01T00:00:00Z' };
}

describe('specWithTiling', () => {
  it('stores a tiling as its count and boundaries, which give the same spans back', () => {
    const next = specWithTiling(orders, split) as TableSpec;
    expect(next).toEqual({ name: 'orders', prefix: 'orders/', spans: 3, boundaries: ['orders/2', 'orders/5'] });
    expect(changefeedSpans({ tables: [next] }).spans).toEqual(split);
    // The stored spec is one a user could have given: it passes the API's validation.
    expect(parseTables([next])).toEqual([next]);
  });

  it('stores one span without boundaries', () => {
    expect(specWithTiling(orders, [span('orders', 'orders/', 'orders0')])).toEqual({ name: 'orders', prefix: 'orders/', spans: 1 });
  });

  it('refuses spans that do not tile the table exactly', () => {
    expect(specWithTiling(orders, split.slice(1))).toBeUndefined();
    expect(specWithTiling(orders, split.slice(0, 2))).toBeUndefined();
    expect(specWithTiling(orders, [split[0] as Span, split[2] as Span])).toBeUndefined();
    expect(specWithTiling(orders, split.map((s) => ({ ...s, table: 'users' })))).toBeUndefined();
    expect(specWithTiling({ ...orders, prefix: 'o/' }, split)).toBeUndefined();
    expect(specWithTiling(orders, [])).toBeUndefined();
  });
});

describe('settledSpans', () => {
  it('gives a settled tiling while the info has not changed the table', () => {
    const writes = newTilingWrites();
    writes.pending.set('orders', split);
    const before = info([orders, users]);
    // Another table changed (an operator's PUT): orders keeps its settled tiling.
    const after = info([orders, { ...users, spans: 2 }]);
    const { spans } = settledSpans(after, before, writes);
    expect(spans.filter((s) => s.table === 'orders')).toEqual(split);
    expect(spans.filter((s) => s.table === 'users')).toHaveLength(2);
    expect(writes.pending.has('orders')).toBe(true);
  });

  it('gives it while the info holds what this run wrote', () => {
    const writes = newTilingWrites();
    writes.pending.set('orders', split);
    const written = specWithTiling(orders, split) as TableSpec;
    writes.written.set('orders', JSON.stringify(written));
    expect(settledSpans(info([written, users]), info([orders, users]), writes).spans.filter((s) => s.table === 'orders')).toEqual(split);
  });

  it("drops it when an operator cut the table anew or removed it: the operator's cut wins", () => {
    const writes = newTilingWrites();
    writes.pending.set('orders', split);
    const recut: TableSpec = { name: 'orders', prefix: 'orders/', spans: 2, boundaries: ['orders/7'] };
    const { spans } = settledSpans(info([recut, users]), info([orders, users]), writes);
    expect(spans.filter((s) => s.table === 'orders')).toEqual([span('orders', 'orders/', 'orders/7'), span('orders', 'orders/7', 'orders0')]);
    expect(writes.pending.has('orders')).toBe(false);
    writes.pending.set('orders', split);
    expect(settledSpans(info([users]), info([orders, users]), writes).spans.some((s) => s.table === 'orders')).toBe(false);
    expect(writes.pending.has('orders')).toBe(false);
  });

  it('gives the info as it is when nothing is pending', () => {
    const current = info([orders, users]);
    expect(settledSpans(current, current, newTilingWrites())).toEqual(changefeedSpans(current));
    expect(settledSpans(current, current, undefined)).toEqual(changefeedSpans(current));
  });
});

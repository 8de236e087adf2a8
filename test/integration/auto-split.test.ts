/**
 * The split policy on a real cluster (issue 12, item 3): a datagen changefeed whose
 * table makes zipf-skewed traffic over text keys starts with 2 spans cut at raw bytes
 * (so every key lands in one of them); with `"autoSplit": true` the owner splits the hot
 * span at the median of its recent keys again and again, until no span writes more than
 * the split threshold. Measured from `GET /api/v1/changefeeds/{id}/spans`: every span
 * replicating, freshly reported, at or below `--split-rate-min`, and together carrying
 * the table's whole rate; the span count grew. A changefeed without autoSplit keeps its
 * spans. `PUT` with `autoSplit` alone turns the policy off and on again on the running
 * changefeed without changing its tables or spans (a bad value is a 400 that changes
 * nothing), and turning it on for the plain changefeed makes the policy split it.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TestCapture, TestEtcd, waitFor } from './harness.ts';
import { callChecked, checkAgainstOpenApi } from './openapi-check.ts';

const cluster = `autosplit${process.pid}`;
/** Events a second the table makes, and the split threshold (zipf(1) over 1,000 keys: the hottest key alone is 13%, 67 a second). */
const tableRate = 500;
const splitRateMin = 150;
let etcd: TestEtcd;
const captures: TestCapture[] = [];
const call = <T = any>(method: string, path: string, body?: unknown) => callChecked<T>(captures, method, path, body);

interface TableView {
  name: string;
  spans?: number;
  boundaries?: string[];
}

interface ChangefeedRow {
  autoSplit: boolean;
  tables: TableView[];
  spans: number;
  operations: unknown[];
}

interface SpanRow {
  table: string;
  start: string;
  end: string;
  state: string;
  primary: string | null;
  progress: { eventsPerSecond: number; ageMs: number } | null;
}

beforeAll(async () => {
  etcd = await TestEtcd.start();
  const policy = [
    '--split-rate-min', String(splitRateMin),
    '--merge-rate-max', '20',
    '--split-after-ms', '1000',
    // No merges during the test: the span count only grows.
    '--merge-after-ms', '3600000',
    '--split-cool-down-ms', '3600000',
  ];
  for (let i = 0; i < 2; i++) captures.push(await TestCapture.start(etcd, { cluster, extraArgs: policy }));
}, 60_000);

afterAll(async () => {
  await Promise.all(captures.map((c) => c.stop()));
  await etcd?.stop();
});

async function spansOf(id: string): Promise<SpanRow[]> {
  const answer = await call<{ spans: SpanRow[]; nextCursor: string | null }>('GET', `/api/v1/changefeeds/${id}/spans?limit=1000`);
  expect(answer.status).toBe(200);
  expect(answer.body.nextCursor).toBeNull();
  return answer.body.spans;
}

describe('auto split', () => {
  it('splits the hot spans of a zipf-skewed table until none writes above the threshold', async () => {
    await waitFor('an owner', async () => ((await call('GET', '/api/v1/captures')).status === 200 ? true : undefined));
    const source = `datagen://?tableRate=${tableRate}&keys=1000&dist=zipf&zipfS=1&seed=3`;
    for (const [id, autoSplit] of [['hot', true], ['plain', false]] as const) {
      const created = await call('POST', '/api/v1/changefeeds', { id, source: { uri: source }, sink: { uri: 'blackhole://' }, tables: [{ name: 'orders', spans: 2 }], autoSplit });
      expect(created.status, JSON.stringify(created.body)).toBe(201);
    }
    // A bad autoSplit is refused with the rule.
    const bad = await call<{ message: string }>('POST', '/api/v1/changefeeds', { id: 'bad', source: { uri: source }, sink: { uri: 'blackhole://' }, tables: [{ name: 'orders' }], autoSplit: 'yes' });
    expect(bad.status).toBe(400);

    // Before any split: the 2 raw-byte spans, all of the table's traffic on one of them.
    const first = await waitFor('both spans with a measured rate', async () => {
      const rows = await spansOf('hot');
      return rows.some((r) => (r.progress?.eventsPerSecond ?? 0) > splitRateMin) ? rows : undefined;
    }, 20_000, 200);
    expect(first.length).toBeGreaterThanOrEqual(2);

    const started = Date.now();
    let calm = 0;
    const settled = await waitFor('every span at or below the split threshold', async () => {
      const rows = await spansOf('hot');
      const fresh = rows.every((r) => r.state === 'replicating' && r.progress !== null && r.progress.ageMs < 3_000);
      const total = rows.reduce((sum, r) => sum + (r.progress?.eventsPerSecond ?? 0), 0);
      const hottest = Math.max(...rows.map((r) => r.progress?.eventsPerSecond ?? 0));
      // The rates must be measured ones (a new span reports 0 until its first window): together the table's rate.
      const ok = fresh && rows.length > 2 && hottest <= splitRateMin && total > tableRate * 0.7 && total < tableRate * 1.3;
      calm = ok ? calm + 1 : 0;
      // Twice in a row, a second apart: not a moment between two windows.
      return calm >= 2 ? { rows, total, hottest } : undefined;
    }, 55_000, 1_000);
    expect(Date.now() - started).toBeLessThan(55_000);
    expect(settled.rows.length).toBeGreaterThan(2);
    expect(settled.hottest).toBeLessThanOrEqual(splitRateMin);
    // The spans still tile the table: sorted, touching, from its start to its end.
    const sorted = [...settled.rows].sort((a, b) => (a.start < b.start ? -1 : 1));
    expect(sorted[0]?.start).toBe('orders/');
    expect(sorted.at(-1)?.end).toBe('orders0');
    for (let i = 1; i < sorted.length; i++) expect(sorted[i]?.start).toBe(sorted[i - 1]?.end);
    // The changefeed advances after its splits.
    const view = await call<{ checkpointTs: string; autoSplit: boolean }>('GET', '/api/v1/changefeeds/hot');
    checkAgainstOpenApi('GET', '/api/v1/changefeeds/hot', 200, view.body);
    expect(view.body.autoSplit).toBe(true);
    expect((await call<{ autoSplit: boolean }>('GET', '/api/v1/changefeeds/plain')).body.autoSplit).toBe(false);
    const checkpoint = BigInt(view.body.checkpointTs);
    await waitFor('the checkpoint to move on', async () => {
      const again = await call<{ checkpointTs: string }>('GET', '/api/v1/changefeeds/hot');
      return BigInt(again.body.checkpointTs) > checkpoint ? true : undefined;
    }, 15_000, 200);

    // Without autoSplit the hot span stays as it is.
    const plain = await spansOf('plain');
    expect(plain).toHaveLength(2);
    expect(Math.max(...plain.map((r) => r.progress?.eventsPerSecond ?? 0))).toBeGreaterThan(splitRateMin);

    // autoSplit off and on again on the running changefeed: the tables (with the
    // boundaries the splits wrote) and the spans stay exactly as they are.
    const tiled = await waitFor('the info to hold the settled tiling', async () => {
      const answer = await call<ChangefeedRow>('GET', '/api/v1/changefeeds/hot');
      const table = answer.body.tables[0];
      const persisted = table !== undefined && table.spans === answer.body.spans && (table.boundaries?.length ?? 0) === answer.body.spans - 1;
      return answer.body.operations.length === 0 && persisted ? answer.body : undefined;
    }, 15_000, 200);
    const spanKeys = async (id: string): Promise<string[]> => (await spansOf(id)).map((r) => `${r.start}..${r.end}`).sort();
    const tiledSpans = await spanKeys('hot');
    for (const autoSplit of [false, true]) {
      const put = await call<ChangefeedRow>('PUT', '/api/v1/changefeeds/hot', { autoSplit });
      expect(put.status, JSON.stringify(put.body)).toBe(200);
      expect(put.body.autoSplit).toBe(autoSplit);
      expect(put.body.tables).toEqual(tiled.tables);
      const got = await call<ChangefeedRow>('GET', '/api/v1/changefeeds/hot');
      expect(got.body).toMatchObject({ autoSplit, tables: tiled.tables, spans: tiled.spans });
      expect(await spanKeys('hot')).toEqual(tiledSpans);
    }
    // Refused with a JSON error, nothing changed: not a boolean, nothing asked, a backfill without tables.
    for (const body of [{ autoSplit: 'no' }, {}, { autoSplit: false, backfill: true }]) {
      const refused = await call<{ error: { code: string; message: string } }>('PUT', '/api/v1/changefeeds/hot', body);
      expect(refused.status, JSON.stringify(body)).toBe(400);
      expect(refused.body.error.code).toBe('invalid');
    }
    expect((await call<ChangefeedRow>('GET', '/api/v1/changefeeds/hot')).body).toMatchObject({ autoSplit: true, tables: tiled.tables });

    // Turned on for the plain changefeed, the policy splits its hot span.
    const plainOn = await call<ChangefeedRow>('PUT', '/api/v1/changefeeds/plain', { autoSplit: true });
    expect(plainOn.status, JSON.stringify(plainOn.body)).toBe(200);
    expect(plainOn.body.autoSplit).toBe(true);
    await waitFor('the plain changefeed split once its policy is on', async () => ((await spansOf('plain')).length > 2 ? true : undefined), 20_000, 200);
  }, 120_000);
});

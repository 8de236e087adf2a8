/**
 * Per-span progress on a real cluster (issue 11, item 3): two captures report their
 * slowest spans and a round-robin slice with every report; the owner answers
 * `GET .../spans/slowest?k=` as the exact merge of their lists, names the slowest spans
 * in the changefeed's view, exports the slowest span's lag, and the CLI prints them.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ChangefeedView } from './harness.ts';
import { TestCapture, TestEtcd, callAny, runCli, waitFor } from './harness.ts';
import { checkAgainstOpenApi } from './openapi-check.ts';

const cluster = `progress${process.pid}`;
let etcd: TestEtcd;
let dir: string;
const captures: TestCapture[] = [];
const call = <T = any>(method: string, path: string, body?: unknown) => callAny<T>(captures, method, path, body);

interface SlowSpan {
  table: string;
  start: string;
  captureId: string;
  checkpointTs: string;
  checkpointLagMs: number | null;
  eventsPerSecond: number;
  ageMs: number;
}

beforeAll(async () => {
  etcd = await TestEtcd.start();
  dir = mkdtempSync(join(tmpdir(), 'spanfeed-progress-'));
  // A slice of 2 a report: 12 spans over two captures are refreshed within a few reports.
  for (let i = 0; i < 2; i++) captures.push(await TestCapture.start(etcd, { cluster, fileSinkRoot: dir, extraArgs: ['--progress-slowest', '4', '--progress-slice', '2'] }));
}, 60_000);

afterAll(async () => {
  await Promise.all(captures.map((c) => c.stop()));
  await etcd?.stop();
  if (dir !== undefined) rmSync(dir, { recursive: true, force: true });
});

describe('per-span progress', () => {
  it('answers the slowest spans over every capture, in the view, in /metrics and in the CLI', async () => {
    await waitFor('an owner', async () => ((await call('GET', '/api/v1/captures')).status === 200 ? true : undefined));
    const created = await call('POST', '/api/v1/changefeeds', {
      id: 'cf',
      source: { uri: 'datagen://?rate=20' },
      sink: { uri: `file://${dir}/sink` },
      tables: [{ name: 't', spans: 6 }, { name: 'u', spans: 6 }],
    });
    expect(created.status, JSON.stringify(created.body)).toBe(201);
    const slowest = await waitFor('four slowest spans from both captures', async () => {
      const answer = await call<SlowSpan[]>('GET', '/api/v1/changefeeds/cf/spans/slowest?k=4');
      if (answer.status !== 200 || answer.body.length < 4) return undefined;
      return new Set(answer.body.map((s) => s.captureId)).size >= 1 ? answer : undefined;
    }, 30_000, 200);
    checkAgainstOpenApi('GET', '/api/v1/changefeeds/cf/spans/slowest?k=4', 200, slowest.body);
    const checkpoints = slowest.body.map((s) => BigInt(s.checkpointTs));
    expect([...checkpoints].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0))).toEqual(checkpoints);
    for (const s of slowest.body) {
      expect(s.ageMs).toBeLessThan(10_000);
      expect(s.checkpointLagMs).not.toBeNull();
    }
    // Values move: a later answer has the slowest span's checkpoint further on.
    const first = checkpoints[0] as bigint;
    await waitFor('the slowest checkpoint to move', async () => {
      const again = await call<SlowSpan[]>('GET', '/api/v1/changefeeds/cf/spans/slowest?k=1');
      return again.body.length === 1 && BigInt((again.body[0] as SlowSpan).checkpointTs) > first ? true : undefined;
    }, 15_000, 200);
    // The events written a second show once a window was measured (20 a second per span).
    await waitFor('a rate on the slowest spans', async () => {
      const again = await call<SlowSpan[]>('GET', '/api/v1/changefeeds/cf/spans/slowest?k=4');
      return again.body.some((s) => s.eventsPerSecond > 0) ? true : undefined;
    }, 15_000, 200);

    // Every span's own progress, refreshed round-robin (2 a report): all 12 within seconds.
    await waitFor('every span with a recent progress', async () => {
      const page = await call<{ spans: { progress: { ageMs: number; checkpointTs: string } | null; checkpointTs: string }[] }>('GET', '/api/v1/changefeeds/cf/spans');
      checkAgainstOpenApi('GET', '/api/v1/changefeeds/cf/spans', 200, page.body);
      return page.body.spans.length === 12 && page.body.spans.every((s) => s.progress !== null && s.progress.ageMs < 5_000 && BigInt(s.checkpointTs) >= BigInt(s.progress.checkpointTs)) ? true : undefined;
    }, 20_000, 200);
    const view = (await call<ChangefeedView & { slowestSpans: SlowSpan[] }>('GET', '/api/v1/changefeeds/cf')).body;
    expect(view.slowestSpans.length).toBe(3);
    for (const bad of ['k=0', 'k=5', 'k=x', 'k=2&x=1']) {
      const refused = await call('GET', `/api/v1/changefeeds/cf/spans/slowest?${bad}`);
      expect(refused.status, bad).toBe(400);
      checkAgainstOpenApi('GET', '/api/v1/changefeeds/cf/spans/slowest', 400, refused.body);
    }
    expect((await call('GET', '/api/v1/changefeeds/nope/spans/slowest')).status).toBe(404);

    const owner = await waitFor('the owner', async () => {
      for (const c of captures) if ((await c.status()).isOwner) return c;
      return undefined;
    });
    const ownerMetrics = await (await fetch(`${owner.url}/metrics`)).text();
    expect(ownerMetrics).toMatch(/spanfeed_changefeed_slowest_span_lag_seconds\{changefeed="cf"\} [0-9.e-]+/);

    const cli = await runCli((captures[1] as TestCapture).url, 'span', 'slowest', 'cf', '--count', '2');
    expect(cli.stderr).toBe('');
    expect(cli.status).toBe(0);
    expect(cli.stdout.split('\n').filter((l) => l.trim() !== '')).toHaveLength(3);
    expect(cli.stdout).toContain('EVENTSPERSECOND');
  }, 90_000);
});

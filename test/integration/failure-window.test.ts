/**
 * Spans that keep failing fail their changefeed after `--failure-window-ms` without the
 * checkpoint moving, with the last error; until then the warning says for how long. A
 * real cluster (real etcd, two `spanfeed server` processes) and a PostgreSQL sink that
 * never answers a query (a loopback server). Before the window, such spans were given
 * back and placed again for ever, the changefeed `normal`.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ChangefeedView } from './harness.ts';
import { TestCapture, TestEtcd, callAny, waitFor } from './harness.ts';
import { HangingServer } from './hanging-server.ts';

const cluster = `fw${process.pid}`;
const failureWindowMs = 6_000;
let etcd: TestEtcd;
let server: HangingServer;
const captures: TestCapture[] = [];

function call<T = any>(method: string, path: string, body?: unknown): Promise<{ status: number; body: T }> {
  return callAny<T>(captures, method, path, body);
}

beforeAll(async () => {
  etcd = await TestEtcd.start();
  server = new HangingServer('stalled');
  await server.listen();
  const extraArgs = ['--pipeline-step-deadline-ms', '500', '--pipeline-retries', '1', '--pipeline-retry-backoff-max-ms', '100', '--failure-window-ms', String(failureWindowMs)];
  for (let i = 0; i < 2; i++) captures.push(await TestCapture.start(etcd, { cluster, extraArgs }));
  await waitFor('an owner', async () => ((await call('GET', '/api/v1/captures')).status === 200 ? true : undefined));
}, 60_000);

afterAll(async () => {
  await Promise.all(captures.map((c) => c.stop()));
  await etcd?.stop();
  await server?.stop();
});

describe('spans that keep failing', () => {
  it('fail the changefeed after the failure window, with the last error; the warning counts the time until then', async () => {
    const created = await call('POST', '/api/v1/changefeeds', {
      id: 'hung',
      source: { uri: 'datagen://?rate=20' },
      sink: { uri: `postgres://spanfeed@127.0.0.1:${server.port}/spanfeed` },
      tables: [{ name: 't', spans: 2 }],
    });
    expect(created.status).toBe(201);
    const createdAt = Date.now();
    // Meanwhile: normal, with a warning that says for how long the spans have failed.
    const warned = await waitFor('a warning with its duration', async () => {
      const view = (await call<ChangefeedView & { warning: { failingForMs: number | null } | null }>('GET', '/api/v1/changefeeds/hung')).body;
      return view.state === 'normal' && (view.warning?.failingForMs ?? 0) > 1_000 ? view : undefined;
    }, failureWindowMs, 100);
    expect(warned.warning?.failingForMs).toBeLessThan(failureWindowMs);
    // Then failed, naming the window and the error.
    const failed = await waitFor('the changefeed to fail', async () => {
      const view = (await call<ChangefeedView & { error?: string }>('GET', '/api/v1/changefeeds/hung')).body;
      return view.state === 'failed' ? view : undefined;
    }, 30_000, 100);
    expect(Date.now() - createdAt).toBeGreaterThanOrEqual(failureWindowMs);
    expect(failed.error).toMatch(/spans kept failing for \d+(\.\d+)? s without the checkpoint moving: .*did not return within 500 ms/);
    // It stays failed (no run starts it again) until an operator resumes it.
    await new Promise((resolve) => setTimeout(resolve, 1_000));
    expect((await call<ChangefeedView>('GET', '/api/v1/changefeeds/hung')).body.state).toBe('failed');
    for (const capture of captures) expect(capture.proc.running).toBe(true);
  });
});

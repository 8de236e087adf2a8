/**
 * `spanfeed cli` against a real two-capture cluster: every noun and verb, human and
 * JSON output, and a clear error with a non-zero exit.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { CliRun } from './harness.ts';
import { TestCapture, TestEtcd, api, runCli, waitFor } from './harness.ts';

const cluster = `cli${process.pid}`;
let etcd: TestEtcd;
const captures: TestCapture[] = [];

/** `spanfeed cli` against the first capture. */
const cli = (...args: string[]): Promise<CliRun> => runCli((captures[0] as TestCapture).url, ...args);

beforeAll(async () => {
  etcd = await TestEtcd.start();
  for (let i = 0; i < 2; i++) captures.push(await TestCapture.start(etcd, { cluster }));
  await waitFor('an owner', async () => ((await api((captures[0] as TestCapture).url, 'GET', '/api/v1/captures')).status === 200 ? true : undefined));
}, 60_000);

afterAll(async () => {
  await Promise.all(captures.map((c) => c.stop()));
  await etcd?.stop();
});

describe('spanfeed cli', () => {
  it('creates, lists, inspects, moves, drains, pauses, resumes and removes', async () => {
    const created = await cli('--json', 'changefeed', 'create', '--id', 'c1', '--source', 'datagen://?rate=5', '--sink', 'blackhole://', '--table', 'orders::6', '--table', 'users::6');
    expect(created.status, created.stderr).toBe(0);
    expect(JSON.parse(created.stdout)).toMatchObject({ id: 'c1', state: 'normal' });
    await waitFor('placement', async () => ((await api((captures[0] as TestCapture).url, 'GET', '/api/v1/changefeeds/c1')).body.spansByState?.replicating === 12 ? true : undefined));

    const list = await cli('changefeed', 'list');
    expect(list.stdout).toMatch(/^ID\s+STATE\s+CHECKPOINTTS/);
    expect(list.stdout).toContain('c1');
    expect((await cli('changefeed', 'get', 'c1')).stdout).toMatch(/watermark\s+\{"state":"advancing"/);
    // --auto-split alone turns the split policy on and keeps the tables as they are.
    const before = JSON.parse((await cli('--json', 'changefeed', 'get', 'c1')).stdout) as { tables: unknown; autoSplit: boolean };
    const autoSplitOn = await cli('--json', 'changefeed', 'update', 'c1', '--auto-split', 'on');
    expect(autoSplitOn.status, autoSplitOn.stderr).toBe(0);
    expect(JSON.parse(autoSplitOn.stdout)).toMatchObject({ id: 'c1', autoSplit: true, tables: before.tables });
    expect((await cli('changefeed', 'update', 'c1', '--auto-split', 'off')).stdout).toContain('updated changefeed c1: orders, users; autoSplit off');
    const badSwitch = await cli('changefeed', 'update', 'c1', '--auto-split', 'yes');
    expect(badSwitch.status).not.toBe(0);
    expect(badSwitch.stderr).toContain('--auto-split takes on or off');
    expect((await cli('changefeed', 'update', 'c1')).stderr).toContain('needs --table or --auto-split');
    const captureList = JSON.parse((await cli('--json', 'capture', 'list')).stdout) as { id: string; isOwner: boolean }[];
    expect(captureList).toHaveLength(2);
    const spans = JSON.parse((await cli('--json', 'span', 'list', 'c1')).stdout) as { table: string; start: string; primary: string }[];
    expect(spans).toHaveLength(12);
    // Pages of 5 are followed to the end; filters pass through to the API.
    const paged = JSON.parse((await cli('--json', 'span', 'list', 'c1', '--page-size', '5')).stdout) as { table: string; start: string }[];
    expect(paged.map((s) => [s.table, s.start])).toEqual(spans.map((s) => [s.table, s.start]));
    const users = JSON.parse((await cli('--json', 'span', 'list', 'c1', '--table', 'users', '--state', 'replicating', '--page-size', '4')).stdout) as { table: string }[];
    expect(users).toHaveLength(6);
    expect(users.every((s) => s.table === 'users')).toBe(true);
    const badState = await cli('span', 'list', 'c1', '--state', 'running');
    expect(badState.status).not.toBe(0);
    expect(badState.stderr).toContain('state="running" must be one of');

    const target = captureList.find((c) => c.id !== spans[0]?.primary) as { id: string };
    const moved = await cli('span', 'move', 'c1', '--table', (spans[0] as { table: string }).table, '--start', (spans[0] as { start: string }).start, '--capture', target.id);
    expect(moved.status, moved.stderr).toBe(0);
    expect(moved.stdout).toContain(`to ${target.id}`);
    expect((await cli('rebalance', 'c1')).stdout).toContain('rebalancing c1');

    const watch = await cli('--json', 'watermark', 'watch', 'c1', '--count', '2', '--interval-ms', '100');
    const lines = watch.stdout.trim().split('\n').map((l) => JSON.parse(l) as { checkpointTs: string });
    expect(lines).toHaveLength(2);

    const drained = captureList.find((c) => !c.isOwner) as { id: string };
    const drain = await cli('capture', 'drain', drained.id, '--interval-ms', '100');
    expect(drain.status, drain.stderr).toBe(0);
    expect(drain.stdout).toContain('0 spans remaining');
    expect(drain.stdout).toContain('#');
    expect(JSON.parse((await cli('--json', 'capture', 'list')).stdout).find((c: { id: string }) => c.id === drained.id)).toMatchObject({ draining: true, spans: 0 });
    const undrain = await cli('capture', 'undrain', drained.id);
    expect(undrain.status, undrain.stderr).toBe(0);
    expect(undrain.stdout).toContain(`capture ${drained.id} is no longer draining`);
    expect(JSON.parse((await cli('--json', 'capture', 'list')).stdout).find((c: { id: string }) => c.id === drained.id)).toMatchObject({ draining: false });
    // A rebalance gives it its share back.
    await cli('rebalance', 'c1');
    await waitFor('the undrained capture to hold spans again', async () => {
      const list = JSON.parse((await cli('--json', 'capture', 'list')).stdout) as { id: string; spans: number }[];
      return (list.find((c) => c.id === drained.id)?.spans ?? 0) > 0 ? true : undefined;
    }, 30_000, 200);

    const paused = JSON.parse((await cli('--json', 'changefeed', 'pause', 'c1')).stdout) as { state: string; epoch: string };
    expect(paused).toMatchObject({ state: 'paused' });
    // A resume is a new run: the next epoch.
    const firstEpoch = BigInt(paused.epoch);
    expect(JSON.parse((await cli('--json', 'changefeed', 'resume', 'c1')).stdout)).toMatchObject({ state: 'normal', epoch: String(firstEpoch + 1n) });
    // Two resumes at once, through both captures: one wins, one is told it runs.
    expect(JSON.parse((await cli('--json', 'changefeed', 'pause', 'c1')).stdout)).toMatchObject({ state: 'paused' });
    const both = await Promise.all(captures.map((c) => api<{ epoch?: string }>(c.url, 'POST', '/api/v1/changefeeds/c1/resume')));
    expect(both.map((a) => a.status).sort()).toEqual([202, 409]);
    expect((await api<{ epoch: string }>((captures[0] as TestCapture).url, 'GET', '/api/v1/changefeeds/c1')).body.epoch).toBe(String(firstEpoch + 2n));
    expect((await cli('changefeed', 'remove', 'c1')).stdout).toContain('removed changefeed c1');
  });

  it('fails with a clear message and a non-zero exit', async () => {
    const missing = await cli('changefeed', 'get', 'nope');
    expect(missing.status).toBe(1);
    expect(missing.stderr).toContain('no changefeed "nope" (unknown-changefeed)');
    const unknown = await cli('frobnicate', 'now');
    expect(unknown.status).toBe(1);
    expect(unknown.stderr).toContain('unknown command');
    const noServer = await runCli('http://127.0.0.1:1', 'capture', 'list');
    expect(noServer.status).toBe(1);
    expect(noServer.stderr).toContain('cannot reach http://127.0.0.1:1');
  });
});

/**
 * A stalled checkpoint is reported as stalled, not as advancing (issue 9): a changefeed
 * from a datagen source (its resolved-ts moves with the clock) into a real PostgreSQL on
 * two real captures; PostgreSQL is stopped, so every pipeline's writes fail and its
 * checkpoint stands still while the source goes on. With `--stall-after-ms 2000` the API
 * (checked against the OpenAPI document), the CLI, the dashboard and the metrics must say
 * `stalled` and name the spans and captures at the checkpoint; once PostgreSQL is back the
 * checkpoint moves and the watermark is `advancing` again.
 */
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import type { Browser } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LocalPostgres } from '../../src/dev/local-postgres.ts';
import type { ChangefeedView, CliRun, SpanPage } from './harness.ts';
import { TestCapture, TestEtcd, api, ownerAmong, runCli, waitFor } from './harness.ts';
import { checkAgainstOpenApi } from './openapi-check.ts';

const root = fileURLToPath(new URL('../..', import.meta.url));
const cluster = `stall${process.pid}`;
const stallAfterMs = 2_000;

let etcd: TestEtcd | undefined;
let postgres: LocalPostgres | undefined;
let browser: Browser | undefined;
const captures: TestCapture[] = [];

beforeAll(async () => {
  execFileSync('bash', ['scripts/ensure-chromium.sh'], { cwd: root, stdio: 'inherit' });
  etcd = await TestEtcd.start();
  postgres = await LocalPostgres.start();
  // Retries with a short backoff and no giving up: the spans stay where they are through
  // the outage (a stable stall) and catch up quickly after it.
  const extraArgs = ['--stall-after-ms', String(stallAfterMs), '--pipeline-retries', '1000', '--pipeline-retry-backoff-max-ms', '300'];
  for (let i = 0; i < 2; i++) captures.push(await TestCapture.start(etcd, { cluster, extraArgs }));
  await waitFor('an owner', async () => ((await api((captures[0] as TestCapture).url, 'GET', '/api/v1/captures')).status === 200 ? true : undefined));
}, 120_000);

afterAll(async () => {
  await browser?.close();
  await Promise.all(captures.map((c) => c.stop()));
  await postgres?.stop();
  await etcd?.stop();
});

/** The changefeed as the API shows it, checked against the OpenAPI document. */
async function view(): Promise<ChangefeedView> {
  const answer = await api<ChangefeedView>((captures[0] as TestCapture).url, 'GET', '/api/v1/changefeeds/cf');
  checkAgainstOpenApi('GET', '/api/v1/changefeeds/cf', answer.status, answer.body);
  if (answer.status !== 200) throw new Error(`GET /api/v1/changefeeds/cf answered ${answer.status}`);
  return answer.body;
}

/** One metric's value for the changefeed on the owner's `/metrics`. */
async function metric(owner: TestCapture, name: string): Promise<number | undefined> {
  const text = await (await fetch(`${owner.url}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(`${name}{changefeed="cf"}`));
  return line === undefined ? undefined : Number(line.split(' ').at(-1));
}

/** `spanfeed cli` against the first capture. */
const cli = (...args: string[]): Promise<CliRun> => runCli((captures[0] as TestCapture).url, ...args);

describe('a stalled checkpoint', () => {
  it('is reported as stalled with what holds it back while the sink is down, and as advancing once it is back', async () => {
    const pg = postgres as LocalPostgres;
    const createdAt = BigInt(Date.now());
    const created = await api((captures[0] as TestCapture).url, 'POST', '/api/v1/changefeeds', {
      id: 'cf',
      source: { uri: 'datagen://?rate=50&keys=50&seed=9' },
      sink: { uri: pg.url },
      tables: [
        { name: 'orders', spans: 2 },
        { name: 'users', spans: 2 },
      ],
    });
    expect(created.status, JSON.stringify(created.body)).toBe(201);
    // Every span has written to PostgreSQL for a while (the checkpoint starts at the create).
    const healthy = await waitFor('the changefeed to advance into PostgreSQL', async () => {
      const v = await view();
      return v.spansByState?.replicating === 4 && v.watermark.state === 'advancing' && BigInt(v.checkpointTs) > createdAt + 1_000n ? v : undefined;
    }, 30_000, 100);
    expect(healthy.watermark).toEqual({ state: 'advancing', reason: null });
    const owner = await ownerAmong(captures);
    expect(await metric(owner, 'spanfeed_changefeed_stalled')).toBe(0);

    // The sink goes away (from the moment it is told to stop); the source does not.
    const haltedAt = Date.now();
    await pg.halt();
    const stalled = await waitFor('the watermark to say stalled', async () => {
      const v = await view();
      return v.watermark.state === 'stalled' ? v : undefined;
    }, 20_000, 100);
    // It took at least stallAfterMs of standing still.
    expect(Date.now() - haltedAt).toBeGreaterThanOrEqual(stallAfterMs - 200);
    expect(stalled.watermark).toMatchObject({ state: 'stalled', code: 'checkpoint-stalled', reason: expect.stringContaining('held back by') });
    expect(stalled.watermark.stalledForMs).toBeGreaterThanOrEqual(stallAfterMs);
    expect(BigInt(stalled.watermark.resolvedTs as string)).toBeGreaterThan(BigInt(stalled.watermark.checkpointTs as string));

    // The stall asked the holding captures for their span statuses; once those are in
    // (a heartbeat, and at most a refresh interval of 1 s later), the spans named are
    // exactly those at the checkpoint, on the captures that replicate them, and stay so.
    const exact = await waitFor('the holders to be the spans at the checkpoint', async () => {
      const v = await view();
      const held = v.watermark.heldBy;
      if (v.watermark.state !== 'stalled' || held === undefined || (v.watermark.stalledForMs ?? 0) < stallAfterMs + 2_000) return undefined;
      return held.spans.every((s) => s.checkpointTs === v.watermark.checkpointTs) ? v : undefined;
    }, 15_000, 100);
    const held = exact.watermark.heldBy as NonNullable<ChangefeedView['watermark']['heldBy']>;
    expect(held.spanCount).toBeGreaterThanOrEqual(1);
    expect(held.spans).toHaveLength(held.spanCount);
    expect(held.captureCount).toBe(held.captures.length);
    const spans = (await api<SpanPage>((captures[0] as TestCapture).url, 'GET', '/api/v1/changefeeds/cf/spans')).body.spans;
    const ids = captures.map((c) => c.id);
    for (const holder of held.spans) {
      const span = spans.find((s) => s.table === holder.table && s.start === holder.start);
      expect(span?.primary).toBe(holder.captureId);
      expect(ids).toContain(holder.captureId);
      expect(held.captures).toContain(holder.captureId);
    }
    // The outage itself is told too, as it was before.
    expect(exact.warning?.failingSpans).toBeGreaterThan(0);

    // The metric, the CLI and the dashboard say it.
    await expect.poll(() => metric(owner, 'spanfeed_changefeed_stalled'), { timeout: 5_000 }).toBe(1);
    expect(await metric(owner, 'spanfeed_changefeed_stalled_seconds')).toBeGreaterThanOrEqual(stallAfterMs / 1000);
    const watch = await cli('watermark', 'watch', 'cf', '--count', '1');
    expect(watch.status, watch.stderr).toBe(0);
    expect(watch.stdout).toContain('STALLED for');
    expect(watch.stdout).toContain(held.captures[0] as string);
    const first = held.spans[0] as { table: string; start: string };
    expect(watch.stdout).toContain(`${first.table} [${JSON.stringify(first.start)}`);
    const list = await cli('changefeed', 'list');
    expect(list.stdout).toMatch(/cf\s.*stalled \d+\.\ds/);
    browser = await chromium.launch({ executablePath: '/usr/bin/chromium', args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking'] });
    const page = await browser.newPage();
    await page.goto(`${(captures[0] as TestCapture).url}/`);
    await page.waitForSelector('[data-changefeed="cf"] .state-stalled', { timeout: 10_000 });
    expect(await page.locator('[data-changefeed="cf"] .reason').first().textContent()).toContain('held back by');
    // The table holding it back is marked in the summary; opened, its held spans are haloed.
    await page.waitForSelector(`[data-map="cf"] tr.holding[data-table="${first.table}"]`, { timeout: 10_000 });
    await page.locator(`[data-map="cf"] [data-table="${first.table}"] button`, { hasText: 'Show spans' }).click();
    await page.waitForSelector('[data-map="cf"] .cell.held', { timeout: 10_000 });
    await page.close();

    // PostgreSQL is back: the checkpoint moves past the outage, and it is advancing again.
    await pg.restart();
    const backAt = BigInt(Date.now());
    const recovered = await waitFor('the watermark to advance again', async () => {
      const v = await view();
      return v.watermark.state === 'advancing' && BigInt(v.checkpointTs) > backAt ? v : undefined;
    }, 30_000, 100);
    expect(recovered.watermark).toEqual({ state: 'advancing', reason: null });
    await expect.poll(() => metric(owner, 'spanfeed_changefeed_stalled'), { timeout: 5_000 }).toBe(0);
    expect(await metric(owner, 'spanfeed_changefeed_stalled_seconds')).toBe(0);
  });
});

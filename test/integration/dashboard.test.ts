/**
 * The dashboard in headless Chromium (Debian's, driven by playwright-core) against a real
 * three-capture cluster: its content (span counts by table and capture; a table's spans
 * only once opened), its actions, and a screenshot in docs/. Then one
 * capture with a token file: the page asks for a token once and sends it.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import type { Browser } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TestCapture, TestEtcd, api, waitFor } from './harness.ts';

const root = fileURLToPath(new URL('../..', import.meta.url));
const cluster = `ui${process.pid}`;
let etcd: TestEtcd;
let browser: Browser | undefined;
const captures: TestCapture[] = [];
const secured: TestCapture[] = [];
const tokenDir = mkdtempSync(join(tmpdir(), 'spanfeed-ui-tokens-'));

beforeAll(async () => {
  execFileSync('bash', ['scripts/ensure-chromium.sh'], { cwd: root, stdio: 'inherit' });
  etcd = await TestEtcd.start();
  for (let i = 0; i < 3; i++) captures.push(await TestCapture.start(etcd, { cluster }));
  const url = (captures[0] as TestCapture).url;
  await waitFor('an owner', async () => ((await api(url, 'GET', '/api/v1/captures')).status === 200 ? true : undefined));
  const created = await api(url, 'POST', '/api/v1/changefeeds', {
    id: 'orders-feed',
    source: { uri: 'datagen://?rate=20' },
    sink: { uri: 'blackhole://' },
    tables: [
      { name: 'orders', spans: 40 },
      { name: 'users', spans: 20 },
    ],
  });
  expect(created.status).toBe(201);
  await waitFor('placement', async () => ((await api(url, 'GET', '/api/v1/changefeeds/orders-feed')).body.spansByState?.replicating === 60 ? true : undefined));
  // playwright-core gives Chromium a new empty profile of its own.
  browser = await chromium.launch({
    executablePath: '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
}, 120_000);

afterAll(async () => {
  await browser?.close();
  await Promise.all([...captures, ...secured].map((c) => c.stop()));
  rmSync(tokenDir, { recursive: true, force: true });
  await etcd?.stop();
});

describe('dashboard', () => {
  it('shows captures, changefeeds, the span map and the lag chart; its actions work', async () => {
    const page = await (browser as Browser).newPage({ viewport: { width: 1280, height: 900 } });
    // Served by a non-owner: everything is forwarded to the owner.
    const owner = await waitFor('the owner', async () => {
      for (const c of captures) if ((await c.status()).isOwner) return c;
      return undefined;
    });
    const other = captures.find((c) => c !== owner) as TestCapture;
    // Span pages are fetched only when a table is opened; the poll reads the summary.
    const spanPages: string[] = [];
    page.on('request', (request) => {
      if (new URL(request.url()).pathname.endsWith('/spans')) spanPages.push(request.url());
    });
    await page.goto(`${other.url}/`);
    await page.waitForSelector('#captures tbody tr:nth-child(3)');
    expect(await page.locator('#captures tbody tr').count()).toBe(3);
    expect(await page.locator('.owner').count()).toBe(1);
    await expect.poll(async () => page.locator(`[data-capture="${owner.id}"] .owner`).count()).toBe(1);
    await page.waitForSelector('[data-changefeed="orders-feed"]');
    expect(await page.locator('[data-changefeed="orders-feed"] td').first().textContent()).toBe('orders-feed');
    await page.waitForSelector('[data-map="orders-feed"] [data-table="orders"]');
    const ordersRow = page.locator('[data-map="orders-feed"] [data-table="orders"] td');
    await expect.poll(async () => (await ordersRow.allTextContents()).slice(0, 3)).toEqual(['orders', '40', '40']);
    expect((await page.locator('[data-map="orders-feed"] [data-table="users"] td').allTextContents()).slice(0, 2)).toEqual(['users', '20']);
    await expect.poll(async () => page.locator('[data-map="orders-feed"] [data-summary="captures"] tbody tr').count()).toBe(3);
    expect(await page.locator('[data-map="orders-feed"] .cell').count()).toBe(0);
    await page.waitForTimeout(1_500);
    expect(spanPages).toEqual([]);
    // Opening a table draws its spans (one page), and only its spans.
    await page.locator('[data-map="orders-feed"] [data-table="orders"] button', { hasText: 'Show spans' }).click();
    await expect.poll(async () => page.locator('[data-map="orders-feed"] [data-table-map="orders"] .cell').count(), { timeout: 10_000 }).toBe(40);
    expect(spanPages.length).toBeGreaterThan(0);
    expect(spanPages.every((url) => new URL(url).searchParams.get('table') === 'orders')).toBe(true);
    await page.locator('[data-map="orders-feed"] [data-table="users"] button', { hasText: 'Show spans' }).click();
    await expect.poll(async () => page.locator('[data-map="orders-feed"] [data-table-map="users"] .cell').count(), { timeout: 10_000 }).toBe(20);
    expect(await page.locator('[data-map="orders-feed"] [data-table-map="orders"]').count()).toBe(0);
    await expect.poll(async () => page.locator('[data-changefeed="orders-feed"] .state-advancing').count(), { timeout: 10_000 }).toBe(1);

    // Drain a capture, then cancel the drain, then rebalance, through the buttons.
    const row = page.locator(`[data-capture="${other.id}"]`);
    await row.locator('button', { hasText: 'Drain' }).click();
    await expect.poll(async () => page.locator('#message').textContent(), { timeout: 10_000 }).toBe(`drain ${other.id}: ok`);
    await expect.poll(async () => row.locator('button', { hasText: 'Undrain' }).count(), { timeout: 10_000 }).toBe(1);
    await row.locator('button', { hasText: 'Undrain' }).click();
    await expect.poll(async () => page.locator('#message').textContent(), { timeout: 10_000 }).toBe(`undrain ${other.id}: ok`);
    const listed = (await api<{ id: string; draining: boolean }[]>(other.url, 'GET', '/api/v1/captures')).body;
    expect(listed.find((c) => c.id === other.id)?.draining).toBe(false);
    await page.locator('[data-changefeed="orders-feed"] button', { hasText: 'Rebalance' }).click();
    await expect.poll(async () => page.locator('#message').textContent(), { timeout: 10_000 }).toBe('rebalance orders-feed: ok');

    // An action: pause, then resume through the buttons.
    await page.locator('[data-changefeed="orders-feed"] button', { hasText: 'Pause' }).click();
    await expect.poll(async () => page.locator('#message').textContent(), { timeout: 10_000 }).toBe('pause orders-feed: ok');
    expect((await api(other.url, 'GET', '/api/v1/changefeeds/orders-feed')).body.state).toBe('paused');
    await page.locator('[data-changefeed="orders-feed"] button', { hasText: 'Resume' }).click();
    await expect.poll(async () => page.locator('#message').textContent(), { timeout: 10_000 }).toBe('resume orders-feed: ok');
    await waitFor('replicating again', async () => ((await api(other.url, 'GET', '/api/v1/changefeeds/orders-feed')).body.spansByState?.replicating === 60 ? true : undefined));
    // Let the chart collect a few seconds of lag, then keep a picture.
    await page.waitForTimeout(4_000);
    // docs/dashboard.png is refreshed with SPANFEED_UPDATE_SCREENSHOT=1; otherwise the
    // picture goes to a temp file, so a test run leaves the tree as it was.
    const path = process.env.SPANFEED_UPDATE_SCREENSHOT === '1' ? join(root, 'docs/dashboard.png') : join(tmpdir(), `spanfeed-dashboard-${process.pid}.png`);
    await page.screenshot({ path, fullPage: true });
    expect(statSync(path).size).toBeGreaterThan(10_000);
    if (process.env.SPANFEED_UPDATE_SCREENSHOT !== '1') rmSync(path);
    await page.close();
  });

  it('asks for a token once on a 401, keeps it in the tab and sends it with every call', async () => {
    const adminToken = 'ui-admin-0123456789';
    const readToken = 'ui-read-0123456789';
    const tokenFile = join(tokenDir, 'tokens');
    writeFileSync(tokenFile, `${adminToken} admin\n${readToken} read\n`, { mode: 0o600 });
    const capture = await TestCapture.start(etcd, { cluster: `${cluster}auth`, token: adminToken, extraArgs: ['--auth-token-file', tokenFile] });
    secured.push(capture);
    const page = await (browser as Browser).newPage();
    const asked: string[] = [];
    page.on('dialog', (dialog) => {
      asked.push(dialog.message());
      void dialog.accept(readToken);
    });
    await page.goto(`${capture.url}/`);
    await page.waitForSelector(`[data-capture="${capture.id}"]`, { timeout: 20_000 });
    expect(asked).toEqual(['This server needs a token: enter a spanfeed API token']);
    expect(await page.evaluate('sessionStorage.getItem("spanfeed-token")')).toBe(readToken);
    // A read token may look but not act.
    await page.locator(`[data-capture="${capture.id}"] button`, { hasText: 'Drain' }).click();
    await expect.poll(async () => page.locator('#message').textContent(), { timeout: 10_000 }).toContain('a read token may not POST');
    await page.waitForTimeout(1_500);
    expect(asked).toHaveLength(1);
    await page.close();
  });
});

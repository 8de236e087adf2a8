/**
 * Sources and sinks kept in bounds, and no secret shown, against real captures:
 *
 * - file sinks outside `--file-sink-root` (absolute elsewhere, `..`, a symlink out of the
 *   root, `/proc/self`, `file:rel`) are refused at create with 400 and change nothing;
 *   a changefeed written into etcd by hand that points outside fails with the reason and
 *   writes nothing outside;
 * - a source or sink on the cluster's own etcd may not reach under `/spanfeed/`, at
 *   create, update, and when a hand-written changefeed is opened;
 * - a postgres password appears in no API answer, event, CLI output, log line or metric.
 */
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, realpathSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Etcd3 } from 'etcd3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { clusterKeys } from '../../src/cluster/keys.ts';
import { TestCapture, TestEtcd, api, waitFor } from './harness.ts';

const bin = fileURLToPath(new URL('../../bin/spanfeed', import.meta.url));
const cluster = `sec${process.pid}`;
const keys = clusterKeys(cluster);
const secret = 's3cret';
let etcd: TestEtcd;
let client: Etcd3;
let base: string;
let root: string;
let outside: string;
const captures: TestCapture[] = [];

function url(): string {
  return (captures[0] as TestCapture).url;
}

/** An answer's raw text: what is grepped for the secret. */
async function raw(method: string, path: string, body?: unknown): Promise<{ status: number; text: string }> {
  const init: RequestInit = { method, headers: { 'content-type': 'application/json' } };
  if (body !== undefined) init.body = JSON.stringify(body);
  const answer = await fetch(`${url()}${path}`, init);
  return { status: answer.status, text: await answer.text() };
}

function cli(...args: string[]): Promise<{ status: number | null; output: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [bin, 'cli', '--server', url(), ...args]);
    let output = '';
    child.stdout.on('data', (c: Buffer) => (output += c.toString()));
    child.stderr.on('data', (c: Buffer) => (output += c.toString()));
    child.on('exit', (status) => resolve({ status, output }));
  });
}

/** Everything under `dir`, recursively (names only). */
function tree(dir: string): string[] {
  if (!existsSync(dir)) return [];
  return readdirSync(dir, { recursive: true, encoding: 'utf8' });
}

async function changefeedIds(): Promise<string[]> {
  return ((await api<{ id: string }[]>(url(), 'GET', '/api/v1/changefeeds')).body ?? []).map((c) => c.id).sort();
}

/** Writes a changefeed's info straight into etcd, as an older version or a person might. */
async function writeInfoByHand(id: string, source: string, sink: string, tables: unknown[]): Promise<void> {
  const info = { id, source: { uri: source }, sink: { uri: sink }, tables, start: 'now', startTs: '1', state: 'normal', epoch: String(Date.now()), createdAt: new Date().toISOString() };
  await client.put(keys.changefeedInfo(id)).value(JSON.stringify(info));
}

async function failedWith(id: string): Promise<string> {
  return waitFor(`changefeed ${id} to fail`, async () => {
    const answer = await api<{ state: string; error?: string }>(url(), 'GET', `/api/v1/changefeeds/${id}`);
    return answer.status === 200 && answer.body.state === 'failed' ? (answer.body.error ?? '') : undefined;
  }, 30_000);
}

beforeAll(async () => {
  base = realpathSync(mkdtempSync(join(tmpdir(), 'spanfeed-security-')));
  root = join(base, 'root');
  outside = join(base, 'outside');
  mkdirSync(root, { recursive: true });
  mkdirSync(outside);
  symlinkSync(outside, join(root, 'link'));
  etcd = await TestEtcd.start();
  client = new Etcd3({ hosts: `http://${etcd.endpoint}` });
  for (let i = 0; i < 2; i++) captures.push(await TestCapture.start(etcd, { cluster, fileSinkRoot: root }));
  await waitFor('an owner', async () => ((await api(url(), 'GET', '/api/v1/changefeeds')).status === 200 ? true : undefined));
}, 60_000);

afterAll(async () => {
  await Promise.all(captures.map((c) => c.stop()));
  client?.close();
  await etcd?.stop();
  if (base !== undefined) rmSync(base, { recursive: true, force: true });
});

describe('file sinks stay under --file-sink-root', () => {
  it('refuses escapes at create with 400 and changes nothing', async () => {
    const escapes: [string, RegExp][] = [
      [`file://${outside}`, /outside --file-sink-root/],
      [`file://${root}/../outside`, /"\.", "\.\." segments/],
      [`file://${root}/link`, /outside --file-sink-root .*resolves to/],
      [`file://${root}/link/deeper`, /outside --file-sink-root/],
      ['file:///proc/self', /under \/proc/],
      ['file:rel', /must be file:\/\/\/absolute\/dir/],
    ];
    for (const [sink, message] of escapes) {
      const answer = await api<{ error: { message: string } }>(url(), 'POST', '/api/v1/changefeeds', {
        id: 'escape', source: { uri: 'datagen://?rate=50' }, sink: { uri: sink }, tables: [{ name: 't', spans: 2 }],
      });
      expect(answer.status, sink).toBe(400);
      expect(answer.body.error.message, sink).toMatch(message);
    }
    expect(await changefeedIds()).toEqual([]);
    expect(tree(outside)).toEqual([]);
  });

  it('writes under the root', async () => {
    const answer = await api(url(), 'POST', '/api/v1/changefeeds', { id: 'inside', source: { uri: 'datagen://?rate=50' }, sink: { uri: `file://${root}/inside` }, tables: [{ name: 't', spans: 2 }] });
    expect(answer.status).toBe(201);
    await waitFor('files under the root', () => (tree(join(root, 'inside', 't')).some((f) => f.endsWith('.ndjson')) ? true : undefined));
    expect((await api(url(), 'DELETE', '/api/v1/changefeeds/inside')).status).toBe(200);
  });

  it('fails a hand-written changefeed that points outside, writing nothing there', async () => {
    await writeInfoByHand('hand-abs', 'datagen://?rate=50', `file://${outside}/hand`, [{ name: 't', spans: 2 }]);
    await writeInfoByHand('hand-link', 'datagen://?rate=50', `file://${root}/link/hand`, [{ name: 't', spans: 2 }]);
    await writeInfoByHand('hand-dotdot', 'datagen://?rate=50', `file://${root}/../outside/dots`, [{ name: 't', spans: 2 }]);
    await writeInfoByHand('hand-table', 'datagen://?rate=50', `file://${root}/tables`, [{ name: '..', spans: 1 }]);
    expect(await failedWith('hand-abs')).toMatch(/outside --file-sink-root/);
    expect(await failedWith('hand-link')).toMatch(/outside --file-sink-root .*resolves to/);
    expect(await failedWith('hand-dotdot')).toMatch(/"\.", "\.\." segments/);
    expect(await failedWith('hand-table')).toMatch(/table name "\.\." is not allowed/);
    expect(tree(outside)).toEqual([]);
    expect(tree(base).filter((f) => !f.startsWith('root') && !f.startsWith('outside'))).toEqual([]);
  });
});

describe("the cluster's own etcd", () => {
  it('refuses a source or sink under /spanfeed/ at create and update', async () => {
    const own = `etcd://${etcd.endpoint}`;
    const source = await api<{ error: { message: string } }>(url(), 'POST', '/api/v1/changefeeds', { id: 'meta-src', source: { uri: own }, sink: { uri: 'blackhole://' }, tables: [{ name: 'meta', prefix: '/spanfeed/' }] });
    expect(source.status).toBe(400);
    expect(source.body.error.message).toMatch(/own etcd: table meta may not read keys under \/spanfeed\//);
    const whole = await api(url(), 'POST', '/api/v1/changefeeds', { id: 'meta-all', source: { uri: own }, sink: { uri: 'blackhole://' }, tables: [{ name: 'all', start: '', end: '' }] });
    expect(whole.status).toBe(400);
    const sink = await api<{ error: { message: string } }>(url(), 'POST', '/api/v1/changefeeds', { id: 'meta-sink', source: { uri: 'datagen://' }, sink: { uri: `${own}//spanfeed/${cluster}/` }, tables: [{ name: 't' }] });
    expect(sink.status).toBe(400);
    expect(sink.body.error.message).toMatch(/own etcd: table t may not be written under \/spanfeed\//);

    // Elsewhere on the same etcd is fine, and an update may not add a table under /spanfeed/.
    const ok = await api(url(), 'POST', '/api/v1/changefeeds', { id: 'own-ok', source: { uri: own }, sink: { uri: `${own}/mirror/` }, tables: [{ name: 'orders', prefix: 'orders/' }] });
    expect(ok.status).toBe(201);
    const update = await api<{ error: { message: string } }>(url(), 'PUT', '/api/v1/changefeeds/own-ok', { tables: [{ name: 'orders', prefix: 'orders/' }, { name: 'meta', prefix: '/spanfeed/' }] });
    expect(update.status).toBe(400);
    expect(update.body.error.message).toMatch(/may not read keys under \/spanfeed\//);
    expect((await api<{ tables: unknown[] }>(url(), 'GET', '/api/v1/changefeeds/own-ok')).body.tables).toHaveLength(1);
    expect((await api(url(), 'DELETE', '/api/v1/changefeeds/own-ok')).status).toBe(200);
    expect(await changefeedIds()).not.toContain('meta-src');
  });

  it('fails a hand-written changefeed that reads or writes under /spanfeed/', async () => {
    const own = `etcd://${etcd.endpoint}`;
    await writeInfoByHand('hand-meta-src', own, 'blackhole://', [{ name: 'meta', prefix: '/spanfeed/' }]);
    await writeInfoByHand('hand-meta-sink', 'datagen://?rate=50', `${own}//spanfeed/${cluster}/`, [{ name: 't', spans: 1 }]);
    expect(await failedWith('hand-meta-src')).toMatch(/own etcd: table meta may not read keys under \/spanfeed\//);
    expect(await failedWith('hand-meta-sink')).toMatch(/own etcd: table t may not be written under \/spanfeed\//);
    const written = await client.getAll().prefix(`/spanfeed/${cluster}/t/`).keys();
    expect(written).toEqual([]);
  });
});

describe('no secret shown', () => {
  it('keeps a postgres password out of every answer, event, CLI output, log line and metric', async () => {
    const uri = `postgres://user:${secret}@127.0.0.1:1/db`;
    const outputs: string[] = [];
    const created = await raw('POST', '/api/v1/changefeeds', { id: 'pg', source: { uri: 'datagen://?rate=20' }, sink: { uri }, tables: [{ name: 't', spans: 2 }] });
    expect(created.status, created.text).toBe(201);
    expect(created.text).toContain('postgres://user:***@127.0.0.1:1/db');
    outputs.push(created.text);
    // A bad URI's error message quotes it.
    const bad = await raw('POST', '/api/v1/changefeeds', { id: 'pg-bad', source: { uri: 'datagen://' }, sink: { uri: `postgres://user:${secret}@/db` }, tables: [{ name: 't' }] });
    expect(bad.status).toBe(400);
    outputs.push(bad.text);
    // The sink cannot connect: the pipelines retry and the warning carries the error.
    await waitFor('the failing sink to show', async () => ((await api<{ warning: unknown }>(url(), 'GET', '/api/v1/changefeeds/pg')).body.warning !== null ? true : undefined), 30_000);
    for (const path of ['/api/v1/changefeeds', '/api/v1/changefeeds/pg', '/api/v1/changefeeds/pg/spans', '/metrics']) outputs.push((await raw('GET', path)).text);
    for (const capture of captures) outputs.push((await fetch(`${capture.url}/metrics`).then((r) => r.text())));
    const events = await fetch(`${url()}/api/v1/changefeeds/pg/watermark/stream`, { signal: AbortSignal.timeout(1_500) })
      .then(async (r) => {
        let text = '';
        try {
          for await (const chunk of r.body as AsyncIterable<Uint8Array>) text += Buffer.from(chunk).toString();
        } catch {
          // The timeout ends the stream.
        }
        return text;
      });
    expect(events).toContain('event: watermark');
    outputs.push(events);
    outputs.push((await raw('POST', '/api/v1/changefeeds/pg/pause')).text);
    outputs.push((await raw('POST', '/api/v1/changefeeds/pg/resume')).text);
    for (const args of [['changefeed', 'list'], ['changefeed', 'get', 'pg'], ['--json', 'changefeed', 'get', 'pg'], ['--json', 'changefeed', 'list']]) {
      const run = await cli(...args);
      expect(run.status, run.output).toBe(0);
      outputs.push(run.output);
    }
    const cliCreate = await cli('--json', 'changefeed', 'create', '--id', 'pg-cli', '--source', 'datagen://', '--sink', uri, '--table', 't::1');
    expect(cliCreate.status, cliCreate.output).toBe(0);
    outputs.push(cliCreate.output);
    const cliBad = await cli('changefeed', 'create', '--id', 'pg-cli-bad', '--source', 'datagen://', '--sink', `postgres://user:${secret}@/db`, '--table', 't::1');
    expect(cliBad.status).not.toBe(0);
    outputs.push(cliBad.output);
    // Let the captures log the sink's failures for a while.
    await waitFor('a logged sink failure', () => (captures.some((c) => /pipeline step failed/.test(c.proc.output)) ? true : undefined), 30_000);
    for (const capture of captures) outputs.push(capture.proc.output);
    for (const [i, text] of outputs.entries()) expect(text.includes(secret), `output ${i}: ${text.slice(0, 2000)}`).toBe(false);
    expect(outputs.join('\n')).toContain('user:***@');
  });
});

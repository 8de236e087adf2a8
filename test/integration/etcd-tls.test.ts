/**
 * etcd over TLS with client certificates and user/password auth, real processes:
 *
 * - the metadata etcd: three captures given --etcd-ca/cert/key, --etcd-user and
 *   --etcd-password-file join, elect an owner and replicate changefeeds whose source
 *   is a second secured etcd (URI parameters ca, cert, key, user, passwordFile under
 *   --credentials-root) into a file sink and into an etcd sink over TLS; `spanfeed
 *   verify` (with the same flags) finds nothing missing;
 * - a capture with the wrong CA, a wrong password, an empty password file or no password
 *   file fails to start with a message that says why, and a non-zero exit code;
 * - URIs naming a file outside --credentials-root (absolute, `..`, a symlink out) or
 *   holding a password are refused with 400 at create, and nothing is created; one
 *   written into etcd by hand fails the changefeed with the reason when it is opened;
 * - neither etcd password appears in a capture's output or an API answer.
 */
import { spawn, spawnSync } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { copyFileSync, mkdirSync, mkdtempSync, realpathSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Etcd3 } from 'etcd3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { clusterKeys } from '../../src/cluster/keys.ts';
import type { ChangefeedView } from './harness.ts';
import { TestCapture, TestEtcd, api, waitFor } from './harness.ts';
import type { TestCerts } from './test-certs.ts';
import { makeTestCerts } from './test-certs.ts';

const bin = fileURLToPath(new URL('../../bin/spanfeed', import.meta.url));
const cluster = `etcdtls${process.pid}`;
const metaPassword = `meta-pw-${process.pid}-Zq81`;
const upPassword = `up-pw-${process.pid}-Kx42`;
const inlineSecret = `inline-${process.pid}-Wv07`;
let base: string;
let certs: TestCerts;
let creds: string;
let sinkRoot: string;
let meta: TestEtcd | undefined;
let up: TestEtcd | undefined;
let upClient: Etcd3 | undefined;
const captures: TestCapture[] = [];
/** `spanfeed server` runs expected to exit; killed in afterAll if one did not. */
const exiting = new Set<ChildProcess>();
/** API answers' raw text, grepped for the passwords at the end. */
const answers: string[] = [];

function metaFlags(overrides: Record<string, string | undefined> = {}): string[] {
  const client = certs.certs.client as { cert: string; key: string };
  const flags: Record<string, string | undefined> = {
    '--etcd-ca': certs.ca,
    '--etcd-cert': client.cert,
    '--etcd-key': client.key,
    '--etcd-user': 'spanfeed',
    '--etcd-password-file': join(base, 'meta-password'),
    '--credentials-root': creds,
    ...overrides,
  };
  return Object.entries(flags).flatMap(([name, value]) => (value === undefined ? [] : [name, value]));
}

/** The security parameters of a URI of the upstream etcd, files under the credentials root. */
function upParams(overrides: Record<string, string> = {}): string {
  const params = new URLSearchParams({ ca: join(creds, 'ca.pem'), cert: join(creds, 'client.pem'), key: join(creds, 'client-key.pem'), user: 'reader', passwordFile: join(creds, 'up-password'), ...overrides });
  return params.toString();
}

function url(): string {
  return (captures[0] as TestCapture).url;
}

async function call<T = any>(method: string, path: string, body?: unknown): Promise<{ status: number; body: T }> {
  const answer = await api<T>(url(), method, path, body);
  answers.push(JSON.stringify(answer.body));
  return answer;
}

/** Runs `spanfeed server` to its exit (it must not start): status and what it printed. */
function serverExit(args: string[], timeoutMs = 15_000): Promise<{ status: number | null; output: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [bin, 'server', '--cluster', cluster, '--http', '127.0.0.1:0', '--grpc', '127.0.0.1:0', '--log-level', 'warn', ...args]);
    exiting.add(child);
    let output = '';
    child.stdout.on('data', (c: Buffer) => (output += c.toString()));
    child.stderr.on('data', (c: Buffer) => (output += c.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('exit', (status) => {
      exiting.delete(child);
      clearTimeout(timer);
      resolve({ status, output });
    });
  });
}

async function checkpointPast(id: string, revision: bigint): Promise<ChangefeedView> {
  return waitFor(`changefeed ${id} past revision ${revision}`, async () => {
    const answer = await call<ChangefeedView>('GET', `/api/v1/changefeeds/${id}`);
    return answer.status === 200 && BigInt(answer.body.checkpointTs) >= revision ? answer.body : undefined;
  }, 30_000, 100);
}

beforeAll(async () => {
  base = realpathSync(mkdtempSync(join(tmpdir(), 'spanfeed-etcdtls-')));
  mkdirSync(join(base, 'certs'));
  certs = makeTestCerts(join(base, 'certs'), ['server', 'client']);
  creds = join(base, 'creds');
  sinkRoot = join(base, 'sinks');
  mkdirSync(creds);
  mkdirSync(sinkRoot);
  mkdirSync(join(base, 'outside'));
  const client = certs.certs.client as { cert: string; key: string };
  const server = certs.certs.server as { cert: string; key: string };
  copyFileSync(certs.ca, join(creds, 'ca.pem'));
  copyFileSync(client.cert, join(creds, 'client.pem'));
  copyFileSync(client.key, join(creds, 'client-key.pem'));
  copyFileSync(certs.ca, join(base, 'outside', 'ca.pem'));
  symlinkSync(join(base, 'outside', 'ca.pem'), join(creds, 'linked-ca.pem'));
  writeFileSync(join(creds, 'up-password'), `${upPassword}\n`, { mode: 0o600 });
  writeFileSync(join(base, 'meta-password'), `${metaPassword}\n`, { mode: 0o600 });
  writeFileSync(join(base, 'wrong-password'), 'not-the-password\n', { mode: 0o600 });
  writeFileSync(join(base, 'empty-password'), '\n', { mode: 0o600 });
  const tls = { caFile: certs.ca, certFile: server.cert, keyFile: server.key, clientCert: { certFile: client.cert, keyFile: client.key } };
  [meta, up] = await Promise.all([
    TestEtcd.start({ tls, auth: { user: 'spanfeed', password: metaPassword, rootPassword: `root-${metaPassword}` } }),
    TestEtcd.start({ tls, auth: { user: 'reader', password: upPassword, rootPassword: `root-${upPassword}` } }),
  ]);
  upClient = up.connect();
  const metaEtcd = meta;
  captures.push(...(await Promise.all([0, 1, 2].map(() => TestCapture.start(metaEtcd, { cluster, fileSinkRoot: sinkRoot, extraArgs: metaFlags() })))));
}, 60_000);

afterAll(async () => {
  for (const child of exiting) child.kill('SIGKILL');
  await Promise.all(captures.map((c) => c.stop()));
  upClient?.close();
  await Promise.all([meta?.stop(), up?.stop()]);
  if (base !== undefined) rmSync(base, { recursive: true, force: true });
});

describe('etcd over TLS with client certificates and user/password', () => {
  it('three captures elect an owner and replicate a secured etcd into a file sink and an etcd sink', async () => {
    const owners = await waitFor('one owner among the captures', async () => {
      const statuses = await Promise.all(captures.map((c) => c.status()));
      const ids = statuses.filter((s) => s.isOwner).map((s) => s.id);
      return ids.length === 1 ? ids : undefined;
    });
    expect(owners).toHaveLength(1);
    // The capture the test calls forwards to the owner once its own watch has seen it.
    await waitFor('the owner known to the capture the test calls', async () => ((await api(url(), 'GET', '/api/v1/captures')).status === 200 ? true : undefined));
    const upEtcd = up as TestEtcd;
    const client = upClient as Etcd3;
    for (let i = 0; i < 20; i++) await client.put(`up/t/before-${i}`).value(`v${i}`);
    const tables = [{ name: 't', prefix: 'up/t/', spans: 2 }];
    const toFile = await call('POST', '/api/v1/changefeeds', { id: 'to-file', source: { uri: `etcd://${upEtcd.endpoint}?${upParams()}` }, sink: { uri: `file://${sinkRoot}/to-file` }, tables, start: 'earliest' });
    expect(toFile.status, JSON.stringify(toFile.body)).toBe(201);
    const toEtcd = await call('POST', '/api/v1/changefeeds', { id: 'to-etcd', source: { uri: `etcd://${upEtcd.endpoint}?${upParams()}` }, sink: { uri: `etcd://${upEtcd.endpoint}/mirror/?${upParams()}` }, tables, start: 'earliest' });
    expect(toEtcd.status, JSON.stringify(toEtcd.body)).toBe(201);
    let last = 0n;
    for (let i = 0; i < 30; i++) last = BigInt((await client.put(`up/t/after-${i}`).value(`w${i}`)).header.revision);
    await client.delete().key('up/t/before-3');
    last += 1n;
    await Promise.all([checkpointPast('to-file', last), checkpointPast('to-etcd', last)]);
    expect(await client.get('mirror/up/t/after-29').string()).toBe('w29');
    expect(await client.get('mirror/up/t/before-3').string()).toBeNull();
    for (const id of ['to-file', 'to-etcd']) {
      const out = spawnSync(process.execPath, [bin, 'verify', '--changefeed', id, '--etcd', `https://${(meta as TestEtcd).endpoint}`, '--cluster', cluster, ...metaFlags()], { encoding: 'utf8' });
      expect(out.status, `${out.stdout}${out.stderr}`).toBe(0);
      const result = JSON.parse(out.stdout.trim()) as { keysChecked: number; missing: number; mismatched: number; extra: number };
      expect(result).toMatchObject({ missing: 0, mismatched: 0, extra: 0 });
      expect(result.keysChecked).toBeGreaterThanOrEqual(49);
      expect(out.stdout + out.stderr).not.toContain(metaPassword);
    }
    // Without the metadata etcd's password the verifier is refused, and says why.
    const refused = spawnSync(process.execPath, [bin, 'verify', '--changefeed', 'to-file', '--etcd', (meta as TestEtcd).endpoint, '--cluster', cluster, ...metaFlags({ '--etcd-password-file': join(base, 'missing') })], { encoding: 'utf8' });
    expect(refused.status).toBe(2);
    expect(refused.stderr).toMatch(/--etcd-password-file .*missing cannot be read/);
  });

  it('a capture that cannot use the metadata etcd fails to start and says why', async () => {
    const otherCa = makeTestCerts(mkdtempSync(join(base, 'other-ca-')), []).ca;
    const endpoint = (meta as TestEtcd).endpoint;
    const [wrongCa, wrongPassword, emptyPassword, noPasswordFile, notPem] = await Promise.all([
      serverExit(['--etcd', endpoint, '--start-timeout-ms', '2000', ...metaFlags({ '--etcd-ca': otherCa })]),
      serverExit(['--etcd', endpoint, '--start-timeout-ms', '2000', ...metaFlags({ '--etcd-password-file': join(base, 'wrong-password') })]),
      serverExit(['--etcd', endpoint, ...metaFlags({ '--etcd-password-file': join(base, 'empty-password') })]),
      serverExit(['--etcd', endpoint, ...metaFlags({ '--etcd-password-file': undefined })]),
      serverExit(['--etcd', endpoint, ...metaFlags({ '--etcd-ca': join(base, 'meta-password') })]),
    ]);
    expect(wrongCa.status, wrongCa.output).toBe(1);
    expect(wrongCa.output).toMatch(/spanfeed server: capture did not join the cluster at etcd .* within 2000 ms/);
    expect(wrongCa.output).toMatch(/^spanfeed server: .*\(TLS handshake with etcd 127\.0\.0\.1:\d+ failed: [^)]*certificate[^)]*\)/m);
    expect(wrongPassword.status, wrongPassword.output).toBe(1);
    expect(wrongPassword.output).toMatch(/authentication failed|invalid user ID or password/i);
    expect(emptyPassword).toMatchObject({ status: 2 });
    expect(emptyPassword.output).toMatch(/^spanfeed server: --etcd-password-file .*empty-password: its first line \(the password\) is empty$/m);
    expect(noPasswordFile).toMatchObject({ status: 2 });
    expect(noPasswordFile.output).toMatch(/--etcd-user and --etcd-password-file go together/);
    expect(notPem).toMatchObject({ status: 2 });
    expect(notPem.output).toMatch(/--etcd-ca .*meta-password is not a PEM certificate/);
    for (const run of [wrongCa, wrongPassword, emptyPassword, noPasswordFile, notPem]) {
      expect(run.output).not.toContain(metaPassword);
      expect(run.output).not.toContain('not-the-password');
    }
  });

  it('refuses credential files outside --credentials-root and passwords in URIs at create', async () => {
    const upUri = `etcd://${(up as TestEtcd).endpoint}`;
    const tables = [{ name: 'x', prefix: 'up/x/' }];
    const refusals: [string, string, RegExp][] = [
      [`${upUri}?${upParams({ ca: join(base, 'outside', 'ca.pem') })}`, `file://${sinkRoot}/r1`, /parameter ca .*outside --credentials-root/],
      [`${upUri}?${upParams({ ca: `${creds}/../outside/ca.pem` })}`, `file://${sinkRoot}/r2`, /ca=.*must not contain "\.", "\.\." segments/],
      [`${upUri}?${upParams({ ca: join(creds, 'linked-ca.pem') })}`, `file://${sinkRoot}/r3`, /outside --credentials-root .*resolves to/],
      [`${upUri}?${upParams({ passwordFile: '/proc/self/environ' })}`, `file://${sinkRoot}/r4`, /passwordFile=.*outside \/proc/],
      [`${upUri}?${upParams({ passwordFile: join(creds, 'missing') })}`, `file://${sinkRoot}/r5`, /parameter passwordFile=.*missing cannot be read/],
      [`etcd://reader:${inlineSecret}@${(up as TestEtcd).endpoint}`, `file://${sinkRoot}/r6`, /must not hold a user or password .*passwordFile=/],
      [`${upUri}?user=reader&password=${inlineSecret}`, `file://${sinkRoot}/r7`, /parameter "password" is not allowed.*passwordFile=/],
      [`${upUri}?${upParams()}`, `etcd://${(up as TestEtcd).endpoint}/mirror-x/?${upParams({ key: join(base, 'outside', 'ca.pem') })}`, /parameter key .*outside --credentials-root/],
      [`${upUri}?${upParams()}`, `postgres://u@127.0.0.1:1/db?passwordFile=${join(base, 'meta-password')}`, /parameter passwordFile .*outside --credentials-root/],
    ];
    for (const [source, sink, message] of refusals) {
      const answer = await call<{ error: { message: string } }>('POST', '/api/v1/changefeeds', { id: 'refused', source: { uri: source }, sink: { uri: sink }, tables });
      expect(answer.status, `${source} ${sink}: ${JSON.stringify(answer.body)}`).toBe(400);
      expect(answer.body.error.message, source).toMatch(message);
    }
    const list = await call<{ id: string }[]>('GET', '/api/v1/changefeeds');
    expect(list.body.map((c) => c.id).sort()).toEqual(['to-etcd', 'to-file']);
  });

  it('fails a hand-written changefeed whose URI names a file outside --credentials-root, reading nothing', async () => {
    const metaClient = (meta as TestEtcd).connect();
    try {
      const source = `etcd://${(up as TestEtcd).endpoint}?${upParams({ passwordFile: join(base, 'meta-password') })}`;
      const info = { id: 'by-hand', source: { uri: source }, sink: { uri: `file://${sinkRoot}/by-hand` }, tables: [{ name: 'h', prefix: 'up/h/' }], start: 'now', startTs: '1', state: 'normal', epoch: String(Date.now()), createdAt: new Date().toISOString() };
      await metaClient.put(clusterKeys(cluster).changefeedInfo('by-hand')).value(JSON.stringify(info));
      const error = await waitFor('changefeed by-hand to fail', async () => {
        const answer = await call<{ state: string; error?: string }>('GET', '/api/v1/changefeeds/by-hand');
        return answer.status === 200 && answer.body.state === 'failed' ? (answer.body.error ?? '') : undefined;
      }, 30_000);
      expect(error).toMatch(/parameter passwordFile .*meta-password is outside --credentials-root/);
      expect((await call('DELETE', '/api/v1/changefeeds/by-hand')).status).toBe(200);
    } finally {
      metaClient.close();
    }
  });

  it('no etcd password is in a capture log or an API answer', async () => {
    for (const path of ['/api/v1/changefeeds', '/api/v1/changefeeds/to-file', '/api/v1/changefeeds/to-etcd', '/api/v1/status', '/api/v1/captures']) await call('GET', path);
    const metrics = await fetch(`${url()}/metrics`).then((r) => r.text());
    for (const text of [...answers, metrics, ...captures.map((c) => c.proc.output)]) {
      for (const secret of [metaPassword, upPassword, inlineSecret]) expect(text).not.toContain(secret);
    }
    // The logs were read: the captures did log, over the secured etcd.
    expect(captures.map((c) => c.proc.output).join('')).toMatch(/"msg"/);
  });
});

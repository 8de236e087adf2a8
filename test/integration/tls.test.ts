/**
 * Issue 10, TLS, with real certificates (made by `spanfeed certs create`) and real
 * processes: three captures serving HTTPS and mutual-TLS gRPC replicate a changefeed;
 * every documented endpoint answers 401 without credentials, 403 to a read client
 * certificate on mutations, and normally to an admin certificate or token, through the
 * owner and through a non-owner (which forwards the caller's role); a role header from
 * anyone but a capture counts for nothing; gRPC peers without a certificate, with one
 * from another CA or with a name not in --tls-allowed-names are refused, and a peer with
 * a capture's own certificate but not the owner's revision starts no pipeline; a
 * capture whose certificate is not in the allowed names does not start; the CLI works
 * with --ca and a client certificate and says why without --ca.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { apiRequest } from '../../src/api/api-request.ts';
import type { ApiClientTls } from '../../src/api/api-request.ts';
import type { DispatchMessage } from '../../src/core/messages.ts';
import { encodeOwnerMessage } from '../../src/rpc/codec.ts';
import { CaptureServiceClient } from '../../src/rpc/proto.ts';
import type { ApiAnswer, ChangefeedView, SpanPage, SpanView } from './harness.ts';
import { TestCapture, TestEtcd, apiWith, runCliWith, waitFor } from './harness.ts';
import type { CliRun } from './harness.ts';
import { checkAgainstOpenApi, documentedOperations } from './openapi-check.ts';
import { makeTestCerts } from './test-certs.ts';

const bin = fileURLToPath(new URL('../../bin/spanfeed', import.meta.url));
const cluster = `tls${process.pid}`;
const dir = mkdtempSync(join(tmpdir(), 'spanfeed-tls-'));
const certs = join(dir, 'certs');
const otherCerts = join(dir, 'other-ca');
const adminToken = 'tls-admin-0123456789abcdef';
const captureNames = ['c1', 'c2', 'c3'];
let etcd: TestEtcd;
const captures: TestCapture[] = [];

const pem = (name: string): Buffer => readFileSync(join(certs, name));
const ca = (): Buffer => pem('ca.pem');
/** A client's TLS with the certificate `name` (made in `certs`, or in `from`). */
const clientOf = (name: string, from = certs): ApiClientTls => ({ ca: ca(), cert: readFileSync(join(from, `${name}.pem`)), key: readFileSync(join(from, `${name}-key.pem`)) });
const serverArgs = ['--tls-allowed-names', captureNames.join(','), '--tls-client-roles', 'admin=admin,viewer=read', '--auth-token-file', join(dir, 'tokens')];


const as = <T = any>(tls: ApiClientTls, capture: TestCapture, method: string, path: string, body?: unknown, headers?: Record<string, string>, token?: string): Promise<ApiAnswer<T>> =>
  apiWith<T>({ tls, token, ...(body === undefined ? {} : { body }), ...(headers === undefined ? {} : { headers }) }, capture.url, method, path);

/** The status of one request whose answer may be an endless event stream (its body is dropped). */
async function statusOf(tls: ApiClientTls, capture: TestCapture, method: string, path: string, body?: unknown): Promise<{ status: number; body: unknown }> {
  const answer = await apiRequest(`${capture.url}${path}`, { method, headers: { 'content-type': 'application/json' }, body: body === undefined ? undefined : JSON.stringify(body), tls, timeoutMs: 10_000 });
  const type = String(answer.headers['content-type'] ?? '');
  if (!type.startsWith('application/json')) {
    answer.body.destroy();
    return { status: answer.status, body: undefined };
  }
  let text = '';
  for await (const chunk of answer.body as AsyncIterable<Buffer>) text += chunk.toString();
  return { status: answer.status, body: JSON.parse(text) };
}

async function metric(capture: TestCapture, name: string, labels: string): Promise<number> {
  const text = (await as<string>(clientOf('admin'), capture, 'GET', '/metrics')).body;
  const line = String(text).split('\n').find((l) => l.startsWith(`${name}{${labels}}`));
  return line === undefined ? 0 : Number(line.split(' ').at(-1));
}

async function owner(): Promise<TestCapture> {
  return waitFor('an owner', async () => {
    for (const capture of captures) if ((await capture.status()).isOwner) return capture;
    return undefined;
  });
}

function cli(...args: string[]): Promise<CliRun> {
  return runCliWith({ SPANFEED_TOKEN: '', SPANFEED_CA: '' }, (captures[1] as TestCapture).url, ...args);
}

beforeAll(async () => {
  makeTestCerts(certs, [...captureNames, 'admin', 'viewer', 'rogue']);
  makeTestCerts(otherCerts, ['c1']);
  writeFileSync(join(dir, 'tokens'), `${adminToken} admin\n`, { mode: 0o600 });
  etcd = await TestEtcd.start();
  for (const name of captureNames) {
    const files = { ca: join(certs, 'ca.pem'), cert: join(certs, `${name}.pem`), key: join(certs, `${name}-key.pem`) };
    captures.push(await TestCapture.start(etcd, { cluster, tls: { files, client: clientOf('admin') }, extraArgs: serverArgs }));
  }
  await owner();
  const created = await as(clientOf('admin'), captures[0] as TestCapture, 'POST', '/api/v1/changefeeds', { id: 'cf', source: { uri: 'datagen://?rate=20' }, sink: { uri: 'blackhole://' }, tables: [{ name: 't', spans: 6 }] });
  expect(created.status, JSON.stringify(created.body)).toBe(201);
}, 120_000);

afterAll(async () => {
  await Promise.all(captures.map((c) => c.stop()));
  await etcd?.stop();
  rmSync(dir, { recursive: true, force: true });
});

describe('a TLS cluster', () => {
  it('replicates over mutual TLS with spans on every capture', async () => {
    const spans = await waitFor('every span replicating, on all three captures', async () => {
      const view = (await as<ChangefeedView>(clientOf('admin'), captures[0] as TestCapture, 'GET', '/api/v1/changefeeds/cf')).body;
      if (view.watermark?.state !== 'advancing') return undefined;
      const list = (await as<SpanPage>(clientOf('admin'), captures[0] as TestCapture, 'GET', '/api/v1/changefeeds/cf/spans')).body.spans;
      const holders = new Set(list.map((s) => s.primary));
      return list.length === 6 && list.every((s) => s.state === 'replicating') && holders.size === 3 ? list : undefined;
    }, 40_000, 200);
    expect(spans).toHaveLength(6);
    const before = BigInt((await as<ChangefeedView>(clientOf('viewer'), captures[2] as TestCapture, 'GET', '/api/v1/changefeeds/cf')).body.checkpointTs);
    await waitFor('the checkpoint to move', async () => {
      const now = BigInt((await as<ChangefeedView>(clientOf('viewer'), captures[2] as TestCapture, 'GET', '/api/v1/changefeeds/cf')).body.checkpointTs);
      return now > before ? true : undefined;
    }, 10_000, 100);
  }, 60_000);

  it('answers 401 without credentials, 403 to a read certificate on mutations and normally to an admin, on every endpoint, through the owner and a non-owner', async () => {
    const owning = await owner();
    const other = captures.find((c) => c !== owning) as TestCapture;
    const ops = documentedOperations();
    expect(ops.length).toBeGreaterThanOrEqual(19);
    const anonymous: ApiClientTls = { ca: ca() };
    for (const capture of [other, owning]) {
      for (const { method, template, path, body } of ops) {
        if (template === '/api/v1/owner/resign') continue;
        const what = `${method} ${path} via ${capture === owning ? 'owner' : 'non-owner'}`;
        const open = template === '/api/v1/health' || template === '/';
        // No certificate; a certificate the CA signed that has no role; a certificate of another CA.
        for (const [who, tls] of [['anonymous', anonymous], ['rogue', clientOf('rogue')]] as const) {
          const answer = await statusOf(tls, capture, method, path, body);
          expect(answer.status, `${what} ${who}`).toBe(open ? 200 : 401);
          if (!open) checkAgainstOpenApi(method, path, 401, answer.body);
        }
        const read = await statusOf(clientOf('viewer'), capture, method, path, body);
        expect(read.status, `${what} viewer`).toBe(method === 'GET' ? 200 : 403);
        if (method !== 'GET') expect(read.body, what).toMatchObject({ error: { code: 'forbidden' } });
        if (method === 'GET' || template === '/api/v1/changefeeds') continue;
        const admin = await statusOf(clientOf('admin'), capture, method, path, body);
        expect([401, 403, 415], `${what} admin ${admin.status} ${JSON.stringify(admin.body)}`).not.toContain(admin.status);
        expect(admin.status, what).toBeLessThan(500);
      }
    }
    // A role header from a client that is not a capture counts for nothing.
    for (const capture of [other, owning]) {
      for (const [who, tls] of [['viewer', clientOf('viewer')], ['anonymous', anonymous]] as const) {
        const claimed = await as(tls, capture, 'DELETE', '/api/v1/changefeeds/cf', undefined, { 'x-spanfeed-caller-role': 'admin' });
        expect(claimed.status, `${who} claiming admin`).toBe(who === 'viewer' ? 403 : 401);
      }
    }
    // A token still works over TLS, forwarded too. The admin calls above paused and
    // resumed cf (a new epoch): wait until its new coordinator has bootstrapped, or the
    // rebalance is refused as not-ready whatever the credential.
    await waitFor('cf to run again after its resume', async () => {
      const view = (await as<ChangefeedView>(clientOf('admin'), owning, 'GET', '/api/v1/changefeeds/cf')).body;
      return view.state === 'normal' && view.watermark?.state === 'advancing' ? true : undefined;
    }, 30_000, 100);
    const byToken = await as(anonymous, other, 'POST', '/api/v1/changefeeds/cf/rebalance', {}, undefined, adminToken);
    expect(byToken.status, JSON.stringify(byToken.body)).toBeLessThan(300);
    // Plain text to the HTTPS port is not served.
    await expect(fetch(other.url.replace('https:', 'http:') + '/api/v1/captures', { signal: AbortSignal.timeout(5_000) }).then((r) => r.status)).rejects.toThrow();
    // A cross-site text/plain POST is refused even with an admin certificate.
    const crossSite = await as(clientOf('admin'), owning, 'POST', '/api/v1/changefeeds/cf/rebalance', undefined, { 'content-type': 'text/plain' });
    expect(crossSite.status).toBe(415);
    // A TLS client that does not trust the cluster's CA does not get through.
    await expect(apiWith({ tls: { ca: readFileSync(join(otherCerts, 'ca.pem')) } }, owning.url, 'GET', '/api/v1/health')).rejects.toThrow();
  }, 120_000);

  it('refuses gRPC peers without a certificate, from another CA or with a name not allowed, and starts nothing for a capture certificate without the owner revision', async () => {
    const view = (await as<SpanPage>(clientOf('admin'), captures[0] as TestCapture, 'GET', '/api/v1/changefeeds/cf/spans')).body.spans;
    const victimId = (view[0] as SpanView).primary as string;
    const victim = await waitFor('the victim', async () => {
      for (const c of captures) if ((await c.status()).id === victimId) return c;
      return undefined;
    });
    const grpcAddr = (await as<{ grpcAddr: string }>(clientOf('admin'), victim, 'GET', '/api/v1/status')).body.grpcAddr;
    const message: DispatchMessage = {
      kind: 'dispatch',
      header: { changefeed: 'cf', ownerRevision: 1_000_000n, changefeedEpoch: 1n, captureEpoch: 0n, from: 'mallory', to: victimId, seq: 1, ackSeq: 0 },
      adds: [{ span: { table: 't', start: 'zz', end: 'zzz' }, secondary: false, checkpointTs: 1n }],
      removes: [{ table: (view[0] as SpanView).table, start: (view[0] as SpanView).start, end: (view[0] as SpanView).end }],
    };
    /** Opens a stream with `credentials`, sends the forged message, and resolves with the stream's error code (or 'open' when it stayed up 2 s). */
    const forge = (credentials: grpc.ChannelCredentials): Promise<number | 'open'> =>
      new Promise((resolve) => {
        const client = new CaptureServiceClient(grpcAddr, credentials);
        const stream = (client as unknown as { connect(): grpc.ClientDuplexStream<unknown, unknown> }).connect();
        const timer = setTimeout(() => finish('open'), 2_000);
        function finish(outcome: number | 'open'): void {
          clearTimeout(timer);
          stream.cancel();
          client.close();
          resolve(outcome);
        }
        stream.on('data', () => undefined);
        stream.on('error', (error: grpc.ServiceError) => finish(error.code));
        stream.write(encodeOwnerMessage(message));
      });
    const held = await metric(victim, 'spanfeed_capture_spans_held', 'changefeed="cf"');
    const nameRefusals = await metric(victim, 'spanfeed_rpc_streams_refused_total', 'reason="peer-name"');
    const key = (name: string, from = certs): [Buffer, Buffer] => [readFileSync(join(from, `${name}-key.pem`)), readFileSync(join(from, `${name}.pem`))];
    expect(await forge(grpc.credentials.createInsecure())).toBe(grpc.status.UNAVAILABLE);
    expect(await forge(grpc.credentials.createSsl(ca()))).toBe(grpc.status.UNAVAILABLE);
    expect(await forge(grpc.credentials.createSsl(ca(), ...key('c1', otherCerts)))).toBe(grpc.status.UNAVAILABLE);
    expect(await forge(grpc.credentials.createSsl(ca(), ...key('rogue')))).toBe(grpc.status.PERMISSION_DENIED);
    expect(await metric(victim, 'spanfeed_rpc_streams_refused_total', 'reason="peer-name"')).toBe(nameRefusals + 1);
    // A capture's own certificate gets a stream, but without the owner's election in etcd its messages are dropped.
    const unverified = await metric(victim, 'spanfeed_rpc_messages_refused_total', 'reason="unverified-owner"');
    expect(await forge(grpc.credentials.createSsl(ca(), ...key('c2')))).toBe('open');
    await waitFor('the forged message counted', async () => ((await metric(victim, 'spanfeed_rpc_messages_refused_total', 'reason="unverified-owner"')) > unverified ? true : undefined), 10_000, 100);
    expect(await metric(victim, 'spanfeed_capture_spans_held', 'changefeed="cf"')).toBe(held);
    const after = (await as<SpanPage>(clientOf('admin'), victim, 'GET', '/api/v1/changefeeds/cf/spans')).body.spans;
    expect(after.every((s) => s.state === 'replicating')).toBe(true);
  }, 60_000);

  it('does not start a capture whose certificate name is not allowed, nor one given a key that is not its certificate\'s', async () => {
    const run = (cert: string, key: string) =>
      spawnSync(process.execPath, [bin, 'server', '--etcd', etcd.endpoint, '--cluster', cluster, '--tls-ca', join(certs, 'ca.pem'), '--tls-cert', join(certs, cert), '--tls-key', join(certs, key), ...serverArgs, '--start-timeout-ms', '3000'], { encoding: 'utf8', timeout: 20_000 });
    const rogue = run('rogue.pem', 'rogue-key.pem');
    expect(rogue.status).not.toBe(0);
    expect(rogue.stderr).toContain('none of them in --tls-allowed-names');
    const mismatched = run('c1.pem', 'c2-key.pem');
    expect(mismatched.status).not.toBe(0);
    expect(mismatched.stderr).toContain('is not the key of --tls-cert');
  }, 60_000);

  it('serves the CLI with --ca and a client certificate, and says what is wrong without --ca', async () => {
    const ok = await cli('--ca', join(certs, 'ca.pem'), '--cert', join(certs, 'admin.pem'), '--key', join(certs, 'admin-key.pem'), 'changefeed', 'list');
    expect(ok.stderr).toBe('');
    expect(ok.status).toBe(0);
    expect(ok.stdout).toContain('cf');
    const viewer = await cli('--ca', join(certs, 'ca.pem'), '--cert', join(certs, 'viewer.pem'), '--key', join(certs, 'viewer-key.pem'), 'rebalance', 'cf');
    expect(viewer.status).not.toBe(0);
    expect(viewer.stderr).toContain('forbidden');
    const noCa = await cli('changefeed', 'list');
    expect(noCa.status).not.toBe(0);
    expect(noCa.stderr).toMatch(/cannot reach .*(self[- ]signed|certificate)/i);
  }, 60_000);
});

/**
 * The authenticated API against real processes: two captures with one token file (an
 * owner and a non-owner forwarding to it), the 401/403 matrix over every operation of
 * api/openapi.json, the cross-site refusals, SIGHUP reloads, the CLI with and without
 * --token, and, on a capture without tokens, the cross-site refusals and the refusal to
 * serve a non-loopback address unasked.
 */
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TestCapture, TestEtcd, apiWith, freePort, runCliWith, waitFor } from './harness.ts';
import type { CliRun } from './harness.ts';
import type { ApiAnswer } from './harness.ts';
import { checkAgainstOpenApi, documentedOperations } from './openapi-check.ts';

const bin = fileURLToPath(new URL('../../bin/spanfeed', import.meta.url));
const cluster = `auth${process.pid}`;
const adminToken = 'admin-0123456789abcdef';
const readToken = 'read-0123456789abcdef';
const laterToken = 'later-0123456789abcdef';
const dir = mkdtempSync(join(tmpdir(), 'spanfeed-auth-'));
const tokenFile = join(dir, 'tokens');
let etcd: TestEtcd;
const captures: TestCapture[] = [];
let open: TestCapture | undefined;

const as = <T = any>(token: string | undefined, capture: TestCapture, method: string, path: string, body?: unknown, headers?: Record<string, string>): Promise<ApiAnswer<T>> =>
  apiWith<T>({ token, ...(body === undefined ? {} : { body }), ...(headers === undefined ? {} : { headers }) }, capture.url, method, path);

/** The status and `WWW-Authenticate` of one request, read without its body (for event streams). */
async function head(capture: TestCapture, method: string, path: string, token?: string): Promise<{ status: number; challenge: string | null; body: unknown }> {
  const abort = new AbortController();
  const headers: Record<string, string> = { 'content-type': 'application/json' };
  if (token !== undefined) headers.authorization = `Bearer ${token}`;
  const response = await fetch(`${capture.url}${path}`, { method, headers, signal: abort.signal });
  const type = response.headers.get('content-type') ?? '';
  const body = type.startsWith('application/json') ? await response.json() : undefined;
  abort.abort();
  return { status: response.status, challenge: response.headers.get('www-authenticate'), body };
}

async function owner(): Promise<TestCapture> {
  return waitFor('an owner', async () => {
    for (const capture of captures) if ((await capture.status()).isOwner) return capture;
    return undefined;
  });
}

function cli(env: Record<string, string>, ...args: string[]): Promise<CliRun> {
  return runCliWith({ SPANFEED_TOKEN: '', ...env }, (captures[1] as TestCapture).url, ...args);
}

beforeAll(async () => {
  writeFileSync(tokenFile, `# test tokens\n${adminToken} admin\n${readToken} read\n`, { mode: 0o600 });
  etcd = await TestEtcd.start();
  for (let i = 0; i < 2; i++) captures.push(await TestCapture.start(etcd, { cluster, token: adminToken, extraArgs: ['--auth-token-file', tokenFile] }));
  for (const capture of captures) await waitFor('an owner', async () => ((await as(adminToken, capture, 'GET', '/api/v1/captures')).status === 200 ? true : undefined));
  const created = await as(adminToken, captures[0] as TestCapture, 'POST', '/api/v1/changefeeds', { id: 'cf', source: { uri: 'datagen://?rate=5' }, sink: { uri: 'blackhole://' }, tables: [{ name: 't', spans: 4 }] });
  expect(created.status, JSON.stringify(created.body)).toBe(201);
  open = await TestCapture.start(etcd, { cluster: `${cluster}open` });
}, 90_000);

afterAll(async () => {
  await Promise.all([...captures, ...(open === undefined ? [] : [open])].map((c) => c.stop()));
  await etcd?.stop();
  rmSync(dir, { recursive: true, force: true });
});

describe('the API with a token file', () => {
  it('answers 401 without a token, 403 to a read token on mutations and the normal answer to an admin, on every endpoint, through the owner and a non-owner', async () => {
    const owning = await owner();
    const other = captures.find((c) => c !== owning) as TestCapture;
    const ops = documentedOperations();
    expect(ops.length).toBeGreaterThanOrEqual(19);
    const seen: string[] = [];
    for (const capture of [other, owning]) {
      for (const { method, template, path, body } of ops) {
        const what = `${method} ${path} via ${capture === owning ? 'owner' : 'non-owner'}`;
        const open = template === '/api/v1/health' || template === '/';
        const stream = template.endsWith('/watermark/stream');
        for (const token of [undefined, 'unknown-0123456789abcdef']) {
          const answer = stream || body === undefined ? await head(capture, method, path, token) : { ...(await as(token, capture, method, path, body)), challenge: 'n/a' };
          if (open) {
            expect(answer.status, what).toBe(200);
            continue;
          }
          expect(answer.status, `${what} token ${token}`).toBe(401);
          if (answer.challenge !== 'n/a') expect(answer.challenge, what).toBe('Bearer realm="spanfeed"');
          expect(answer.body, what).toMatchObject({ error: { code: 'unauthorized' } });
          checkAgainstOpenApi(method, path, 401, answer.body);
        }
        const read = stream ? await head(capture, method, path, readToken) : await as(readToken, capture, method, path, body);
        if (method === 'GET') {
          expect(read.status, `${what} read`).toBe(200);
        } else {
          expect(read.status, `${what} read`).toBe(403);
          expect(read.body, what).toMatchObject({ error: { code: 'forbidden' } });
          checkAgainstOpenApi(method, path, 403, read.body);
        }
        if (method !== 'GET' && capture === other && template === '/api/v1/owner/resign') continue;
        if (method !== 'GET' && capture === other && template === '/api/v1/changefeeds') continue;
        const admin = stream ? await head(capture, method, path, adminToken) : await as(adminToken, capture, method, path, body);
        expect([401, 403, 415], `${what} admin ${admin.status} ${JSON.stringify(admin.body)}`).not.toContain(admin.status);
        expect(admin.status, `${what} admin ${JSON.stringify(admin.body)}`).toBeLessThan(500);
        if (!stream && typeof admin.body === 'object') checkAgainstOpenApi(method, path, admin.status, admin.body);
        seen.push(`${method} ${template} ${admin.status}`);
      }
    }
    // The admin's answers are the normal ones.
    expect(seen).toContain('POST /api/v1/changefeeds 201');
    expect(seen).toContain('POST /api/v1/changefeeds/{id}/pause 202');
    expect(seen).toContain('POST /api/v1/owner/resign 202');
    expect(seen).toContain('GET /metrics 200');
    expect(seen).toContain('DELETE /api/v1/changefeeds/{id} 404');
    // A read token changed nothing: cf2 was made by the admin only, once.
    const list = await waitFor('an owner again', async () => {
      const answer = await as<{ id: string }[]>(readToken, other, 'GET', '/api/v1/changefeeds');
      return answer.status === 200 ? answer.body : undefined;
    }, 30_000);
    expect(list.map((c) => c.id).sort()).toEqual(['cf', 'cf2']);
  });

  it('refuses a cross-site text/plain POST (415) and a POST from another origin (403), with or without tokens', async () => {
    const create = JSON.stringify({ id: 'evil', source: { uri: 'datagen://' }, sink: { uri: 'blackhole://' }, tables: [{ name: 't' }] });
    for (const capture of [...captures, open as TestCapture]) {
      const token = capture === open ? undefined : adminToken;
      const plain = await apiWith({ token, raw: create, headers: { 'content-type': 'text/plain' } }, capture.url, 'POST', '/api/v1/changefeeds');
      expect(plain.status).toBe(415);
      expect(plain.body).toMatchObject({ error: { code: 'unsupported-media-type' } });
      checkAgainstOpenApi('POST', '/api/v1/changefeeds', 415, plain.body);
      const form = await apiWith({ token, raw: 'a=1', headers: { 'content-type': 'application/x-www-form-urlencoded' } }, capture.url, 'POST', '/api/v1/owner/resign');
      expect(form.status).toBe(415);
      for (const [method, path] of [['POST', '/api/v1/changefeeds'], ['DELETE', '/api/v1/changefeeds/cf'], ['POST', '/api/v1/owner/resign'], ['POST', '/api/v1/captures/x/drain']] as const) {
        const evil = await apiWith({ token, raw: create, headers: { origin: 'http://evil.example' } }, capture.url, method, path);
        expect(evil.status, `${method} ${path}`).toBe(403);
        expect(evil.body).toMatchObject({ error: { code: 'cross-origin' } });
      }
      // The cross-site text/plain POST with no token at all is a 401 where tokens are asked for.
      if (token !== undefined) expect((await apiWith({ raw: create, headers: { 'content-type': 'text/plain', origin: 'http://evil.example' } }, capture.url, 'POST', '/api/v1/changefeeds')).status).toBe(401);
      // The server's own origin (the dashboard) may.
      const own = await waitFor('an owner to answer', async () => {
        const answer = await apiWith({ token, headers: { origin: capture.url } }, capture.url, 'POST', '/api/v1/changefeeds/nope/rebalance');
        return answer.status === 503 ? undefined : answer;
      }, 30_000);
      expect(own.status).toBe(404);
    }
    expect((await as(adminToken, captures[0] as TestCapture, 'GET', '/api/v1/changefeeds/evil')).status).toBe(404);
    expect((await as(undefined, open as TestCapture, 'GET', '/api/v1/changefeeds/evil')).status).toBe(404);
    // Without a token file, nothing else is asked for on loopback.
    expect((await as(undefined, open as TestCapture, 'GET', '/metrics')).status).toBe(200);
  });

  it('reads the token file again on SIGHUP: a new token works, a removed one gets 401, a bad file keeps the tokens', async () => {
    writeFileSync(tokenFile, `${adminToken} admin\n${laterToken} read\n`);
    for (const capture of captures) capture.proc.signal('SIGHUP');
    for (const capture of captures) {
      await waitFor('the new token to work', async () => ((await as(laterToken, capture, 'GET', '/api/v1/status')).status === 200 ? true : undefined), 10_000);
      expect((await as(readToken, capture, 'GET', '/api/v1/status')).status).toBe(401);
      // The log line reaches this process a moment after the answer that used the new token.
      await waitFor('the reload to be logged', () => (capture.proc.output.includes('api tokens reloaded') ? true : undefined), 10_000);
    }
    writeFileSync(tokenFile, `${adminToken} admin\n${laterToken} reader\n`);
    for (const capture of captures) capture.proc.signal('SIGHUP');
    for (const capture of captures) {
      await waitFor('the failed reload to be logged', () => (capture.proc.output.includes('api token file reload failed') ? true : undefined), 10_000);
      expect(capture.proc.output).toMatch(/line 2: unknown role \\"reader\\"/);
      expect((await as(laterToken, capture, 'GET', '/api/v1/status')).status).toBe(200);
      expect(capture.proc.running).toBe(true);
    }
    writeFileSync(tokenFile, `${adminToken} admin\n${readToken} read\n`);
    for (const capture of captures) capture.proc.signal('SIGHUP');
    for (const capture of captures) await waitFor('the read token to work again', async () => ((await as(readToken, capture, 'GET', '/api/v1/status')).status === 200 ? true : undefined), 10_000);
    // Tokens never reach the log.
    for (const capture of captures) for (const token of [adminToken, readToken, laterToken]) expect(capture.proc.output).not.toContain(token);
  });

  it('runs the CLI with --token or SPANFEED_TOKEN and fails clearly without', async () => {
    const list = await cli({}, '--token', readToken, '--json', 'changefeed', 'list');
    expect(list.status, list.stderr).toBe(0);
    expect((JSON.parse(list.stdout) as { id: string }[]).map((c) => c.id)).toContain('cf');
    const fromEnv = await cli({ SPANFEED_TOKEN: adminToken }, 'rebalance', 'cf');
    expect(fromEnv.status, fromEnv.stderr).toBe(0);
    expect(fromEnv.stdout).toContain('rebalancing cf');
    const none = await cli({}, 'capture', 'list');
    expect(none.status).toBe(1);
    expect(none.stderr).toContain('the server needs a token: give --token <token> or set SPANFEED_TOKEN (unauthorized)');
    const wrong = await cli({}, '--token', 'wrong-0123456789abcdef', 'capture', 'list');
    expect(wrong.status).toBe(1);
    expect(wrong.stderr).toContain('the server does not know this token');
    const readOnly = await cli({ SPANFEED_TOKEN: readToken }, 'changefeed', 'pause', 'cf');
    expect(readOnly.status).toBe(1);
    expect(readOnly.stderr).toContain('a read token may not POST; this needs an admin token (forbidden)');
    expect((await as(readToken, captures[0] as TestCapture, 'GET', '/api/v1/changefeeds/cf')).body.state).toBe('normal');
  });
});

describe('starting with tokens or without', () => {
  const run = (...args: string[]): { status: number | null; stderr: string } => {
    const result = spawnSync(process.execPath, [bin, 'server', ...args], { encoding: 'utf8', env: { ...process.env, SPANFEED_ETCD: '', SPANFEED_AUTH_TOKEN_FILE: '', SPANFEED_INSECURE: '' } });
    return { status: result.status, stderr: result.stderr };
  };

  it('exits 2 on a bad token file, naming the line, and on a non-loopback address without tokens', () => {
    const bad = join(dir, 'bad');
    writeFileSync(bad, `# ok\n${adminToken} admin\n${readToken} superuser\n`);
    expect(run('--auth-token-file', bad)).toMatchObject({ status: 2, stderr: expect.stringContaining(`--auth-token-file: ${bad} line 3: unknown role "superuser"`) });
    expect(run('--auth-token-file', join(dir, 'missing'))).toMatchObject({ status: 2, stderr: expect.stringContaining('cannot read') });
    const exposed = run('--http', '0.0.0.0:0');
    expect(exposed.status).toBe(2);
    expect(exposed.stderr).toContain('--http 0.0.0.0:0 is not a loopback address and no --auth-token-file or --tls-client-roles is set');
  });

  it('serves a non-loopback address without tokens with --insecure, and warns', async () => {
    const port = await freePort();
    const child = spawn(process.execPath, [bin, 'server', '--etcd', etcd.endpoint, '--cluster', `${cluster}insecure`, '--http', `0.0.0.0:${port}`, '--grpc', '127.0.0.1:0', '--insecure'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    child.stdout.on('data', (c: Buffer) => (output += c.toString()));
    child.stderr.on('data', (c: Buffer) => (output += c.toString()));
    try {
      await waitFor('the warning', () => (output.includes('http api serves without tokens on an address other than loopback') ? true : undefined), 20_000);
      await waitFor('the capture to answer', async () => ((await fetch(`http://127.0.0.1:${port}/api/v1/status`)).status === 200 ? true : undefined), 20_000);
    } finally {
      if (child.pid !== undefined && child.exitCode === null) process.kill(child.pid, 'SIGKILL');
    }
  });
});

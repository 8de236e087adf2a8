/**
 * 1,000+ generated malformed requests across every endpoint of three real captures (an
 * owner, two forwarding to it): no crash, no connection error, only 4xx answers with a
 * JSON error, and the metadata in etcd identical before and after. Then the plumbing
 * under them: bodies over the limit, bad paths and requests, clients that leave
 * mid-request or mid-stream, and the OpenAPI schema gate for bodies. Then a subset again
 * against two captures with a token file, with no, unknown, read and admin tokens.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { request as httpRequest } from 'node:http';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Etcd3 } from 'etcd3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { clusterKeys } from '../../src/cluster/keys.ts';
import { SeededRandom } from '../../src/core/rng.ts';
import { TestCapture, TestEtcd, api, apiWith, waitFor } from './harness.ts';
import type { ApiAnswer } from './harness.ts';
import { checkAgainstOpenApi } from './openapi-check.ts';

const cluster = `fuzz${process.pid}`;
let etcd: TestEtcd;
let client: Etcd3;
const captures: TestCapture[] = [];

beforeAll(async () => {
  etcd = await TestEtcd.start();
  client = new Etcd3({ hosts: `http://${etcd.endpoint}` });
  for (let i = 0; i < 3; i++) captures.push(await TestCapture.start(etcd, { cluster }));
  // Every capture knows the owner: a 503 is no answer the fuzz expects.
  for (const capture of captures) await waitFor('an owner', async () => ((await api(capture.url, 'GET', '/api/v1/captures')).status === 200 ? true : undefined));
  const created = await api(captures[0]!.url, 'POST', '/api/v1/changefeeds', {
    id: 'cf',
    source: { uri: 'datagen://?rate=5' },
    sink: { uri: 'blackhole://' },
    tables: [{ name: 't', spans: 4 }],
  });
  expect(created.status).toBe(201);
  checkAgainstOpenApi('POST', '/api/v1/changefeeds', created.status, created.body);
}, 60_000);

afterAll(async () => {
  await Promise.all(captures.map((c) => c.stop()));
  client?.close();
  await etcd?.stop();
});

/** A random JSON value of bounded depth. */
function randomValue(rng: SeededRandom, depth = 0): unknown {
  switch (rng.int(depth > 2 ? 5 : 8)) {
    case 0:
      return rng.int(1000) - 500;
    case 1:
      return ['', 'x', 'now', '-1', '1e999', 'datagen://', 'file://relative', '../../etc', '\u0000', 'a'.repeat(5000)][rng.int(10)];
    case 2:
      return rng.chance(0.5);
    case 3:
      return null;
    case 4:
      return 1.5;
    case 5:
      return Array.from({ length: rng.int(4) }, () => randomValue(rng, depth + 1));
    default: {
      const keys = ['id', 'source', 'sink', 'tables', 'start', 'targetTs', 'backfill', 'uri', 'name', 'prefix', 'spans', 'table', 'captureId', 'zzz', '__proto__'];
      const value: Record<string, unknown> = {};
      for (let i = rng.int(5); i > 0; i--) value[rng.pick(keys)] = randomValue(rng, depth + 1);
      return value;
    }
  }
}

/** A create body with exactly one field broken. */
function brokenCreate(rng: SeededRandom): unknown {
  const valid: Record<string, unknown> = { id: `x${rng.int(1000)}`, source: { uri: 'datagen://' }, sink: { uri: 'blackhole://' }, tables: [{ name: 't' }] };
  const field = rng.pick(['id', 'source', 'sink', 'tables', 'start', 'targetTs', 'backfill', 'extra']);
  const bad: Record<string, unknown> = {
    id: rng.pick([5, '', 'a b', '-x', 'x'.repeat(200), null]),
    source: rng.pick([{ uri: 'nope://' }, { uri: 5 }, 'datagen://', { uri: 'datagen://?rate=1001' }, { uri: 'datagen://?totalRate=5&rate=1' }, { uri: 'datagen://', x: 1 }]),
    sink: rng.pick([{ uri: 'nope://' }, {}, { uri: 'file://rel' }, { uri: 'blackhole://?flushMs=-1' }]),
    tables: rng.pick([[], {}, [{}], [{ name: 't', spans: 0 }], [{ name: 't' }, { name: 't' }], [{ name: 't', prefix: 'a', start: 'b' }], [{ name: 't', start: 'z', end: 'a' }]]),
    start: rng.pick(['yesterday', '-5', 5, '99999999999999999999999']),
    targetTs: rng.pick(['1', 'x', 7]),
    backfill: rng.pick(['yes', 1]),
    extra: 1,
  };
  return { ...valid, [field === 'extra' ? 'unexpected' : field]: bad[field] };
}

/** The malformed requests of the fuzz: [method, path, raw body], about `count` of them. */
function fuzzRequests(rng: SeededRandom, count: number): [string, string, string | undefined][] {
  const weirdIds = ['nope', '..', '%2e%2e', 'a%00b', 'x'.repeat(300), '%E2%9C%93', 'cf%2Fspans', ' '];
  const requests: [string, string, string | undefined][] = [];
  const json = (value: unknown): string => JSON.stringify(value);
  for (let i = 0; i < count; i++) {
    const id = rng.pick(weirdIds);
    const garbage = rng.pick([json(randomValue(rng)), '{"id": ', 'not json', '[1,2', '\u0000\u0001', '']);
    switch (rng.int(12)) {
      case 0: requests.push(['POST', '/api/v1/changefeeds', json(brokenCreate(rng))]); break;
      case 1: requests.push(['POST', '/api/v1/changefeeds', garbage]); break;
      case 2: requests.push(['PUT', '/api/v1/changefeeds/cf', rng.chance(0.5) ? garbage : json({ tables: randomValue(rng) })]); break;
      case 3: {
        const method = rng.pick(['GET', 'DELETE', 'PUT']);
        requests.push([method, `/api/v1/changefeeds/${id}`, method === 'GET' ? undefined : garbage]);
        break;
      }
      case 4: requests.push(['POST', `/api/v1/changefeeds/${id}/${rng.pick(['pause', 'rebalance'])}`, undefined]); break;
      case 5: {
        // cf runs: a resume is refused, and so is a pause or resume with a bad body.
        const badBody = rng.pick([json({ backfill: rng.pick(['yes', 1, null]) }), json({ backfill: true, x: 1 }), '[]', '5', '"s"', 'not json', '{"id": ']);
        requests.push(rng.chance(0.3) ? ['POST', '/api/v1/changefeeds/cf/resume', undefined] : ['POST', `/api/v1/changefeeds/cf/${rng.pick(['pause', 'resume'])}`, badBody]);
        break;
      }
      case 6: requests.push(['POST', '/api/v1/changefeeds/cf/spans/move', rng.chance(0.3) ? garbage : json(randomValue(rng))]); break;
      case 7: requests.push(['POST', `/api/v1/changefeeds/${id}/spans/move`, json({ table: 't', start: '', captureId: 'x' })]); break;
      case 8: requests.push([rng.pick(['POST', 'DELETE']), `/api/v1/captures/${id}/drain`, undefined]); break;
      case 9: requests.push([rng.pick(['PATCH', 'OPTIONS', 'PUT']), rng.pick(['/api/v1/changefeeds', '/api/v1/captures', '/api/v1/owner/resign']), undefined]); break;
      case 10: requests.push(['GET', rng.pick(['/api/v2/changefeeds', '/api/v1/changefeeds/cf/spans/x', '/api/v1', '/etc/passwd', '/api/v1/changefeeds/cf/watermark']), undefined]); break;
      default: requests.push(['GET', `/api/v1/changefeeds/${id}/spans`, undefined]);
    }
  }
  return requests;
}

describe('the HTTP API under malformed input', () => {
  it('answers 1,000+ bad requests with 4xx JSON errors and changes nothing', async () => {
    const before = await client.getAll().prefix(clusterKeys(cluster).changefeedsPrefix).strings();
    const infoOnly = (all: Record<string, string>): Record<string, string> => Object.fromEntries(Object.entries(all).filter(([k]) => k.endsWith('/info')));
    const rng = new SeededRandom(Number(process.env.FUZZ_SEED ?? 1));
    const requests = fuzzRequests(rng, 1_100);
    const statuses = new Map<number, number>();
    // Every request must be answered: a reset or a dropped connection is counted, not thrown,
    // so that the test reports how many there were.
    const connectionErrors: string[] = [];
    for (const [method, path, body] of requests) {
      const capture = captures[rng.int(captures.length)] as TestCapture;
      let answer: Awaited<ReturnType<typeof api<{ error?: { code?: unknown; message?: unknown } }>>>;
      try {
        answer = await api<{ error?: { code?: unknown; message?: unknown } }>(capture.url, method, path, undefined, body);
      } catch (error) {
        connectionErrors.push(`${method} ${path}: ${describeFetchError(error)}`);
        continue;
      }
      statuses.set(answer.status, (statuses.get(answer.status) ?? 0) + 1);
      expect(answer.status >= 400 && answer.status < 500, `${method} ${path} ${body?.slice(0, 200)} -> ${answer.status} ${JSON.stringify(answer.body)}`).toBe(true);
      expect(typeof answer.body.error?.code, `${method} ${path}`).toBe('string');
      expect(typeof answer.body.error?.message).toBe('string');
    }
    expect(connectionErrors).toEqual([]);
    expect(requests.length).toBeGreaterThanOrEqual(1_000);
    for (const capture of captures) expect(capture.proc.running).toBe(true);
    const after = await client.getAll().prefix(clusterKeys(cluster).changefeedsPrefix).strings();
    expect(infoOnly(after)).toEqual(infoOnly(before));
    expect(Object.keys(after).sort()).toEqual(Object.keys(before).sort());
  });

  it('refuses bodies over the size limit with 413, on the owner and through non-owners, never with a reset', async () => {
    const big = `{"id":"${'x'.repeat(2 * 1_048_576)}"}`;
    const answers: string[] = [];
    for (let i = 0; i < 12; i++) {
      const capture = captures[i % captures.length] as TestCapture;
      const path = i % 2 === 0 ? '/api/v1/changefeeds' : '/api/v1/changefeeds/cf';
      try {
        const answer = await api<{ error?: { code?: string } }>(capture.url, i % 2 === 0 ? 'POST' : 'PUT', path, undefined, big);
        answers.push(`${answer.status} ${answer.body.error?.code ?? JSON.stringify(answer.body).slice(0, 100)}`);
      } catch (error) {
        answers.push(`connection error: ${describeFetchError(error)}`);
      }
    }
    expect(answers).toEqual(Array.from({ length: 12 }, () => '413 body-too-large'));
    // A body announced too large is refused without reading it; the answer closes the connection.
    for (const capture of captures) {
      const answer = await rawHttp(capture.url, 'POST', '/api/v1/changefeeds', Buffer.alloc(3 * 1_048_576, 'x'));
      expect(answer.status).toBe(413);
      expect(answer.headers.connection).toBe('close');
      expect(JSON.parse(answer.body)).toMatchObject({ error: { code: 'body-too-large' } });
    }
    expect(await healthy()).toBe(true);
  });
});

describe('the HTTP plumbing', () => {
  it('answers a bad percent-encoding in a path with 400 bad-path', async () => {
    for (const capture of captures) {
      for (const path of ['/api/v1/changefeeds/%E0%A4%A', '/api/v1/changefeeds/%E0%A4%A/spans', '/api/v1/captures/%ZZ/drain']) {
        const method = path.endsWith('drain') ? 'POST' : 'GET';
        const answer = await api<{ error: { code: string; message: string } }>(capture.url, method, path);
        expect(answer.status, `${method} ${path}`).toBe(400);
        expect(answer.body.error.code).toBe('bad-path');
        checkAgainstOpenApi(method, path, answer.status, answer.body);
      }
    }
  });

  it('answers bad request targets and unparsable requests with JSON, and survives clients that leave mid-request', async () => {
    for (const capture of captures) {
      const star = await rawSocket(capture.url, 'OPTIONS * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
      expect(star).toMatch(/^HTTP\/1\.1 400 /);
      expect(star).toContain('"bad-path"');
      // An absolute-form target is served by its path.
      const absolute = await rawSocket(capture.url, 'GET http://elsewhere/api/v1/status HTTP/1.1\r\nHost: elsewhere\r\nConnection: close\r\n\r\n');
      expect(absolute).toMatch(/^HTTP\/1\.1 200 /);
      for (const garbage of ['GET /a b c HTTP/1.1\r\n\r\n', 'BREW / HTTP/1.1\r\n\r\n', '\u0000\u0001\u0002\r\n\r\n', `GET / HTTP/1.1\r\nX: ${'y'.repeat(20_000)}\r\n\r\n`]) {
        const answer = await rawSocket(capture.url, garbage);
        expect(answer, JSON.stringify(garbage.slice(0, 40))).toMatch(/^HTTP\/1\.1 4\d\d [^]*"error"/);
      }
      // Clients that leave mid-body, small and over the limit, and before the headers end.
      await rawSocket(capture.url, 'POST /api/v1/changefeeds HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"id": ', { leave: true });
      await rawSocket(capture.url, `PUT /api/v1/changefeeds/cf HTTP/1.1\r\nHost: x\r\nContent-Length: ${4 * 1_048_576}\r\n\r\n${'x'.repeat(1_500_000)}`, { leave: true });
      await rawSocket(capture.url, 'POST /api/v1/changefeeds HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n{"id":', { leave: true });
      await rawSocket(capture.url, 'GET /api/v1/changefeeds HTTP/1.1\r\nHost:', { leave: true });
    }
    expect(await healthy()).toBe(true);
    // A client that leaves is nobody's error: nothing was logged as a failed request.
    for (const capture of captures) expect(capture.proc.output).not.toContain('api request failed');
  });

  it('ends the owner\'s watermark stream when a client of a non-owner leaves', async () => {
    const owning = await owner();
    const other = captures.find((c) => c !== owning) as TestCapture;
    expect(await openStreams(owning)).toBe(0);
    const abort = new AbortController();
    const response = await fetch(`${other.url}/api/v1/changefeeds/cf/watermark/stream`, { signal: abort.signal });
    expect(response.status).toBe(200);
    const reader = (response.body as ReadableStream<Uint8Array>).getReader();
    const first = await reader.read();
    expect(Buffer.from(first.value ?? new Uint8Array()).toString()).toContain('event: watermark');
    expect(await openStreams(owning)).toBe(1);
    abort.abort();
    await reader.cancel().catch(() => undefined);
    await waitFor('the owner to end the forwarded stream', async () => ((await openStreams(owning)) === 0 ? true : undefined), 5_000);
    // A stream of an unknown changefeed is a 404 before any event.
    const unknown = await api(other.url, 'GET', '/api/v1/changefeeds/nope/watermark/stream');
    expect(unknown.status).toBe(404);
    expect(await openStreams(owning)).toBe(0);
  });

  it('ends a watermark stream whose watermark stands still when its client leaves', async () => {
    const owning = await owner();
    // Paused, the watermark does not move: the stream waits for a change and yields nothing.
    expect((await api(owning.url, 'POST', '/api/v1/changefeeds/cf/pause')).status).toBe(202);
    try {
      for (const capture of captures) {
        const abort = new AbortController();
        const response = await fetch(`${capture.url}/api/v1/changefeeds/cf/watermark/stream`, { signal: abort.signal });
        const reader = (response.body as ReadableStream<Uint8Array>).getReader();
        expect(Buffer.from((await reader.read()).value ?? new Uint8Array()).toString()).toContain('"state":"paused"');
        expect(await openStreams(owning)).toBe(1);
        abort.abort();
        await reader.cancel().catch(() => undefined);
        await waitFor('the owner to end the stream', async () => ((await openStreams(owning)) === 0 ? true : undefined), 5_000);
      }
    } finally {
      expect((await api(owning.url, 'POST', '/api/v1/changefeeds/cf/resume')).status).toBe(202);
    }
  });

  it('refuses bodies the OpenAPI schemas refuse with 400 invalid, naming the reason, and changes nothing', async () => {
    const before = await client.getAll().prefix(clusterKeys(cluster).changefeedsPrefix).strings();
    const base = { id: 'schema', source: { uri: 'datagen://' }, sink: { uri: 'blackhole://' }, tables: [{ name: 't' }] };
    const bad: [string, string, unknown, string][] = [
      ['POST', '/api/v1/changefeeds', { ...base, tables: [{ name: 5 }] }, '/tables/0/name must be string'],
      ['POST', '/api/v1/changefeeds', { ...base, tables: [{ name: 't', backfillTs: '3' }] }, '/tables/0 must not have the field "backfillTs"'],
      ['POST', '/api/v1/changefeeds', { ...base, start: 'yesterday' }, '/start must match pattern'],
      ['PUT', '/api/v1/changefeeds/cf', { tables: [{ name: 't', spans: 0 }] }, '/tables/0/spans must be >= 1'],
      ['POST', '/api/v1/changefeeds/cf/pause', { now: true }, 'the body must not have the field "now"'],
      ['POST', '/api/v1/changefeeds/cf/spans/move', { table: 't', start: 1, captureId: 'x' }, '/start must be string'],
    ];
    for (const capture of captures) {
      for (const [method, path, body, reason] of bad) {
        const answer = await api<{ error: { code: string; message: string } }>(capture.url, method, path, body);
        expect(answer.status, `${method} ${path} ${JSON.stringify(body)}`).toBe(400);
        expect(answer.body.error.code).toBe('invalid');
        expect(answer.body.error.message).toContain(reason);
        checkAgainstOpenApi(method, path, answer.status, answer.body);
      }
    }
    const after = await client.getAll().prefix(clusterKeys(cluster).changefeedsPrefix).strings();
    expect(Object.keys(after).sort()).toEqual(Object.keys(before).sort());
  });
});

describe('the HTTP API under malformed input, with a token file', () => {
  const authCluster = `fuzzauth${process.pid}`;
  const adminToken = 'fuzz-admin-0123456789';
  const readToken = 'fuzz-read-0123456789';
  const dir = mkdtempSync(join(tmpdir(), 'spanfeed-fuzz-auth-'));
  const authCaptures: TestCapture[] = [];

  beforeAll(async () => {
    const tokenFile = join(dir, 'tokens');
    writeFileSync(tokenFile, `${adminToken} admin\n${readToken} read\n`, { mode: 0o600 });
    for (let i = 0; i < 2; i++) authCaptures.push(await TestCapture.start(etcd, { cluster: authCluster, token: adminToken, extraArgs: ['--auth-token-file', tokenFile] }));
    // Every capture knows the owner: a 503 is no answer the test expects.
    for (const capture of authCaptures) await waitFor('an owner', async () => ((await apiWith({ token: adminToken }, capture.url, 'GET', '/api/v1/captures')).status === 200 ? true : undefined));
    const created = await apiWith({ token: adminToken, body: { id: 'cf', source: { uri: 'datagen://?rate=5' }, sink: { uri: 'blackhole://' }, tables: [{ name: 't', spans: 4 }] } }, authCaptures[0]!.url, 'POST', '/api/v1/changefeeds');
    expect(created.status).toBe(201);
  }, 60_000);

  afterAll(async () => {
    await Promise.all(authCaptures.map((c) => c.stop()));
    rmSync(dir, { recursive: true, force: true });
  });

  it('answers 500 bad requests with 401 to no or unknown tokens, 403 to read tokens on mutations, 4xx JSON errors to admins, and changes nothing', async () => {
    const before = await client.getAll().prefix(clusterKeys(authCluster).changefeedsPrefix).strings();
    const rng = new SeededRandom(Number(process.env.FUZZ_SEED ?? 1) + 1);
    const tokens = [undefined, 'fuzz-unknown-0123456789', readToken, adminToken] as const;
    const connectionErrors: string[] = [];
    const seen = new Map<string, number>();
    for (const [method, path, body] of fuzzRequests(rng, 500)) {
      const capture = authCaptures[rng.int(authCaptures.length)] as TestCapture;
      const token = tokens[rng.int(tokens.length)];
      let answer: ApiAnswer<{ error?: { code?: unknown; message?: unknown } }>;
      try {
        answer = await apiWith<{ error?: { code?: unknown; message?: unknown } }>({ token, ...(body === undefined ? {} : { raw: body }) }, capture.url, method, path);
      } catch (error) {
        connectionErrors.push(`${method} ${path}: ${describeFetchError(error)}`);
        continue;
      }
      const what = `${method} ${path} token ${token ?? '-'} -> ${answer.status} ${JSON.stringify(answer.body)}`;
      const guarded = path === '/api/v1' || path.startsWith('/api/v1/');
      if (guarded && (token === undefined || token === tokens[1])) expect(answer.status, what).toBe(401);
      else if (guarded && token === readToken && method !== 'GET') expect(answer.status, what).toBe(403);
      else expect(answer.status >= 400 && answer.status < 500 && answer.status !== 401 && answer.status !== 403, what).toBe(true);
      expect(typeof answer.body.error?.code, what).toBe('string');
      const key = `${token === adminToken ? 'admin' : token === readToken ? 'read' : 'other'} ${answer.status}`;
      seen.set(key, (seen.get(key) ?? 0) + 1);
    }
    expect(connectionErrors).toEqual([]);
    expect(seen.get('other 401') ?? 0).toBeGreaterThan(100);
    expect(seen.get('read 403') ?? 0).toBeGreaterThan(50);
    expect(seen.get('admin 400') ?? 0).toBeGreaterThan(20);
    for (const capture of authCaptures) expect(capture.proc.running).toBe(true);
    const after = await client.getAll().prefix(clusterKeys(authCluster).changefeedsPrefix).strings();
    expect(Object.keys(after).sort()).toEqual(Object.keys(before).sort());
  });

  it('refuses a big body without a token with 401 and with an admin token with 413, and streams the watermark through a non-owner with a token', async () => {
    const big = `{"id":"${'x'.repeat(2 * 1_048_576)}"}`;
    for (const capture of authCaptures) {
      expect((await apiWith({ raw: big }, capture.url, 'POST', '/api/v1/changefeeds')).status).toBe(401);
      expect((await apiWith({ token: adminToken, raw: big }, capture.url, 'POST', '/api/v1/changefeeds')).status).toBe(413);
    }
    for (const capture of authCaptures) {
      const refused = await fetch(`${capture.url}/api/v1/changefeeds/cf/watermark/stream`);
      expect(refused.status).toBe(401);
      await refused.body?.cancel();
      const abort = new AbortController();
      const response = await fetch(`${capture.url}/api/v1/changefeeds/cf/watermark/stream`, { headers: { authorization: `Bearer ${readToken}` }, signal: abort.signal });
      expect(response.status).toBe(200);
      const reader = (response.body as ReadableStream<Uint8Array>).getReader();
      expect(Buffer.from((await reader.read()).value ?? new Uint8Array()).toString()).toContain('event: watermark');
      abort.abort();
      await reader.cancel().catch(() => undefined);
    }
  });
});

/** What a failed fetch says, with its cause (undici hides the socket error there). */
function describeFetchError(error: unknown): string {
  const cause = (error as { cause?: { code?: string; message?: string } }).cause;
  return `${(error as Error).message}${cause === undefined ? '' : ` (${cause.code ?? ''} ${cause.message ?? ''})`}`;
}

/** The capture that is the owner now. */
async function owner(): Promise<TestCapture> {
  return waitFor('an owner', async () => {
    for (const capture of captures) if ((await capture.status()).isOwner) return capture;
    return undefined;
  });
}

/** `spanfeed_api_event_streams` of a capture. */
async function openStreams(capture: TestCapture): Promise<number> {
  const text = await (await fetch(`${capture.url}/metrics`)).text();
  const match = /^spanfeed_api_event_streams (\d+)$/m.exec(text);
  if (match === null) throw new Error('no spanfeed_api_event_streams in /metrics');
  return Number(match[1]);
}

/** Every capture still runs and answers. */
async function healthy(): Promise<boolean> {
  for (const capture of captures) {
    if (!capture.proc.running) return false;
    if ((await api(capture.url, 'GET', '/api/v1/health')).status !== 200) return false;
  }
  return true;
}

/** One request with node:http, which shows the answer's headers as sent. */
async function rawHttp(baseUrl: string, method: string, path: string, body: Buffer): Promise<{ status: number; headers: Record<string, string | string[] | undefined>; body: string }> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(`${baseUrl}${path}`, { method, headers: { 'content-type': 'application/json', 'content-length': body.length } }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => (text += chunk));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: text }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(body);
  });
}

/**
 * Writes `text` on a new connection and returns everything read until the server closes
 * it; with `leave`, closes the connection right after writing, as a client that goes away.
 */
async function rawSocket(baseUrl: string, text: string, options: { leave?: boolean } = {}): Promise<string> {
  const { hostname, port } = new URL(baseUrl);
  return new Promise((resolve, reject) => {
    const socket = connect(Number(port), hostname);
    let answer = '';
    socket.setEncoding('latin1');
    socket.on('data', (chunk: string) => (answer += chunk));
    socket.on('close', () => resolve(answer));
    socket.on('error', (error) => (options.leave === true ? resolve(answer) : reject(error)));
    socket.setTimeout(10_000, () => socket.destroy(new Error(`no answer to ${JSON.stringify(text.slice(0, 60))}`)));
    socket.write(text, 'latin1', () => {
      if (options.leave === true) socket.destroy();
    });
  });
}

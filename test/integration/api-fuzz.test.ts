/**
 * 1,000+ generated malformed requests across every endpoint of a real capture: no
 * crash, only 4xx answers with a JSON error, and the metadata in etcd identical before
 * and after.
 */
import { Etcd3 } from 'etcd3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { clusterKeys } from '../../src/cluster/keys.ts';
import { SeededRandom } from '../../src/core/rng.ts';
import { TestCapture, TestEtcd, api, waitFor } from './harness.ts';

const cluster = `fuzz${process.pid}`;
let etcd: TestEtcd;
let client: Etcd3;
const captures: TestCapture[] = [];

beforeAll(async () => {
  etcd = await TestEtcd.start();
  client = new Etcd3({ hosts: `http://${etcd.endpoint}` });
  for (let i = 0; i < 2; i++) captures.push(await TestCapture.start(etcd, { cluster }));
  await waitFor('an owner', async () => ((await api(captures[0]!.url, 'GET', '/api/v1/captures')).status === 200 ? true : undefined));
  const created = await api(captures[0]!.url, 'POST', '/api/v1/changefeeds', {
    id: 'cf',
    source: { uri: 'datagen://?rate=5' },
    sink: { uri: 'blackhole://' },
    tables: [{ name: 't', spans: 4 }],
  });
  expect(created.status).toBe(201);
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
    source: rng.pick([{ uri: 'nope://' }, { uri: 5 }, 'datagen://', { uri: 'datagen://?rate=0' }, { uri: 'datagen://', x: 1 }]),
    sink: rng.pick([{ uri: 'nope://' }, {}, { uri: 'file://rel' }, { uri: 'blackhole://?flushMs=-1' }]),
    tables: rng.pick([[], {}, [{}], [{ name: 't', spans: 0 }], [{ name: 't' }, { name: 't' }], [{ name: 't', prefix: 'a', start: 'b' }], [{ name: 't', start: 'z', end: 'a' }]]),
    start: rng.pick(['yesterday', '-5', 5, '99999999999999999999999']),
    targetTs: rng.pick(['1', 'x', 7]),
    backfill: rng.pick(['yes', 1]),
    extra: 1,
  };
  return { ...valid, [field === 'extra' ? 'unexpected' : field]: bad[field] };
}

describe('the HTTP API under malformed input', () => {
  it('answers 1,000+ bad requests with 4xx JSON errors and changes nothing', async () => {
    const before = await client.getAll().prefix(clusterKeys(cluster).changefeedsPrefix).strings();
    const infoOnly = (all: Record<string, string>): Record<string, string> => Object.fromEntries(Object.entries(all).filter(([k]) => k.endsWith('/info')));
    const rng = new SeededRandom(Number(process.env.FUZZ_SEED ?? 1));
    const weirdIds = ['nope', '..', '%2e%2e', 'a%00b', 'x'.repeat(300), '%E2%9C%93', 'cf%2Fspans', ' '];
    const requests: [string, string, string | undefined][] = [];
    const json = (value: unknown): string => JSON.stringify(value);
    for (let i = 0; i < 1_100; i++) {
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
    const statuses = new Map<number, number>();
    for (const [method, path, body] of requests) {
      const capture = captures[rng.int(captures.length)] as TestCapture;
      const answer = await api<{ error?: { code?: unknown; message?: unknown } }>(capture.url, method, path, undefined, body);
      statuses.set(answer.status, (statuses.get(answer.status) ?? 0) + 1);
      expect(answer.status >= 400 && answer.status < 500, `${method} ${path} ${body?.slice(0, 200)} -> ${answer.status} ${JSON.stringify(answer.body)}`).toBe(true);
      expect(typeof answer.body.error?.code, `${method} ${path}`).toBe('string');
      expect(typeof answer.body.error?.message).toBe('string');
    }
    expect(requests.length).toBeGreaterThanOrEqual(1_000);
    for (const capture of captures) expect(capture.proc.running).toBe(true);
    const after = await client.getAll().prefix(clusterKeys(cluster).changefeedsPrefix).strings();
    expect(infoOnly(after)).toEqual(infoOnly(before));
    expect(Object.keys(after).sort()).toEqual(Object.keys(before).sort());
  });

  it('refuses bodies over the size limit with 413', async () => {
    const answer = await api(captures[0]!.url, 'POST', '/api/v1/changefeeds', undefined, `{"id":"${'x'.repeat(2_000_000)}"}`);
    expect(answer.status).toBe(413);
  });
});

/**
 * Split and merge through the operator surface, on running changefeeds fed by an upstream
 * etcd while a writer keeps changing it: one changefeed per sink (file, etcd, postgres).
 * Each has spans split at a given key and at the key the owner picks (the source's
 * sample), and two spans merged; then a capture is SIGKILLed while splits are in flight,
 * and the owner is SIGKILLed once they settled: the persisted info must hold the new
 * boundaries and the next owner must go on with the same spans. After the writes stop,
 * the verifier must find nothing missing, mismatched or extra in any sink. Bad requests
 * get the documented 4xx with a JSON error and change nothing. A changefeed into the
 * blackhole sink (which keeps nothing to verify) splits and merges too, and its
 * checkpoint then passes a later write.
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Etcd3 } from 'etcd3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { clusterKeys } from '../../src/cluster/keys.ts';
import { SeededRandom } from '../../src/core/rng.ts';
import { splitRange } from '../../src/core/split.ts';
import { LocalPostgres } from '../../src/dev/local-postgres.ts';
import type { ChangefeedInfo } from '../../src/server/changefeed-info.ts';
import { changefeedSpans } from '../../src/server/changefeed-info.ts';
import type { ApiAnswer, SpanPage, SpanView } from './harness.ts';
import { TestCapture, TestEtcd, api, ownerAmong, runCli, waitFor } from './harness.ts';
import { callChecked } from './openapi-check.ts';

const bin = fileURLToPath(new URL('../../bin/spanfeed', import.meta.url));
const cluster = `split${process.pid}`;
const keys = clusterKeys(cluster);
const tableNames = ['orders', 'users'];
const keysPerTable = 2_000;
/**
 * The writer's pace: a batch, then a pause (at most ~400 changes a second). Each change
 * reaches three changefeeds, and the etcd sink writes into the same etcd, on a machine
 * of two cores that other tests share: a faster writer only slows every report down.
 */
const writeBatch = 20;
const writePauseMs = 50;
/** SPLIT_MERGE_DEBUG=1 runs the captures at debug level (a failure then shows their span events). */
const captureArgs = ['--splits-in-flight', '2', ...(process.env.SPLIT_MERGE_DEBUG === '1' ? ['--log-level', 'debug'] : [])];

let etcd: TestEtcd;
let client: Etcd3;
let sinkDir: string;
let postgres: LocalPostgres;
const captures: TestCapture[] = [];
const feeds: string[] = [];
let lastRevision = 0n;
let writing = false;
let writer: Promise<void> | undefined;
let writes = 0;

/** Any running capture's API (non-owners forward); every answer checked against the OpenAPI document. */
function call<T = any>(method: string, path: string, body?: unknown): Promise<ApiAnswer<T>> {
  return callChecked<T>(captures, method, path, body);
}

/** Puts and deletes over `keysPerTable` keys per table, until told to stop. */
async function writeUntilStopped(seed: number): Promise<void> {
  const rng = new SeededRandom(seed);
  while (writing) {
    const ops = [];
    for (let i = 0; i < writeBatch; i++) {
      const table = tableNames[rng.int(tableNames.length)] as string;
      const key = `up/${table}/${String(rng.int(keysPerTable)).padStart(5, '0')}`;
      ops.push(rng.int(10) === 0 ? client.delete().key(key).exec() : client.put(key).value(`v${seed}-${writes + i}`).exec());
    }
    for (const response of await Promise.all(ops)) if (BigInt(response.header.revision) > lastRevision) lastRevision = BigInt(response.header.revision);
    writes += ops.length;
    await new Promise((resolve) => setTimeout(resolve, writePauseMs));
  }
}

async function spansOf(id: string): Promise<SpanView[]> {
  const answer = await call<SpanPage>('GET', `/api/v1/changefeeds/${id}/spans?limit=1000`);
  if (answer.status !== 200) throw new Error(`GET spans of ${id}: ${answer.status} ${JSON.stringify(answer.body)}`);
  return answer.body.spans;
}

/** The changefeed's spans once no operation is in flight and every span replicates. */
async function settled(id: string, timeoutMs = 60_000): Promise<SpanView[]> {
  let last: unknown;
  try {
    return await waitFor(`${id}: no split or merge in flight and every span replicating`, async () => {
      const view = await call('GET', `/api/v1/changefeeds/${id}`);
      const spans = view.status === 200 ? await spansOf(id) : [];
      last = { view: view.body, spans: spans.map((s) => ({ start: s.start, end: s.end, state: s.state, primary: s.primary, secondaries: s.secondaries })) };
      if (view.status !== 200 || view.body.operations.length > 0 || view.body.state !== 'normal') return undefined;
      return spans.length > 0 && spans.every((s) => s.state === 'replicating') && view.body.spans === spans.length ? spans : undefined;
    }, timeoutMs, 100);
  } catch (error) {
    // What the captures said about this changefeed's operations and spans, for the failure.
    const stuck = ((last as { spans?: { start: string; state: string }[] } | undefined)?.spans ?? []).filter((s) => s.state !== 'replicating').map((s) => JSON.stringify(s.start));
    const said = captures.flatMap((c) =>
      c.proc.output
        .split('\n')
        .filter((line) => line.includes(id) && (/operation|tiling|refus|dropped|failed/.test(line) || stuck.some((start) => line.includes(start))))
        .slice(-25)
        .map((line) => `${c.id}: ${line.slice(0, 800)}`),
    );
    throw new Error(`${(error as Error).message}; last seen ${JSON.stringify(last)}\n${said.join('\n')}`);
  }
}

/** The info as etcd holds it, with its mod revision. */
async function persistedInfo(id: string): Promise<{ info: ChangefeedInfo; modRevision: string }> {
  const response = await client.get(keys.changefeedInfo(id)).exec();
  const kv = response.kvs[0];
  if (kv === undefined) throw new Error(`no info for ${id}`);
  return { info: JSON.parse(kv.value.toString()) as ChangefeedInfo, modRevision: kv.mod_revision };
}

const describeSpans = (spans: readonly { table: string; start: string; end: string }[]): string[] => spans.map((s) => `${s.table} ${JSON.stringify(s.start)}..${JSON.stringify(s.end)}`).sort();

/** Runs `spanfeed verify` for a changefeed (asynchronously: the writer's promises keep going). */
function runVerifier(id: string): Promise<{ status: number | null; result: Record<string, unknown> }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [bin, 'verify', '--changefeed', id, '--etcd', etcd.endpoint, '--cluster', cluster]);
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    child.on('exit', (status) => {
      let result: Record<string, unknown>;
      try {
        result = JSON.parse(stdout.trim().split('\n').at(-1) ?? '{}') as Record<string, unknown>;
      } catch {
        result = { stdout, stderr };
      }
      resolve({ status, result });
    });
  });
}

beforeAll(async () => {
  [etcd, postgres] = await Promise.all([TestEtcd.start(), LocalPostgres.start()]);
  client = new Etcd3({ hosts: `http://${etcd.endpoint}` });
  sinkDir = mkdtempSync(join(tmpdir(), 'spanfeed-split-sink-'));
  for (let i = 0; i < 3; i++) captures.push(await TestCapture.start(etcd, { cluster, leaseTtlS: 3, extraArgs: captureArgs }));
}, 120_000);

afterAll(async () => {
  writing = false;
  await writer?.catch(() => undefined);
  await Promise.all(captures.map((c) => c.stop()));
  client?.close();
  await etcd?.stop();
  await postgres?.stop();
  if (sinkDir !== undefined) rmSync(sinkDir, { recursive: true, force: true });
});

describe('span split and merge on running changefeeds', () => {
  it('splits and merges through a capture kill and an owner kill, with every sink exact', async () => {
    await ownerAmong(captures);
    const sinks: Record<string, string> = { 'cf-file': `file://${sinkDir}?maxFileBytes=65536`, 'cf-etcd': `etcd://${etcd.endpoint}/mirror/`, 'cf-pg': postgres.url };
    for (const [id, sink] of Object.entries(sinks)) {
      const created = await call('POST', '/api/v1/changefeeds', {
        id,
        source: { uri: `etcd://${etcd.endpoint}` },
        sink: { uri: sink },
        tables: tableNames.map((name) => ({ name, prefix: `up/${name}/`, spans: 2 })),
      });
      expect(created.status, JSON.stringify(created.body)).toBe(201);
      feeds.push(id);
    }
    // Every key is written after the changefeeds start, so every key is in their sinks.
    writing = true;
    writer = writeUntilStopped(11);
    for (const id of feeds) await settled(id);
    // Keys in both tables, for the owner's sample of a span's keys.
    await waitFor('a thousand writes', async () => (writes >= 1_000 ? true : undefined), 30_000, 50);

    for (const id of feeds) {
      // 1. Split at a given key; the same request again meets the split in flight.
      const atKey = 'up/orders/00300';
      const split = await call('POST', `/api/v1/changefeeds/${id}/spans/split`, { table: 'orders', start: 'up/orders/', at: atKey });
      expect(split.status, JSON.stringify(split.body)).toBe(202);
      expect(split.body.operation).toMatchObject({ kind: 'split', phase: 'prepare', table: 'orders', to: [{ start: 'up/orders/', end: atKey }, { start: atKey }] });
      const again = await call('POST', `/api/v1/changefeeds/${id}/spans/split`, { table: 'orders', start: 'up/orders/', at: 'up/orders/00100' });
      // Refused while the first is in flight, or (if it settled already) a new split of [orders/, 00300).
      if (again.status === 409) expect(again.body.error.code).toBe('span-in-transition');
      else expect(again.status).toBe(202);
      let spans = await settled(id);
      expect(spans.some((s) => s.table === 'orders' && s.start === atKey)).toBe(true);

      // 2. Split without `at`: the owner picks the median of the source's keys in the span.
      const users = spans.find((s) => s.table === 'users' && s.start === 'up/users/') as SpanView;
      const picked = await call('POST', `/api/v1/changefeeds/${id}/spans/split`, { table: 'users', start: 'up/users/' });
      expect(picked.status, JSON.stringify(picked.body)).toBe(202);
      const pickedKey = picked.body.operation.to[1].start as string;
      // A key of the data (the raw-byte midpoint of the span would not look like one).
      expect(pickedKey).toMatch(/^up\/users\/\d{5}$/);
      expect(pickedKey > users.start && (users.end === '' || pickedKey < users.end)).toBe(true);
      spans = await settled(id);
      expect(spans.some((s) => s.table === 'users' && s.start === pickedKey)).toBe(true);

      // 3. Merge the span at `atKey` with the next one.
      const next = spans.find((s) => s.table === 'orders' && s.start === atKey) as SpanView;
      const merged = await call('POST', `/api/v1/changefeeds/${id}/spans/merge`, { table: 'orders', start: atKey });
      expect(merged.status, JSON.stringify(merged.body)).toBe(202);
      expect(merged.body.operation).toMatchObject({ kind: 'merge', from: [{ start: atKey, end: next.end }, { start: next.end }] });
      spans = await settled(id);
      expect(spans.some((s) => s.table === 'orders' && s.start === next.end)).toBe(false);
      expect(spans.some((s) => s.table === 'orders' && s.start === atKey)).toBe(true);
    }

    // 4. Splits in flight on every changefeed (three at once: the third meets the bound
    // of 2), and a capture that holds some of them dies.
    const owner = await ownerAmong(captures);
    const victim = captures.find((c) => c !== owner && c.proc.running) as TestCapture;
    for (const id of feeds) {
      const spans = await spansOf(id);
      const targets = [...spans.filter((s) => s.primary === victim.id), ...spans.filter((s) => s.primary !== victim.id)].slice(0, 3);
      expect(targets.length).toBe(3);
      const answers = await Promise.all(
        targets.map((s) => call('POST', `/api/v1/changefeeds/${id}/spans/split`, { table: s.table, start: s.start, at: (splitRange({ name: s.table, start: s.start, end: s.end }, 2)[1] as { start: string }).start })),
      );
      expect(answers.map((a) => a.status).sort(), JSON.stringify(answers.map((a) => a.body))).toEqual([202, 202, 409]);
      expect(answers.find((a) => a.status === 409)?.body.error.code).toBe('operations-bound');
    }
    victim.proc.signal('SIGKILL');
    captures.push(await TestCapture.start(etcd, { cluster, leaseTtlS: 3, extraArgs: captureArgs }));
    // The owner saw it die (its lease ran out): its spans are being placed again.
    await waitFor('the killed capture gone from the cluster', async () => {
      const listed = await call<{ id: string }[]>('GET', '/api/v1/captures');
      return listed.status === 200 && !listed.body.some((c) => c.id === victim.id) ? true : undefined;
    }, 30_000, 100);
    const before = new Map<string, string[]>();
    for (const id of feeds) {
      const spans = await settled(id);
      expect(spans.every((s) => s.primary !== victim.id)).toBe(true);
      before.set(id, describeSpans(spans));
      // The info holds the tiling the coordinator has: every owner derives these spans.
      const { info } = await waitFor(`${id}: the tiling persisted`, async () => {
        const persisted = await persistedInfo(id);
        return JSON.stringify(describeSpans(changefeedSpans(persisted.info).spans)) === JSON.stringify(before.get(id)) ? persisted : undefined;
      }, 10_000, 100);
      const orders = info.tables.find((t) => t.name === 'orders');
      expect(orders?.boundaries?.length).toBe((orders?.spans ?? 0) - 1);
      expect(orders?.boundaries).toContain('up/orders/00300');
    }

    // The owner counted what it did.
    const counted = String((await api(owner.url, 'GET', '/metrics')).body);
    for (const id of feeds) {
      for (const [kind, outcome] of [['split', 'started'], ['split', 'done'], ['merge', 'done'], ['split', 'refused']]) {
        const match = new RegExp(`^spanfeed_span_operations_total\\{changefeed="${id}",kind="${kind}",outcome="${outcome}"\\} (\\d+)$`, 'm').exec(counted);
        expect(Number(match?.[1] ?? 0), `${id} ${kind} ${outcome}`).toBeGreaterThan(0);
      }
    }

    // 5. The owner dies: the next one goes on with the same spans.
    owner.proc.signal('SIGKILL');
    const next = await waitFor('a new owner', async () => {
      const found = await ownerAmong(captures.filter((c) => c.proc.running && c !== owner));
      return found !== owner ? found : undefined;
    }, 30_000);
    expect(next).not.toBe(owner);
    for (const id of feeds) {
      const spans = await settled(id);
      expect(describeSpans(spans)).toEqual(before.get(id));
    }

    // 6. The writes stop; every sink holds exactly the upstream at the checkpoint.
    writing = false;
    await writer;
    for (const id of feeds) {
      await waitFor(`the checkpoint of ${id} past revision ${lastRevision}`, async () => {
        const view = await call('GET', `/api/v1/changefeeds/${id}`);
        return view.status === 200 && BigInt(view.body.checkpointTs) >= lastRevision ? true : undefined;
      }, 45_000, 100);
    }
    const verified = await Promise.all(feeds.map((id) => runVerifier(id)));
    for (const [i, { status, result }] of verified.entries()) {
      expect(result, `${feeds[i]}: ${JSON.stringify(verified.map((v) => v.result))}`).toMatchObject({ missing: 0, mismatched: 0, extra: 0, tables: 2 });
      expect(result.keysChecked as number, feeds[i]).toBeGreaterThan(1_000);
      expect(status, feeds[i]).toBe(0);
    }
  }, 150_000);

  it('answers bad split and merge requests with the documented 4xx and changes nothing', async () => {
    const id = 'cf-file';
    const spansBefore = describeSpans(await settled(id));
    const infoBefore = await persistedInfo(id);
    const orders = (await spansOf(id)).filter((s) => s.table === 'orders');
    const first = orders[0] as SpanView;
    const last = orders.at(-1) as SpanView;
    // A paused changefeed cannot split.
    const paused = await call('POST', '/api/v1/changefeeds', { id: 'cf-paused', source: { uri: `etcd://${etcd.endpoint}` }, sink: { uri: 'blackhole://' }, tables: [{ name: 'orders', prefix: 'up/orders/', spans: 2 }] });
    expect(paused.status).toBe(201);
    expect((await call('POST', '/api/v1/changefeeds/cf-paused/pause')).status).toBe(202);
    const cases: [string, string, unknown, number, string][] = [
      ['split', id, ['orders'], 400, 'invalid'],
      ['split', id, { table: 'orders', start: first.start, extra: 1 }, 400, 'invalid'],
      ['split', id, { table: 'orders' }, 400, 'invalid'],
      ['split', id, { table: 'nope', start: '' }, 400, 'unknown-table'],
      ['split', id, { table: 'orders', start: first.start, at: first.start }, 400, 'bad-split-key'],
      ['split', id, { table: 'orders', start: first.start, at: 'zzz' }, 400, 'bad-split-key'],
      ['split', id, { table: 'orders', start: first.start, at: '' }, 400, 'invalid'],
      ['split', id, { table: 'orders', start: 'up/orders/not-a-span-start' }, 404, 'unknown-span'],
      ['split', 'no-such-feed', { table: 'orders', start: first.start }, 404, 'unknown-changefeed'],
      ['split', 'cf-paused', { table: 'orders', start: 'up/orders/' }, 409, 'not-running'],
      ['merge', id, { table: 'orders', start: last.start }, 409, 'not-adjacent'],
      ['merge', id, { table: 'orders', start: 'up/orders/not-a-span-start' }, 404, 'unknown-span'],
      ['merge', id, { table: 'orders', start: first.start, at: 'up/orders/1' }, 400, 'invalid'],
    ];
    for (const [verb, feed, body, status, code] of cases) {
      const answer = await call('POST', `/api/v1/changefeeds/${feed}/spans/${verb}`, body);
      expect([verb, feed, body, answer.status, answer.body?.error?.code]).toEqual([verb, feed, body, status, code]);
      expect(typeof answer.body.error.message).toBe('string');
    }
    // Not JSON at all.
    const owner = await ownerAmong(captures);
    const raw = await fetch(`${owner.url}/api/v1/changefeeds/${id}/spans/split`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"table":' });
    expect(raw.status).toBe(400);
    expect(((await raw.json()) as { error: { code: string } }).error.code).toBe('bad-json');
    // Nothing changed.
    expect((await call('GET', `/api/v1/changefeeds/${id}`)).body.operations).toEqual([]);
    expect(describeSpans(await spansOf(id))).toEqual(spansBefore);
    expect((await persistedInfo(id)).modRevision).toBe(infoBefore.modRevision);
    const metrics = String((await api(owner.url, 'GET', '/metrics')).body);
    expect(metrics).toMatch(new RegExp(`^spanfeed_span_operations_total\\{changefeed="${id}",kind="split",outcome="refused"\\} ([1-9]\\d*)$`, 'm'));

    // The CLI: its help, a refusal said in words, and a split that happens.
    const help = await runCli(owner.url, '--help');
    expect(help.stdout).toContain('span split <changefeed> <table> <start> [--at <key>]');
    expect(help.stdout).toContain('span merge <changefeed> <table> <start>');
    const missing = await runCli(owner.url, 'span', 'split', id, 'orders');
    expect([missing.status, missing.stderr]).toEqual([1, expect.stringContaining('expected <changefeed> <table> <start>')]);
    const refused = await runCli(owner.url, 'span', 'merge', id, 'orders', last.start);
    expect([refused.status, refused.stderr]).toEqual([1, expect.stringContaining('no span follows')]);
    const at = (splitRange({ name: 'orders', start: first.start, end: first.end }, 2)[1] as { start: string }).start;
    const done = await runCli(owner.url, '--json', 'span', 'split', id, 'orders', first.start, '--at', at);
    expect(done.status, done.stderr).toBe(0);
    expect(JSON.parse(done.stdout).operation).toMatchObject({ kind: 'split', table: 'orders', to: [{ start: first.start, end: at }, { start: at, end: first.end }] });
    const after = await settled(id);
    expect(after.some((s) => s.table === 'orders' && s.start === at)).toBe(true);
  }, 60_000);

  it('splits and merges a changefeed into the blackhole sink, whose checkpoint then passes a later write', async () => {
    const id = 'cf-blackhole';
    const created = await call('POST', '/api/v1/changefeeds', { id, source: { uri: `etcd://${etcd.endpoint}` }, sink: { uri: 'blackhole://' }, tables: tableNames.map((name) => ({ name, prefix: `up/${name}/`, spans: 2 })) });
    expect(created.status, JSON.stringify(created.body)).toBe(201);
    const before = describeSpans(await settled(id));
    const atKey = 'up/orders/00300';
    const split = await call('POST', `/api/v1/changefeeds/${id}/spans/split`, { table: 'orders', start: 'up/orders/', at: atKey });
    expect(split.status, JSON.stringify(split.body)).toBe(202);
    let spans = await settled(id);
    expect(spans.some((s) => s.table === 'orders' && s.start === atKey)).toBe(true);
    expect(spans).toHaveLength(before.length + 1);
    // Merged back: the spans it started with.
    const merged = await call('POST', `/api/v1/changefeeds/${id}/spans/merge`, { table: 'orders', start: 'up/orders/' });
    expect(merged.status, JSON.stringify(merged.body)).toBe(202);
    expect(merged.body.operation).toMatchObject({ kind: 'merge', from: [{ start: 'up/orders/', end: atKey }, { start: atKey }] });
    spans = await settled(id);
    expect(describeSpans(spans)).toEqual(before);
    // Both operations counted done by the owner.
    const owner = await ownerAmong(captures);
    const counted = String((await api(owner.url, 'GET', '/metrics')).body);
    for (const kind of ['split', 'merge']) {
      expect(counted, kind).toMatch(new RegExp(`^spanfeed_span_operations_total\\{changefeed="${id}",kind="${kind}",outcome="done"\\} 1$`, 'm'));
    }
    // A write after both: the checkpoint passes it (nothing holds the watermark any more).
    const written = await client.put('up/orders/00301').value('after-merge').exec();
    const revision = BigInt(written.header.revision);
    await waitFor(`the checkpoint of ${id} past revision ${revision}`, async () => {
      const view = await call('GET', `/api/v1/changefeeds/${id}`);
      return view.status === 200 && view.body.operations.length === 0 && BigInt(view.body.checkpointTs) >= revision ? true : undefined;
    }, 20_000, 100);
  }, 60_000);
});

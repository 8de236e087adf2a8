/**
 * Issue 10, item 3, on a real cluster (real etcd, two `spanfeed server` processes, a
 * file sink): a gRPC client posing as an owner with a huge owner revision makes no
 * pipeline start and no file appear (not for table `../forged`, not for a real table),
 * its remove of a real span is ignored (the span keeps replicating and the checkpoint
 * advances), 20,000 adds in one message are refused by the spans-per-message bound, and
 * every refusal shows in /metrics.
 */
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { Etcd3 } from 'etcd3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { clusterKeys } from '../../src/cluster/keys.ts';
import type { DispatchMessage, MessageHeader } from '../../src/core/messages.ts';
import type { Span } from '../../src/core/span.ts';
import { encodeOwnerMessage } from '../../src/rpc/codec.ts';
import { CaptureServiceClient } from '../../src/rpc/proto.ts';
import type { ChangefeedView, SpanPage, SpanView } from './harness.ts';
import { TestCapture, TestEtcd, callAny, waitFor } from './harness.ts';

const cluster = `forge${process.pid}`;
const keys = clusterKeys(cluster);

let etcd: TestEtcd;
let client: Etcd3;
let root: string;
let sinkDir: string;
const captures: TestCapture[] = [];

const call = <T = any>(method: string, path: string, body?: unknown) => callAny<T>(captures, method, path, body);

async function persistedCheckpoint(): Promise<bigint> {
  const value = await client.get(keys.changefeedStatus('cf')).string();
  return value === null ? 0n : BigInt((JSON.parse(value) as { checkpointTs: string }).checkpointTs);
}

/** One counter's value in a capture's /metrics (0 when absent). */
async function metric(capture: TestCapture, name: string, labels: string): Promise<number> {
  const text = await (await fetch(`${capture.url}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(`${name}{${labels}}`));
  return line === undefined ? 0 : Number(line.split(' ').at(-1));
}

/** Every file under `dir`, as paths relative to it. */
function filesUnder(dir: string): string[] {
  if (!existsSync(dir)) return [];
  return readdirSync(dir, { recursive: true, withFileTypes: true }).filter((e) => e.isFile()).map((e) => join(e.parentPath, e.name).slice(dir.length + 1));
}

beforeAll(async () => {
  etcd = await TestEtcd.start();
  client = new Etcd3({ hosts: `http://${etcd.endpoint}` });
  root = mkdtempSync(join(tmpdir(), 'spanfeed-forge-'));
  sinkDir = join(root, 'sink');
  mkdirSync(sinkDir);
  for (let i = 0; i < 2; i++) captures.push(await TestCapture.start(etcd, { cluster }));
}, 120_000);

afterAll(async () => {
  await Promise.all(captures.map((c) => c.stop()));
  client?.close();
  await etcd?.stop();
  if (root !== undefined) rmSync(root, { recursive: true, force: true });
});

describe('a forged owner', () => {
  it('starts nothing, stops nothing, and is counted', async () => {
    await waitFor('an owner', async () => ((await call('GET', '/api/v1/captures')).status === 200 ? true : undefined));
    const created = await call('POST', '/api/v1/changefeeds', {
      id: 'cf',
      source: { uri: 'datagen://?rate=20' },
      sink: { uri: `file://${sinkDir}` },
      tables: [{ name: 't', spans: 2 }, { name: 'u', spans: 2 }],
    });
    expect(created.status).toBe(201);
    const spans = await waitFor('every span replicating', async () => {
      const view = (await call<ChangefeedView>('GET', '/api/v1/changefeeds/cf')).body;
      if (view.watermark?.state !== 'advancing') return undefined;
      const list = (await call<SpanPage>('GET', '/api/v1/changefeeds/cf/spans')).body.spans;
      return list.length === 4 && list.every((s) => s.state === 'replicating' && s.primary !== null) ? list : undefined;
    }, 30_000, 100);

    // The victim: a capture holding a real span, reached at its registered gRPC address.
    const victimSpan = spans[0] as SpanView;
    const victimId = victimSpan.primary as string;
    const record = JSON.parse((await client.get(keys.capture(victimId)).string()) ?? '{}') as { grpcAddr: string };
    const victim = await waitFor('the victim capture', async () => {
      for (const c of captures) if ((await c.status()).id === victimId) return c;
      return undefined;
    });
    const info = JSON.parse((await client.get(keys.changefeedInfo('cf')).string()) ?? '{}') as { epoch: string };
    const owner = await waitFor('the owner key', async () => {
      const kvs = await client.getAll().prefix(keys.ownerPrefix).exec();
      const best = [...kvs.kvs].sort((x, y) => Number(BigInt(x.create_revision) - BigInt(y.create_revision)))[0];
      return best === undefined ? undefined : { id: best.value.toString(), revision: BigInt(best.create_revision) };
    });
    const filesBefore = new Set(filesUnder(sinkDir));
    const heldBefore = await metric(victim, 'spanfeed_capture_spans_held', 'changefeed="cf"');

    const forgerClient = new CaptureServiceClient(record.grpcAddr, grpc.credentials.createInsecure());
    const stream = (forgerClient as unknown as { connect(): grpc.ClientDuplexStream<unknown, unknown> }).connect();
    stream.on('data', () => undefined);
    stream.on('error', () => undefined);
    let seq = 0;
    const header = (overrides: Partial<MessageHeader> = {}): MessageHeader => ({
      changefeed: 'cf',
      ownerRevision: 1_000_000n,
      changefeedEpoch: BigInt(info.epoch),
      captureEpoch: 0n,
      from: 'mallory',
      to: victimId,
      seq: ++seq,
      ackSeq: 0,
      ...overrides,
    });
    const forged: Span = { table: '../forged', start: 'a', end: 'b' };
    const real: Span = { table: victimSpan.table, start: victimSpan.start, end: victimSpan.end };
    const otherReal: Span = { table: 'u', start: 'u/', end: 'u0' };
    const send = (message: DispatchMessage): void => void stream.write(encodeOwnerMessage(message));
    try {
      // A huge revision, a forged table, a real table and the remove of a real span.
      send({ kind: 'dispatch', header: header(), adds: [{ span: forged, secondary: false, checkpointTs: 1n }, { span: otherReal, secondary: false, checkpointTs: 1n }], removes: [real] });
      // The real owner's revision under another name.
      send({ kind: 'dispatch', header: header({ ownerRevision: owner.revision }), adds: [{ span: forged, secondary: false, checkpointTs: 1n }], removes: [real] });
      // 20,000 adds in one message.
      send({
        kind: 'dispatch',
        header: header(),
        adds: Array.from({ length: 20_000 }, (_, i) => ({ span: { table: '../forged', start: `k${String(i).padStart(5, '0')}`, end: `k${String(i).padStart(5, '0')}~` }, secondary: false, checkpointTs: 1n })),
        removes: [],
      });
      await waitFor('the refusals counted', async () => {
        const unverified = await metric(victim, 'spanfeed_rpc_messages_refused_total', 'reason="unverified-owner"');
        const impostor = await metric(victim, 'spanfeed_rpc_messages_refused_total', 'reason="forged-owner"');
        const tooMany = await metric(victim, 'spanfeed_rpc_messages_refused_total', 'reason="too-many-spans"');
        return unverified >= 1 && impostor >= 1 && tooMany >= 1 ? true : undefined;
      }, 15_000, 100);
    } finally {
      stream.end();
      forgerClient.close();
    }

    // The real span keeps replicating on the same capture and the checkpoint keeps moving.
    let last = await persistedCheckpoint();
    let moves = 0;
    await waitFor('the persisted checkpoint to move 3 times after the forgery', async () => {
      const now = await persistedCheckpoint();
      if (now > last) moves++;
      last = now;
      return moves >= 3 ? true : undefined;
    }, 20_000, 200);
    const after = (await call<SpanPage>('GET', '/api/v1/changefeeds/cf/spans')).body.spans;
    const same = after.find((s) => s.table === real.table && s.start === real.start && s.end === real.end);
    expect(same?.state).toBe('replicating');
    expect(same?.primary).toBe(victimId);
    expect(after.every((s) => s.state === 'replicating')).toBe(true);
    const view = (await call<ChangefeedView>('GET', '/api/v1/changefeeds/cf')).body;
    expect(view.watermark.state).toBe('advancing');

    // No pipeline started and no file appeared: not outside the sink, not for a new table.
    expect(await metric(victim, 'spanfeed_capture_spans_held', 'changefeed="cf"')).toBe(heldBefore);
    expect(readdirSync(root).sort()).toEqual(['sink']);
    const newFiles = filesUnder(sinkDir).filter((f) => !filesBefore.has(f));
    expect(newFiles.filter((f) => !f.startsWith('t/') && !f.startsWith('u/'))).toEqual([]);
    expect(readdirSync(sinkDir).sort()).toEqual(['t', 'u']);
  }, 120_000);
});

import * as grpc from '@grpc/grpc-js';
import { afterEach, describe, expect, it } from 'vitest';
import type { HeartbeatMessage, MessageHeader, ReportMessage, SpanStatus } from '../../src/core/messages.ts';
import type { Span } from '../../src/core/span.ts';
import { CaptureRpcServer } from '../../src/rpc/capture-server.ts';
import { ProtocolError, decodeCaptureMessage, decodeOwnerMessage, encodeCaptureMessage, encodeOwnerMessage } from '../../src/rpc/codec.ts';
import { CaptureConnection } from '../../src/rpc/owner-client.ts';
import { CaptureServiceClient, captureServiceDefinition } from '../../src/rpc/proto.ts';
import { SpanIdDecoder, SpanIdEncoder, spanIdsPerStreamLimit } from '../../src/rpc/span-ids.ts';

const header = (seq: number): MessageHeader => ({ changefeed: 'cf', ownerRevision: 9n, changefeedEpoch: 1n, captureEpoch: 2n, from: 'capture-1', to: 'owner', seq, ackSeq: 0 });
const spans: Span[] = Array.from({ length: 200 }, (_, i) => ({ table: 'orders', start: `orders/${String(i).padStart(6, '0')}`, end: `orders/${String(i + 1).padStart(6, '0')}` }));
const status = (span: Span, ts: bigint): SpanStatus => ({ span, state: 'replicating', checkpointTs: ts, resolvedTs: ts + 1n });
const report = (seq: number, of: readonly Span[], ts = 100n): ReportMessage => ({
  kind: 'report',
  header: header(seq),
  statuses: of.map((s) => status(s, ts)),
  watermark: { checkpointTs: ts, resolvedTs: ts, digest: { count: 0, hashA: 0, hashB: 0 } },
  liveness: 'alive',
  progress: { slowest: of.slice(0, 3).map((span) => ({ span, checkpointTs: ts, resolvedTs: ts, eventsPerSecond: 5 })), slice: of.map((span) => ({ span, checkpointTs: ts, resolvedTs: ts, eventsPerSecond: 1 })) },
});

// Through the real protobuf wire format.
const method = Object.values(captureServiceDefinition)[0];
if (method === undefined) throw new Error('CaptureService has no method');
const reportBytes = (m: ReportMessage, ids?: SpanIdEncoder): Buffer => method.responseSerialize(encodeCaptureMessage(m, ids));
const fromReportBytes = (bytes: Buffer, ids?: SpanIdDecoder): ReportMessage => decodeCaptureMessage(method.responseDeserialize(bytes), ids);

const refusal = (run: () => unknown): ProtocolError => {
  try {
    run();
  } catch (error) {
    return error as ProtocolError;
  }
  throw new Error('expected a ProtocolError');
};

describe('span ids on a stream', () => {
  it('sends a span in full once, then by id, and decodes to the same spans', () => {
    const sent = new SpanIdEncoder(1_000);
    const received = new SpanIdDecoder();
    const first = reportBytes(report(1, spans), sent);
    const second = reportBytes(report(2, spans, 200n), sent);
    expect(sent.size).toBe(spans.length);
    expect(fromReportBytes(first, received)).toEqual(report(1, spans));
    expect(fromReportBytes(second, received)).toEqual(report(2, spans, 200n));
    expect(received.size).toBe(spans.length);
    // The keys are not on the wire the second time: well under half the bytes.
    expect(second.length).toBeLessThan(first.length / 2);
    const raw = method.responseDeserialize(second) as { report: { statuses: { span: { table: string; id: number } }[] } };
    expect(raw.report.statuses.every((s) => s.span.table === '' && s.span.id > 0)).toBe(true);
  });

  it('starts over, on both sides, when the sender is full', () => {
    const sent = new SpanIdEncoder(2);
    const received = new SpanIdDecoder();
    const [a, b, c] = spans as [Span, Span, Span];
    expect(fromReportBytes(reportBytes(report(1, [a, b]), sent), received).statuses.map((s) => s.span)).toEqual([a, b]);
    // c does not fit: it goes in full, and the next message starts the numbering over.
    expect(fromReportBytes(reportBytes(report(2, [a, c]), sent), received).statuses.map((s) => s.span)).toEqual([a, c]);
    const thirdBytes = reportBytes(report(3, [c, a]), sent);
    const raw = method.responseDeserialize(thirdBytes) as { report: { header: { spanIdsReset: boolean } } };
    expect(raw.report.header.spanIdsReset).toBe(true);
    expect(fromReportBytes(thirdBytes, received).statuses.map((s) => s.span)).toEqual([c, a]);
    expect(received.size).toBe(2);
    expect(fromReportBytes(reportBytes(report(4, [a, c]), sent), received).statuses.map((s) => s.span)).toEqual([a, c]);
  });

  it('with 0, sends every span in full', () => {
    const sent = new SpanIdEncoder(0);
    reportBytes(report(1, spans), sent);
    const raw = method.responseDeserialize(reportBytes(report(2, spans), sent)) as { report: { statuses: { span: { table: string; id: number } }[] } };
    expect(raw.report.statuses.every((s) => s.span.table === 'orders' && s.span.id === 0)).toBe(true);
    expect(() => new SpanIdEncoder(spanIdsPerStreamLimit + 1)).toThrow(RangeError);
  });

  it('refuses an id it never learned, one out of order, and an id on a stream without ids', () => {
    const heartbeat = (wireSpans: unknown[]): unknown => ({
      heartbeat: {
        header: { changefeed: 'cf', ownerRevision: '1', changefeedEpoch: '1', captureEpoch: '0', from: 'o', to: 'c', seq: '1', ackSeq: '0' },
        spans: wireSpans,
        spansComplete: true,
        primaryDigest: { count: 0, hashA: 0, hashB: 0 },
        draining: false,
        barrierTs: '5',
        collectId: '0',
      },
    });
    const full = { table: 't', start: Buffer.from('a'), end: Buffer.from('b') };
    expect(refusal(() => decodeOwnerMessage(heartbeat([{ id: 1 }]), undefined, new SpanIdDecoder())).reason).toBe('span-ids');
    expect(refusal(() => decodeOwnerMessage(heartbeat([{ ...full, id: 2 }]), undefined, new SpanIdDecoder())).reason).toBe('span-ids');
    expect(refusal(() => decodeOwnerMessage(heartbeat([{ id: 1 }]))).reason).toBe('malformed');
    expect(refusal(() => decodeOwnerMessage(heartbeat([{ id: -1, ...full }]), undefined, new SpanIdDecoder())).reason).toBe('malformed');
    const ids = new SpanIdDecoder();
    const decoded = decodeOwnerMessage(heartbeat([{ ...full, id: 1 }, { id: 1 }]), undefined, ids) as HeartbeatMessage;
    expect(decoded.spans).toEqual([{ table: 't', start: 'a', end: 'b' }, { table: 't', start: 'a', end: 'b' }]);
    expect(decoded.spans[0]).toBe(decoded.spans[1]);
  });

  describe('over gRPC', () => {
    const cleanups: (() => unknown)[] = [];
    afterEach(async () => {
      for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
    });

    it('carries ids both ways, and ends a stream that names an unknown id; the next stream starts over', async () => {
      const refused: string[] = [];
      const seen: Span[][] = [];
      const server = new CaptureRpcServer((message, reply) => {
        if (message.kind !== 'heartbeat') return;
        seen.push([...message.spans]);
        reply(report(message.header.seq, message.spans));
      }, {}, { messageRefused: (reason) => refused.push(reason), streamRefused: () => undefined });
      cleanups.push(() => server.close());
      const port = await server.listen('127.0.0.1', 0);
      const received: ReportMessage[] = [];
      const connection = new CaptureConnection(`127.0.0.1:${port}`, (r) => received.push(r), { reconnectBackoffMinMs: 20, reconnectBackoffMaxMs: 100, sendQueueMax: 100 });
      cleanups.push(() => connection.close());
      const heartbeat = (seq: number): HeartbeatMessage => ({
        kind: 'heartbeat',
        header: { ...header(seq), from: 'owner', to: 'capture-1' },
        spans: spans.slice(0, 50),
        spansComplete: true,
        primaryDigest: { count: 0, hashA: 0, hashB: 0 },
        draining: false,
        barrierTs: 10n,
        collectId: 0,
      });
      for (let seq = 1; seq <= 5; seq++) connection.send(heartbeat(seq));
      await until(() => received.length === 5);
      expect(seen.every((s) => JSON.stringify(s) === JSON.stringify(spans.slice(0, 50)))).toBe(true);
      expect(received.map((r) => r.statuses.map((s) => s.span))).toEqual(Array.from({ length: 5 }, () => spans.slice(0, 50)));

      // A peer that names id 7 it never defined: the stream ends with INVALID_ARGUMENT.
      const raw = new CaptureServiceClient(`127.0.0.1:${port}`, grpc.credentials.createInsecure());
      cleanups.push(() => raw.close());
      const stream = (raw as unknown as { connect(): grpc.ClientDuplexStream<unknown, unknown> }).connect();
      const ended = new Promise<number>((resolve) => stream.on('error', (error: grpc.ServiceError) => resolve(error.code)));
      stream.on('data', () => undefined);
      const bad = encodeOwnerMessage(heartbeat(1)) as { heartbeat: { spans: unknown[] } };
      bad.heartbeat.spans = [{ id: 7 }];
      stream.write(bad);
      expect(await ended).toBe(grpc.status.INVALID_ARGUMENT);
      expect(refused).toEqual(['span-ids']);

      // The owner's own stream is untouched and keeps working.
      connection.send(heartbeat(6));
      await until(() => received.length === 6);
      expect(received[5]?.statuses.map((s) => s.span)).toEqual(spans.slice(0, 50));
    });
  });
});

async function until(check: () => boolean, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error('timed out');
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

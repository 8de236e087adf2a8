import { connect } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import type { DispatchMessage, HeartbeatMessage, MessageHeader, OwnerMessage, ReportMessage } from '../../src/core/messages.ts';
import { splitKeyCharsMax } from '../../src/core/messages.ts';
import type { Span } from '../../src/core/span.ts';
import { CaptureRpcServer, peerHost } from '../../src/rpc/capture-server.ts';
import { ProtocolError, decodeCaptureMessage, decodeOwnerMessage, encodeCaptureMessage, encodeOwnerMessage } from '../../src/rpc/codec.ts';
import { CaptureConnection } from '../../src/rpc/owner-client.ts';
import { captureServiceDefinition } from '../../src/rpc/proto.ts';

/** Past 2^53, so a lossy number conversion anywhere would show. */
const bigTs = (1n << 60n) + 12345n;
const span: Span = { table: 'orders', start: '\u0000a\u00ff', end: '\u00ff\u00ff\u0000' };
const openSpan: Span = { table: 'orders', start: '\u00ff', end: '' };

const header = (seq: number): MessageHeader => ({
  changefeed: 'cf',
  ownerRevision: bigTs,
  changefeedEpoch: 7n,
  captureEpoch: 99n,
  from: 'owner',
  to: 'capture-1',
  seq,
  ackSeq: seq - 1,
});

const dispatch: DispatchMessage = {
  kind: 'dispatch',
  header: header(5),
  adds: [{ span, secondary: true, checkpointTs: bigTs }],
  removes: [openSpan],
};

const heartbeat = (seq: number): HeartbeatMessage => ({
  kind: 'heartbeat',
  header: header(seq),
  spans: [span, openSpan],
  spansComplete: true,
  primaryDigest: { count: 2, hashA: 0xffffffff, hashB: 1 },
  draining: false,
  barrierTs: (1n << 64n) - 1n,
  collectId: 3,
});

const report = (seq: number): ReportMessage => ({
  kind: 'report',
  header: { ...header(seq), from: 'capture-1', to: 'owner' },
  statuses: [
    { span, state: 'replicating', checkpointTs: bigTs, resolvedTs: bigTs + 1n },
    { span: openSpan, state: 'stopped', checkpointTs: 0n, resolvedTs: 0n, fatalError: 'compacted' },
  ],
  watermark: { checkpointTs: bigTs, resolvedTs: bigTs + 1n, digest: { count: 1, hashA: 2, hashB: 3 } },
  liveness: 'stopping',
  collect: { id: 3, part: 0, parts: 2 },
});

// Round-trips through the real protobuf wire format, not only the plain objects.
const method = Object.values(captureServiceDefinition)[0];
if (method === undefined) throw new Error('CaptureService has no method');
const ownerWire = (m: OwnerMessage): unknown => method.requestDeserialize(method.requestSerialize(encodeOwnerMessage(m)));
const captureWire = (m: ReportMessage): unknown => method.responseDeserialize(method.responseSerialize(encodeCaptureMessage(m)));

describe('codec', () => {
  it('round-trips a dispatch, a heartbeat and a report with binary keys and large timestamps', () => {
    expect(decodeOwnerMessage(ownerWire(dispatch))).toEqual(dispatch);
    expect(decodeOwnerMessage(ownerWire(heartbeat(6)))).toEqual(heartbeat(6));
    expect(decodeCaptureMessage(captureWire(report(4)))).toEqual(report(4));
    const failing: ReportMessage = { ...report(5), failing: { spans: 7, error: 'connection refused' } };
    expect(decodeCaptureMessage(captureWire(failing))).toEqual(failing);
  });

  it('leaves collect absent when it is not set', () => {
    const { collect: _, ...plain } = report(4);
    const decoded = decodeCaptureMessage(captureWire({ ...plain, liveness: 'alive' }));
    expect(decoded).toEqual({ ...plain, liveness: 'alive' });
    expect('collect' in decoded).toBe(false);
    expect('failing' in decoded).toBe(false);
  });

  it('rejects malformed input with a ProtocolError naming the field', () => {
    const hb = encodeOwnerMessage(heartbeat(1)) as { heartbeat: Record<string, unknown> };
    const noHeader = { heartbeat: { ...hb.heartbeat, header: undefined } };
    expect(() => decodeOwnerMessage(noHeader)).toThrow(ProtocolError);
    expect(() => decodeOwnerMessage(noHeader)).toThrow(/header/);

    const rep = encodeCaptureMessage(report(1)) as { report: { statuses: Record<string, unknown>[] } & Record<string, unknown> };
    const badState = { report: { ...rep.report, statuses: [{ ...rep.report.statuses[0], state: 'AGENT_SPAN_STATE_BOGUS' }] } };
    expect(() => decodeCaptureMessage(badState)).toThrow(/statuses\[0\]\.state/);

    const badTs = { heartbeat: { ...hb.heartbeat, barrierTs: '12x' } };
    expect(() => decodeOwnerMessage(badTs)).toThrow(ProtocolError);
    expect(() => decodeOwnerMessage(badTs)).toThrow(/barrierTs/);

    const tooBig = { heartbeat: { ...hb.heartbeat, barrierTs: '18446744073709551616' } };
    expect(() => decodeOwnerMessage(tooBig)).toThrow(/barrierTs/);

    const noSpan = { dispatch: { header: hb.heartbeat.header, adds: [{ secondary: false, checkpointTs: '1' }], removes: [] } };
    expect(() => decodeOwnerMessage(noSpan)).toThrow(/adds\[0\]\.span/);

    expect(() => decodeOwnerMessage({})).toThrow(ProtocolError);
    expect(() => decodeCaptureMessage(null)).toThrow(ProtocolError);
    try {
      decodeOwnerMessage({});
    } catch (error) {
      expect((error as ProtocolError).name).toBe('ProtocolError');
      expect((error as ProtocolError).retryable).toBe(false);
    }
  });
});

describe('codec: per-span progress with rates and split keys', () => {
  const { collect: _, ...plain } = report(9);
  const withProgress = (progress: ReportMessage['progress']): ReportMessage => ({ ...plain, liveness: 'alive', ...(progress === undefined ? {} : { progress }) });

  it('round-trips bytes a second and a binary split key, and leaves them absent when unset', () => {
    const message = withProgress({
      slowest: [{ span, checkpointTs: bigTs, resolvedTs: bigTs, eventsPerSecond: 1_200, bytesPerSecond: 0, splitKey: '\u0000b\u0080', sampleKeys: 17 }],
      slice: [
        { span: openSpan, checkpointTs: 1n, resolvedTs: 2n, eventsPerSecond: 3, bytesPerSecond: 4_000_000 },
        { span, checkpointTs: 1n, resolvedTs: 2n, eventsPerSecond: 0 },
      ],
    });
    const decoded = decodeCaptureMessage(captureWire(message));
    expect(decoded).toEqual(message);
    const plainEntry = decoded.progress?.slice[1] as object;
    expect('bytesPerSecond' in plainEntry || 'splitKey' in plainEntry || 'sampleKeys' in plainEntry).toBe(false);
  });

  it('refuses a split key outside its span or over the bound', () => {
    const entry = (splitKey: string, on: Span = span) => withProgress({ slowest: [], slice: [{ span: on, checkpointTs: 1n, resolvedTs: 1n, eventsPerSecond: 5_000, splitKey, sampleKeys: 2 }] });
    // The span's own start is not strictly inside it; its end and beyond are outside.
    for (const key of [span.start, '\u0000', span.end, '\u00ff\u00ff\u0001']) {
      expect(() => decodeCaptureMessage(captureWire(entry(key))), JSON.stringify(key)).toThrow(/progressSlice\[0\]\.splitKey is not strictly inside its span/);
    }
    expect(decodeCaptureMessage(captureWire(entry('\u00ff\u00ff\u00ff\u00ff', openSpan))).progress?.slice[0]?.splitKey).toBe('\u00ff\u00ff\u00ff\u00ff');
    const long = `\u00ff${'k'.repeat(splitKeyCharsMax)}`;
    expect(() => decodeCaptureMessage(captureWire(entry(long, openSpan)))).toThrow(/splitKey is 1025 bytes, more than 1024/);
    expect(() => decodeCaptureMessage(captureWire(entry(long, openSpan)))).toThrow(ProtocolError);
  });
});

describe('codec bounds', () => {
  const manyAdds = (n: number): DispatchMessage => ({ ...dispatch, adds: Array.from({ length: n }, () => ({ span, secondary: false, checkpointTs: 1n })), removes: [] });

  it('refuses a message with more spans than the bound, whole, before decoding them', () => {
    const limits = { spansPerMessageMax: 1_024 };
    expect(decodeOwnerMessage(ownerWire(manyAdds(1_024)), limits).kind).toBe('dispatch');
    const refuse = (m: OwnerMessage): ProtocolError => {
      try {
        decodeOwnerMessage(ownerWire(m), limits);
      } catch (error) {
        return error as ProtocolError;
      }
      throw new Error('decoded');
    };
    const big = refuse(manyAdds(20_000));
    expect(big).toBeInstanceOf(ProtocolError);
    expect(big.reason).toBe('too-many-spans');
    expect(big.message).toMatch(/20000 spans, more than 1024/);
    // Adds and removes count together; so do a heartbeat's spans.
    expect(refuse({ ...manyAdds(1_000), removes: Array.from({ length: 25 }, () => openSpan) }).reason).toBe('too-many-spans');
    expect(refuse({ ...heartbeat(1), spans: Array.from({ length: 1_025 }, () => span) }).reason).toBe('too-many-spans');
    expect(() => decodeOwnerMessage({})).toThrow(expect.objectContaining({ reason: 'malformed' }));
  });

  it('names the host of a gRPC peer', () => {
    expect(peerHost('127.0.0.1:5000')).toBe('127.0.0.1');
    expect(peerHost('ipv4:10.0.0.1:5000')).toBe('10.0.0.1');
    expect(peerHost('[::1]:5000')).toBe('::1');
    expect(peerHost('ipv6:[::1]:5000')).toBe('::1');
  });
});

/** Resolves once `predicate` holds, polling every 10 ms. */
async function until(predicate: () => boolean, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error('timed out');
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

describe('loopback', () => {
  const cleanups: (() => Promise<void> | void)[] = [];
  afterEach(async () => {
    for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
  });

  const startServer = async (port: number): Promise<{ server: CaptureRpcServer; port: number }> => {
    const server = new CaptureRpcServer((message, reply) => reply(report(message.header.seq)), { messagesQueuedMax: 100 });
    cleanups.push(() => server.close());
    return { server, port: await server.listen('127.0.0.1', port) };
  };

  it('delivers replies in order and reconnects after the server restarts', async () => {
    const first = await startServer(0);
    expect(first.port).toBeGreaterThan(0);
    const received: ReportMessage[] = [];
    const connection = new CaptureConnection(`127.0.0.1:${first.port}`, (r) => received.push(r), {
      reconnectBackoffMinMs: 20,
      reconnectBackoffMaxMs: 200,
      sendQueueMax: 100,
    });
    cleanups.push(() => connection.close());
    expect(connection.connected).toBe(true);

    for (const seq of [1, 2, 3]) expect(connection.send(heartbeat(seq))).toBe(true);
    await until(() => received.length === 3);
    expect(received.map((r) => r.header.seq)).toEqual([1, 2, 3]);
    expect(received[0]).toEqual(report(1));

    await first.server.close();
    await until(() => !connection.connected || connection.droppedMessages > 0, 5_000).catch(() => undefined);
    await startServer(first.port);

    // Level-triggered: keep sending heartbeats until one gets through the new stream.
    let seq = 10;
    await until(() => {
      if (received.length === 3) connection.send(heartbeat(seq++));
      return received.length > 3;
    });
    expect(connection.connected).toBe(true);
    expect(received[3]?.header.seq).toBeGreaterThanOrEqual(10);
  });
  it('bounds streams and connections per peer, and counts what it refuses', async () => {
    const refused: string[] = [];
    const handled: number[] = [];
    const server = new CaptureRpcServer((message, reply) => {
      handled.push(message.header.seq);
      reply(report(message.header.seq));
    }, { messagesQueuedMax: 100, streamsPerPeerMax: 1, connectionsPerPeerMax: 2, spansPerMessageMax: 1_024 }, {
      messageRefused: (reason) => refused.push(reason),
      streamRefused: (reason) => refused.push(reason),
    });
    cleanups.push(() => server.close());
    const port = await server.listen('127.0.0.1', 0);
    const options = { reconnectBackoffMinMs: 20, reconnectBackoffMaxMs: 200, sendQueueMax: 100 };
    const received: ReportMessage[] = [];
    const first = new CaptureConnection(`127.0.0.1:${port}`, (r) => received.push(r), options);
    cleanups.push(() => first.close());
    await until(() => {
      first.send(heartbeat(1));
      return received.length > 0;
    });
    // A second stream from the same host is refused while the first is open.
    const second = new CaptureConnection(`127.0.0.1:${port}`, () => undefined, options);
    cleanups.push(() => second.close());
    await until(() => {
      second.send(heartbeat(2));
      return refused.includes('streams-per-peer');
    });
    // gRPC clients share one connection per target: raw sockets make the others. The
    // bound is 2, so the second raw one (the third connection) is closed at once.
    const sockets = [connect(port, '127.0.0.1'), connect(port, '127.0.0.1')];
    cleanups.push(() => sockets.forEach((socket) => socket.destroy()));
    let closed = false;
    sockets[1]?.on('close', () => (closed = true));
    await until(() => refused.includes('connections-per-peer') && closed);
    expect(refused.filter((r) => r === 'connections-per-peer')).toHaveLength(1);
    // 20,000 adds in one message never reach the handler.
    const before = handled.length;
    first.send({ ...dispatch, header: header(50), adds: Array.from({ length: 20_000 }, () => ({ span, secondary: false, checkpointTs: 1n })), removes: [] });
    await until(() => refused.includes('too-many-spans'));
    expect(handled.slice(before).includes(50)).toBe(false);
    expect(handled.includes(2)).toBe(false);
  });
});

/**
 * The capture's gRPC server: owners open one `Connect` stream each; every decoded
 * message goes to the handler with a way to answer on the same stream.
 *
 * Everything a peer can make it hold is bounded (DESIGN.md §8b): connections per peer
 * host (counted on our own TCP listener, whose sockets are handed to gRPC), streams per
 * connection (`grpc.max_concurrent_streams`), streams per peer host, the bytes of one
 * message (`grpc.max_receive_message_length`) and the spans in one message (checked
 * while decoding, before any list is walked). An owner needs one stream per capture, and
 * never sends more than its `spansPerMessageMax` (1024) spans in one message.
 */
import { createServer } from 'node:net';
import type { Server as NetServer, Socket } from 'node:net';
import * as grpc from '@grpc/grpc-js';
import type { OwnerMessage, ReportMessage } from '../core/messages.ts';
import { ProtocolError, decodeOwnerMessage, encodeCaptureMessage } from './codec.ts';
import { SpanIdDecoder, SpanIdEncoder, spanIdsPerStreamDefault } from './span-ids.ts';
import { captureServiceDefinition, keepaliveOptions } from './proto.ts';
import type { CaptureTls } from '../security/capture-tls.ts';

export type OwnerMessageHandler = (message: OwnerMessage, reply: (report: ReportMessage) => void) => void;

/** The server's bounds; every one is a `spanfeed server` flag. */
export interface CaptureRpcLimits {
  /** Reports buffered on a stream that is not draining; more are dropped. */
  readonly messagesQueuedMax: number;
  /** Spans in one owner message (adds + removes, or a heartbeat's spans); a bigger one is refused whole. */
  readonly spansPerMessageMax: number;
  /** Bytes of one received message. */
  readonly messageBytesMax: number;
  /** Concurrent streams on one connection. */
  readonly streamsPerConnectionMax: number;
  /** Concurrent streams from one peer host, over all its connections. */
  readonly streamsPerPeerMax: number;
  /** Open connections from one peer host. */
  readonly connectionsPerPeerMax: number;
  /** Span ids this side assigns per stream before it starts over (0: spans go in full). */
  readonly spanIdsMax: number;
}

export const captureRpcDefaults: CaptureRpcLimits = {
  messagesQueuedMax: 10_000,
  spansPerMessageMax: 1_024,
  messageBytesMax: 4 * 1024 * 1024,
  streamsPerConnectionMax: 16,
  streamsPerPeerMax: 64,
  connectionsPerPeerMax: 64,
  spanIdsMax: spanIdsPerStreamDefault,
};

/** Where refusals are counted (metrics). */
export interface CaptureRpcCounters {
  /** A message dropped whole (and its stream ended): `malformed`, `too-many-spans` or `span-ids`. */
  messageRefused(reason: 'malformed' | 'too-many-spans' | 'span-ids'): void;
  /** A connection or stream refused by a per-peer bound, or from a peer whose certificate name is not allowed. */
  streamRefused(reason: 'connections-per-peer' | 'streams-per-peer' | 'peer-name'): void;
}

const noCounters: CaptureRpcCounters = { messageRefused: () => undefined, streamRefused: () => undefined };

/** The host part of a gRPC peer string (`1.2.3.4:5`, `[::1]:5`, `ipv4:1.2.3.4:5`). */
export function peerHost(peer: string): string {
  const withoutScheme = peer.replace(/^(ipv4|ipv6):/, '');
  const index = withoutScheme.lastIndexOf(':');
  return (index < 0 ? withoutScheme : withoutScheme.slice(0, index)).replace(/^\[|\]$/g, '');
}

export class CaptureRpcServer {
  private readonly server: grpc.Server;
  private readonly streams = new Set<grpc.ServerDuplexStream<unknown, unknown>>();
  private readonly limits: CaptureRpcLimits;
  private readonly streamsByPeer = new Map<string, number>();
  private readonly connectionsByPeer = new Map<string, number>();
  private readonly sockets = new Set<Socket>();
  private listener: NetServer | undefined;
  private injector: grpc.ConnectionInjector | undefined;
  droppedMessages = 0;

  constructor(
    private readonly handler: OwnerMessageHandler,
    limits: Partial<CaptureRpcLimits>,
    private readonly counters: CaptureRpcCounters = noCounters,
    /** With it, mutual TLS: only peers with a CA-signed certificate (and an allowed name) are served. */
    private readonly tls?: CaptureTls,
  ) {
    this.limits = { ...captureRpcDefaults, ...limits };
    this.server = new grpc.Server({
      ...keepaliveOptions,
      'grpc.max_concurrent_streams': this.limits.streamsPerConnectionMax,
      'grpc.max_receive_message_length': this.limits.messageBytesMax,
    });
    this.server.addService(captureServiceDefinition, { connect: (stream: grpc.ServerDuplexStream<unknown, unknown>) => this.connect(stream) });
  }

  /** Binds `host:port` (0 picks a port); resolves with the port. */
  listen(host: string, port: number): Promise<number> {
    const injector = this.server.createConnectionInjector(this.tls?.grpcServerCredentials() ?? grpc.ServerCredentials.createInsecure());
    this.injector = injector;
    const listener = createServer((socket) => this.accept(socket, injector));
    this.listener = listener;
    return new Promise((resolve, reject) => {
      listener.once('error', reject);
      listener.listen(port, host.replace(/^\[(.*)\]$/, '$1'), () => {
        listener.off('error', reject);
        const address = listener.address();
        resolve(typeof address === 'object' && address !== null ? address.port : port);
      });
    });
  }

  async close(): Promise<void> {
    for (const stream of this.streams) stream.end();
    const listener = this.listener;
    const closed = listener === undefined ? Promise.resolve() : new Promise<void>((resolve) => listener.close(() => resolve()));
    await new Promise<void>((resolve) => {
      const timer = setTimeout(() => {
        this.server.forceShutdown();
        resolve();
      }, 2_000);
      this.server.tryShutdown(() => {
        clearTimeout(timer);
        resolve();
      });
    });
    this.injector?.destroy();
    for (const socket of this.sockets) socket.destroy();
    await closed;
  }

  /** A new TCP connection: handed to gRPC unless its host has too many open. */
  private accept(socket: Socket, injector: grpc.ConnectionInjector): void {
    const host = socket.remoteAddress ?? 'unknown';
    const open = this.connectionsByPeer.get(host) ?? 0;
    if (open >= this.limits.connectionsPerPeerMax) {
      this.counters.streamRefused('connections-per-peer');
      socket.destroy();
      return;
    }
    this.connectionsByPeer.set(host, open + 1);
    this.sockets.add(socket);
    socket.once('close', () => {
      this.sockets.delete(socket);
      const left = (this.connectionsByPeer.get(host) ?? 1) - 1;
      if (left <= 0) this.connectionsByPeer.delete(host);
      else this.connectionsByPeer.set(host, left);
    });
    injector.injectConnection(socket);
  }

  private connect(stream: grpc.ServerDuplexStream<unknown, unknown>): void {
    const host = peerHost(stream.getPeer());
    // The handshake checked the chain (a peer without a CA-signed certificate never gets
    // here); the name is ours to check.
    if (this.tls !== undefined && !this.tls.isCapture(stream.getAuthContext()?.sslPeerCertificate)) {
      this.counters.streamRefused('peer-name');
      stream.emit('error', { code: grpc.status.PERMISSION_DENIED, details: 'the peer certificate has no name in --tls-allowed-names' });
      return;
    }
    const peerStreams = this.streamsByPeer.get(host) ?? 0;
    if (peerStreams >= this.limits.streamsPerPeerMax) {
      this.counters.streamRefused('streams-per-peer');
      stream.emit('error', { code: grpc.status.RESOURCE_EXHAUSTED, details: `more than ${this.limits.streamsPerPeerMax} streams from ${host}` });
      return;
    }
    this.streamsByPeer.set(host, peerStreams + 1);
    this.streams.add(stream);
    let open = true;
    let pending = 0;
    // Spans travel by id after their first mention on this stream (span-ids.ts).
    const sentIds = new SpanIdEncoder(this.limits.spanIdsMax);
    const receivedIds = new SpanIdDecoder();
    const reply = (report: ReportMessage): void => {
      if (!open) return;
      if (pending >= this.limits.messagesQueuedMax) {
        this.droppedMessages++;
        return;
      }
      if (!stream.write(encodeCaptureMessage(report, sentIds))) pending++;
    };
    // One listener per stream: a `once` per blocked write would pile up listeners.
    stream.on('drain', () => {
      pending = 0;
    });
    const close = (): void => {
      if (!open) return;
      open = false;
      this.streams.delete(stream);
      const left = (this.streamsByPeer.get(host) ?? 1) - 1;
      if (left <= 0) this.streamsByPeer.delete(host);
      else this.streamsByPeer.set(host, left);
    };
    stream.on('data', (raw: unknown) => {
      if (!open) return;
      let message: OwnerMessage;
      try {
        message = decodeOwnerMessage(raw, this.limits, receivedIds);
      } catch (error) {
        if (error instanceof ProtocolError) {
          this.droppedMessages++;
          this.counters.messageRefused(error.reason);
          // The message may have named span ids we never learned: end the stream, so
          // the owner re-opens it and both dictionaries start over.
          close();
          stream.emit('error', { code: grpc.status.INVALID_ARGUMENT, details: error.message.slice(0, 512) });
          return;
        }
        throw error;
      }
      this.handler(message, reply);
    });
    stream.on('end', () => {
      close();
      stream.end();
    });
    stream.on('error', close);
    stream.on('close', close);
  }
}

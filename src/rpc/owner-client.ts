/**
 * The owner's stream to one capture: opened eagerly, re-opened with exponential backoff
 * (and jitter) after any error; no deadline, keepalive instead. Sending while
 * disconnected drops the message: the protocol is level-triggered, so the next
 * heartbeat repairs it. Spans travel by id after their first mention on a stream
 * (span-ids.ts); a report the owner cannot read ends the stream, so both sides start over.
 */
import * as grpc from '@grpc/grpc-js';
import type { OwnerMessage, ReportMessage } from '../core/messages.ts';
import { ProtocolError, decodeCaptureMessage, encodeOwnerMessage } from './codec.ts';
import { CaptureServiceClient, keepaliveOptions } from './proto.ts';
import { SpanIdDecoder, SpanIdEncoder, spanIdsPerStreamDefault } from './span-ids.ts';

export interface ConnectionOptions {
  readonly reconnectBackoffMinMs: number;
  readonly reconnectBackoffMaxMs: number;
  /** Messages buffered by a stream that is not draining; more are dropped. */
  readonly sendQueueMax: number;
  /** Span ids this side assigns per stream before it starts over (0: spans go in full); default a million. */
  readonly spanIdsMax?: number | undefined;
  /** TLS (mutual: our certificate shown); undefined: plain text. */
  readonly credentials?: grpc.ChannelCredentials | undefined;
  /** More channel options (the TLS server name). */
  readonly channelOptions?: Readonly<Record<string, string>> | undefined;
}

export class CaptureConnection {
  private readonly client: grpc.Client;
  private stream: grpc.ClientDuplexStream<unknown, unknown> | undefined;
  /** The span ids we assign on the current stream (the capture's are local to `open`). */
  private sentIds: SpanIdEncoder;
  private isConnected = false;
  private closed = false;
  private backoffMs: number;
  private timer: NodeJS.Timeout | undefined;
  private pending = 0;
  droppedMessages = 0;

  constructor(
    readonly address: string,
    private readonly onReport: (report: ReportMessage) => void,
    private readonly options: ConnectionOptions,
  ) {
    this.backoffMs = options.reconnectBackoffMinMs;
    this.sentIds = new SpanIdEncoder(options.spanIdsMax ?? spanIdsPerStreamDefault);
    // The channel's own reconnect backoff (default 1 s up to 120 s) would otherwise fail
    // our re-opened streams fast long after the capture is back; align it with ours.
    this.client = new CaptureServiceClient(address, options.credentials ?? grpc.credentials.createInsecure(), {
      ...keepaliveOptions,
      'grpc.initial_reconnect_backoff_ms': options.reconnectBackoffMinMs,
      'grpc.max_reconnect_backoff_ms': options.reconnectBackoffMaxMs,
      ...options.channelOptions,
    });
    this.open();
  }

  get connected(): boolean {
    return this.isConnected;
  }

  /** Sends a message; false (and dropped) when not connected or backed up. */
  send(message: OwnerMessage): boolean {
    const stream = this.stream;
    if (stream === undefined || this.closed || this.pending >= this.options.sendQueueMax) {
      this.droppedMessages++;
      return false;
    }
    if (!stream.write(encodeOwnerMessage(message, this.sentIds))) this.pending++;
    return true;
  }

  close(): void {
    this.closed = true;
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.stream?.cancel();
    this.stream = undefined;
    this.client.close();
  }

  private open(): void {
    if (this.closed) return;
    const stream = (this.client as unknown as { connect(): grpc.ClientDuplexStream<unknown, unknown> }).connect();
    this.stream = stream;
    this.pending = 0;
    this.isConnected = true;
    this.sentIds = new SpanIdEncoder(this.options.spanIdsMax ?? spanIdsPerStreamDefault);
    const receivedIds = new SpanIdDecoder();
    stream.on('data', (raw: unknown) => {
      if (this.stream !== stream) return;
      this.backoffMs = this.options.reconnectBackoffMinMs;
      let report: ReportMessage;
      try {
        report = decodeCaptureMessage(raw, receivedIds);
      } catch (error) {
        if (error instanceof ProtocolError) {
          // It may have named span ids we never learned: start the stream over.
          this.droppedMessages++;
          retry();
          return;
        }
        throw error;
      }
      this.onReport(report);
    });
    stream.on('drain', () => {
      this.pending = 0;
    });
    const retry = (): void => {
      if (this.stream !== stream) return;
      this.stream = undefined;
      // Half-closed streams (the server ended, our side still open) would linger otherwise.
      stream.cancel();
      this.isConnected = false;
      if (this.closed) return;
      const delay = this.backoffMs * (0.5 + Math.random() / 2);
      this.backoffMs = Math.min(this.options.reconnectBackoffMaxMs, this.backoffMs * 2);
      this.timer = setTimeout(() => this.open(), delay);
    };
    stream.on('error', retry);
    stream.on('end', retry);
    stream.on('close', retry);
  }
}

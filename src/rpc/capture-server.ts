/**
 * The capture's gRPC server: owners open one `Connect` stream each; every decoded
 * message goes to the handler with a way to answer on the same stream.
 */
import * as grpc from '@grpc/grpc-js';
import type { OwnerMessage, ReportMessage } from '../core/messages.ts';
import { ProtocolError, decodeOwnerMessage, encodeCaptureMessage } from './codec.ts';
import { captureServiceDefinition, keepaliveOptions } from './proto.ts';

export type OwnerMessageHandler = (message: OwnerMessage, reply: (report: ReportMessage) => void) => void;

export class CaptureRpcServer {
  private readonly server = new grpc.Server(keepaliveOptions);
  private readonly streams = new Set<grpc.ServerDuplexStream<unknown, unknown>>();
  droppedMessages = 0;

  constructor(
    private readonly handler: OwnerMessageHandler,
    private readonly options: { readonly messagesQueuedMax: number },
  ) {
    this.server.addService(captureServiceDefinition, { connect: (stream: grpc.ServerDuplexStream<unknown, unknown>) => this.connect(stream) });
  }

  /** Binds `host:port` (0 picks a port); resolves with the port. */
  listen(host: string, port: number): Promise<number> {
    return new Promise((resolve, reject) => {
      this.server.bindAsync(`${host}:${port}`, grpc.ServerCredentials.createInsecure(), (error, bound) => (error === null ? resolve(bound) : reject(error)));
    });
  }

  async close(): Promise<void> {
    for (const stream of this.streams) stream.end();
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
  }

  private connect(stream: grpc.ServerDuplexStream<unknown, unknown>): void {
    this.streams.add(stream);
    let open = true;
    let pending = 0;
    const reply = (report: ReportMessage): void => {
      if (!open) return;
      if (pending >= this.options.messagesQueuedMax) {
        this.droppedMessages++;
        return;
      }
      if (!stream.write(encodeCaptureMessage(report))) pending++;
    };
    // One listener per stream: a `once` per blocked write would pile up listeners.
    stream.on('drain', () => {
      pending = 0;
    });
    const close = (): void => {
      open = false;
      this.streams.delete(stream);
    };
    stream.on('data', (raw: unknown) => {
      let message: OwnerMessage;
      try {
        message = decodeOwnerMessage(raw);
      } catch (error) {
        if (error instanceof ProtocolError) {
          this.droppedMessages++;
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

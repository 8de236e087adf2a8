/**
 * A loopback TCP server posing as a PostgreSQL sink that never answers: `silent` accepts
 * connections and never writes a byte; `stalled` answers the startup (authentication ok,
 * ready for query) and then never answers a query.
 */
import { createServer } from 'node:net';
import type { Server, Socket } from 'node:net';

/** PostgreSQL backend messages: AuthenticationOk, then ReadyForQuery (idle). */
const startupAnswer = Buffer.from([0x52, 0, 0, 0, 8, 0, 0, 0, 0, 0x5a, 0, 0, 0, 5, 0x49]);

/** A loopback TCP server that accepts connections, reads what it is sent, and never answers (but the startup, when `stalled`). */
export class HangingServer {
  /** Connections open now. */
  readonly sockets = new Set<Socket>();
  connectionsSeen = 0;
  port = 0;
  private readonly server: Server = createServer((socket) => {
    this.connectionsSeen++;
    this.sockets.add(socket);
    socket.on('error', () => undefined);
    socket.on('close', () => this.sockets.delete(socket));
    // The client's first bytes are its startup message; the rest is read and dropped.
    socket.once('data', () => {
      if (this.mode === 'stalled') socket.write(startupAnswer);
    });
    socket.resume();
  });

  constructor(readonly mode: 'silent' | 'stalled') {}

  async listen(): Promise<void> {
    this.port = await new Promise<number>((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(0, '127.0.0.1', () => {
        const address = this.server.address();
        resolve(typeof address === 'object' && address !== null ? address.port : 0);
      });
    });
  }

  async stop(): Promise<void> {
    for (const socket of this.sockets) socket.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}

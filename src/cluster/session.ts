/**
 * A capture's etcd session: one lease that holds its capture key and its election key.
 *
 * etcd3 reports a lost lease late (about 2 x TTL), while etcd expires it after 1 x TTL,
 * so the session is considered lost as soon as no keepalive has succeeded for one TTL:
 * the capture then fences itself (stops every pipeline, stops acting as owner) before
 * anyone else can have taken over its work.
 */
import type { Etcd3, Lease } from 'etcd3';
import type { Logger } from '../log.ts';

export class EtcdSession {
  readonly lease: Lease;
  /** The lease id, decimal (as etcd3 takes it) and hex (as keys show it). */
  leaseId = '';
  leaseIdHex = '';
  private lastKeepaliveOkMs = 0;
  private readonly ttlMs: number;
  private lostListeners: (() => void)[] = [];
  private lost = false;
  private timer: NodeJS.Timeout | undefined;

  constructor(client: Etcd3, ttlSeconds: number, private readonly log: Logger) {
    this.ttlMs = ttlSeconds * 1000;
    this.lease = client.lease(ttlSeconds, { autoKeepAlive: true });
    this.lease.on('keepaliveSucceeded', () => {
      this.lastKeepaliveOkMs = Date.now();
    });
    this.lease.on('keepaliveFailed', (error: unknown) => {
      this.log.warn({ err: error }, 'lease keepalive failed');
    });
    this.lease.on('lost', (error) => {
      // A grant that failed is the caller's error to report; only a granted lease is lost.
      if (this.leaseId === '') this.log.debug({ err: error }, 'lease grant failed');
      else this.log.error({ err: error }, 'lease lost');
      this.markLost();
    });
  }

  /** Grants the lease; resolves with its id in hex. */
  async start(): Promise<string> {
    const id = await this.lease.grant();
    this.leaseId = id;
    this.leaseIdHex = BigInt(id).toString(16);
    this.lastKeepaliveOkMs = Date.now();
    // Checked often: a paused process must notice at once when it resumes.
    this.timer = setInterval(() => this.check(), Math.min(200, this.ttlMs / 10));
    this.timer.unref();
    return this.leaseIdHex;
  }

  /** True while a keepalive succeeded within one TTL. */
  get alive(): boolean {
    this.check();
    return !this.lost;
  }

  /** Called once when the session is lost. */
  onLost(listener: () => void): void {
    this.lostListeners.push(listener);
  }

  /** Revokes the lease (clean shutdown): the capture and election keys vanish at once. */
  async close(): Promise<void> {
    if (this.timer !== undefined) clearInterval(this.timer);
    this.lost = true;
    this.lostListeners = [];
    if (this.leaseId === '') {
      // Never granted (a start that failed): nothing to revoke, only the keepalive to stop.
      this.lease.release();
      return;
    }
    try {
      await this.lease.revoke();
    } catch (error) {
      this.log.warn({ err: error }, 'lease revoke failed');
    }
  }

  private check(): void {
    if (!this.lost && this.lastKeepaliveOkMs > 0 && Date.now() - this.lastKeepaliveOkMs > this.ttlMs) {
      this.log.error({ sinceKeepaliveMs: Date.now() - this.lastKeepaliveOkMs }, 'no keepalive for one ttl');
      this.markLost();
    }
  }

  private markLost(): void {
    if (this.lost) return;
    this.lost = true;
    if (this.timer !== undefined) clearInterval(this.timer);
    this.lease.release();
    for (const listener of this.lostListeners) listener();
  }
}

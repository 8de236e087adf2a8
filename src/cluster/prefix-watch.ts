/**
 * Keeps an in-memory copy of every key under a prefix: reads it, then re-reads it
 * whenever a watch reports a change (and every `resyncMs` in case a watch stalls). The
 * prefixes watched this way (captures, owner candidates, changefeeds) hold few keys.
 */
import type { Etcd3, IKeyValue, Watcher } from 'etcd3';
import type { Logger } from '../log.ts';

export interface PrefixSnapshot {
  readonly revision: bigint;
  readonly kvs: readonly IKeyValue[];
}

export class PrefixWatch {
  private watcher: Watcher | undefined;
  private timer: NodeJS.Timeout | undefined;
  private reading = false;
  private again = false;
  private closed = false;
  snapshot: PrefixSnapshot = { revision: 0n, kvs: [] };

  constructor(
    private readonly client: Etcd3,
    private readonly prefix: string,
    private readonly onChange: (snapshot: PrefixSnapshot) => void,
    private readonly log: Logger,
    private readonly resyncMs = 1_000,
    private readonly onError: () => void = () => undefined,
    /**
     * Fewest ms between two reads. A prefix that changes all the time (checkpoints of
     * hundreds of changefeeds) would otherwise be read back to back, each read O(keys).
     */
    private readonly readIntervalMinMs = 0,
  ) {}

  private lastReadAt = 0;
  private delayed: NodeJS.Timeout | undefined;

  async start(): Promise<void> {
    await this.read();
    this.watcher = await this.client.watch().prefix(this.prefix).create();
    this.watcher.on('put', () => this.trigger());
    this.watcher.on('delete', () => this.trigger());
    this.watcher.on('connected', () => this.trigger());
    this.watcher.on('error', (error) => this.log.warn({ err: error, prefix: this.prefix }, 'watch error'));
    this.timer = setInterval(() => this.trigger(), this.resyncMs);
    this.timer.unref();
  }

  async close(): Promise<void> {
    this.closed = true;
    if (this.timer !== undefined) clearInterval(this.timer);
    if (this.delayed !== undefined) clearTimeout(this.delayed);
    try {
      await this.watcher?.cancel();
    } catch (error) {
      this.log.debug({ err: error }, 'watch cancel failed');
    }
  }

  /** Re-reads now, or after `readIntervalMinMs` (coalescing concurrent triggers). */
  trigger(): void {
    if (this.closed || this.delayed !== undefined) return;
    if (this.reading) {
      this.again = true;
      return;
    }
    const waitMs = this.lastReadAt + this.readIntervalMinMs - Date.now();
    if (waitMs > 0) {
      this.delayed = setTimeout(() => {
        this.delayed = undefined;
        this.trigger();
      }, waitMs);
      return;
    }
    void this.read().catch((error: unknown) => {
      this.onError();
      this.log.warn({ err: error, prefix: this.prefix }, 'prefix read failed');
    });
  }

  private async read(): Promise<void> {
    this.reading = true;
    this.again = false;
    try {
      this.lastReadAt = Date.now();
      const response = await this.client.getAll().prefix(this.prefix).exec();
      const revision = BigInt(response.header.revision);
      if (revision >= this.snapshot.revision && !this.closed) {
        this.snapshot = { revision, kvs: response.kvs };
        this.onChange(this.snapshot);
      }
    } finally {
      this.reading = false;
      // Changes seen while reading: read again, within the interval bound.
      if (this.again) this.trigger();
    }
  }
}

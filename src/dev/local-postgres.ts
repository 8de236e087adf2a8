/**
 * A throwaway PostgreSQL server for tests: initdb in a temp dir, `postgres` on a free
 * loopback port (its socket in the same dir), a `spanfeed` database; stopped by the pid
 * it was started with and its dir removed. When run as root the server runs as the
 * `postgres` user, as PostgreSQL refuses root.
 */
import { execFileSync, spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { chownSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { freePort, waitFor } from './local-cluster.ts';

const root = fileURLToPath(new URL('../..', import.meta.url));

function binDir(): string {
  const versions = readdirSync('/usr/lib/postgresql').sort((a, b) => Number(b) - Number(a));
  const version = versions[0];
  if (version === undefined) throw new Error('no PostgreSQL under /usr/lib/postgresql');
  return `/usr/lib/postgresql/${version}/bin`;
}

function postgresIds(): { uid: number; gid: number } | undefined {
  if (process.getuid?.() !== 0) return undefined;
  const uid = Number(execFileSync('id', ['-u', 'postgres'], { encoding: 'utf8' }).trim());
  const gid = Number(execFileSync('id', ['-g', 'postgres'], { encoding: 'utf8' }).trim());
  return { uid, gid };
}

/** Where a test PostgreSQL keeps its data: a new temp dir, or under `parentDir` (say, a small tmpfs). */
export interface LocalPostgresOptions {
  readonly parentDir?: string;
}

export class LocalPostgres {
  private constructor(
    readonly url: string,
    private child: ChildProcess,
    private readonly dir: string,
    private readonly port: number,
  ) {}

  static async start(options: LocalPostgresOptions = {}): Promise<LocalPostgres> {
    execFileSync('bash', [join(root, 'scripts/ensure-postgres.sh')], { stdio: 'inherit' });
    const ids = postgresIds();
    const dir = mkdtempSync(join(options.parentDir ?? tmpdir(), 'spanfeed-pg-'));
    if (ids !== undefined) chownSync(dir, ids.uid, ids.gid);
    const asUser = ids === undefined ? {} : { uid: ids.uid, gid: ids.gid };
    execFileSync(join(binDir(), 'initdb'), ['-D', join(dir, 'data'), '-U', 'spanfeed', '--auth=trust', '-E', 'UTF8'], { stdio: 'ignore', ...asUser, cwd: dir });
    const port = await freePort();
    const server = new LocalPostgres(`postgres://spanfeed@127.0.0.1:${port}/spanfeed`, spawnPostgres(dir, port), dir, port);
    await server.ready();
    return server;
  }

  /** True while the server process runs (PostgreSQL exits when it cannot recover, e.g. on a full disk). */
  get running(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  /** Stops the server and keeps its data and port, for {@link restart} (an outage). */
  async halt(): Promise<void> {
    await this.shutDown();
  }

  /** Starts the server again on the same data and port, after it exited. */
  async restart(): Promise<void> {
    if (this.running) return;
    this.child = spawnPostgres(this.dir, this.port);
    await this.ready();
  }

  private async ready(): Promise<void> {
    let stderr = '';
    this.child.stderr?.on('data', (chunk: Buffer) => {
      stderr = (stderr + chunk.toString()).slice(-16_384);
    });
    try {
      await waitFor('PostgreSQL to accept connections', async () => {
        const client = new pg.Client({ connectionString: `postgres://spanfeed@127.0.0.1:${this.port}/postgres` });
        try {
          await client.connect();
          await client.query('create database spanfeed');
          return true;
        } catch (error) {
          if ((error as { code?: string }).code === '42P04') return true;
          return undefined;
        } finally {
          await client.end().catch(() => undefined);
        }
      }, 30_000, 100);
    } catch (error) {
      await this.stop();
      throw new Error(`${(error as Error).message}\n${stderr}`);
    }
  }

  async stop(): Promise<void> {
    await this.shutDown();
    rmSync(this.dir, { recursive: true, force: true });
  }

  private async shutDown(): Promise<void> {
    if (!this.running || this.child.pid === undefined) return;
    const child = this.child;
    const exited = new Promise((resolve) => child.once('exit', resolve));
    // SIGINT: PostgreSQL's fast shutdown.
    process.kill(this.child.pid, 'SIGINT');
    await Promise.race([exited, new Promise((resolve) => setTimeout(resolve, 5_000))]);
    if (this.running) {
      process.kill(this.child.pid, 'SIGKILL');
      await exited;
    }
  }
}

function spawnPostgres(dir: string, port: number): ChildProcess {
  const ids = postgresIds();
  return spawn(join(binDir(), 'postgres'), ['-D', join(dir, 'data'), '-p', String(port), '-k', dir, '-c', 'listen_addresses=127.0.0.1', '-c', 'fsync=on'], {
    stdio: ['ignore', 'ignore', 'pipe'],
    cwd: dir,
    ...(ids === undefined ? {} : { uid: ids.uid, gid: ids.gid }),
  });
}

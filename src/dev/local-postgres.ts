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

export class LocalPostgres {
  private constructor(
    readonly url: string,
    private readonly child: ChildProcess,
    private readonly dir: string,
  ) {}

  static async start(): Promise<LocalPostgres> {
    execFileSync('bash', [join(root, 'scripts/ensure-postgres.sh')], { stdio: 'inherit' });
    const bin = binDir();
    const ids = postgresIds();
    const dir = mkdtempSync(join(tmpdir(), 'spanfeed-pg-'));
    if (ids !== undefined) chownSync(dir, ids.uid, ids.gid);
    const data = join(dir, 'data');
    const asUser = ids === undefined ? {} : { uid: ids.uid, gid: ids.gid };
    execFileSync(join(bin, 'initdb'), ['-D', data, '-U', 'spanfeed', '--auth=trust', '-E', 'UTF8'], { stdio: 'ignore', ...asUser, cwd: dir });
    const port = await freePort();
    const child = spawn(join(bin, 'postgres'), ['-D', data, '-p', String(port), '-k', dir, '-c', 'listen_addresses=127.0.0.1', '-c', 'fsync=on'], {
      stdio: ['ignore', 'ignore', 'pipe'],
      cwd: dir,
      ...asUser,
    });
    let stderr = '';
    child.stderr?.on('data', (chunk: Buffer) => {
      stderr += chunk.toString();
    });
    const server = new LocalPostgres(`postgres://spanfeed@127.0.0.1:${port}/spanfeed`, child, dir);
    try {
      await waitFor('PostgreSQL to accept connections', async () => {
        const client = new pg.Client({ connectionString: `postgres://spanfeed@127.0.0.1:${port}/postgres` });
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
      await server.stop();
      throw new Error(`${(error as Error).message}\n${stderr}`);
    }
    return server;
  }

  async stop(): Promise<void> {
    if (this.child.exitCode === null && this.child.signalCode === null && this.child.pid !== undefined) {
      const exited = new Promise((resolve) => this.child.once('exit', resolve));
      // SIGINT: PostgreSQL's fast shutdown.
      process.kill(this.child.pid, 'SIGINT');
      await Promise.race([exited, new Promise((resolve) => setTimeout(resolve, 5_000))]);
      if (this.child.exitCode === null && this.child.signalCode === null) process.kill(this.child.pid, 'SIGKILL');
    }
    rmSync(this.dir, { recursive: true, force: true });
  }
}


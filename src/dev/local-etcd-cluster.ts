/**
 * A multi-member etcd cluster on loopback for soaks: each member in its own data dir
 * under a parent directory, a unique `--initial-cluster-token`, the fast timings of
 * ETCD-NOTES.md, and each member's log in a file. A member can be SIGKILLed and
 * restarted on its data dir (it rejoins as the same member). The leader is found with
 * the maintenance status API (`POST /v3/maintenance/status`, the gRPC gateway).
 */
import { mkdirSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { ensureEtcd, waitFor } from './local-cluster.ts';
import { LoggedProcess } from './logged-process.ts';
import type { ProcessExit } from './logged-process.ts';

/** Ports handed out by `stablePort` in this process, never handed out twice. */
const portsTaken = new Set<number>();

function portFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const server = createServer();
    server.once('error', () => resolve(false));
    server.listen(port, '127.0.0.1', () => server.close(() => resolve(true)));
  });
}

/**
 * A free loopback port below Linux's ephemeral range (32768-60999). A member keeps its
 * ports across restarts, and while it is down an outgoing connection of any process may
 * take a port of the ephemeral range (as `port 0` hands out), so its restart would fail
 * with "address already in use"; below that range only an explicit bind can collide.
 */
export async function stablePort(): Promise<number> {
  for (let attempt = 0; attempt < 200; attempt++) {
    const port = 20_000 + Math.floor(Math.random() * 12_000);
    if (portsTaken.has(port)) continue;
    if (await portFree(port)) {
      portsTaken.add(port);
      return port;
    }
  }
  throw new Error('no free port in 20000-32000');
}

/** A member's exit that nobody asked for. */
export interface UnexpectedExit extends ProcessExit {
  readonly member: string;
  readonly pid: number;
  readonly tail: string;
}

/** One member's addresses and process. */
export interface EtcdMember {
  readonly name: string;
  readonly clientPort: number;
  readonly peerPort: number;
  readonly dataDir: string;
  readonly logPath: string;
  proc: LoggedProcess | undefined;
  /** How many times this member was started. */
  starts: number;
}

/** What `/v3/maintenance/status` answers (the fields used here). */
interface MaintenanceStatus {
  readonly header?: { readonly member_id?: string };
  readonly leader?: string;
}

export class LocalEtcdCluster {
  private constructor(
    readonly members: EtcdMember[],
    private readonly initialCluster: string,
    private readonly token: string,
    private readonly extraArgs: readonly string[],
  ) {}

  /** Every exit of a member that was not killed on purpose, in order. */
  readonly unexpected: UnexpectedExit[] = [];

  /** Starts `size` members under `dir` and waits until the cluster answers. */
  static async start(options: { dir: string; size?: number; token: string; extraArgs?: readonly string[] }): Promise<LocalEtcdCluster> {
    ensureEtcd();
    const size = options.size ?? 3;
    const members: EtcdMember[] = [];
    for (let i = 1; i <= size; i++) {
      const dataDir = join(options.dir, `m${i}-data`);
      mkdirSync(dataDir, { recursive: true, mode: 0o700 });
      members.push({ name: `m${i}`, clientPort: await stablePort(), peerPort: await stablePort(), dataDir, logPath: join(options.dir, `etcd-m${i}.log`), proc: undefined, starts: 0 });
    }
    const initialCluster = members.map((m) => `${m.name}=http://127.0.0.1:${m.peerPort}`).join(',');
    const cluster = new LocalEtcdCluster(members, initialCluster, options.token, options.extraArgs ?? []);
    for (const member of members) cluster.spawn(member);
    try {
      await waitFor('every etcd member to answer with a leader', async () => {
        const statuses = await Promise.all(members.map((m) => cluster.memberStatus(m)));
        return statuses.every((s) => s !== undefined) ? true : undefined;
      }, 20_000, 50);
    } catch (error) {
      await cluster.stop();
      throw new Error(`${(error as Error).message}\n${members.map((m) => `${m.name}: ${m.proc?.tail(1_500) ?? ''}`).join('\n')}`);
    }
    return cluster;
  }

  /** `host:port` of every member, for clients. */
  get endpoints(): string[] {
    return this.members.map((m) => `127.0.0.1:${m.clientPort}`);
  }

  private spawn(member: EtcdMember): void {
    const client = `http://127.0.0.1:${member.clientPort}`;
    const peer = `http://127.0.0.1:${member.peerPort}`;
    member.starts++;
    member.proc = new LoggedProcess(
      `etcd-${member.name}`,
      'etcd',
      [
        '--name', member.name, '--data-dir', member.dataDir,
        '--listen-client-urls', client, '--advertise-client-urls', client,
        '--listen-peer-urls', peer, '--initial-advertise-peer-urls', peer,
        // Ignored by etcd once the data dir holds a member: a restart rejoins.
        '--initial-cluster', this.initialCluster, '--initial-cluster-state', 'new',
        '--initial-cluster-token', this.token,
        '--logger', 'zap', '--log-level', 'warn', '--heartbeat-interval=10', '--election-timeout=100',
        ...this.extraArgs,
      ],
      member.logPath,
    );
    const proc = member.proc;
    proc.exited.then(
      (exit) => {
        if (!proc.killedOnPurpose) this.unexpected.push({ ...exit, member: member.name, pid: proc.pid, tail: proc.tail(1_500) });
      },
      () => undefined,
    );
  }

  /** The maintenance status of one member, or undefined when it does not answer. */
  async memberStatus(member: EtcdMember, timeoutMs = 1_000): Promise<{ memberId: string; leaderId: string } | undefined> {
    if (member.proc === undefined || !member.proc.running) return undefined;
    try {
      const response = await fetch(`http://127.0.0.1:${member.clientPort}/v3/maintenance/status`, { method: 'POST', body: '{}', signal: AbortSignal.timeout(timeoutMs) });
      if (!response.ok) return undefined;
      const status = (await response.json()) as MaintenanceStatus;
      const memberId = status.header?.member_id;
      const leaderId = status.leader;
      if (memberId === undefined || leaderId === undefined || leaderId === '0') return undefined;
      return { memberId, leaderId };
    } catch {
      return undefined;
    }
  }

  /** The member that is leader as seen by a running member that itself says so, or undefined. */
  async leader(): Promise<EtcdMember | undefined> {
    for (const member of this.members) {
      const status = await this.memberStatus(member);
      if (status !== undefined && status.memberId === status.leaderId) return member;
    }
    return undefined;
  }

  /** SIGKILLs one member (on purpose). */
  async kill(member: EtcdMember): Promise<void> {
    await member.proc?.kill();
  }

  /** Restarts a member that is not running, on its data dir. */
  restart(member: EtcdMember): void {
    if (member.proc?.running === true) return;
    this.spawn(member);
  }

  /** SIGKILLs every member at once, without waiting (exit handlers). */
  killNow(): void {
    for (const member of this.members) member.proc?.killNow();
  }

  /** Stops every member; removes the data dirs (the logs stay with the parent dir). */
  async stop(): Promise<void> {
    await Promise.all(this.members.map((m) => m.proc?.kill()));
    for (const member of this.members) rmSync(member.dataDir, { recursive: true, force: true });
  }
}

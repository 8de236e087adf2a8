/**
 * A multi-member etcd cluster on loopback for soaks: each member in its own data dir
 * under a parent directory, a unique `--initial-cluster-token`, the fast timings of
 * ETCD-NOTES.md, and each member's log in a file. A member can be SIGKILLed and
 * restarted on its data dir (it rejoins as the same member). The leader is found with
 * the maintenance status API (`POST /v3/maintenance/status`, the gRPC gateway).
 */
import { mkdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { ensureEtcd, freePort, waitFor } from './local-cluster.ts';
import { LoggedProcess } from './logged-process.ts';

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

  /** Starts `size` members under `dir` and waits until the cluster answers. */
  static async start(options: { dir: string; size?: number; token: string; extraArgs?: readonly string[] }): Promise<LocalEtcdCluster> {
    ensureEtcd();
    const size = options.size ?? 3;
    const members: EtcdMember[] = [];
    for (let i = 1; i <= size; i++) {
      const dataDir = join(options.dir, `m${i}-data`);
      mkdirSync(dataDir, { recursive: true });
      members.push({ name: `m${i}`, clientPort: await freePort(), peerPort: await freePort(), dataDir, logPath: join(options.dir, `etcd-m${i}.log`), proc: undefined, starts: 0 });
    }
    const initialCluster = members.map((m) => `${m.name}=http://127.0.0.1:${m.peerPort}`).join(',');
    const cluster = new LocalEtcdCluster(members, initialCluster, options.token, options.extraArgs ?? []);
    for (const member of members) cluster.spawn(member);
    await waitFor('the etcd cluster to elect a leader', async () => ((await cluster.leader()) !== undefined ? true : undefined), 20_000, 50);
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

  /** Members whose process ended although nobody killed it. */
  unexpectedExits(): EtcdMember[] {
    return this.members.filter((m) => m.proc !== undefined && !m.proc.running && !m.proc.killedOnPurpose);
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

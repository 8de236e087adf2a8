/**
 * A local cluster of real processes, for the demo, the integration tests and the
 * benchmarks: a throwaway etcd on free loopback ports (its data dir removed afterwards)
 * and `spanfeed server` captures. Everything started is stopped by the pid it was
 * started with.
 */
import { execFileSync, spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { get as httpsGet } from 'node:https';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { apiRequest, readText } from '../api/api-request.ts';
import type { ApiClientTls } from '../api/api-request.ts';
import type { Etcd3 } from 'etcd3';
import { Range } from 'etcd3';
import type { EtcdSecurity } from '../cluster/etcd-client.ts';
import { createEtcdClient } from '../cluster/etcd-client.ts';

const root = fileURLToPath(new URL('../..', import.meta.url));

/** Installs etcd when missing (as root), or throws with what to install. */
export function ensureEtcd(): void {
  execFileSync('bash', [join(root, 'scripts/ensure-etcd.sh')], { stdio: 'inherit' });
}

/** A free TCP port on 127.0.0.1. */
export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      const port = typeof address === 'object' && address !== null ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

/** Polls `probe` until it returns a value other than undefined, or fails after `timeoutMs`. */
export async function waitFor<T>(what: string, probe: () => Promise<T | undefined> | T | undefined, timeoutMs = 20_000, everyMs = 50): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown;
  for (;;) {
    try {
      const value = await probe();
      if (value !== undefined) return value;
      // An answer, though not the awaited one: an earlier error no longer says why.
      lastError = undefined;
    } catch (error) {
      lastError = error;
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${lastError ? `: ${(lastError as Error).message}` : ''}`);
    await new Promise((resolve) => setTimeout(resolve, everyMs));
  }
}

/** A process the tests started. */
class Proc {
  output = '';
  exited: Promise<number | null>;
  constructor(readonly child: ChildProcess) {
    child.stdout?.on('data', (chunk: Buffer) => this.append(chunk));
    child.stderr?.on('data', (chunk: Buffer) => this.append(chunk));
    this.exited = new Promise((resolve) => child.once('exit', (code) => resolve(code)));
  }

  get pid(): number {
    if (this.child.pid === undefined) throw new Error('process has no pid');
    return this.child.pid;
  }

  get running(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  signal(signal: NodeJS.Signals): void {
    if (this.running) process.kill(this.pid, signal);
  }

  async stop(): Promise<void> {
    if (!this.running) return;
    this.signal('SIGCONT');
    this.signal('SIGKILL');
    await this.exited;
  }

  private append(chunk: Buffer): void {
    this.output += chunk.toString();
    if (this.output.length > 2_000_000) this.output = this.output.slice(-1_000_000);
  }
}

/**
 * How a {@link LocalEtcd} is secured. `tls`: clients dial https with `ca` trusted and
 * `cert`/`key` as the server's certificate; with `clientCert`, etcd also asks every
 * client for a certificate the CA signed (`--client-cert-auth`), and the LocalEtcd uses
 * that one itself. `auth`: etcd's user/password auth is enabled with a root user and
 * `user`, whose role may read and write every key.
 */
export interface LocalEtcdOptions {
  readonly tls?: {
    readonly caFile: string;
    readonly certFile: string;
    readonly keyFile: string;
    readonly clientCert?: { readonly certFile: string; readonly keyFile: string };
  };
  readonly auth?: { readonly user: string; readonly password: string; readonly rootPassword: string };
}

/** A single-node etcd in a temp dir. */
export class LocalEtcd {
  private constructor(
    /** `host:port`, also over https. */
    readonly endpoint: string,
    private readonly proc: Proc,
    private readonly dataDir: string,
    readonly options: LocalEtcdOptions,
  ) {}

  /** True when clients dial it over https. */
  get https(): boolean {
    return this.options.tls !== undefined;
  }

  /** True when it asks clients for a certificate. */
  get clientCertAuth(): boolean {
    return this.options.tls?.clientCert !== undefined;
  }

  /** True when user/password auth is enabled. */
  get authEnabled(): boolean {
    return this.options.auth !== undefined;
  }

  /** What its output said so far (warnings and errors). */
  get output(): string {
    return this.proc.output;
  }

  static async start(options: LocalEtcdOptions = {}): Promise<LocalEtcd> {
    ensureEtcd();
    const dataDir = mkdtempSync(join(tmpdir(), 'spanfeed-etcd-'));
    const clientPort = await freePort();
    const peerPort = await freePort();
    const tls = options.tls;
    const client = `${tls === undefined ? 'http' : 'https'}://127.0.0.1:${clientPort}`;
    const peer = `http://127.0.0.1:${peerPort}`;
    const tlsArgs =
      tls === undefined
        ? []
        : [
            '--cert-file', tls.certFile, '--key-file', tls.keyFile,
            ...(tls.clientCert === undefined ? [] : ['--client-cert-auth', '--trusted-ca-file', tls.caFile]),
          ];
    const proc = new Proc(
      spawn(
        'etcd',
        [
          '--name', 'n1', '--data-dir', dataDir,
          '--listen-client-urls', client, '--advertise-client-urls', client,
          '--listen-peer-urls', peer, '--initial-advertise-peer-urls', peer,
          '--initial-cluster', `n1=${peer}`, '--initial-cluster-state', 'new',
          '--initial-cluster-token', `spanfeed-test-${process.pid}-${clientPort}`,
          '--logger', 'zap', '--log-level', 'warn', '--heartbeat-interval=10', '--election-timeout=100',
          // Frequent per-watcher progress: the etcd source's resolved-ts for idle spans.
          '--experimental-watch-progress-notify-interval=100ms',
          ...tlsArgs,
        ],
        { stdio: ['ignore', 'pipe', 'pipe'] },
      ),
    );
    const etcd = new LocalEtcd(`127.0.0.1:${clientPort}`, proc, dataDir, options);
    try {
      await waitFor('etcd to answer', () => etcd.healthy(), 10_000);
      if (options.auth !== undefined) await etcd.enableAuth(options.auth);
    } catch (error) {
      await etcd.stop();
      throw new Error(`${(error as Error).message}\n${proc.output}`);
    }
    return etcd;
  }

  /**
   * The security a client of this etcd needs: its CA and client certificate, and the
   * user's password (`withoutUser`: none, while auth is being set up).
   */
  security(withoutUser = false): EtcdSecurity | undefined {
    const asUser = withoutUser ? undefined : this.options.auth;
    const tls = this.options.tls;
    const clientCert = tls?.clientCert;
    const tlsPart =
      tls === undefined
        ? undefined
        : { ca: readFileSync(tls.caFile), ...(clientCert === undefined ? {} : { cert: readFileSync(clientCert.certFile), key: readFileSync(clientCert.keyFile) }) };
    if (tlsPart === undefined && asUser === undefined) return undefined;
    return { ...(tlsPart === undefined ? {} : { tls: tlsPart }), ...(asUser === undefined ? {} : { auth: { user: asUser.user, password: asUser.password } }) };
  }

  /** A client of this etcd, as the auth user when auth is on. */
  connect(): Etcd3 {
    return createEtcdClient({ endpoints: [this.endpoint], callTimeoutMs: 5_000, security: this.security() });
  }

  /** `/health` answers ok (over https with the CA and client certificate when set). */
  private async healthy(): Promise<true | undefined> {
    const tls = this.options.tls;
    if (tls === undefined) return (await fetch(`http://${this.endpoint}/health`)).ok ? true : undefined;
    const options = { ca: readFileSync(tls.caFile), ...(tls.clientCert === undefined ? {} : { cert: readFileSync(tls.clientCert.certFile), key: readFileSync(tls.clientCert.keyFile) }) };
    return new Promise((resolve, reject) => {
      // servername: SNI takes no address; the certificate names localhost too.
      const request = httpsGet(`https://${this.endpoint}/health`, { ...options, servername: 'localhost', timeout: 2_000 }, (response) => {
        response.resume();
        resolve(response.statusCode === 200 ? true : undefined);
      });
      request.on('timeout', () => request.destroy(new Error('no answer')));
      request.on('error', reject);
    });
  }

  /** Creates the root user and `auth.user` (read and write on every key), then enables auth. */
  private async enableAuth(auth: NonNullable<LocalEtcdOptions['auth']>): Promise<void> {
    const admin = createEtcdClient({ endpoints: [this.endpoint], callTimeoutMs: 5_000, security: this.security(true) });
    try {
      await admin.role('root').create();
      await admin.user('root').create(auth.rootPassword);
      await admin.user('root').addRole('root');
      const role = await admin.role('spanfeed-readwrite').create();
      // Key "\0" to range end "\0": every key.
      await role.grant({ permission: 'Readwrite', range: new Range(Buffer.from([0]), Buffer.from([0])) });
      await admin.user(auth.user).create(auth.password);
      await admin.user(auth.user).addRole(role);
      await admin.auth.authEnable();
    } finally {
      admin.close();
    }
  }

  async stop(): Promise<void> {
    await this.proc.stop();
    rmSync(this.dataDir, { recursive: true, force: true });
  }
}

/** A JSON answer from the HTTP API. */
export interface ApiAnswer<T = unknown> {
  readonly status: number;
  readonly body: T;
}

/** Calls the HTTP API of a capture; `raw` is sent as the body as it is. */
export async function api<T = any>(baseUrl: string, method: string, path: string, body?: unknown, raw?: string, timeoutMs = 10_000): Promise<ApiAnswer<T>> {
  return apiWith<T>({ ...(body === undefined ? {} : { body }), ...(raw === undefined ? {} : { raw }), timeoutMs }, baseUrl, method, path);
}

/** How {@link apiWith} calls: a bearer token, headers over the default JSON content type, a body. */
export interface ApiCallOptions {
  readonly token?: string | undefined;
  /** Replace or add headers (`content-type`, `origin`, `authorization`). */
  readonly headers?: Readonly<Record<string, string>>;
  readonly body?: unknown;
  readonly raw?: string;
  readonly timeoutMs?: number;
  /** For an https:// capture: the CA, and a client certificate to show. */
  readonly tls?: ApiClientTls | undefined;
}

/** Calls the HTTP API of a capture with a token and headers of the caller's choosing. */
export async function apiWith<T = any>(options: ApiCallOptions, baseUrl: string, method: string, path: string): Promise<ApiAnswer<T>> {
  const headers: Record<string, string> = { 'content-type': 'application/json' };
  if (options.token !== undefined) headers.authorization = `Bearer ${options.token}`;
  Object.assign(headers, options.headers ?? {});
  const init: RequestInit = { method, headers, signal: AbortSignal.timeout(options.timeoutMs ?? 10_000) };
  const { raw, body } = options;
  if (raw !== undefined) init.body = raw;
  else if (body !== undefined) init.body = JSON.stringify(body);
  let status: number;
  let text: string;
  if (options.tls !== undefined || baseUrl.startsWith('https:')) {
    // fetch takes no private CA nor client certificate.
    const answer = await apiRequest(`${baseUrl}${path}`, { method, headers, body: init.body as string | undefined, tls: options.tls, timeoutMs: options.timeoutMs ?? 10_000 });
    status = answer.status;
    text = await readText(answer.body);
  } else {
    const response = await fetch(`${baseUrl}${path}`, init);
    status = response.status;
    text = await response.text();
  }
  let parsed: unknown = text;
  try {
    parsed = JSON.parse(text);
  } catch {
    // Not JSON: the test sees the text.
  }
  return { status, body: parsed as T };
}

/**
 * Calls the API through the first running capture that answers (non-owners forward to
 * the owner); a 503 (no owner right now) tries the next one.
 */
export async function callAny<T = any>(captures: readonly LocalCapture[], method: string, path: string, body?: unknown): Promise<ApiAnswer<T>> {
  for (const capture of captures) {
    if (!capture.proc.running) continue;
    try {
      const answer = await api<T>(capture.url, method, path, body);
      if (answer.status !== 503) return answer;
    } catch {
      // Paused or dying: try the next one.
    }
  }
  throw new Error('no capture answered');
}

/**
 * Calls the API until it answers something other than 503: right after an election the
 * owner may be known before it acts, and the API says so with a 503 to retry.
 */
export async function apiWhenOwned<T = any>(baseUrl: string, method: string, path: string, body?: unknown, timeoutMs = 30_000): Promise<ApiAnswer<T>> {
  return waitFor(`${method} ${path} to be answered by an owner`, async () => {
    const answer = await api<T>(baseUrl, method, path, body);
    return answer.status === 503 ? undefined : answer;
  }, timeoutMs, 50);
}

/** The running capture that says it is the owner (waits until one does). */
export async function ownerAmong(captures: readonly LocalCapture[]): Promise<LocalCapture> {
  return waitFor('an owner among the running captures', async () => {
    for (const capture of captures) {
      if (!capture.proc.running) continue;
      try {
        if ((await capture.status()).isOwner) return capture;
      } catch {
        // Not answering right now.
      }
    }
    return undefined;
  });
}

/** One `spanfeed server` process. */
export class LocalCapture {
  id = '';
  private constructor(
    readonly proc: Proc,
    readonly url: string,
    /** The bearer token this harness reads the capture's status with (started with a token file). */
    readonly token: string | undefined,
    /** The TLS this harness calls an https capture with. */
    readonly tls: ApiClientTls | undefined,
  ) {}

  /**
   * Starts a capture. Its file sinks may write under `fileSinkRoot`, by default the
   * system's temp dir, where the tests make their sink directories.
   */
  static async start(
    etcd: LocalEtcd,
    options: { cluster: string; leaseTtlS?: number; fileSinkRoot?: string; extraArgs?: string[]; nodeArgs?: string[]; token?: string; tls?: { readonly files: { readonly ca: string; readonly cert: string; readonly key: string }; readonly client?: ApiClientTls } },
  ): Promise<LocalCapture> {
    const httpPort = await freePort();
    const args = [
      // Node's own flags first (a profile: `--cpu-prof`), then the executable's.
      ...(options.nodeArgs ?? []),
      join(root, 'bin/spanfeed'), 'server',
      '--etcd', etcd.endpoint, '--cluster', options.cluster,
      '--http', `127.0.0.1:${httpPort}`, '--grpc', '127.0.0.1:0',
      '--lease-ttl-s', String(options.leaseTtlS ?? 3), '--log-level', 'info',
      '--file-sink-root', options.fileSinkRoot ?? tmpdir(),
      ...(options.tls === undefined ? [] : ['--tls-ca', options.tls.files.ca, '--tls-cert', options.tls.files.cert, '--tls-key', options.tls.files.key]),
      ...(options.extraArgs ?? []),
    ];
    const proc = new Proc(spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'], cwd: root }));
    const tls = options.tls === undefined ? undefined : (options.tls.client ?? { ca: readFileSync(options.tls.files.ca) });
    const capture = new LocalCapture(proc, `${options.tls === undefined ? 'http' : 'https'}://127.0.0.1:${httpPort}`, options.token, tls);
    try {
      await capture.refreshId();
    } catch (error) {
      await proc.stop();
      throw new Error(`${(error as Error).message}\n${proc.output}`);
    }
    return capture;
  }

  get pid(): number {
    return this.proc.pid;
  }

  /** Reads this capture's current id (a self-fenced capture rejoins with a new one). */
  async refreshId(): Promise<string> {
    this.id = await waitFor('the capture to serve its status', async () => {
      const answer = await apiWith<{ id: string }>({ token: this.token, tls: this.tls }, this.url, 'GET', '/api/v1/status');
      return answer.status === 200 && answer.body.id !== '' ? answer.body.id : undefined;
    });
    return this.id;
  }

  async status(): Promise<{ id: string; isOwner: boolean }> {
    return (await apiWith<{ id: string; isOwner: boolean }>({ token: this.token, tls: this.tls }, this.url, 'GET', '/api/v1/status')).body;
  }

  async stop(): Promise<void> {
    await this.proc.stop();
  }
}

/** The changefeed fields the tests read. */
export interface ChangefeedView {
  readonly id: string;
  readonly state: string;
  readonly checkpointTs: string;
  readonly resolvedTs: string;
  readonly checkpointLagMs: number | null;
  readonly watermark: {
    readonly state: string;
    readonly reason: string | null;
    readonly code?: string;
    /** Set while `stalled`. */
    readonly stalledForMs?: number;
    readonly checkpointTs?: string;
    readonly resolvedTs?: string;
    readonly heldBy?: {
      readonly spans: readonly { readonly table: string; readonly start: string; readonly end: string; readonly captureId: string; readonly checkpointTs: string }[];
      readonly spanCount: number;
      readonly captures: readonly string[];
      readonly captureCount: number;
    };
  };
  readonly spans: number;
  readonly spansByState: Record<string, number> | null;
  /** Pipelines retrying through an outage, or null. */
  readonly warning: { readonly failingSpans: number; readonly error: string } | null;
}

/** A span as the API lists it. */
/** One page of `GET /api/v1/changefeeds/{id}/spans`. */
export interface SpanPage<T = SpanView> {
  readonly spans: T[];
  readonly nextCursor: string | null;
}

/**
 * Every span of a changefeed, following the pages' cursors; `get` calls the API with a
 * path (through whichever capture the caller likes). Throws on an answer other than 200.
 */
export async function allSpans<T = SpanView>(get: (path: string) => Promise<ApiAnswer<SpanPage<T>>>, changefeedId: string, limit = 10_000): Promise<T[]> {
  const spans: T[] = [];
  let cursor: string | null = null;
  for (;;) {
    const answer = await get(`/api/v1/changefeeds/${encodeURIComponent(changefeedId)}/spans?limit=${limit}${cursor === null ? '' : `&cursor=${cursor}`}`);
    if (answer.status !== 200) throw new Error(`GET spans of ${changefeedId}: ${answer.status} ${JSON.stringify(answer.body)}`);
    spans.push(...answer.body.spans);
    cursor = answer.body.nextCursor;
    if (cursor === null) return spans;
  }
}

export interface SpanView {
  readonly table: string;
  readonly start: string;
  readonly end: string;
  readonly state: string;
  readonly primary: string | null;
  readonly secondaries: string[];
  readonly checkpointTs: string;
}

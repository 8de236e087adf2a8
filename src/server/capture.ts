/**
 * One capture process (`spanfeed server`): registers in etcd under its session lease,
 * campaigns for owner, serves the agent side over gRPC and the HTTP API, and, when
 * elected, runs the {@link OwnerRole}.
 *
 * Losing the session (no keepalive for one TTL) self-fences: every pipeline stops at
 * once, the owner role stops, and the capture starts again with a new id and a new
 * lease. SIGTERM drains this capture's spans to others (bounded wait), resigns
 * ownership, deregisters and exits.
 *
 * Starting is bounded by `startTimeoutMs`: a port in use fails at once, etcd is retried
 * (it may still be coming up) until the timeout; either way everything opened is
 * released and `start()` rejects with a {@link StartError} naming the cause.
 */
import { randomBytes } from 'node:crypto';
import { setTimeout as sleepFor } from 'node:timers/promises';
import type { Etcd3 } from 'etcd3';
import { Election, ownerOf } from '../cluster/election.ts';
import type { OwnerInfo } from '../cluster/election.ts';
import { createEtcdClient } from '../cluster/etcd-client.ts';
import { CaptureTls } from '../security/capture-tls.ts';
import type { EtcdSecurity } from '../cluster/etcd-client.ts';
import { metadataEtcdSecurity, tlsHandshakeProblem } from '../security/etcd-security.ts';
import type { ClusterKeys } from '../cluster/keys.ts';
import { clusterKeys } from '../cluster/keys.ts';
import { ChangefeedCache } from '../cluster/changefeed-cache.ts';
import { PrefixWatch } from '../cluster/prefix-watch.ts';
import type { PrefixSnapshot } from '../cluster/prefix-watch.ts';
import { EtcdSession } from '../cluster/session.ts';
import type { Logger } from '../log.ts';
import { pipelineDefaults } from '../pipeline/pipeline-runner.ts';
import type { PipelineBounds } from '../pipeline/bounds.ts';
import { metadataEtcd } from '../pipeline/bounds.ts';
import type { SourceStats } from '../pipeline/source.ts';
import { CaptureRpcServer } from '../rpc/capture-server.ts';
import { Metrics } from './metrics.ts';
import { EventLoopDelayMonitor } from './event-loop-delay.ts';
import { AgentHost } from './agent-host.ts';
import { ownerGateDefaults } from '../agent/owner-gate.ts';
import { readCaptureRecords } from './capture-records.ts';
import type { ChangefeedInfo, ChangefeedStatus } from './changefeed-info.ts';
import type { CaptureRecord, OwnerLimits } from './owner-role.ts';
import { OwnerRole, ownerDefaults } from './owner-role.ts';
import { splitKeySampler } from './changefeed-service.ts';
import type { ServerConfig } from './server-config.ts';

/** A capture that could not start: a port in use, or etcd not reached within the start timeout. */
export class StartError extends Error {
  override readonly name = 'StartError';

  constructor(
    message: string,
    /** True when the same start may succeed later (etcd was unreachable), false for a port in use. */
    readonly retryable: boolean,
    options: { readonly cause?: unknown } = {},
  ) {
    super(message, options);
  }
}

/** The longest wait between two tries to join the cluster while starting. */
const joinBackoffMaxMs = 2_000;
/** How long a start that gave up waits for its last try to fail once the etcd client is closed. */
const startAbortWaitMs = 2_000;

/** The HTTP API as the capture runs it. */
export interface ApiServer {
  /** Binds `host:port` (0 picks a port); resolves with the port. */
  listen(host: string, port: number): Promise<number>;
  close(): Promise<void>;
}

/** The state a capture shares with its API and owner role. */
export class Capture {
  id = '';
  readonly keys: ClusterKeys;
  readonly client: Etcd3;
  /** TLS and user/password of the metadata etcd, read from the config's files. */
  private readonly etcdSecurity: EtcdSecurity | undefined;
  captures = new Map<string, CaptureRecord>();
  /** Every changefeed's info and status with their mod revisions (see {@link ChangefeedCache}). */
  readonly changefeedCache: ChangefeedCache;
  owner: OwnerInfo | undefined;
  ownerRole: OwnerRole | undefined;
  grpcAddr = '';
  httpAddr = '';
  readonly metrics: Metrics;
  /** How late this process's event loop runs (lease keepalives run on it). */
  readonly eventLoopDelay: EventLoopDelayMonitor;
  /** Where this capture's sources and sinks may reach (checked at create/update and at open). */
  readonly bounds: PipelineBounds;
  private session: EtcdSession | undefined;
  private election: Election | undefined;
  private agents: AgentHost | undefined;
  private rpc: CaptureRpcServer | undefined;
  private api: ApiServer | undefined;
  private watches: PrefixWatch[] = [];
  /** The election watch, re-read on demand by messages of an owner not seen yet. */
  private ownerWatch: PrefixWatch | undefined;
  private flushTimer: NodeJS.Timeout | undefined;
  private restarting = false;
  private shuttingDown = false;
  private campaignTimer: NodeJS.Timeout | undefined;
  /** The TLS of this capture's servers and clients, read at start; undefined: plain text. */
  tls: CaptureTls | undefined;
  /** Aborts the backoff sleeps of a start that gave up. */
  private readonly startAbort = new AbortController();
  /** Keys under the captures prefix ignored (no lease, invalid), by the revision logged. */
  private ignoredCaptureKeys = new Map<string, string>();

  constructor(
    readonly config: ServerConfig,
    readonly version: string,
    readonly log: Logger,
    /** Builds the HTTP API over this capture (src/api, which depends on this layer, not the other way). */
    private readonly createApi: (capture: Capture) => ApiServer,
  ) {
    this.keys = clusterKeys(config.clusterId);
    const malformed = new Set<string>();
    this.changefeedCache = new ChangefeedCache(this.keys.changefeedsPrefix, (key) => {
      if (malformed.has(key)) return;
      malformed.add(key);
      this.log.warn({ key }, 'ignoring a malformed changefeed key');
    });
    // Reads the TLS and password files: a bad one throws an EtcdSecurityError naming its flag.
    this.etcdSecurity = metadataEtcdSecurity(config);
    this.client = createEtcdClient({ endpoints: config.etcdEndpoints, callTimeoutMs: 5_000, security: this.etcdSecurity });
    this.bounds = {
      fileSinkRoot: config.fileSinkRoot,
      allowedEndpoints: config.allowedEndpoints,
      metadata: metadataEtcd(this.client, config.etcdEndpoints),
      credentialsRoot: config.credentialsRoot,
    };
    this.eventLoopDelay = new EventLoopDelayMonitor(config.eventLoopDelayWindowMs);
    this.metrics = new Metrics({
      eventLoopDelay: () => this.eventLoopDelay.current(),
      changefeeds: () =>
        [...(this.ownerRole?.managed.values() ?? [])].map((m) => ({
          id: m.info.id,
          checkpointTs: m.coordinator.checkpointTs,
          resolvedTs: m.coordinator.resolvedTs,
          ...(this.ownerRole as OwnerRole).lagsMs(m.info.id, m.coordinator.checkpointTs, m.coordinator.resolvedTs),
          spansByState: m.coordinator.manager.stateCounts,
          movesInFlight: m.coordinator.manager.tasksInFlight.move,
          spanOperationsInFlight: m.coordinator.manager.operations.size,
          failingSpans: m.coordinator.failing().spans,
          stalledForMs: m.coordinator.lastWatermark.state === 'stalled' ? m.coordinator.lastWatermark.stalledForMs : 0,
          slowestSpanLagMs: this.slowestSpanLagMs(m.info.id),
        })),
      spansHeld: () => this.agents?.spansHeld() ?? new Map(),
      sourceWatchers: () => new Map([...(this.agents?.sourceStats() ?? new Map<string, SourceStats>())].map(([id, stats]) => [id, stats.watchers])),
      sourceBufferedBytes: () => new Map([...(this.agents?.sourceStats() ?? new Map<string, SourceStats>())].map(([id, stats]) => [id, stats.bufferedBytes])),
    });
  }

  /** The checkpoint lag of a coordinated changefeed's slowest span (its current primary's report). */
  private slowestSpanLagMs(id: string): number | null {
    const [slowest] = this.ownerRole?.slowestSpans(id, 1) ?? [];
    if (slowest === undefined || this.ownerRole === undefined) return null;
    return this.ownerRole.lagsMs(id, slowest.checkpointTs, slowest.resolvedTs).checkpointLagMs;
  }

  /**
   * Starts serving; resolves once registered and campaigning. Rejects with a
   * {@link StartError} after releasing everything it opened (servers, etcd client,
   * lease): the capture is then unusable.
   */
  async start(): Promise<void> {
    const timeoutMs = this.config.startTimeoutMs;
    let lastJoinError: unknown;
    const attempts = this.startAttempts((error) => {
      // etcd3's circuit breaker opens after a few failed calls and then fails every call
      // with "circuit breaker is open": the error that opened it is the cause to report.
      if (lastJoinError === undefined || !isBrokenCircuitError(error)) lastJoinError = error;
    });
    let timer: NodeJS.Timeout | undefined;
    const timedOut = new Promise<'timed out'>((resolve) => {
      timer = setTimeout(() => resolve('timed out'), timeoutMs);
    });
    try {
      const outcome = await Promise.race([attempts.then(() => 'started' as const), timedOut]);
      if (outcome === 'started') return;
      // gRPC says only "No connection established" when the TLS handshake is refused.
      const tlsProblem = this.etcdSecurity?.tls === undefined ? undefined : await tlsHandshakeProblem(this.config.etcdEndpoints[0] as string, this.etcdSecurity.tls);
      // The cause's text is not repeated here: pino and the CLI append every cause's.
      throw new StartError(
        `capture did not join the cluster at etcd ${this.config.etcdEndpoints.join(',')} within ${timeoutMs} ms (--start-timeout-ms)${tlsProblem === undefined ? '' : ` (${tlsProblem})`}`,
        true,
        // A join attempt that has not even failed yet (a slow connect) still gets a cause.
        { cause: lastJoinError ?? new Error(`no answer from etcd at ${this.config.etcdEndpoints.join(',')} yet`) },
      );
    } catch (error) {
      await this.abortStart(attempts);
      throw error instanceof StartError ? error : new StartError('capture failed to start', false, { cause: error });
    } finally {
      clearTimeout(timer);
    }
  }

  /** Listens, then joins, retrying etcd failures with backoff until {@link abortStart}. */
  private async startAttempts(onJoinError: (error: unknown) => void): Promise<void> {
    await this.listen();
    for (let attempt = 0; ; attempt++) {
      try {
        await this.join();
        return;
      } catch (error) {
        if (this.shuttingDown) throw error;
        onJoinError(error);
        // While the breaker is open every try fails the same way: once at warn is enough.
        this.log[isBrokenCircuitError(error) ? 'debug' : 'warn']({ err: error, attempt }, 'joining the cluster failed; retrying');
        await sleepFor(Math.min(joinBackoffMaxMs, 100 * 2 ** attempt), undefined, { signal: this.startAbort.signal });
      }
    }
  }

  /** Binds the gRPC and HTTP ports; a port in use is not retried. */
  private async listen(): Promise<void> {
    // What is registered is what other captures dial.
    const advertised = (host: string): string => this.config.advertiseHost ?? host;
    const config = this.config;
    if (config.tls !== undefined) {
      try {
        this.tls = CaptureTls.load(config.tls, config.tlsAllowedNames, config.tlsClientRoles);
      } catch (error) {
        throw new StartError((error as Error).message, false);
      }
    }
    this.rpc = new CaptureRpcServer((message, reply) => this.agents?.handle(message, reply), {
      spansPerMessageMax: config.rpcSpansPerMessageMax,
      messageBytesMax: config.rpcMessageBytesMax,
      streamsPerConnectionMax: config.rpcStreamsPerConnectionMax,
      streamsPerPeerMax: config.rpcStreamsPerPeerMax,
      connectionsPerPeerMax: config.rpcConnectionsPerPeerMax,
      spanIdsMax: config.rpcSpanIdsMax,
    }, {
      messageRefused: (reason) => this.metrics.rpcMessagesRefused.inc({ reason }),
      streamRefused: (reason) => this.metrics.rpcStreamsRefused.inc({ reason }),
    }, this.tls);
    const [grpcHost, grpcPort] = splitHostPort(this.config.grpcAddr);
    let port: number;
    try {
      port = await this.rpc.listen(grpcHost, grpcPort);
    } catch (error) {
      throw new StartError(`cannot listen for gRPC on ${this.config.grpcAddr}`, false, { cause: error });
    }
    this.grpcAddr = `${advertised(grpcHost)}:${port}`;
    this.api = this.createApi(this);
    const [httpHost, httpPort] = splitHostPort(this.config.httpAddr);
    try {
      port = await this.api.listen(httpHost, httpPort);
    } catch (error) {
      throw new StartError(`cannot listen for HTTP on ${this.config.httpAddr}`, false, { cause: error });
    }
    this.httpAddr = `${advertised(httpHost)}:${port}`;
  }

  /**
   * A start gave up: stops the tries, closes the etcd client first (so a call still in
   * flight fails now instead of at its deadline), waits a bounded time for the last try
   * to unwind, then releases what is left.
   */
  private async abortStart(attempts: Promise<void>): Promise<void> {
    this.shuttingDown = true;
    this.startAbort.abort();
    this.client.close();
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([attempts.catch(() => undefined), new Promise((resolve) => (timer = setTimeout(resolve, startAbortWaitMs)))]);
    clearTimeout(timer);
    await this.leave();
    await this.api?.close();
    await this.rpc?.close();
  }

  /**
   * Registers with a new id and lease, watches the cluster, campaigns. A join that fails
   * part way releases what it took (lease, watches, pipelines) before it rethrows, so the
   * next try starts clean.
   */
  private async join(): Promise<void> {
    try {
      await this.joinOnce();
    } catch (error) {
      await this.leave();
      throw error;
    }
  }

  private async joinOnce(): Promise<void> {
    this.id = `${randomBytes(6).toString('hex')}`;
    const log = this.log.child({ captureId: this.id });
    const session = new EtcdSession(this.client, this.config.leaseTtlS, log);
    this.session = session;
    await session.start();
    this.agents = new AgentHost(this.id, () => this.changefeeds, {
      ...pipelineDefaults,
      intervalMs: this.config.tickIntervalMs,
      batchEventsMax: this.config.pipelineBatchEvents,
      stepsInFlightMax: this.config.pipelineStepsInFlight,
      quietBatchMax: this.config.pipelineQuietBatch,
      quietChecksInFlightMax: this.config.pipelineQuietChecksInFlight,
      quietIntervalMs: this.config.pipelineQuietIntervalMs,
      stepRetriesMax: this.config.pipelineRetries,
      retryBackoffMaxMs: this.config.pipelineRetryBackoffMaxMs,
      stepDeadlineMs: this.config.pipelineStepDeadlineMs,
    }, log, {
      client: this.client,
      keys: this.keys,
      metrics: this.metrics,
      bounds: this.bounds,
    }, () => this.statuses, {
      spansHeldMax: this.config.captureSpansMax,
      ownerVerifyIntervalMs: ownerGateDefaults.verifyIntervalMs,
      progressSlowestMax: this.config.progressSlowestMax,
      progressSliceMax: this.config.progressSliceMax,
      splitKeyRateMin: this.config.splitRateMin,
    },
    // A message named an owner this capture has not seen in etcd: read the election now
    // rather than at the next watch event or resync (the owner's resend then gets through).
    () => this.ownerWatch?.trigger());
    const record: CaptureRecord = { id: this.id, grpcAddr: this.grpcAddr, httpAddr: this.httpAddr, version: this.version, startedAt: new Date().toISOString() };
    await this.client.put(this.keys.capture(this.id)).value(JSON.stringify(record)).lease(session.leaseId).exec();
    this.election = new Election(this.client, this.keys, session, this.id);
    const etcdError = (): void => this.metrics.etcdErrors.inc();
    this.ownerWatch = new PrefixWatch(this.client, this.keys.ownerPrefix, (s) => this.onOwner(s), log, 500, etcdError);
    this.watches = [
      new PrefixWatch(this.client, this.keys.capturesPrefix, (s) => this.onCaptures(s), log, 1_000, etcdError),
      // Checkpoints change this prefix many times a second: read it at most every 200 ms
      // (the owner's own writes reach its cache at once, without a read).
      new PrefixWatch(this.client, this.keys.changefeedsPrefix, (s) => this.onChangefeeds(s), log, 1_000, etcdError, 200),
      this.ownerWatch,
    ];
    for (const watch of this.watches) await watch.start();
    this.flushTimer = setInterval(() => this.agents?.flush(), this.config.tickIntervalMs);
    await this.election.campaign();
    // Fencing is armed only once the capture has joined: a session lost part way fails
    // this join instead (the caller tries again), never a second join running beside it.
    if (!session.alive) throw new Error('etcd session lost while joining');
    session.onLost(() => void this.selfFence());
    log.info({ grpcAddr: this.grpcAddr, httpAddr: this.httpAddr, leaseTtlS: this.config.leaseTtlS }, 'capture registered');
  }

  get changefeeds(): ReadonlyMap<string, ChangefeedInfo> {
    return this.changefeedCache.infos;
  }

  get statuses(): ReadonlyMap<string, ChangefeedStatus> {
    return this.changefeedCache.statuses;
  }

  /** True when this capture is the acting owner. */
  get isOwner(): boolean {
    return this.ownerRole?.active === true;
  }

  /** Hands ownership to another capture: resign, and campaign again a little later. */
  async resign(): Promise<void> {
    this.ownerRole?.stop('resigned');
    await this.election?.resign();
    if (this.campaignTimer !== undefined) clearTimeout(this.campaignTimer);
    this.campaignTimer = setTimeout(() => void this.election?.campaign().catch((error: unknown) => this.log.warn({ err: error }, 'campaign failed')), 1_000);
    this.campaignTimer.unref();
  }

  /** SIGTERM: drain own spans (bounded wait), resign, deregister, stop. */
  async shutdown(drainWaitMs: number): Promise<void> {
    if (this.shuttingDown) return;
    this.shuttingDown = true;
    this.log.info({ captureId: this.id }, 'shutting down');
    this.agents?.setStopping();
    const deadline = Date.now() + drainWaitMs;
    while (Date.now() < deadline && this.captures.size > 1) {
      const held = [...(this.agents?.spansHeld().values() ?? [])].reduce((a, b) => a + b, 0);
      if (held === 0) break;
      if (this.isOwner) await this.ownerRole?.drain(this.id);
      await sleep(100);
    }
    if (this.isOwner) await this.resign();
    await this.leave();
    await this.api?.close();
    await this.rpc?.close();
    this.client.close();
    this.eventLoopDelay.stop();
  }

  /** Stops what a join started; safe to call again, or after a join that failed part way. */
  private async leave(): Promise<void> {
    if (this.flushTimer !== undefined) clearInterval(this.flushTimer);
    this.flushTimer = undefined;
    this.ownerRole?.stop('leaving');
    this.ownerRole = undefined;
    const agents = this.agents;
    this.agents = undefined;
    await agents?.stopAll('leaving');
    for (const watch of this.watches) await watch.close();
    this.watches = [];
    const session = this.session;
    this.session = undefined;
    await session?.close();
  }

  /** The lease is gone: stop everything at once, then join again as a new capture. */
  private async selfFence(): Promise<void> {
    if (this.restarting || this.shuttingDown) return;
    this.restarting = true;
    this.log.error({ captureId: this.id }, 'session lost: self-fencing');
    const agents = this.agents;
    this.agents = undefined;
    this.ownerRole?.stop('session lost');
    this.ownerRole = undefined;
    await agents?.stopAll('session lost');
    if (this.flushTimer !== undefined) clearInterval(this.flushTimer);
    for (const watch of this.watches) await watch.close();
    this.watches = [];
    for (let attempt = 0; !this.shuttingDown; attempt++) {
      try {
        await this.join();
        break;
      } catch (error) {
        this.log.warn({ err: error, attempt }, 'rejoin failed');
        await sleep(Math.min(5_000, 200 * 2 ** attempt));
      }
    }
    this.restarting = false;
  }

  private onCaptures(snapshot: PrefixSnapshot): void {
    const { captures, ignored } = readCaptureRecords(snapshot.kvs, this.keys.capturesPrefix);
    // The prefix is re-read every second: each ignored version of a key is logged once,
    // and keys that are gone are forgotten, so the map stays as small as the prefix.
    const logged = new Map<string, string>();
    for (const record of ignored) {
      if (this.ignoredCaptureKeys.get(record.key) !== record.modRevision) {
        if (record.reason === 'no-lease') this.log.warn({ key: record.key }, 'ignoring capture record without a lease');
        else this.log.warn({ key: record.key, problem: record.detail }, 'ignoring invalid capture record');
      }
      logged.set(record.key, record.modRevision);
    }
    this.ignoredCaptureKeys = logged;
    this.captures = captures;
  }

  private onChangefeeds(snapshot: PrefixSnapshot): void {
    this.changefeedCache.applySnapshot(snapshot.revision, snapshot.kvs);
    this.agents?.sync();
  }

  private onOwner(snapshot: PrefixSnapshot): void {
    const owner = ownerOf(snapshot.kvs);
    const previous = this.owner;
    this.owner = owner;
    // Every snapshot, not only changes: agents of a capture that joined again start
    // knowing no owner, and hear none until they are told (they ignore older ones).
    if (owner !== undefined) this.agents?.observeOwner(owner.captureId, owner.revision);
    if (owner !== undefined && (previous === undefined || previous.revision !== owner.revision)) {
      this.log.info({ owner: owner.captureId, ownerRevision: owner.revision }, 'owner observed');
    }
    const election = this.election;
    const session = this.session;
    if (election === undefined || session === undefined || this.restarting || this.shuttingDown) return;
    if (election.isMe(owner) && owner !== undefined && this.ownerRole === undefined && session.alive) {
      this.metrics.elections.inc();
      const role: OwnerRole = new OwnerRole({
        owner,
        client: this.client,
        keys: this.keys,
        election,
        session,
        captures: () => this.captures,
        cache: this.changefeedCache,
        resign: () => this.resign(),
        sampleSplitKey: splitKeySampler(this.bounds),
        limits: ownerLimits(this.config),
        grpcCredentials: this.tls?.grpcChannelCredentials(),
        grpcChannelOptions: this.tls?.grpcChannelOptions(),
        log: this.log.child({ captureId: this.id, component: 'owner' }),
        metrics: this.metrics,
        onStop: () => {
          if (this.ownerRole === role) this.ownerRole = undefined;
        },
      });
      this.ownerRole = role;
      role.start();
    } else if (this.ownerRole !== undefined && !election.isMe(owner)) {
      this.ownerRole.stop('another capture owns');
    }
  }
}

function ownerLimits(config: ServerConfig): OwnerLimits {
  return {
    ...ownerDefaults,
    tickIntervalMs: config.tickIntervalMs,
    coordinator: {
      moveTasksInFlightMax: config.moveTasksInFlightMax,
      splitsInFlightMax: config.splitsInFlightMax,
      collectIntervalTicks: Math.max(1, Math.ceil((config.collectIntervalS * 1_000) / config.tickIntervalMs)),
      stallAfterMs: config.stallAfterMs,
      splitRateMin: config.splitRateMin,
      mergeRateMax: config.mergeRateMax,
      splitAfterTicks: Math.max(1, Math.ceil(config.splitAfterMs / config.tickIntervalMs)),
      mergeAfterTicks: Math.max(1, Math.ceil(config.mergeAfterMs / config.tickIntervalMs)),
      coolDownTicks: Math.ceil(config.splitCoolDownMs / config.tickIntervalMs),
      spansPerTableMax: config.splitSpansPerTableMax,
    },
    statusWriteTimeoutMs: config.statusWriteTimeoutMs,
    failureWindowMs: config.failureWindowMs,
    statusWriteIntervalMs: config.statusWriteIntervalMs,
    statusWritesPerSecondMax: config.statusWritesPerSecondMax,
    heartbeatsPerSecondMax: config.heartbeatsPerSecondMax,
    spanIdsMax: config.rpcSpanIdsMax,
  };
}

/** Splits `host:port` (port may be 0). */
export function splitHostPort(address: string): [string, number] {
  const index = address.lastIndexOf(':');
  const host = address.slice(0, index);
  const port = Number(address.slice(index + 1));
  return [host === '' ? '127.0.0.1' : host, port];
}

/** etcd3's breaker error (cockatiel's `BrokenCircuitError`, told apart by its marker field). */
function isBrokenCircuitError(error: unknown): boolean {
  return error instanceof Error && 'isBrokenCircuitError' in error;
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

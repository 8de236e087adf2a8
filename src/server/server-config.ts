/**
 * Configuration of `spanfeed server`: defaults, then a JSON config file (`--config`),
 * then environment variables (`SPANFEED_*`), then flags. Every value is validated with a
 * message that names it.
 */
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { parseArgs } from 'node:util';
import type { LogLevel } from '../log.ts';
import { logLevels } from '../log.ts';
import { coordinatorDefaults } from '../core/coordinator.ts';
import { ownerDefaults } from './owner-role.ts';
import { pipelineDefaults } from '../pipeline/pipeline-runner.ts';
import type { AllowedEndpoints } from '../pipeline/bounds.ts';
import { parseAllowedEndpoints } from '../pipeline/bounds.ts';
import { captureRpcDefaults } from '../rpc/capture-server.ts';
import { spanIdsPerStreamLimit } from '../rpc/span-ids.ts';
import { progressEntriesPerReportMax } from '../rpc/codec.ts';
import { agentDefaults } from '../agent/agent.ts';
import type { Role } from '../security/role.ts';
import { eventLoopDelayDefaults } from './event-loop-delay.ts';
import type { TlsFiles } from '../security/tls-files.ts';
import { TlsFileError, parseNameList } from '../security/tls-files.ts';

export interface ServerConfig {
  readonly etcdEndpoints: readonly string[];
  readonly clusterId: string;
  readonly grpcAddr: string;
  readonly httpAddr: string;
  readonly leaseTtlS: number;
  readonly logLevel: LogLevel;
  readonly tickIntervalMs: number;
  readonly moveTasksInFlightMax: number;
  /** Span splits and merges in flight per changefeed (more are refused with 409 operations-bound). */
  readonly splitsInFlightMax: number;
  readonly drainWaitMs: number;
  /** Seconds between a capture's periodic full-status collections (a backstop; see coordinatorDefaults). */
  readonly collectIntervalS: number;
  /**
   * How long a capture may take to start (listen, reach etcd, register) before it gives
   * up and exits non-zero; etcd is retried meanwhile, a port in use fails at once.
   */
  readonly startTimeoutMs: number;
  /** Events read and written per pipeline step. */
  readonly pipelineBatchEvents: number;
  /** Pipeline steps running at once per changefeed on this capture. */
  readonly pipelineStepsInFlight: number;
  /** Quiet spans one bulk check moves on (0: none, every span takes steps). */
  readonly pipelineQuietBatch: number;
  /** Bulk checks of quiet spans at once per changefeed on this capture. */
  readonly pipelineQuietChecksInFlight: number;
  /** The least time between two checks of one quiet span. */
  readonly pipelineQuietIntervalMs: number;
  /** Failed steps a pipeline retries in place before it gives its span back. */
  readonly pipelineRetries: number;
  /** The longest wait between two of those tries. */
  readonly pipelineRetryBackoffMaxMs: number;
  /** The longest one source or sink call may take before it counts as a failed step. */
  readonly pipelineStepDeadlineMs: number;
  /** The host others reach this capture at (registered); default: the listen host. */
  readonly advertiseHost: string | undefined;
  /** As owner: the deadline of one checkpoint write; a newer write replaces a stuck one. */
  readonly statusWriteTimeoutMs: number;
  /** As owner: fewest ms between two checkpoint writes of one changefeed. */
  readonly statusWriteIntervalMs: number;
  /** As owner: checkpoint writes per second over all changefeeds. */
  readonly statusWritesPerSecondMax: number;
  /** As owner: heartbeats per second over all changefeeds and captures. */
  readonly heartbeatsPerSecondMax: number;
  /** As owner: how long spans may keep failing without the checkpoint moving before the changefeed fails. */
  readonly failureWindowMs: number;
  /**
   * As owner: how long a changefeed's checkpoint may stand still while its resolved-ts is
   * past it before its watermark says `stalled`; 0 turns that off.
   */
  readonly stallAfterMs: number;
  /** The window of the event-loop delay figures (metrics, status): the last closed one is shown. */
  readonly eventLoopDelayWindowMs: number;
  /** The HTTP API's bearer token file (`<token> <role>` a line); undefined: no tokens asked for. */
  readonly authTokenFile: string | undefined;
  /** Allows serving HTTP without a token file on an address other than loopback. */
  readonly insecure: boolean;
  /** Absolute: the file sink writes only under it. */
  readonly fileSinkRoot: string;
  /** Hosts etcd and PostgreSQL sources and sinks may reach; undefined: any. */
  readonly allowedEndpoints: AllowedEndpoints | undefined;
  /** gRPC: spans (adds + removes, or a heartbeat's) in one owner message; a bigger one is refused whole. */
  readonly rpcSpansPerMessageMax: number;
  /** gRPC: bytes of one received message. */
  readonly rpcMessageBytesMax: number;
  /** gRPC: span ids this process assigns per stream before it starts over (0: spans always in full). */
  readonly rpcSpanIdsMax: number;
  /** gRPC: concurrent streams on one connection. */
  readonly rpcStreamsPerConnectionMax: number;
  /** gRPC: concurrent streams from one peer host. */
  readonly rpcStreamsPerPeerMax: number;
  /** gRPC: open connections from one peer host. */
  readonly rpcConnectionsPerPeerMax: number;
  /** Spans this capture holds over every changefeed; adds past it are refused. */
  readonly captureSpansMax: number;
  /**
   * TLS of this capture's HTTP and gRPC servers and of its gRPC clients (as owner): with
   * it, gRPC between captures is mutual TLS. Undefined: plain text.
   */
  readonly tls: TlsFiles | undefined;
  /** With `tls`: a gRPC peer's certificate must carry one of these names; undefined: any the CA signed. */
  readonly tlsAllowedNames: ReadonlySet<string> | undefined;
  /** With `tls`: HTTP clients showing a certificate (signed by the CA) with one of these names get its role. */
  readonly tlsClientRoles: ReadonlyMap<string, Role> | undefined;
  /** TLS to the metadata etcd: its CA, and a client certificate when etcd asks for one. */
  readonly etcdTls: { readonly caFile: string; readonly certFile: string | undefined; readonly keyFile: string | undefined } | undefined;
  /** etcd user (with `etcdPasswordFile`). */
  readonly etcdUser: string | undefined;
  /** A file holding the etcd user's password (its first line). */
  readonly etcdPasswordFile: string | undefined;
  /** Absolute: files a source or sink URI names (CA, certificate, key, password) must lie under it. */
  readonly credentialsRoot: string;
  /** Per-span progress: the slowest primaries each report names (and the most `GET .../spans/slowest` answers). */
  readonly progressSlowestMax: number;
  /** Per-span progress: the other primaries each report refreshes, round-robin. */
  readonly progressSliceMax: number;
  /**
   * The split policy of changefeeds with `autoSplit` (events/s and ms; the owner turns
   * ms into ticks). Captures send a split key for spans at or above `splitRateMin`.
   */
  readonly splitRateMin: number;
  readonly mergeRateMax: number;
  readonly splitAfterMs: number;
  readonly mergeAfterMs: number;
  readonly splitCoolDownMs: number;
  readonly splitSpansPerTableMax: number;
}

/** A bad flag, variable or config file: the CLI prints it and exits 2. */
export class ConfigError extends Error {
  override readonly name = 'ConfigError';
  readonly retryable = false;
}

export const serverDefaults: ServerConfig = {
  etcdEndpoints: ['127.0.0.1:2379'],
  clusterId: 'default',
  grpcAddr: '127.0.0.1:0',
  httpAddr: '127.0.0.1:0',
  leaseTtlS: 10,
  logLevel: 'info',
  tickIntervalMs: 50,
  moveTasksInFlightMax: 10,
  splitsInFlightMax: coordinatorDefaults.splitsInFlightMax,
  drainWaitMs: 30_000,
  collectIntervalS: 1_800,
  startTimeoutMs: 30_000,
  pipelineBatchEvents: pipelineDefaults.batchEventsMax,
  pipelineQuietBatch: pipelineDefaults.quietBatchMax,
  pipelineQuietChecksInFlight: pipelineDefaults.quietChecksInFlightMax,
  pipelineQuietIntervalMs: pipelineDefaults.quietIntervalMs,
  pipelineStepsInFlight: pipelineDefaults.stepsInFlightMax,
  pipelineRetries: pipelineDefaults.stepRetriesMax,
  pipelineRetryBackoffMaxMs: pipelineDefaults.retryBackoffMaxMs,
  pipelineStepDeadlineMs: pipelineDefaults.stepDeadlineMs,
  advertiseHost: undefined,
  statusWriteTimeoutMs: ownerDefaults.statusWriteTimeoutMs,
  failureWindowMs: ownerDefaults.failureWindowMs,
  statusWriteIntervalMs: ownerDefaults.statusWriteIntervalMs,
  statusWritesPerSecondMax: ownerDefaults.statusWritesPerSecondMax,
  heartbeatsPerSecondMax: ownerDefaults.heartbeatsPerSecondMax,
  stallAfterMs: coordinatorDefaults.stallAfterMs,
  eventLoopDelayWindowMs: eventLoopDelayDefaults.windowMs,
  authTokenFile: undefined,
  insecure: false,
  /** Relative: resolved against the working directory when the config is parsed. */
  fileSinkRoot: 'spanfeed-data',
  allowedEndpoints: undefined,
  rpcSpansPerMessageMax: captureRpcDefaults.spansPerMessageMax,
  rpcSpanIdsMax: captureRpcDefaults.spanIdsMax,
  rpcMessageBytesMax: captureRpcDefaults.messageBytesMax,
  rpcStreamsPerConnectionMax: captureRpcDefaults.streamsPerConnectionMax,
  rpcStreamsPerPeerMax: captureRpcDefaults.streamsPerPeerMax,
  rpcConnectionsPerPeerMax: captureRpcDefaults.connectionsPerPeerMax,
  captureSpansMax: 1_000_000,
  tls: undefined,
  tlsAllowedNames: undefined,
  tlsClientRoles: undefined,
  etcdTls: undefined,
  etcdUser: undefined,
  etcdPasswordFile: undefined,
  /** Relative: resolved against the working directory when the config is parsed. */
  credentialsRoot: 'spanfeed-credentials',
  progressSlowestMax: agentDefaults.progressSlowestMax,
  progressSliceMax: agentDefaults.progressSliceMax,
  splitRateMin: coordinatorDefaults.splitRateMin,
  mergeRateMax: coordinatorDefaults.mergeRateMax,
  splitAfterMs: coordinatorDefaults.splitAfterTicks * 50,
  mergeAfterMs: coordinatorDefaults.mergeAfterTicks * 50,
  splitCoolDownMs: coordinatorDefaults.coolDownTicks * 50,
  splitSpansPerTableMax: coordinatorDefaults.spansPerTableMax,
};

/** Option name (flag without dashes) -> [env var, config file key]. */
const options = {
  etcd: ['SPANFEED_ETCD', 'etcd'],
  cluster: ['SPANFEED_CLUSTER', 'cluster'],
  grpc: ['SPANFEED_GRPC', 'grpc'],
  http: ['SPANFEED_HTTP', 'http'],
  'lease-ttl-s': ['SPANFEED_LEASE_TTL_S', 'leaseTtlS'],
  'log-level': ['SPANFEED_LOG_LEVEL', 'logLevel'],
  'tick-ms': ['SPANFEED_TICK_MS', 'tickMs'],
  'moves-in-flight': ['SPANFEED_MOVES_IN_FLIGHT', 'movesInFlight'],
  'splits-in-flight': ['SPANFEED_SPLITS_IN_FLIGHT', 'splitsInFlight'],
  'drain-wait-ms': ['SPANFEED_DRAIN_WAIT_MS', 'drainWaitMs'],
  'collect-interval-s': ['SPANFEED_COLLECT_INTERVAL_S', 'collectIntervalS'],
  'start-timeout-ms': ['SPANFEED_START_TIMEOUT_MS', 'startTimeoutMs'],
  'pipeline-batch-events': ['SPANFEED_PIPELINE_BATCH_EVENTS', 'pipelineBatchEvents'],
  'pipeline-quiet-batch': ['SPANFEED_PIPELINE_QUIET_BATCH', 'pipelineQuietBatch'],
  'pipeline-quiet-checks-in-flight': ['SPANFEED_PIPELINE_QUIET_CHECKS_IN_FLIGHT', 'pipelineQuietChecksInFlight'],
  'pipeline-quiet-interval-ms': ['SPANFEED_PIPELINE_QUIET_INTERVAL_MS', 'pipelineQuietIntervalMs'],
  'pipeline-steps-in-flight': ['SPANFEED_PIPELINE_STEPS_IN_FLIGHT', 'pipelineStepsInFlight'],
  'pipeline-retries': ['SPANFEED_PIPELINE_RETRIES', 'pipelineRetries'],
  'pipeline-retry-backoff-max-ms': ['SPANFEED_PIPELINE_RETRY_BACKOFF_MAX_MS', 'pipelineRetryBackoffMaxMs'],
  'pipeline-step-deadline-ms': ['SPANFEED_PIPELINE_STEP_DEADLINE_MS', 'pipelineStepDeadlineMs'],
  'advertise-host': ['SPANFEED_ADVERTISE_HOST', 'advertiseHost'],
  'status-write-timeout-ms': ['SPANFEED_STATUS_WRITE_TIMEOUT_MS', 'statusWriteTimeoutMs'],
  'failure-window-ms': ['SPANFEED_FAILURE_WINDOW_MS', 'failureWindowMs'],
  'status-write-interval-ms': ['SPANFEED_STATUS_WRITE_INTERVAL_MS', 'statusWriteIntervalMs'],
  'status-writes-per-s': ['SPANFEED_STATUS_WRITES_PER_S', 'statusWritesPerSecondMax'],
  'heartbeats-per-s': ['SPANFEED_HEARTBEATS_PER_S', 'heartbeatsPerSecondMax'],
  'stall-after-ms': ['SPANFEED_STALL_AFTER_MS', 'stallAfterMs'],
  'event-loop-delay-window-ms': ['SPANFEED_EVENT_LOOP_DELAY_WINDOW_MS', 'eventLoopDelayWindowMs'],
  'auth-token-file': ['SPANFEED_AUTH_TOKEN_FILE', 'authTokenFile'],
  insecure: ['SPANFEED_INSECURE', 'insecure'],
  'file-sink-root': ['SPANFEED_FILE_SINK_ROOT', 'fileSinkRoot'],
  'allowed-endpoints': ['SPANFEED_ALLOWED_ENDPOINTS', 'allowedEndpoints'],
  'rpc-spans-per-message': ['SPANFEED_RPC_SPANS_PER_MESSAGE', 'rpcSpansPerMessage'],
  'rpc-span-ids': ['SPANFEED_RPC_SPAN_IDS', 'rpcSpanIds'],
  'rpc-message-bytes': ['SPANFEED_RPC_MESSAGE_BYTES', 'rpcMessageBytes'],
  'rpc-streams-per-connection': ['SPANFEED_RPC_STREAMS_PER_CONNECTION', 'rpcStreamsPerConnection'],
  'rpc-streams-per-peer': ['SPANFEED_RPC_STREAMS_PER_PEER', 'rpcStreamsPerPeer'],
  'rpc-connections-per-peer': ['SPANFEED_RPC_CONNECTIONS_PER_PEER', 'rpcConnectionsPerPeer'],
  'capture-spans': ['SPANFEED_CAPTURE_SPANS', 'captureSpans'],
  'tls-ca': ['SPANFEED_TLS_CA', 'tlsCa'],
  'tls-cert': ['SPANFEED_TLS_CERT', 'tlsCert'],
  'tls-key': ['SPANFEED_TLS_KEY', 'tlsKey'],
  'tls-allowed-names': ['SPANFEED_TLS_ALLOWED_NAMES', 'tlsAllowedNames'],
  'tls-client-roles': ['SPANFEED_TLS_CLIENT_ROLES', 'tlsClientRoles'],
  'etcd-ca': ['SPANFEED_ETCD_CA', 'etcdCa'],
  'etcd-cert': ['SPANFEED_ETCD_CERT', 'etcdCert'],
  'etcd-key': ['SPANFEED_ETCD_KEY', 'etcdKey'],
  'etcd-user': ['SPANFEED_ETCD_USER', 'etcdUser'],
  'etcd-password-file': ['SPANFEED_ETCD_PASSWORD_FILE', 'etcdPasswordFile'],
  'credentials-root': ['SPANFEED_CREDENTIALS_ROOT', 'credentialsRoot'],
  'progress-slowest': ['SPANFEED_PROGRESS_SLOWEST', 'progressSlowest'],
  'progress-slice': ['SPANFEED_PROGRESS_SLICE', 'progressSlice'],
  'split-rate-min': ['SPANFEED_SPLIT_RATE_MIN', 'splitRateMin'],
  'merge-rate-max': ['SPANFEED_MERGE_RATE_MAX', 'mergeRateMax'],
  'split-after-ms': ['SPANFEED_SPLIT_AFTER_MS', 'splitAfterMs'],
  'merge-after-ms': ['SPANFEED_MERGE_AFTER_MS', 'mergeAfterMs'],
  'split-cool-down-ms': ['SPANFEED_SPLIT_COOL_DOWN_MS', 'splitCoolDownMs'],
  'split-spans-per-table': ['SPANFEED_SPLIT_SPANS_PER_TABLE', 'splitSpansPerTable'],
} as const;

/** The options that are flags without a value (`--insecure`); true or false in env and config. */
const booleanOptions: ReadonlySet<string> = new Set(['insecure']);

type OptionName = keyof typeof options;

export const serverUsage = `spanfeed server [flags]

Starts a capture. Flags (also from SPANFEED_* variables or a JSON --config file):
  --etcd <host:port,...>    etcd endpoints, host:port or https://host:port (default 127.0.0.1:2379)
  --cluster <id>            cluster id, the etcd key prefix /spanfeed/<id> (default "default")
  --grpc <host:port>        gRPC listen address; port 0 picks one (default 127.0.0.1:0)
  --http <host:port>        HTTP API listen address; port 0 picks one (default 127.0.0.1:0)
  --lease-ttl-s <n>         etcd session TTL in seconds, 2 or more (default 10)
  --log-level <level>       fatal, error, warn, info, debug, trace, silent (default info)
  --tick-ms <n>             owner tick interval, 10-1000 ms (default 50)
  --moves-in-flight <n>     moves in flight per changefeed, 1-10000 (default 10)
  --splits-in-flight <n>    span splits and merges in flight per changefeed, 1-1000 (default 4);
                            each holds the changefeed's watermark while it runs
  --drain-wait-ms <n>       on SIGTERM, how long to wait for spans to move away (default 30000)
  --collect-interval-s <n>  seconds between full-status collections of a capture, 1-86400 (default 1800);
                            a backstop: disagreements and stalls ask for one at once
  --start-timeout-ms <n>    how long to keep trying to reach etcd and register before exiting
                            non-zero; a port in use exits at once, 100-600000 (default 30000)
  --pipeline-batch-events <n>
                            events read and written per span pipeline step, 1-100000 (default 1000)
  --pipeline-steps-in-flight <n>
                            span pipeline steps at once per changefeed, 1-10000 (default 256)
  --pipeline-quiet-batch <n>
                            quiet spans (streaming, nothing to write) moved on by one bulk
                            check of the source instead of a step each; 0: every span takes
                            steps, 0-100000 (default 4096)
  --pipeline-quiet-checks-in-flight <n>
                            those checks at once per changefeed, 1-64 (default 4)
  --pipeline-quiet-interval-ms <n>
                            the least time between two checks of one quiet span, 10-60000
                            (default 500)
  --pipeline-retries <n>    failed steps (a sink or source outage) a span pipeline retries in
                            place, with exponential backoff from 100 ms, before it gives the
                            span back to the owner to place again, 0-1000 (default 10)
  --pipeline-retry-backoff-max-ms <n>
                            the longest wait between two of those tries, 100-600000 (default 5000)
  --pipeline-step-deadline-ms <n>
                            the longest one source or sink call may take; past it the step
                            counts as failed (retried, then the span given back), and a stop
                            or DELETE no longer waits for it, 100-3600000 (default 30000)
  --advertise-host <host>   the host other captures reach this one at (default: the listen host;
                            set it when listening on 0.0.0.0, e.g. in a container)
  --failure-window-ms <n>   as owner, how long a changefeed's spans may keep failing (retrying,
                            given back, placed again) without its checkpoint moving before it
                            fails with their last error, 1000-604800000 (default 1800000)
  --status-write-timeout-ms <n>
                            as owner, the deadline of one checkpoint write; a newer write then
                            replaces a stuck one, 100-60000 (default 500)
  --status-write-interval-ms <n>
                            as owner, fewest ms between two checkpoint writes of one
                            changefeed, 10-60000 (default 100)
  --status-writes-per-s <n> as owner, checkpoint writes a second over all changefeeds; with
                            many changefeeds each one's interval widens, 1-100000 (default 500)
  --heartbeats-per-s <n>    as owner, heartbeats a second over all changefeeds and captures,
                            1-1000000 (default 4000)
  --stall-after-ms <n>      as owner, how long a changefeed's checkpoint may stand still while
                            its resolved-ts is past it before its watermark says "stalled"
                            (a hung or failing sink); 0 turns it off, else 100-86400000
                            (default 30000)
  --event-loop-delay-window-ms <n>
                            the window of spanfeed_event_loop_delay_seconds and of the status's
                            eventLoopDelay: figures of the last closed window, 1000-600000
                            (default 10000)
  --auth-token-file <file>  bearer tokens for the HTTP API, one "<token> <role>" a line (roles
                            read and admin, # comments); every /api/v1/* request but health,
                            and /metrics, then needs "Authorization: Bearer <token>". Read
                            again on SIGHUP (a bad file then keeps the tokens in use)
  --insecure                allow an HTTP address other than loopback without --auth-token-file
  --file-sink-root <dir>    file sinks may write only under this directory (symlinks resolved;
                            never /proc, /sys, /dev); created when missing
                            (default ./spanfeed-data)
  --allowed-endpoints <list>
                            etcd and PostgreSQL sources and sinks may reach only these:
                            host, host:port, *.domain or CIDR blocks, comma-separated; names
                            are compared as written (default: any)
  --rpc-spans-per-message <n>
                            spans (adds + removes, or a heartbeat's) one owner message may carry;
                            a bigger message is refused whole; at least the owner's 1024,
                            1024-1000000 (default 1024)
  --rpc-message-bytes <n>   bytes of one received gRPC message, 65536-268435456 (default 4194304)
  --rpc-span-ids <n>        spans numbered per gRPC stream, so they travel as ids after their
                            first mention; the numbering starts over when full; 0: always in
                            full, 0-2097152 (default 1048576)
  --rpc-streams-per-connection <n>
                            concurrent gRPC streams on one connection, 1-10000 (default 16)
  --rpc-streams-per-peer <n>
                            concurrent gRPC streams from one peer host, 1-100000 (default 64)
  --rpc-connections-per-peer <n>
                            open gRPC connections from one peer host, 1-100000 (default 64)
  --capture-spans <n>       spans this capture may hold over every changefeed; adds past it are
                            refused (counted in spanfeed_rpc_spans_refused_total),
                            1-100000000 (default 1000000)
  --tls-ca <file>           CA certificate (PEM) that signs every capture's certificate; with
  --tls-cert <file>         --tls-cert and --tls-key (all three or none), the HTTP API is https
  --tls-key <file>          and gRPC between captures is mutual TLS (both sides show a
                            certificate the CA signed)
  --tls-allowed-names <list>
                            gRPC peers must show a certificate with one of these names (subject
                            CN or DNS alt name), comma-separated (default: any the CA signed)
  --tls-client-roles <list> HTTP clients showing a certificate the CA signed get a role by its
                            name: name=read|admin, comma-separated; counts as auth configured
  --etcd-ca <file>          CA of the metadata etcd's server certificate: etcd is dialled over
                            https (also implied by https:// endpoints, which need it)
  --etcd-cert <file>        client certificate for etcd (with --etcd-key and --etcd-ca)
  --etcd-key <file>         its key
  --etcd-user <name>        etcd user (with --etcd-password-file)
  --etcd-password-file <file>
                            file whose first line is the etcd user's password
  --credentials-root <dir>  files a source or sink URI names (ca, cert, key, passwordFile
                            parameters) must lie under this directory (symlinks resolved)
                            (default ./spanfeed-credentials)
  --progress-slowest <n>    per-span progress: each report names the capture's n slowest spans
                            (lowest checkpoint), the most GET .../spans/slowest?k= answers;
                            give every capture the same, 1-1000 (default 32)
  --progress-slice <n>      per-span progress: each report also refreshes n other spans,
                            round-robin, so every span's shown checkpoint is at most
                            spans/n reports old, 0-7192 (default 1024; with the slowest, at
                            most 8192 entries a report)
  --split-rate-min <n>      changefeeds with "autoSplit": true split a span writing more than
                            n events/s for --split-after-ms at the median of its recent keys;
                            captures send that key for spans at or above n, 1-10000000
                            (default 1000)
  --merge-rate-max <n>      ... and merge two neighbours on one capture writing less than n
                            events/s together for --merge-after-ms; at most half of
                            --split-rate-min (default 200)
  --split-after-ms <n>      how long a span stays above --split-rate-min before it is split,
                            100-3600000 (default 10000)
  --merge-after-ms <n>      how long two neighbours stay below --merge-rate-max before they
                            merge, 100-86400000 (default 60000)
  --split-cool-down-ms <n>  a span made by a split or merge (or new to the owner) merges only
                            after this, 0-86400000 (default 60000)
  --split-spans-per-table <n>
                            the split policy splits no table that has n spans, 1-100000
                            (default 1024)
  --config <file>           JSON file with the same keys in camelCase (etcd, cluster, ...)
`;

function intIn(name: string, raw: string, min: number, max: number): number {
  const value = Number(raw);
  if (!/^\d+$/.test(raw) || !Number.isSafeInteger(value) || value < min || value > max) {
    throw new ConfigError(`${name} must be an integer from ${min} to ${max}, got ${JSON.stringify(raw)}`);
  }
  return value;
}

function address(name: string, raw: string): string {
  const match = /^([a-zA-Z0-9.-]+|\[[0-9a-fA-F:]+\]):(\d{1,5})$/.exec(raw);
  if (match === null || Number(match[2]) > 65535) throw new ConfigError(`${name} must be host:port, got ${JSON.stringify(raw)}`);
  return raw;
}

/** Parses argv (after `server`) and the environment into a validated config. */
export function parseServerConfig(argv: readonly string[], env: NodeJS.ProcessEnv): ServerConfig {
  let parsed;
  try {
    parsed = parseArgs({
      args: [...argv],
      options: {
        ...Object.fromEntries(Object.keys(options).map((name) => [name, { type: booleanOptions.has(name) ? ('boolean' as const) : ('string' as const) }])),
        config: { type: 'string' },
      },
      strict: true,
      allowPositionals: false,
    });
  } catch (error) {
    throw new ConfigError((error as Error).message);
  }
  const values = Object.fromEntries(Object.entries(parsed.values).map(([k, v]) => [k, typeof v === 'boolean' ? String(v) : v])) as Record<string, string | undefined>;
  const raw = new Map<OptionName, string>();
  if (values.config !== undefined) {
    let file: unknown;
    try {
      file = JSON.parse(readFileSync(values.config, 'utf8'));
    } catch (error) {
      throw new ConfigError(`cannot read config file ${values.config}: ${(error as Error).message}`);
    }
    if (typeof file !== 'object' || file === null || Array.isArray(file)) throw new ConfigError(`config file ${values.config} must hold a JSON object`);
    const byKey = new Map(Object.entries(options).map(([name, [, key]]) => [key as string, name as OptionName]));
    for (const [key, value] of Object.entries(file)) {
      const name = byKey.get(key);
      if (name === undefined) throw new ConfigError(`unknown key "${key}" in config file ${values.config}`);
      if (booleanOptions.has(name) && typeof value === 'boolean') {
        raw.set(name, String(value));
        continue;
      }
      if (typeof value !== 'string' && typeof value !== 'number') throw new ConfigError(`config key "${key}" must be a string or a number`);
      raw.set(name, String(value));
    }
  }
  for (const [name, [envName]] of Object.entries(options) as [OptionName, readonly [string, string]][]) {
    const fromEnv = env[envName];
    if (fromEnv !== undefined && fromEnv !== '') raw.set(name, fromEnv);
    const fromFlag = values[name];
    if (fromFlag !== undefined) raw.set(name, fromFlag);
  }
  const get = (name: OptionName): string | undefined => raw.get(name);
  const etcd = get('etcd');
  const logLevel = get('log-level') ?? serverDefaults.logLevel;
  if (!(logLevels as readonly string[]).includes(logLevel)) throw new ConfigError(`--log-level must be one of ${logLevels.join(', ')}`);
  const cluster = get('cluster') ?? serverDefaults.clusterId;
  if (!/^[a-zA-Z0-9][a-zA-Z0-9._-]{0,63}$/.test(cluster)) throw new ConfigError('--cluster must be 1-64 letters, digits, ".", "_" or "-"');
  const httpAddr = address('--http', get('http') ?? serverDefaults.httpAddr);
  const authTokenFile = get('auth-token-file');
  if (authTokenFile === '') throw new ConfigError('--auth-token-file must name a file');
  const insecure = booleanValue('--insecure', get('insecure'));
  const tls = tlsFiles(get('tls-ca'), get('tls-cert'), get('tls-key'));
  const tlsAllowedNames = withTls('--tls-allowed-names', get('tls-allowed-names'), tls, (raw) => nameList('--tls-allowed-names', raw));
  const tlsClientRoles = withTls('--tls-client-roles', get('tls-client-roles'), tls, clientRoles);
  if (tlsClientRoles !== undefined) {
    // A capture may pass a caller's role on to the owner: an operator's certificate must
    // never pass for a capture's, so the two name lists must be set and apart.
    if (tlsAllowedNames === undefined) throw new ConfigError('--tls-client-roles needs --tls-allowed-names (the captures\' names, to tell them from operators)');
    const both = [...tlsClientRoles.keys()].filter((name) => tlsAllowedNames.has(name));
    if (both.length > 0) throw new ConfigError(`${both.join(', ')} may not be both in --tls-allowed-names and in --tls-client-roles`);
  }
  if (authTokenFile === undefined && tlsClientRoles === undefined && !insecure && !isLoopbackAddress(httpAddr)) {
    throw new ConfigError(`--http ${httpAddr} is not a loopback address and no --auth-token-file or --tls-client-roles is set: anyone who reaches it could change the cluster; give one, or --insecure to serve it without auth anyway`);
  }
  const grpcAddr = address('--grpc', get('grpc') ?? serverDefaults.grpcAddr);
  if (tls === undefined && !insecure && !isLoopbackAddress(grpcAddr)) {
    throw new ConfigError(`--grpc ${grpcAddr} is not a loopback address and no --tls-ca/--tls-cert/--tls-key are set: anyone who reaches it could pose as a capture's owner; give them, or --insecure to serve gRPC in plain text anyway`);
  }
  const endpoints = etcd === undefined ? [...serverDefaults.etcdEndpoints] : etcd.split(',').map((e) => e.trim());
  const https = endpoints.filter((e) => e.startsWith('https://')).length;
  if (https > 0 && https < endpoints.length) throw new ConfigError('--etcd endpoints must be all https:// or none');
  const etcdTls = etcdTlsFiles(get('etcd-ca'), get('etcd-cert'), get('etcd-key'));
  if (https > 0 && etcdTls === undefined) throw new ConfigError('--etcd https:// endpoints need --etcd-ca (the CA of etcd\'s server certificate)');
  const etcdUser = get('etcd-user');
  const etcdPasswordFile = get('etcd-password-file');
  if ((etcdUser === undefined) !== (etcdPasswordFile === undefined)) throw new ConfigError('--etcd-user and --etcd-password-file go together');
  if (etcdUser !== undefined && !/^[\x21-\x7e]{1,128}$/.test(etcdUser)) throw new ConfigError('--etcd-user must be 1-128 printable characters without spaces');
  return {
    etcdEndpoints: endpoints.map((e) => address('--etcd', e.replace(/^https?:\/\//, ''))),
    tls,
    tlsAllowedNames,
    tlsClientRoles,
    etcdTls,
    etcdUser,
    etcdPasswordFile: etcdPasswordFile === undefined ? undefined : resolve(etcdPasswordFile),
    credentialsRoot: directory('--credentials-root', get('credentials-root') ?? serverDefaults.credentialsRoot),
    clusterId: cluster,
    grpcAddr,
    httpAddr,
    leaseTtlS: intIn('--lease-ttl-s', get('lease-ttl-s') ?? String(serverDefaults.leaseTtlS), 2, 3600),
    logLevel: logLevel as LogLevel,
    tickIntervalMs: intIn('--tick-ms', get('tick-ms') ?? String(serverDefaults.tickIntervalMs), 10, 1000),
    moveTasksInFlightMax: intIn('--moves-in-flight', get('moves-in-flight') ?? String(serverDefaults.moveTasksInFlightMax), 1, 10_000),
    splitsInFlightMax: intIn('--splits-in-flight', get('splits-in-flight') ?? String(serverDefaults.splitsInFlightMax), 1, 1_000),
    drainWaitMs: intIn('--drain-wait-ms', get('drain-wait-ms') ?? String(serverDefaults.drainWaitMs), 0, 600_000),
    collectIntervalS: intIn('--collect-interval-s', get('collect-interval-s') ?? String(serverDefaults.collectIntervalS), 1, 86_400),
    startTimeoutMs: intIn('--start-timeout-ms', get('start-timeout-ms') ?? String(serverDefaults.startTimeoutMs), 100, 600_000),
    pipelineQuietBatch: intIn('--pipeline-quiet-batch', get('pipeline-quiet-batch') ?? String(serverDefaults.pipelineQuietBatch), 0, 100_000),
    pipelineQuietChecksInFlight: intIn('--pipeline-quiet-checks-in-flight', get('pipeline-quiet-checks-in-flight') ?? String(serverDefaults.pipelineQuietChecksInFlight), 1, 64),
    pipelineQuietIntervalMs: intIn('--pipeline-quiet-interval-ms', get('pipeline-quiet-interval-ms') ?? String(serverDefaults.pipelineQuietIntervalMs), 10, 60_000),
    pipelineBatchEvents: intIn('--pipeline-batch-events', get('pipeline-batch-events') ?? String(serverDefaults.pipelineBatchEvents), 1, 100_000),
    pipelineStepsInFlight: intIn('--pipeline-steps-in-flight', get('pipeline-steps-in-flight') ?? String(serverDefaults.pipelineStepsInFlight), 1, 10_000),
    pipelineRetries: intIn('--pipeline-retries', get('pipeline-retries') ?? String(serverDefaults.pipelineRetries), 0, 1_000),
    pipelineRetryBackoffMaxMs: intIn('--pipeline-retry-backoff-max-ms', get('pipeline-retry-backoff-max-ms') ?? String(serverDefaults.pipelineRetryBackoffMaxMs), 100, 600_000),
    pipelineStepDeadlineMs: intIn('--pipeline-step-deadline-ms', get('pipeline-step-deadline-ms') ?? String(serverDefaults.pipelineStepDeadlineMs), 100, 3_600_000),
    advertiseHost: advertiseHost(get('advertise-host')),
    failureWindowMs: intIn('--failure-window-ms', get('failure-window-ms') ?? String(serverDefaults.failureWindowMs), 1_000, 604_800_000),
    statusWriteTimeoutMs: intIn('--status-write-timeout-ms', get('status-write-timeout-ms') ?? String(serverDefaults.statusWriteTimeoutMs), 100, 60_000),
    statusWriteIntervalMs: intIn('--status-write-interval-ms', get('status-write-interval-ms') ?? String(serverDefaults.statusWriteIntervalMs), 10, 60_000),
    statusWritesPerSecondMax: intIn('--status-writes-per-s', get('status-writes-per-s') ?? String(serverDefaults.statusWritesPerSecondMax), 1, 100_000),
    heartbeatsPerSecondMax: intIn('--heartbeats-per-s', get('heartbeats-per-s') ?? String(serverDefaults.heartbeatsPerSecondMax), 1, 1_000_000),
    stallAfterMs: stallAfterMs(get('stall-after-ms')),
    eventLoopDelayWindowMs: intIn('--event-loop-delay-window-ms', get('event-loop-delay-window-ms') ?? String(serverDefaults.eventLoopDelayWindowMs), 1_000, 600_000),
    authTokenFile,
    insecure,
    fileSinkRoot: fileSinkRoot(get('file-sink-root')),
    allowedEndpoints: allowedEndpoints(get('allowed-endpoints')),
    rpcSpanIdsMax: intIn('--rpc-span-ids', get('rpc-span-ids') ?? String(serverDefaults.rpcSpanIdsMax), 0, spanIdsPerStreamLimit),
    rpcSpansPerMessageMax: intIn('--rpc-spans-per-message', get('rpc-spans-per-message') ?? String(serverDefaults.rpcSpansPerMessageMax), coordinatorDefaults.spansPerMessageMax, 1_000_000),
    rpcMessageBytesMax: intIn('--rpc-message-bytes', get('rpc-message-bytes') ?? String(serverDefaults.rpcMessageBytesMax), 65_536, 268_435_456),
    rpcStreamsPerConnectionMax: intIn('--rpc-streams-per-connection', get('rpc-streams-per-connection') ?? String(serverDefaults.rpcStreamsPerConnectionMax), 1, 10_000),
    rpcStreamsPerPeerMax: intIn('--rpc-streams-per-peer', get('rpc-streams-per-peer') ?? String(serverDefaults.rpcStreamsPerPeerMax), 1, 100_000),
    rpcConnectionsPerPeerMax: intIn('--rpc-connections-per-peer', get('rpc-connections-per-peer') ?? String(serverDefaults.rpcConnectionsPerPeerMax), 1, 100_000),
    progressSlowestMax: intIn('--progress-slowest', get('progress-slowest') ?? String(serverDefaults.progressSlowestMax), 1, 1_000),
    progressSliceMax: intIn('--progress-slice', get('progress-slice') ?? String(serverDefaults.progressSliceMax), 0, progressEntriesPerReportMax - 1_000),
    captureSpansMax: intIn('--capture-spans', get('capture-spans') ?? String(serverDefaults.captureSpansMax), 1, 100_000_000),
    ...splitPolicy(get),
  };
}

/** The split policy's flags; the merge threshold must stay well below the split one (hysteresis). */
function splitPolicy(get: (name: OptionName) => string | undefined): Pick<ServerConfig, 'splitRateMin' | 'mergeRateMax' | 'splitAfterMs' | 'mergeAfterMs' | 'splitCoolDownMs' | 'splitSpansPerTableMax'> {
  const splitRateMin = intIn('--split-rate-min', get('split-rate-min') ?? String(serverDefaults.splitRateMin), 1, 10_000_000);
  const mergeRateMax = intIn('--merge-rate-max', get('merge-rate-max') ?? String(Math.min(serverDefaults.mergeRateMax, Math.floor(splitRateMin / 2))), 0, 10_000_000);
  if (mergeRateMax * 2 > splitRateMin) {
    throw new ConfigError(`--merge-rate-max (${mergeRateMax}) must be at most half of --split-rate-min (${splitRateMin}), or split halves would merge back`);
  }
  return {
    splitRateMin,
    mergeRateMax,
    splitAfterMs: intIn('--split-after-ms', get('split-after-ms') ?? String(serverDefaults.splitAfterMs), 100, 3_600_000),
    mergeAfterMs: intIn('--merge-after-ms', get('merge-after-ms') ?? String(serverDefaults.mergeAfterMs), 100, 86_400_000),
    splitCoolDownMs: intIn('--split-cool-down-ms', get('split-cool-down-ms') ?? String(serverDefaults.splitCoolDownMs), 0, 86_400_000),
    splitSpansPerTableMax: intIn('--split-spans-per-table', get('split-spans-per-table') ?? String(serverDefaults.splitSpansPerTableMax), 1, 100_000),
  };
}

function booleanValue(name: string, raw: string | undefined): boolean {
  if (raw === undefined) return false;
  if (['true', '1', 'yes'].includes(raw.toLowerCase())) return true;
  if (['false', '0', 'no'].includes(raw.toLowerCase())) return false;
  throw new ConfigError(`${name} must be true or false, got ${JSON.stringify(raw)}`);
}

/** True for `127.x.x.x`, `localhost` and `[::1]` (with any port): only this machine reaches them. */
export function isLoopbackAddress(hostPort: string): boolean {
  const host = hostPort.slice(0, hostPort.lastIndexOf(':')).toLowerCase();
  return host === 'localhost' || host === '[::1]' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(host);
}

function stallAfterMs(raw: string | undefined): number {
  if (raw === undefined) return serverDefaults.stallAfterMs;
  const value = intIn('--stall-after-ms', raw, 0, 86_400_000);
  // Below 100 ms a healthy changefeed (a checkpoint moves every pipeline step) would look stalled.
  if (value !== 0 && value < 100) throw new ConfigError(`--stall-after-ms must be 0 (off) or from 100 to 86400000, got ${JSON.stringify(raw)}`);
  return value;
}

function advertiseHost(raw: string | undefined): string | undefined {
  if (raw === undefined) return undefined;
  if (!/^[a-zA-Z0-9.-]{1,253}$/.test(raw)) throw new ConfigError(`--advertise-host must be a host name or address, got ${JSON.stringify(raw)}`);
  return raw;
}

function fileSinkRoot(raw: string | undefined): string {
  return directory('--file-sink-root', raw ?? serverDefaults.fileSinkRoot);
}

function directory(name: string, value: string): string {
  if (value === '' || value.includes('\u0000')) throw new ConfigError(`${name} must be a directory, got ${JSON.stringify(value)}`);
  return resolve(value);
}

function file(name: string, value: string): string {
  if (value === '' || value.includes('\u0000')) throw new ConfigError(`${name} must name a file, got ${JSON.stringify(value)}`);
  return resolve(value);
}

function tlsFiles(ca: string | undefined, cert: string | undefined, key: string | undefined): TlsFiles | undefined {
  const given = [ca, cert, key].filter((v) => v !== undefined).length;
  if (given === 0) return undefined;
  if (ca === undefined || cert === undefined || key === undefined) throw new ConfigError('--tls-ca, --tls-cert and --tls-key go together (all three or none)');
  return { caFile: file('--tls-ca', ca), certFile: file('--tls-cert', cert), keyFile: file('--tls-key', key) };
}

function etcdTlsFiles(ca: string | undefined, cert: string | undefined, key: string | undefined): ServerConfig['etcdTls'] {
  if ((cert === undefined) !== (key === undefined)) throw new ConfigError('--etcd-cert and --etcd-key go together');
  if (ca === undefined) {
    if (cert !== undefined) throw new ConfigError('--etcd-cert needs --etcd-ca');
    return undefined;
  }
  return {
    caFile: file('--etcd-ca', ca),
    certFile: cert === undefined ? undefined : file('--etcd-cert', cert),
    keyFile: key === undefined ? undefined : file('--etcd-key', key),
  };
}

function withTls<T>(name: string, raw: string | undefined, tls: TlsFiles | undefined, parse: (raw: string) => T): T | undefined {
  if (raw === undefined) return undefined;
  if (tls === undefined) throw new ConfigError(`${name} needs --tls-ca, --tls-cert and --tls-key`);
  return parse(raw);
}

function nameList(name: string, raw: string): ReadonlySet<string> {
  try {
    return parseNameList(name, raw);
  } catch (error) {
    if (error instanceof TlsFileError) throw new ConfigError(error.message);
    throw error;
  }
}

function clientRoles(raw: string): ReadonlyMap<string, Role> {
  const roles = new Map<string, Role>();
  for (const entry of raw.split(',').map((e) => e.trim()).filter((e) => e !== '')) {
    const match = /^([^=]+)=(read|admin)$/.exec(entry);
    if (match === null) throw new ConfigError(`--tls-client-roles entries are name=read or name=admin, got ${JSON.stringify(entry.slice(0, 80))}`);
    const [name] = nameList('--tls-client-roles', match[1] as string);
    if (roles.has(name as string)) throw new ConfigError(`--tls-client-roles names ${name} twice`);
    roles.set(name as string, match[2] as Role);
  }
  if (roles.size === 0) throw new ConfigError('--tls-client-roles must map at least one name');
  return roles;
}

function allowedEndpoints(raw: string | undefined): AllowedEndpoints | undefined {
  if (raw === undefined) return undefined;
  try {
    return parseAllowedEndpoints(raw);
  } catch (error) {
    throw new ConfigError(`--allowed-endpoints: ${(error as Error).message}`);
  }
}

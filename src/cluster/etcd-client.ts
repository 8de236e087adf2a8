/**
 * The etcd client every shell component shares: explicit deadlines on unary calls (etcd3
 * has none by default, so a hung etcd would hang us) and keepalive >= 5 s apart (etcd
 * answers faster pings with too_many_pings).
 */
import { ConsecutiveBreaker, circuitBreaker, handleWhen, retry } from 'cockatiel';
import { Etcd3, isRecoverableError } from 'etcd3';

/** Options of the shared client. */
export interface EtcdClientOptions {
  readonly endpoints: readonly string[];
  /** Deadline of one unary call. */
  readonly callTimeoutMs: number;
  /** TLS and user/password; without it, plain http and no auth. */
  readonly security?: EtcdSecurity | undefined;
  /**
   * The largest message the client takes (gRPC's `grpc.max_receive_message_length`; its
   * default is 4 MiB). A watcher behind gets up to 1,000 revisions in one response: with
   * transactions of 128 puts that passed 4 MiB, and the stream failed and was opened
   * again with the same answer for ever.
   */
  readonly receiveBytesMax?: number | undefined;
}

/**
 * How to reach a secured etcd. With `tls` the endpoints are dialled over https (the CA
 * verifies the server; a certificate and key, when given, are shown to it as a client
 * certificate); with `auth` etcd3 signs in as the user and attaches its token.
 */
export interface EtcdSecurity {
  readonly tls?: { readonly ca: Buffer; readonly cert?: Buffer | undefined; readonly key?: Buffer | undefined } | undefined;
  readonly auth?: { readonly user: string; readonly password: string } | undefined;
}

/** `host:port` or `http(s)://host:port` as etcd3 wants it: with the scheme TLS calls for. */
export function etcdHostUrl(endpoint: string, tls: boolean): string {
  const bare = endpoint.replace(/^https?:\/\//, '');
  return `${tls ? 'https' : 'http'}://${bare}`;
}

/**
 * How long a host's circuit stays open after it failed `hostFailuresToOpen` calls in a
 * row. etcd3's default is 5 s after 3 failures, and a deadline counts as a failure: while
 * a three-member etcd elects a new leader, calls to the healthy members wait out their
 * deadlines, every host's circuit opened, and every call (checkpoint writes included)
 * was refused for 5 s ("circuit breaker is open"), though the new leader answered after
 * 0.2 s. A short open time keeps the breaker's point (skip a dead host) without that.
 */
export const hostCircuitOpenMs = 300;
export const hostFailuresToOpen = 5;

/** Creates the client; endpoints are `host:port`. */
export function createEtcdClient(options: EtcdClientOptions): Etcd3 {
  return new Etcd3({
    hosts: options.endpoints.map((endpoint) => etcdHostUrl(endpoint, options.security?.tls !== undefined || endpoint.startsWith('https://'))),
    ...(options.security?.tls === undefined
      ? {}
      : {
          credentials: {
            rootCertificate: options.security.tls.ca,
            ...(options.security.tls.key === undefined || options.security.tls.cert === undefined ? {} : { privateKey: options.security.tls.key, certChain: options.security.tls.cert }),
          },
        }),
    ...(options.security?.auth === undefined ? {} : { auth: { username: options.security.auth.user, password: options.security.auth.password } }),
    dialTimeout: options.callTimeoutMs,
    defaultCallOptions: (context) => (context.isStream ? {} : { deadline: Date.now() + options.callTimeoutMs }),
    grpcOptions: {
      'grpc.keepalive_time_ms': 10_000,
      'grpc.keepalive_timeout_ms': 5_000,
      ...(options.receiveBytesMax === undefined ? {} : { 'grpc.max_receive_message_length': options.receiveBytesMax }),
    },
    faultHandling: {
      host: () => circuitBreaker(handleWhen(isRecoverableError), { halfOpenAfter: hostCircuitOpenMs, breaker: new ConsecutiveBreaker(hostFailuresToOpen) }),
      global: retry(handleWhen(isRecoverableError), { maxAttempts: 3 }),
    },
  });
}

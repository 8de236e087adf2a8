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
    hosts: options.endpoints.map((endpoint) => (endpoint.startsWith('http') ? endpoint : `http://${endpoint}`)),
    dialTimeout: options.callTimeoutMs,
    defaultCallOptions: (context) => (context.isStream ? {} : { deadline: Date.now() + options.callTimeoutMs }),
    grpcOptions: { 'grpc.keepalive_time_ms': 10_000, 'grpc.keepalive_timeout_ms': 5_000 },
    faultHandling: {
      host: () => circuitBreaker(handleWhen(isRecoverableError), { halfOpenAfter: hostCircuitOpenMs, breaker: new ConsecutiveBreaker(hostFailuresToOpen) }),
      global: retry(handleWhen(isRecoverableError), { maxAttempts: 3 }),
    },
  });
}

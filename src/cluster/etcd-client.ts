/**
 * The etcd client every shell component shares: explicit deadlines on unary calls (etcd3
 * has none by default, so a hung etcd would hang us) and keepalive >= 5 s apart (etcd
 * answers faster pings with too_many_pings).
 */
import { Etcd3 } from 'etcd3';

/** Options of the shared client. */
export interface EtcdClientOptions {
  readonly endpoints: readonly string[];
  /** Deadline of one unary call. */
  readonly callTimeoutMs: number;
}

/** Creates the client; endpoints are `host:port`. */
export function createEtcdClient(options: EtcdClientOptions): Etcd3 {
  return new Etcd3({
    hosts: options.endpoints.map((endpoint) => (endpoint.startsWith('http') ? endpoint : `http://${endpoint}`)),
    dialTimeout: options.callTimeoutMs,
    defaultCallOptions: (context) => (context.isStream ? {} : { deadline: Date.now() + options.callTimeoutMs }),
    grpcOptions: { 'grpc.keepalive_time_ms': 10_000, 'grpc.keepalive_timeout_ms': 5_000 },
  });
}

/**
 * The demo's upstream writer and changefeed, shared by `npm run demo` and the compose
 * file's `writer` service.
 */
import type { Etcd3 } from 'etcd3';
import { apiWith, waitFor } from './local-cluster.ts';

export const demoTables = ['orders', 'users', 'items'] as const;

/** Puts about `perSecond` changes a second under `demo/<table>/`, one in ten a delete. */
export function startDemoWriter(client: Etcd3, perSecond = 20): () => void {
  let n = 0;
  const timer = setInterval(() => {
    const table = demoTables[n % demoTables.length] as string;
    const key = `demo/${table}/${String(Math.floor(Math.random() * 500)).padStart(4, '0')}`;
    n++;
    const op = n % 10 === 0 ? client.delete().key(key).exec() : client.put(key).value(JSON.stringify({ n, at: new Date().toISOString() })).exec();
    op.catch(() => undefined);
  }, Math.max(1, Math.floor(1000 / perSecond)));
  return () => clearInterval(timer);
}

/**
 * Creates the `demo` changefeed (etcd source, the given sink), with `token` when the API
 * asks for one; 409 (exists) is fine. Waits while no owner answers (503).
 */
export async function createDemoChangefeed(apiUrl: string, etcdEndpoint: string, sinkUri: string, token?: string): Promise<void> {
  const body = {
    id: 'demo',
    source: { uri: `etcd://${etcdEndpoint}` },
    sink: { uri: sinkUri },
    tables: demoTables.map((name) => ({ name, prefix: `demo/${name}/`, spans: 4 })),
  };
  const created = await waitFor('POST /api/v1/changefeeds to be answered by an owner', async () => {
    const answer = await apiWith({ token, body }, apiUrl, 'POST', '/api/v1/changefeeds');
    return answer.status === 503 ? undefined : answer;
  }, 30_000, 50);
  if (created.status !== 201 && created.status !== 409) throw new Error(`creating the demo changefeed failed: ${JSON.stringify(created.body)}`);
}

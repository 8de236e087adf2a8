/**
 * The demo's upstream writer and changefeed, shared by `npm run demo` and the compose
 * file's `writer` service.
 */
import type { Etcd3 } from 'etcd3';
import { apiWith, waitFor } from './local-cluster.ts';

export const demoTables = ['orders', 'users', 'items'] as const;

/** Keys per demo table: `demo/<table>/0000` to `0499`. */
export const demoKeysPerTable = 500;

/**
 * Puts every demo key once, so that the changefeed created next finds them: its spans
 * are cut at the keys' quantiles (each of the 4 spans of a table gets about a quarter),
 * and its backfill copies them.
 */
export async function seedDemoKeys(client: Etcd3): Promise<void> {
  const keys = demoTables.flatMap((table) => Array.from({ length: demoKeysPerTable }, (_, i) => `demo/${table}/${String(i).padStart(4, '0')}`));
  for (let i = 0; i < keys.length; i += 100) {
    await Promise.all(keys.slice(i, i + 100).map((key) => client.put(key).value(JSON.stringify({ seeded: true })).exec()));
  }
}

/** Puts about `perSecond` changes a second under `demo/<table>/`, one in ten a delete. */
export function startDemoWriter(client: Etcd3, perSecond = 20): () => void {
  let n = 0;
  const timer = setInterval(() => {
    const table = demoTables[n % demoTables.length] as string;
    const key = `demo/${table}/${String(Math.floor(Math.random() * demoKeysPerTable)).padStart(4, '0')}`;
    n++;
    const op = n % 10 === 0 ? client.delete().key(key).exec() : client.put(key).value(JSON.stringify({ n, at: new Date().toISOString() })).exec();
    op.catch(() => undefined);
  }, Math.max(1, Math.floor(1000 / perSecond)));
  return () => clearInterval(timer);
}

/**
 * Creates the `demo` changefeed (etcd source, the given sink, backfilled), with `token` when the API
 * asks for one; 409 (exists) is fine. Waits while no owner answers (503).
 */
export async function createDemoChangefeed(apiUrl: string, etcdEndpoint: string, sinkUri: string, token?: string): Promise<void> {
  const body = {
    id: 'demo',
    source: { uri: `etcd://${etcdEndpoint}` },
    sink: { uri: sinkUri },
    tables: demoTables.map((name) => ({ name, prefix: `demo/${name}/`, spans: 4 })),
    // The seeded keys are copied first (seedDemoKeys).
    backfill: true,
  };
  const created = await waitFor('POST /api/v1/changefeeds to be answered by an owner', async () => {
    const answer = await apiWith({ token, body }, apiUrl, 'POST', '/api/v1/changefeeds');
    return answer.status === 503 ? undefined : answer;
  }, 30_000, 50);
  if (created.status !== 201 && created.status !== 409) throw new Error(`creating the demo changefeed failed: ${JSON.stringify(created.body)}`);
}

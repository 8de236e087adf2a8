/**
 * Many changefeeds: a real etcd and three real `spanfeed server` processes on loopback;
 * N datagen -> blackhole changefeeds (2 spans each) created one after another through
 * the three captures in turn.
 *
 *   npm run bench:changefeeds [-- --changefeeds N --lease-ttl-s S]
 *
 * Prints one JSON line:
 *   createMs              the N creates, one after another
 *   allAdvancingMs        after the last create, until every changefeed is advancing
 *   notAdvancingAtEnd     changefeeds not advancing when the wait (120 s) ran out
 *   persistedLagMsP99     after they all advance: now - persisted checkpoint, over all
 *                         changefeeds, one sample each second for 10 s
 */
import { parseArgs } from 'node:util';
import { Etcd3 } from 'etcd3';
import { clusterKeys } from '../src/cluster/keys.ts';
import type { ChangefeedView } from '../src/dev/local-cluster.ts';
import { LocalCapture, LocalEtcd, api, apiWhenOwned } from '../src/dev/local-cluster.ts';

const percentile = (sorted: readonly number[], p: number): number => sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))] ?? 0;

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { changefeeds: { type: 'string' }, 'lease-ttl-s': { type: 'string' } }, strict: true });
  const count = Number(values.changefeeds ?? 500);
  const ttlS = Number(values['lease-ttl-s'] ?? 10);
  if (!Number.isSafeInteger(count) || count < 1 || count > 10_000) throw new Error('--changefeeds must be an integer from 1 to 10000');
  if (!Number.isSafeInteger(ttlS) || ttlS < 2) throw new Error('--lease-ttl-s must be an integer >= 2');
  const cluster = `many${process.pid}`;
  const keys = clusterKeys(cluster);
  const etcd = await LocalEtcd.start();
  const client = new Etcd3({ hosts: `http://${etcd.endpoint}` });
  const captures: LocalCapture[] = [];
  try {
    for (let i = 0; i < 3; i++) captures.push(await LocalCapture.start(etcd, { cluster, leaseTtlS: ttlS, extraArgs: ['--log-level', 'warn'] }));
    await apiWhenOwned(captures[0]?.url ?? '', 'GET', '/api/v1/changefeeds');
    const created = Date.now();
    for (let i = 0; i < count; i++) {
      const capture = captures[i % 3] as LocalCapture;
      const body = { id: `cf${i}`, source: { uri: 'datagen://?rate=1' }, sink: { uri: 'blackhole://' }, tables: [{ name: 't', spans: 2 }] };
      const answer = await apiWhenOwned(capture.url, 'POST', '/api/v1/changefeeds', body);
      if (answer.status !== 201) throw new Error(`create cf${i}: ${answer.status} ${JSON.stringify(answer.body)}`);
    }
    const createMs = Date.now() - created;
    const lastCreate = Date.now();
    let notAdvancing = count;
    let allAdvancingMs: number | null = null;
    while (Date.now() - lastCreate < 120_000) {
      const list = await api<ChangefeedView[]>(captures[1]?.url ?? '', 'GET', '/api/v1/changefeeds');
      if (list.status === 200) {
        notAdvancing = list.body.filter((c) => c.watermark.state !== 'advancing').length;
        if (notAdvancing === 0) {
          allAdvancingMs = Date.now() - lastCreate;
          break;
        }
      }
      await new Promise((resolve) => setTimeout(resolve, 250));
    }
    const lags: number[] = [];
    for (let s = 0; allAdvancingMs !== null && s < 10; s++) {
      await new Promise((resolve) => setTimeout(resolve, 1_000));
      const statuses = await client.getAll().prefix(keys.changefeedsPrefix).strings();
      const now = Date.now();
      for (const [key, value] of Object.entries(statuses)) {
        if (!key.endsWith('/status')) continue;
        lags.push(now - Number((JSON.parse(value) as { checkpointTs: string }).checkpointTs));
      }
    }
    lags.sort((a, b) => a - b);
    process.stdout.write(`${JSON.stringify({ changefeeds: count, createMs, allAdvancingMs, notAdvancingAtEnd: notAdvancing, persistedLagMsP50: percentile(lags, 50), persistedLagMsP99: percentile(lags, 99) })}\n`);
  } finally {
    client.close();
    await Promise.all(captures.map((c) => c.stop()));
    await etcd.stop();
  }
}

main().catch((error: unknown) => {
  process.stderr.write(`${(error as Error).stack ?? String(error)}\n`);
  process.exit(1);
});

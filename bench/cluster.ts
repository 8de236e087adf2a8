/**
 * Cluster benchmark: a real etcd and three real `spanfeed server` processes on loopback,
 * one datagen -> blackhole changefeed of N spans (default 3,000).
 *
 *   npm run bench:cluster [-- --spans N --lease-ttl-s S --moves-in-flight M --tick-ms T]
 *
 * Prints one JSON line:
 *   placementMs                 create -> every span replicating
 *   moveMs / moveStallMs        one explicit move: until done / how long the watermark was withheld
 *   drainMs                     drain one capture (about a third of the spans) to 0
 *   failoverMs                  SIGKILL of the owner -> a new owner is acting
 *   failoverCheckpointResumeMs  SIGKILL of the owner -> the persisted checkpoint advances again
 *   checkpointLagMsP50/P99      steady state: now - persisted checkpoint, sampled every 50 ms
 */
import { parseArgs } from 'node:util';
import { Etcd3 } from 'etcd3';
import { clusterKeys } from '../src/cluster/keys.ts';
import type { ChangefeedView, SpanPage, SpanView } from '../src/dev/local-cluster.ts';
import { LocalCapture, LocalEtcd, api, apiWhenOwned, waitFor } from '../src/dev/local-cluster.ts';

function positive(name: string, value: string | undefined, fallback: number): number {
  if (value === undefined) return fallback;
  const n = Number(value);
  if (!Number.isSafeInteger(n) || n < 1) throw new Error(`--${name} must be a positive integer`);
  return n;
}

const percentile = (sorted: readonly number[], p: number): number => sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))] ?? 0;

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: { spans: { type: 'string' }, 'lease-ttl-s': { type: 'string' }, 'moves-in-flight': { type: 'string' }, 'tick-ms': { type: 'string' } },
    strict: true,
  });
  const spanCount = positive('spans', values.spans, 3_000);
  const ttlS = positive('lease-ttl-s', values['lease-ttl-s'], 3);
  const movesInFlight = positive('moves-in-flight', values['moves-in-flight'], 32);
  const tickMs = positive('tick-ms', values['tick-ms'], 50);
  const cluster = `bench${process.pid}`;
  const keys = clusterKeys(cluster);
  const etcd = await LocalEtcd.start();
  const client = new Etcd3({ hosts: `http://${etcd.endpoint}` });
  const captures: LocalCapture[] = [];
  const extraArgs = ['--moves-in-flight', String(movesInFlight), '--tick-ms', String(tickMs), '--log-level', 'warn'];
  try {
    for (let i = 0; i < 3; i++) captures.push(await LocalCapture.start(etcd, { cluster, leaseTtlS: ttlS, extraArgs }));
    const ownerOf = async (): Promise<LocalCapture> =>
      waitFor('an owner', async () => {
        for (const c of captures) if (c.proc.running && (await c.status().catch(() => ({ isOwner: false }))).isOwner) return c;
        return undefined;
      }, 60_000, 10);
    let owner = await ownerOf();
    const view = async (): Promise<ChangefeedView> => (await api<ChangefeedView>(owner.url, 'GET', '/api/v1/changefeeds/bench')).body;
    const persistedCheckpoint = async (): Promise<bigint> => {
      const value = await client.get(keys.changefeedStatus('bench')).string();
      return value === null ? 0n : BigInt((JSON.parse(value) as { checkpointTs: string }).checkpointTs);
    };

    // Placement.
    const perTable = Math.min(1_000, spanCount);
    const tables = [];
    for (let left = spanCount, t = 0; left > 0; t++, left -= perTable) tables.push({ name: `t${t}`, spans: Math.min(perTable, left) });
    const placementStarted = Date.now();
    const created = await apiWhenOwned(owner.url, 'POST', '/api/v1/changefeeds', { id: 'bench', source: { uri: 'datagen://?rate=1&keys=100' }, sink: { uri: 'blackhole://' }, tables });
    if (created.status !== 201) throw new Error(`create failed: ${JSON.stringify(created.body)}`);
    await waitFor('placement', async () => ((await view()).spansByState?.replicating === spanCount ? true : undefined), 300_000, 10);
    const placementMs = Date.now() - placementStarted;
    await waitFor('the watermark to advance', async () => ((await view()).watermark.state === 'advancing' ? true : undefined), 60_000, 10);

    // Steady-state checkpoint lag.
    const lags: number[] = [];
    for (let i = 0; i < 200; i++) {
      const v = await view();
      if (v.checkpointLagMs !== null) lags.push(v.checkpointLagMs);
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    lags.sort((a, b) => a - b);

    // One move, and how long the watermark is withheld by it.
    const spans = (await api<SpanPage>(owner.url, 'GET', '/api/v1/changefeeds/bench/spans?limit=1')).body.spans;
    const span = spans[0] as SpanView;
    const target = captures.find((c) => c.id !== span.primary) as LocalCapture;
    const moveStarted = Date.now();
    let stallStarted = 0;
    let stallMs = 0;
    await api(owner.url, 'POST', '/api/v1/changefeeds/bench/spans/move', { table: span.table, start: span.start, captureId: target.id });
    await waitFor('the move', async () => {
      const v = await view();
      const now = Date.now();
      if (v.watermark.state === 'cannot-proceed' && stallStarted === 0) stallStarted = now;
      if (v.watermark.state === 'advancing' && stallStarted !== 0 && stallMs === 0) stallMs = now - stallStarted;
      if (stallMs === 0) return undefined;
      const moved = (await api<SpanPage>(owner.url, 'GET', '/api/v1/changefeeds/bench/spans?limit=1')).body.spans.find((s) => s.table === span.table && s.start === span.start);
      return moved?.primary === target.id && moved.state === 'replicating' ? true : undefined;
    }, 60_000, 5);
    const moveMs = Date.now() - moveStarted;

    // Drain a non-owner capture.
    const drained = captures.find((c) => c !== owner) as LocalCapture;
    const drainStarted = Date.now();
    const first = await api<{ remainingSpans: number }>(owner.url, 'POST', `/api/v1/captures/${drained.id}/drain`);
    const drainedSpans = first.body.remainingSpans;
    await waitFor('the drain', async () => {
      const answer = await api<{ remainingSpans: number }>(owner.url, 'POST', `/api/v1/captures/${drained.id}/drain`);
      return answer.body.remainingSpans === 0 && (await view()).spansByState?.replicating === spanCount ? true : undefined;
    }, 600_000, 20);
    const drainMs = Date.now() - drainStarted;
    await drained.stop();
    captures.splice(captures.indexOf(drained), 1);
    captures.push(await LocalCapture.start(etcd, { cluster, leaseTtlS: ttlS, extraArgs }));

    // Failover: SIGKILL the owner.
    await waitFor('advancing before failover', async () => ((await view()).watermark.state === 'advancing' ? true : undefined), 60_000, 10);
    const checkpointBefore = await persistedCheckpoint();
    const killed = owner;
    const killedAt = Date.now();
    killed.proc.signal('SIGKILL');
    await killed.proc.exited;
    captures.splice(captures.indexOf(killed), 1);
    owner = await ownerOf();
    const failoverMs = Date.now() - killedAt;
    await waitFor('the checkpoint to advance after failover', async () => ((await persistedCheckpoint()) > checkpointBefore ? true : undefined), 120_000, 10);
    const failoverCheckpointResumeMs = Date.now() - killedAt;

    process.stdout.write(
      `${JSON.stringify({
        spans: spanCount,
        captures: 3,
        leaseTtlS: ttlS,
        movesInFlight,
        tickMs,
        placementMs,
        moveMs,
        moveStallMs: stallMs,
        drainedSpans,
        drainMs,
        failoverMs,
        failoverCheckpointResumeMs,
        checkpointLagMsP50: percentile(lags, 50),
        checkpointLagMsP99: percentile(lags, 99),
      })}\n`,
    );
  } finally {
    await Promise.all(captures.map((c) => c.stop()));
    client.close();
    await etcd.stop();
  }
}

main().catch((error: unknown) => {
  process.stderr.write(`bench:cluster failed: ${(error as Error).stack ?? String(error)}\n`);
  process.exitCode = 1;
});

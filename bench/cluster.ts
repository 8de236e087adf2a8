/**
 * Cluster benchmark: a real etcd and three real `spanfeed server` processes on loopback,
 * one changefeed of N spans into a blackhole sink, through placement, a steady phase, one
 * move, the drain of a capture and the SIGKILL of the owner.
 *
 *   npm run bench:cluster [-- --spans N] [--source datagen|etcd] [--total-rate R]
 *                         [--writer-rate W] [--spans-per-table T] [--lease-ttl-s S]
 *                         [--moves-in-flight M] [--tick-ms T] [--steady-s S] [--quiet-interval-ms Q]
 *
 * Source `datagen` (default): `datagen://?totalRate=R` (R events/s over the whole
 * changefeed, default 10,000). Source `etcd`: N spans over the key range of a second,
 * upstream etcd with a writer putting W keys a second (default 2,000) spread over it.
 *
 * While it runs, every capture is sampled every 200 ms: `GET /api/v1/health` (its answer
 * time), `GET /api/v1/status` (its id, so a self-fence that rejoins with a new id is
 * counted, and its event-loop delay over a 1 s window), and its RSS from /proc.
 *
 * Prints one JSON line:
 *   placementMs                   create -> every span replicating
 *   catchUpMs                     placement done -> the checkpoint passes that time (the steady phase starts then)
 *   sessionLosses                 "session lost" log lines plus capture id changes, all captures, whole run
 *   healthMsP99, eventLoopDelayMsP99   per phase (placement, steady, drain, failover), worst capture
 *   captureRssMiB                 the largest RSS any capture reached
 *   ownerHeapBytesPerSpan         (owner heap growth - the mean growth of the other captures) / spans,
 *                                 from nodejs_heap_size_used_bytes before create and after the steady
 *                                 phase (no forced GC: noise below ~100,000 spans); heapGrowthBytesPerSpan
 *                                 gives each capture's growth
 *   checkpointLagMsP50/P99        steady: the changefeed's checkpoint lag, sampled every 100 ms
 *   viewMsP99 / spansPageMsP99 / slowestMsP99
 *                                 steady: the owner's answer time for GET /changefeeds/{id}, GET
 *                                 .../spans?limit=1000 and GET .../spans/slowest?k=10
 *   moveMs / moveStallMs          one explicit move: until done / how long the watermark was withheld
 *   drainSpansPerSec              spans moved off a drained capture per second
 *   failoverMs                    SIGKILL of the owner -> a new owner is acting
 *   failoverCheckpointResumeMs    SIGKILL of the owner -> the persisted checkpoint advances again
 */
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { Etcd3 } from 'etcd3';
import { clusterKeys } from '../src/cluster/keys.ts';
import type { ChangefeedView } from '../src/dev/local-cluster.ts';
import { LocalCapture, LocalEtcd, api, apiWhenOwned, waitFor } from '../src/dev/local-cluster.ts';
import { positive } from '../src/dev/script-flags.ts';

const percentile = (values: readonly number[], p: number): number => {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))] ?? 0;
};
const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

type Phase = 'placement' | 'steady' | 'drain' | 'failover';
const phases: readonly Phase[] = ['placement', 'steady', 'drain', 'failover'];

/** Samples every capture's health answer time, event-loop delay, id and RSS while the bench runs. */
class Sampler {
  phase: Phase | undefined;
  readonly healthMs = new Map<Phase, number[]>(phases.map((p) => [p, []]));
  readonly loopDelayMs = new Map<Phase, number[]>(phases.map((p) => [p, []]));
  rssMiBMax = 0;
  idChanges = 0;
  private readonly ids = new Map<number, string>();
  private running = true;
  private readonly done: Promise<void>;

  constructor(private readonly captures: () => readonly LocalCapture[]) {
    this.done = this.loop();
  }

  async stop(): Promise<void> {
    this.running = false;
    await this.done;
  }

  private async loop(): Promise<void> {
    while (this.running) {
      await Promise.all(this.captures().filter((c) => c.proc.running).map((c) => this.sample(c)));
      await sleep(200);
    }
  }

  private async sample(capture: LocalCapture): Promise<void> {
    const phase = this.phase;
    const started = performance.now();
    try {
      await api(capture.url, 'GET', '/api/v1/health', undefined, undefined, 30_000);
      if (phase !== undefined) this.healthMs.get(phase)?.push(performance.now() - started);
      const status = (await api<{ id: string; eventLoopDelay?: { p99Ms: number } }>(capture.url, 'GET', '/api/v1/status', undefined, undefined, 30_000)).body;
      if (phase !== undefined && status.eventLoopDelay !== undefined) this.loopDelayMs.get(phase)?.push(status.eventLoopDelay.p99Ms);
      const known = this.ids.get(capture.pid);
      if (known !== undefined && known !== status.id) this.idChanges++;
      this.ids.set(capture.pid, status.id);
    } catch {
      // A capture being killed or restarted: nothing to sample.
    }
    try {
      const rss = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${capture.pid}/status`, 'utf8'));
      if (rss !== null) this.rssMiBMax = Math.max(this.rssMiBMax, Number(rss[1]) / 1024);
    } catch {
      // Gone.
    }
  }
}

/** A capture's used heap, from its /metrics (prom-client's default metrics). */
async function heapUsedBytes(capture: LocalCapture): Promise<number> {
  const text = (await api<string>(capture.url, 'GET', '/metrics', undefined, undefined, 60_000)).body;
  const line = String(text).split('\n').find((l) => l.startsWith('nodejs_heap_size_used_bytes '));
  return line === undefined ? Number.NaN : Number(line.split(' ')[1]);
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      spans: { type: 'string' },
      source: { type: 'string' },
      'total-rate': { type: 'string' },
      'writer-rate': { type: 'string' },
      'spans-per-table': { type: 'string' },
      'lease-ttl-s': { type: 'string' },
      'moves-in-flight': { type: 'string' },
      'tick-ms': { type: 'string' },
      'steady-s': { type: 'string' },
      'quiet-interval-ms': { type: 'string' },
    },
    strict: true,
  });
  const spanCount = positive('spans', values.spans, 3_000);
  const sourceKind = values.source ?? 'datagen';
  if (sourceKind !== 'datagen' && sourceKind !== 'etcd') throw new Error('--source must be datagen or etcd');
  const totalRate = positive('total-rate', values['total-rate'], 10_000);
  const writerRate = positive('writer-rate', values['writer-rate'], 2_000);
  const perTable = positive('spans-per-table', values['spans-per-table'], Math.min(100_000, spanCount));
  const ttlS = positive('lease-ttl-s', values['lease-ttl-s'], 10);
  const movesInFlight = positive('moves-in-flight', values['moves-in-flight'], 512);
  const tickMs = positive('tick-ms', values['tick-ms'], 50);
  const steadyS = positive('steady-s', values['steady-s'], 20);
  // The captures' --pipeline-quiet-interval-ms: a capture's quiet-span work is spans / interval.
  const quietIntervalMs = positive('quiet-interval-ms', values['quiet-interval-ms'], 500);
  const cluster = `bench${process.pid}`;
  const keys = clusterKeys(cluster);
  const etcd = await LocalEtcd.start();
  const upstream = sourceKind === 'etcd' ? await LocalEtcd.start() : undefined;
  const client = new Etcd3({ hosts: `http://${etcd.endpoint}` });
  const upstreamClient = upstream === undefined ? undefined : new Etcd3({ hosts: `http://${upstream.endpoint}` });
  const captures: LocalCapture[] = [];
  const extraArgs = ['--moves-in-flight', String(movesInFlight), '--tick-ms', String(tickMs), '--pipeline-quiet-interval-ms', String(quietIntervalMs), '--log-level', 'warn', '--event-loop-delay-window-ms', '1000'];
  const sampler = new Sampler(() => captures);
  let writing = true;
  let writes = 0;
  let writer: Promise<void> = Promise.resolve();
  try {
    for (let i = 0; i < 3; i++) captures.push(await LocalCapture.start(etcd, { cluster, leaseTtlS: ttlS, extraArgs }));
    const ownerOf = async (): Promise<LocalCapture> =>
      waitFor('an owner', async () => {
        for (const c of captures) if (c.proc.running && (await c.status().catch(() => ({ isOwner: false }))).isOwner) return c;
        return undefined;
      }, 120_000, 10);
    let owner = await ownerOf();
    const view = async (): Promise<ChangefeedView> => (await api<ChangefeedView>(owner.url, 'GET', '/api/v1/changefeeds/bench', undefined, undefined, 60_000)).body;
    const persistedCheckpoint = async (): Promise<bigint> => {
      const value = await client.get(keys.changefeedStatus('bench')).string();
      return value === null ? 0n : BigInt((JSON.parse(value) as { checkpointTs: string }).checkpointTs);
    };

    // Tables of `perTable` spans each; for etcd, table tN is the key prefix `tN/`, written
    // by the writer at random keys.
    const tables: { name: string; prefix?: string; spans: number }[] = [];
    for (let left = spanCount, t = 0; left > 0; t++, left -= perTable) tables.push({ name: `t${t}`, ...(sourceKind === 'etcd' ? { prefix: `t${t}/` } : {}), spans: Math.min(perTable, left) });
    if (upstreamClient !== undefined) {
      writer = (async () => {
        const batch = Math.max(1, Math.round(writerRate / 20));
        while (writing) {
          const started = Date.now();
          await Promise.all(
            Array.from({ length: batch }, () => {
              const table = tables[Math.floor(Math.random() * tables.length)] as { name: string };
              // Raw-byte spread keys: the spans split a table's range at evenly spaced bytes.
              const key = `${table.name}/${String.fromCharCode(Math.floor(Math.random() * 256))}${Math.random().toString(36).slice(2, 8)}`;
              writes++;
              return upstreamClient.put(key).value('v').exec().then(() => undefined, () => undefined);
            }),
          );
          await sleep(Math.max(0, 50 - (Date.now() - started)));
        }
      })();
    }
    const heapBefore = await Promise.all(captures.map(heapUsedBytes));

    // Placement.
    sampler.phase = 'placement';
    const placementStarted = Date.now();
    const source = upstream === undefined ? `datagen://?totalRate=${totalRate}&keys=100` : `etcd://${upstream.endpoint}`;
    const created = await apiWhenOwned(owner.url, 'POST', '/api/v1/changefeeds', { id: 'bench', source: { uri: source }, sink: { uri: 'blackhole://' }, tables }, 120_000);
    if (created.status !== 201) throw new Error(`create failed: ${JSON.stringify(created.body)}`);
    await waitFor('placement', async () => ((await view()).spansByState?.replicating === spanCount ? true : undefined), 1_800_000, 200);
    const placementMs = Date.now() - placementStarted;
    await waitFor('the watermark to advance', async () => ((await view()).watermark.state === 'advancing' ? true : undefined), 300_000, 100);
    // Catch-up: spans placed early hold checkpoints from before the last was placed, so
    // the lag right after placement is the placement's length, not the steady state's.
    // Steady starts once the checkpoint passes the end of placement.
    // (Told by the lag, which every source maps to time: lag < time since placement ended.)
    const placedAt = placementStarted + placementMs;
    await waitFor('the checkpoint to pass the end of placement', async () => {
      const lag = (await view()).checkpointLagMs;
      return lag !== null && lag < Date.now() - placedAt ? true : undefined;
    }, 300_000, 100);
    const catchUpMs = Date.now() - placementStarted - placementMs;

    // Steady state.
    sampler.phase = 'steady';
    const lags: number[] = [];
    const answerMs = { view: [] as number[], spansPage: [] as number[], slowest: [] as number[] };
    const timed = async <T>(into: number[], call: () => Promise<T>): Promise<T> => {
      const started = performance.now();
      const value = await call();
      into.push(performance.now() - started);
      return value;
    };
    const steadyEnd = Date.now() + steadyS * 1_000;
    for (let round = 0; Date.now() < steadyEnd; round++) {
      const v = await timed(answerMs.view, view);
      if (v.checkpointLagMs !== null) lags.push(v.checkpointLagMs);
      // Once a second: a page of the span list and the slowest spans, as an operator asks.
      if (round % 10 === 0) {
        await timed(answerMs.spansPage, () => api(owner.url, 'GET', '/api/v1/changefeeds/bench/spans?limit=1000', undefined, undefined, 60_000));
        await timed(answerMs.slowest, () => api(owner.url, 'GET', '/api/v1/changefeeds/bench/spans/slowest?k=10', undefined, undefined, 60_000));
      }
      await sleep(100);
    }
    const heapAfter = await Promise.all(captures.map(heapUsedBytes));
    const growth = heapAfter.map((after, i) => after - (heapBefore[i] as number));
    const ownerIndex = captures.indexOf(owner);
    const others = growth.filter((_, i) => i !== ownerIndex);
    // Without a forced GC the used heap includes garbage: at small span counts the
    // difference is noise (even negative); it means something from ~100,000 spans on.
    const ownerHeapBytesPerSpan = Math.round(((growth[ownerIndex] as number) - others.reduce((a, b) => a + b, 0) / others.length) / spanCount);
    const heapGrowthBytesPerSpan = { owner: Math.round((growth[ownerIndex] as number) / spanCount), others: others.map((g) => Math.round(g / spanCount)) };

    // One move, and how long the watermark is withheld by it.
    const [slow] = (await api<{ table: string; start: string; captureId: string }[]>(owner.url, 'GET', '/api/v1/changefeeds/bench/spans/slowest?k=1')).body;
    if (slow === undefined) throw new Error('no span progress reported');
    const target = captures.find((c) => c.id !== slow.captureId) as LocalCapture;
    const moveStarted = Date.now();
    let stallStarted = 0;
    let stallMs = 0;
    await api(owner.url, 'POST', '/api/v1/changefeeds/bench/spans/move', { table: slow.table, start: slow.start, captureId: target.id });
    let lastStates: Record<string, number> | null = null;
    await waitFor('the move', async () => {
      const v = await view();
      lastStates = v.spansByState;
      const now = Date.now();
      if (v.watermark.state === 'cannot-proceed' && stallStarted === 0) stallStarted = now;
      if (v.watermark.state === 'advancing' && stallStarted !== 0 && stallMs === 0) stallMs = now - stallStarted;
      // Done when every span replicates again; the stall is only known if the watermark
      // was seen advancing (other moves, the balancer's, may keep it withheld longer).
      return v.spansByState?.replicating === spanCount && now - moveStarted > 200 ? true : undefined;
    }, 600_000, 5).catch((error: unknown) => {
      throw new Error(`${(error as Error).message}; spans by state at the end: ${JSON.stringify(lastStates)}`);
    });
    const moveMs = Date.now() - moveStarted;

    // Drain a non-owner capture.
    sampler.phase = 'drain';
    const drained = captures.find((c) => c !== owner) as LocalCapture;
    const drainStarted = Date.now();
    const first = await api<{ remainingSpans: number }>(owner.url, 'POST', `/api/v1/captures/${drained.id}/drain`, undefined, undefined, 60_000);
    const drainedSpans = first.body.remainingSpans;
    await waitFor('the drain', async () => {
      const answer = await api<{ remainingSpans: number }>(owner.url, 'POST', `/api/v1/captures/${drained.id}/drain`, undefined, undefined, 60_000);
      return answer.body.remainingSpans === 0 && (await view()).spansByState?.replicating === spanCount ? true : undefined;
    }, 1_800_000, 100);
    const drainMs = Date.now() - drainStarted;
    await drained.stop();
    captures.splice(captures.indexOf(drained), 1);
    captures.push(await LocalCapture.start(etcd, { cluster, leaseTtlS: ttlS, extraArgs }));

    // Failover: SIGKILL the owner.
    sampler.phase = 'failover';
    await waitFor('advancing before failover', async () => ((await view()).watermark.state === 'advancing' ? true : undefined), 300_000, 50);
    const checkpointBefore = await persistedCheckpoint();
    const killed = owner;
    const killedAt = Date.now();
    killed.proc.signal('SIGKILL');
    await killed.proc.exited;
    captures.splice(captures.indexOf(killed), 1);
    owner = await ownerOf();
    const failoverMs = Date.now() - killedAt;
    await waitFor('the checkpoint to advance after failover', async () => ((await persistedCheckpoint()) > checkpointBefore ? true : undefined), 600_000, 20);
    const failoverCheckpointResumeMs = Date.now() - killedAt;
    await sleep(2_000);
    await sampler.stop();

    const all = [...captures, killed, drained];
    const sessionLossLines = all.reduce((n, c) => n + (c.proc.output.match(/session lost/g)?.length ?? 0), 0);
    const byPhase = (samples: Map<Phase, number[]>): Record<Phase, number> =>
      Object.fromEntries(phases.map((p) => [p, Math.round(percentile(samples.get(p) ?? [], 99) * 10) / 10])) as Record<Phase, number>;
    process.stdout.write(
      `${JSON.stringify({
        spans: spanCount,
        source: sourceKind,
        ...(sourceKind === 'datagen' ? { totalRate } : { writerRate, writes }),
        captures: 3,
        leaseTtlS: ttlS,
        movesInFlight,
        tickMs,
        quietIntervalMs,
        placementMs,
        catchUpMs,
        sessionLosses: sessionLossLines + sampler.idChanges,
        healthMsP99: byPhase(sampler.healthMs),
        eventLoopDelayMsP99: byPhase(sampler.loopDelayMs),
        captureRssMiB: Math.round(sampler.rssMiBMax),
        ownerHeapBytesPerSpan,
        heapGrowthBytesPerSpan,
        checkpointLagMsP50: percentile(lags, 50),
        checkpointLagMsP99: percentile(lags, 99),
        // Steady phase, asked of the owner: the changefeed view, GET /spans?limit=1000, GET /spans/slowest?k=10.
        viewMsP99: Math.round(percentile(answerMs.view, 99)),
        spansPageMsP99: Math.round(percentile(answerMs.spansPage, 99)),
        slowestMsP99: Math.round(percentile(answerMs.slowest, 99)),
        moveMs,
        moveStallMs: stallMs,
        drainedSpans,
        drainMs,
        drainSpansPerSec: Math.round((drainedSpans / Math.max(1, drainMs)) * 1000),
        failoverMs,
        failoverCheckpointResumeMs,
      })}\n`,
    );
  } finally {
    writing = false;
    await writer;
    await sampler.stop();
    await Promise.all(captures.map((c) => c.stop()));
    client.close();
    upstreamClient?.close();
    await etcd.stop();
    await upstream?.stop();
  }
}

main().catch((error: unknown) => {
  process.stderr.write(`bench:cluster failed: ${(error as Error).stack ?? String(error)}\n`);
  process.exitCode = 1;
});

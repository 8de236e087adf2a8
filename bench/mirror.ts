/**
 * Mirror benchmark: the same N puts copied from one etcd prefix to another by spanfeed
 * (etcd source -> etcd sink, with 1 and with 3 captures) and by `etcdctl make-mirror`,
 * on one local etcd.
 *
 *   npm run bench:mirror [-- --events N --spans S --lag-rate P --lag-txn-puts T]
 *
 * Throughput: N distinct keys are written first; each mirror then starts from the
 * revision before them and is timed until it has applied them all (spanfeed: the
 * persisted checkpoint passes the last revision; make-mirror: the destination holds N
 * keys). Each spanfeed copy is then checked key by key against the source (`verify`:
 * keys missing, with another value, or extra under the destination prefix). The peak
 * resident set of the captures over the run (`VmHWM`, the kernel's high-water mark) and
 * the most bytes their etcd sources buffered (`spanfeed_source_buffered_bytes`, sampled
 * every 200 ms) are reported per run. Lag: with 3 captures, a writer puts P keys a second
 * (default 5,000) for 10 s, in transactions of T puts (default 50: in transactions of 10,
 * etcd on a shared 2-core machine could not take the writer's 500 a second and the
 * mirror's writes together), and each sampled
 * write's lag is the time until the persisted checkpoint passes its revision.
 *
 * Prints one JSON line: {"events","spanfeed1EventsPerSec","spanfeed3EventsPerSec",
 * "makeMirrorEventsPerSec","ratio1","ratio3","checkpointLagMsP99","lagPutsPerSec",
 * "capture1RssMaxMb","capture3RssMaxMb","sourceBufferedBytesMax1", "verify1", ...}.
 */
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { Etcd3 } from 'etcd3';
import { clusterKeys } from '../src/cluster/keys.ts';
import { LocalCapture, LocalEtcd, api, apiWhenOwned, waitFor } from '../src/dev/local-cluster.ts';
import { positive } from '../src/dev/script-flags.ts';

async function writeKeys(client: Etcd3, prefix: string, count: number): Promise<bigint> {
  let last = 0n;
  const inFlight = 64;
  for (let done = 0; done < count; done += inFlight) {
    const ops = [];
    for (let i = done; i < Math.min(count, done + inFlight); i++) ops.push(client.put(`${prefix}${String(i).padStart(8, '0')}`).value(`value-${i}`).exec());
    for (const r of await Promise.all(ops)) if (BigInt(r.header.revision) > last) last = BigInt(r.header.revision);
  }
  return last;
}

async function persistedCheckpoint(client: Etcd3, cluster: string, id: string): Promise<bigint> {
  const value = await client.get(clusterKeys(cluster).changefeedStatus(id)).string();
  return value === null ? 0n : BigInt((JSON.parse(value) as { checkpointTs: string }).checkpointTs);
}

/** The process's peak resident set so far, in MiB (Linux `VmHWM`). */
function rssMaxMb(pid: number): number {
  const match = /^VmHWM:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  if (match === null) throw new Error(`no VmHWM for pid ${pid}`);
  return Math.round(Number(match[1]) / 1024);
}

/** The bytes the capture's sources buffer now, over its changefeeds. */
async function sourceBufferedBytes(url: string): Promise<number> {
  const text = await (await fetch(`${url}/metrics`)).text();
  let bytes = 0;
  for (const match of text.matchAll(/^spanfeed_source_buffered_bytes\{[^}]*\} (\S+)$/gm)) bytes += Number(match[1]);
  return bytes;
}

/** Keys of the source missing from the copy, copied with another value, or in the copy only. */
async function verify(client: Etcd3, sourcePrefix: string, copyPrefix: string): Promise<{ missing: number; wrong: number; extra: number }> {
  const source = await client.getAll().prefix(sourcePrefix).strings();
  const copy = await client.getAll().prefix(copyPrefix).strings();
  let missing = 0;
  let wrong = 0;
  for (const [key, value] of Object.entries(source)) {
    const copied = copy[copyPrefix + key.slice(sourcePrefix.length)];
    if (copied === undefined) missing++;
    else if (copied !== value) wrong++;
  }
  const extra = Object.keys(copy).filter((key) => source[sourcePrefix + key.slice(copyPrefix.length)] === undefined).length;
  return { missing, wrong, extra };
}

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { events: { type: 'string' }, spans: { type: 'string' }, 'lag-rate': { type: 'string' }, 'lag-txn-puts': { type: 'string' } }, strict: true });
  const events = positive('events', values.events, 20_000);
  const spans = positive('spans', values.spans, 16);
  const lagRate = positive('lag-rate', values['lag-rate'], 5_000);
  const lagTxnPuts = positive('lag-txn-puts', values['lag-txn-puts'], 50);
  const etcd = await LocalEtcd.start();
  const client = new Etcd3({ hosts: `http://${etcd.endpoint}` });
  const started: LocalCapture[] = [];
  try {
    const base = BigInt((await client.get('\u0000').exec()).header.revision);
    const last = await writeKeys(client, 'src/', events);

    const runs = new Map<number, { rssMaxMb: number; sourceBufferedBytesMax: number; verify: { missing: number; wrong: number; extra: number } }>();
    const spanfeedRun = async (captureCount: number): Promise<number> => {
      const cluster = `mirror${captureCount}`;
      const captures: LocalCapture[] = [];
      for (let i = 0; i < captureCount; i++) captures.push(await LocalCapture.start(etcd, { cluster, extraArgs: ['--log-level', 'warn'] }));
      started.push(...captures);
      const url = (captures[0] as LocalCapture).url;
      await waitFor('an owner', async () => ((await api(url, 'GET', '/api/v1/health')).status === 200 ? true : undefined));
      const t0 = Date.now();
      const created = await apiWhenOwned(url, 'POST', '/api/v1/changefeeds', {
        id: 'm',
        source: { uri: `etcd://${etcd.endpoint}` },
        sink: { uri: `etcd://${etcd.endpoint}/dst${captureCount}/` },
        tables: [{ name: 'src', prefix: 'src/', spans }],
        start: base.toString(),
      });
      if (created.status !== 201) throw new Error(`create failed: ${JSON.stringify(created.body)}`);
      // Sampled apart from the 20 ms poll, and less often: a scrape costs the capture CPU.
      let bufferedMax = 0;
      let caughtUp = false;
      const sampler = (async () => {
        while (!caughtUp) {
          for (const bytes of await Promise.all(captures.map((c) => sourceBufferedBytes(c.url)))) if (bytes > bufferedMax) bufferedMax = bytes;
          await new Promise((resolve) => setTimeout(resolve, 200));
        }
      })();
      try {
        await waitFor('the mirror to catch up', async () => ((await persistedCheckpoint(client, cluster, 'm')) >= last ? true : undefined), 600_000, 20);
      } finally {
        caughtUp = true;
      }
      const rate = (events * 1000) / (Date.now() - t0);
      await sampler;
      runs.set(captureCount, {
        rssMaxMb: Math.max(...captures.map((c) => rssMaxMb(c.pid))),
        sourceBufferedBytesMax: bufferedMax,
        verify: await verify(client, 'src/', `dst${captureCount}/src/`),
      });
      return rate;
    };

    const spanfeed1 = await spanfeedRun(1);
    await Promise.all(started.splice(0).map((c) => c.stop()));
    const spanfeed3 = await spanfeedRun(3);

    // etcdctl make-mirror of the same keys into mm/.
    const t0 = Date.now();
    const mirror = spawn('etcdctl', ['--endpoints', etcd.endpoint, 'make-mirror', '--prefix', 'src/', '--dest-prefix', 'mm/', etcd.endpoint], {
      stdio: 'ignore',
      env: { ...process.env, ETCDCTL_API: '3' },
    });
    let makeMirror = 0;
    try {
      await waitFor('make-mirror to copy every key', async () => {
        const count = await client.getAll().prefix('mm/').count();
        return count >= events ? true : undefined;
      }, 600_000, 20);
      makeMirror = (events * 1000) / (Date.now() - t0);
    } finally {
      mirror.kill('SIGKILL');
    }

    // Lag while keeping up: `lagRate` puts a second for 10 s through the 3-capture mirror,
    // every 20 ms a tick's share in transactions of `lagTxnPuts` puts.
    const lags: number[] = [];
    const pending: { rev: bigint; at: number }[] = [];
    const writerStart = Date.now();
    const writerEnd = writerStart + 10_000;
    let n = 0;
    let writerDone = writerEnd;
    const writer = (async () => {
      while (Date.now() < writerEnd) {
        const tickStart = Date.now();
        // Puts due by now, so a slow tick is made up by the next.
        const due = Math.floor(((tickStart + 20 - writerStart) * lagRate) / 1000) - n;
        const txns = [];
        for (let done = 0; done < due; done += lagTxnPuts) {
          const success = [];
          for (let i = 0; i < Math.min(lagTxnPuts, due - done); i++) success.push({ request_put: { key: Buffer.from(`src/live${String(n++).padStart(8, '0')}`), value: Buffer.from('x') } });
          txns.push(client.kv.txn({ success }));
        }
        const results = await Promise.all(txns);
        const rev = results.reduce((m, r) => (BigInt(r.header.revision) > m ? BigInt(r.header.revision) : m), 0n);
        if (results.length > 0) pending.push({ rev, at: Date.now() });
        await new Promise((resolve) => setTimeout(resolve, Math.max(0, 20 - (Date.now() - tickStart))));
      }
      writerDone = Date.now();
    })();
    const poller = (async () => {
      while (Date.now() < writerEnd + 5_000 && (Date.now() < writerEnd || pending.length > 0)) {
        const checkpoint = await persistedCheckpoint(client, 'mirror3', 'm');
        const now = Date.now();
        while (pending.length > 0 && (pending[0] as { rev: bigint }).rev <= checkpoint) lags.push(now - (pending.shift() as { at: number }).at);
        await new Promise((resolve) => setTimeout(resolve, 10));
      }
    })();
    await Promise.all([writer, poller]);
    const lagPutsPerSec = (n * 1000) / (writerDone - writerStart);
    lags.sort((a, b) => a - b);
    const p99 = lags[Math.min(lags.length - 1, Math.ceil(0.99 * lags.length) - 1)] ?? null;
    const round = (x: number): number => Math.round(x);
    process.stdout.write(
      `${JSON.stringify({
        events,
        spans,
        spanfeed1EventsPerSec: round(spanfeed1),
        spanfeed3EventsPerSec: round(spanfeed3),
        makeMirrorEventsPerSec: round(makeMirror),
        ratio1: Math.round((spanfeed1 / makeMirror) * 100) / 100,
        ratio3: Math.round((spanfeed3 / makeMirror) * 100) / 100,
        checkpointLagMsP99: p99,
        lagPutsPerSec: round(lagPutsPerSec),
        lagSamples: lags.length,
        lagUnappliedAtEnd: pending.length,
        capture1RssMaxMb: runs.get(1)?.rssMaxMb,
        capture3RssMaxMb: runs.get(3)?.rssMaxMb,
        sourceBufferedBytesMax1: runs.get(1)?.sourceBufferedBytesMax,
        sourceBufferedBytesMax3: runs.get(3)?.sourceBufferedBytesMax,
        verify1: runs.get(1)?.verify,
        verify3: runs.get(3)?.verify,
      })}\n`,
    );
  } finally {
    await Promise.all(started.map((c) => c.stop()));
    client.close();
    await etcd.stop();
  }
}

main().catch((error: unknown) => {
  process.stderr.write(`bench:mirror failed: ${(error as Error).stack ?? String(error)}\n`);
  process.exitCode = 1;
});

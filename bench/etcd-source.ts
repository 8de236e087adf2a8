/**
 * etcd source benchmark: N spans of one table read by one source (one capture's view of
 * one changefeed), against a local etcd with progress notifications every 100 ms.
 *
 *   npm run bench:etcd-source [-- --spans N --seconds S --rate PUTS_PER_SEC --impl PATH]
 *
 * Every span joins from the current revision; then a writer puts `rate` keys a second
 * at random keys of the table for `seconds`, while every span is read in rounds, as the
 * pipeline runner would. `--impl` loads another implementation of the source (a module
 * exporting `EtcdSource` and `parseEtcdSourceUri`, e.g. the previous one taken from git)
 * for a before/after comparison.
 *
 * Prints one JSON line: {"impl","spans","setupMs","etcdWatchers","steadySeconds",
 * "putsPerSec","eventsRead","nodeCpuPerSec","etcdCpuPerSec","readLagMsP99"}: watchers as
 * etcd counts them, CPU in seconds per second of this process (the source) and of etcd.
 *
 * Measured on a 2-core machine shared with other work (2026-12-02), rate 200, before =
 * the source with one watcher per span (commit 77390ad, loaded with --impl):
 *
 *   spans   impl    setupMs  etcdWatchers  putsPerSec  nodeCpuPerSec  etcdCpuPerSec  readLagMsP99
 *   1000    before  2320     1000          80          0.236          0.62           1181
 *   1000    shared  266      1             199         0.405          0.124          113
 *   10000   before  (not every span resolved within 300 s)
 *   10000   shared  332      1             192         0.604          0.112          158
 *
 * Before, etcd itself was the bottleneck (a progress notification per watcher every
 * 100 ms), and the writer could not reach its rate. The source's own CPU after is the
 * benchmark's read loop over every span (10,000 reads per round), not the watcher.
 */
import { resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { Etcd3 } from 'etcd3';
import type { Span } from '../src/core/span.ts';
import { LocalEtcd, waitFor } from '../src/dev/local-cluster.ts';
import type { Source } from '../src/pipeline/source.ts';
import { positive } from '../src/dev/script-flags.ts';

async function etcdMetric(endpoint: string, name: string): Promise<number> {
  const text = await (await fetch(`http://${endpoint}/metrics`)).text();
  const match = new RegExp(`^${name} (\\S+)$`, 'm').exec(text);
  return match === null ? Number.NaN : Number(match[1]);
}

function percentile(values: number[], p: number): number {
  if (values.length === 0) return 0;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] as number;
}

const { values } = parseArgs({ options: { spans: { type: 'string' }, seconds: { type: 'string' }, rate: { type: 'string' }, impl: { type: 'string' } } });
const spanCount = positive('spans', values.spans, 10_000);
const seconds = positive('seconds', values.seconds, 10);
const rate = positive('rate', values.rate, 200);
// The previous source did not get 10,000 spans resolved within 300 s: report that, not hang.
const setupTimeoutMs = 120_000;
const implPath = values.impl === undefined ? '../src/pipeline/sources/etcd.ts' : pathToFileURL(resolve(values.impl)).href;
const impl = (await import(implPath)) as {
  EtcdSource: new (options: unknown) => Source;
  parseEtcdSourceUri: (uri: string) => unknown;
};

const etcd = await LocalEtcd.start();
const client = new Etcd3({ hosts: `http://${etcd.endpoint}` });
const width = String(spanCount).length;
const keyOf = (i: number): string => `b/${String(i).padStart(width, '0')}`;
const spans: Span[] = Array.from({ length: spanCount }, (_, i) => ({ table: 'b', start: keyOf(i), end: i + 1 < spanCount ? keyOf(i + 1) : 'b0' }));
const source = new impl.EtcdSource(impl.parseEtcdSourceUri(`etcd://${etcd.endpoint}`));
try {
  const from = await source.currentTs();
  const positions = spans.map(() => from);
  const setupStarted = performance.now();
  await Promise.all(spans.map((span) => source.resolvedTs(span, from)));
  // Joined once every span resolves past a write made after the joins.
  const marker = BigInt((await client.put('b0-marker').value('x')).header.revision);
  await waitFor('every span to resolve', async () => {
    for (const span of spans) if ((await source.resolvedTs(span, from)) < marker) return undefined;
    return true;
  }, setupTimeoutMs, 100);
  const setupMs = Math.round(performance.now() - setupStarted);
  const etcdWatchers = await etcdMetric(etcd.endpoint, 'etcd_debugging_mvcc_watcher_total');

  const putTimes = new Map<string, number>();
  const lagsMs: number[] = [];
  let eventsRead = 0;
  let writing = true;
  const cpuStarted = process.cpuUsage();
  const etcdCpuStarted = await etcdMetric(etcd.endpoint, 'process_cpu_seconds_total');
  const started = performance.now();
  let puts = 0;
  const writer = (async () => {
    while (performance.now() - started < seconds * 1000) {
      const key = `${keyOf(Math.floor(Math.random() * spanCount))}/k`;
      const value = `${puts}`;
      putTimes.set(`${key}=${value}`, performance.now());
      await client.put(key).value(value);
      puts++;
      const due = started + (puts / rate) * 1000;
      const wait = due - performance.now();
      if (wait > 0) await new Promise((r) => setTimeout(r, wait));
    }
    writing = false;
  })();
  while (writing) {
    for (let i = 0; i < spans.length; i++) {
      const span = spans[i] as Span;
      const position = positions[i] as bigint;
      const resolved = await source.resolvedTs(span, position);
      const result = await source.read(span, position, resolved, 1_000);
      const now = performance.now();
      for (const event of result.events) {
        const at = putTimes.get(`${event.key}=${event.value ?? ''}`);
        if (at !== undefined) lagsMs.push(now - at);
      }
      eventsRead += result.events.length;
      positions[i] = result.readUpToTs;
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  await writer;
  const elapsed = (performance.now() - started) / 1000;
  const cpu = process.cpuUsage(cpuStarted);
  const etcdCpu = (await etcdMetric(etcd.endpoint, 'process_cpu_seconds_total')) - etcdCpuStarted;
  console.log(
    JSON.stringify({
      impl: values.impl ?? 'src/pipeline/sources/etcd.ts',
      spans: spanCount,
      setupMs,
      etcdWatchers,
      steadySeconds: Math.round(elapsed * 10) / 10,
      putsPerSec: Math.round(puts / elapsed),
      eventsRead,
      nodeCpuPerSec: Math.round(((cpu.user + cpu.system) / 1e6 / elapsed) * 1000) / 1000,
      etcdCpuPerSec: Math.round((etcdCpu / elapsed) * 1000) / 1000,
      readLagMsP99: Math.round(percentile(lagsMs, 99)),
    }),
  );
} finally {
  await source.close();
  client.close();
  await etcd.stop();
}

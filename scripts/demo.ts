/**
 * `npm run demo`: a local cluster to watch. Starts a single-node etcd in a temp dir
 * (installing it first when missing and run as root), three captures, a writer making
 * changes under `demo/`, and a demo changefeed copying them (etcd source) into NDJSON
 * files under `./demo-out` (file sink). Prints the watermark every second until Ctrl-C,
 * which stops everything and removes the temp dir (`./demo-out` stays, to look at).
 */
import { mkdirSync } from 'node:fs';
import { resolve } from 'node:path';
import { Etcd3 } from 'etcd3';
import { createDemoChangefeed, seedDemoKeys, startDemoWriter } from '../src/dev/demo-writer.ts';
import type { ChangefeedView } from '../src/dev/local-cluster.ts';
import { LocalCapture, LocalEtcd, api, waitFor } from '../src/dev/local-cluster.ts';

async function main(): Promise<number> {
  let etcd: LocalEtcd;
  try {
    etcd = await LocalEtcd.start();
  } catch (error) {
    process.stderr.write(`demo: cannot start etcd: ${(error as Error).message}\n`);
    return 1;
  }
  const captures: LocalCapture[] = [];
  const upstream = new Etcd3({ hosts: `http://${etcd.endpoint}` });
  let stopWriter: (() => void) | undefined;
  let stopping = false;
  const stop = async (): Promise<void> => {
    if (stopping) return;
    stopping = true;
    process.stdout.write('\nstopping the demo cluster...\n');
    stopWriter?.();
    upstream.close();
    await Promise.all(captures.map((c) => c.stop()));
    await etcd.stop();
  };
  process.on('SIGINT', () => void stop().then(() => process.exit(0)));
  process.on('SIGTERM', () => void stop().then(() => process.exit(0)));
  try {
    for (let i = 0; i < 3; i++) captures.push(await LocalCapture.start(etcd, { cluster: 'demo', leaseTtlS: 5, fileSinkRoot: resolve('demo-out') }));
    const url = (captures[0] as LocalCapture).url;
    await waitFor('an owner', async () => ((await api(url, 'GET', '/api/v1/health')).status === 200 ? true : undefined));
    const outDir = resolve('demo-out');
    mkdirSync(outDir, { recursive: true });
    await seedDemoKeys(upstream);
    await createDemoChangefeed(url, etcd.endpoint, `file://${outDir}`);
    stopWriter = startDemoWriter(upstream);
    process.stdout.write(
      [
        'spanfeed demo: etcd at ' + etcd.endpoint + ', three captures:',
        ...captures.map((c) => `  ${c.id}  ${c.url}`),
        `API: ${url}/api/v1/changefeeds/demo  (also /api/v1/captures, /api/v1/changefeeds/demo/spans)`,
        `Copying changes under demo/ into ${outDir}/<table>/*.ndjson`,
        'Ctrl-C stops everything.',
        '',
      ].join('\n'),
    );
    while (!stopping) {
      const answer = await api<ChangefeedView>(url, 'GET', '/api/v1/changefeeds/demo').catch(() => undefined);
      if (answer?.status === 200) {
        const v = answer.body;
        const states = v.spansByState === null ? '' : Object.entries(v.spansByState).filter(([, n]) => n > 0).map(([s, n]) => `${s}=${n}`).join(' ');
        const reason = v.watermark.state === 'advancing' ? '' : ` (${v.watermark.reason ?? ''})`;
        const warning = v.warning === null ? '' : `  WARNING ${v.warning.failingSpans} spans retrying: ${v.warning.error}`;
        process.stdout.write(`${new Date().toISOString()}  checkpoint ${v.checkpointTs}  resolved ${v.resolvedTs}  lag ${v.checkpointLagMs ?? '-'} ms  ${v.watermark.state}${reason}  spans ${states}${warning}\n`);
      }
      await new Promise((resolve) => setTimeout(resolve, 1_000));
    }
    return 0;
  } catch (error) {
    process.stderr.write(`demo: ${(error as Error).message}\n`);
    await stop();
    return 1;
  }
}

process.exitCode = await main();

/**
 * The compose file's demo writer: creates the `demo` changefeed (etcd source, file sink
 * under /tmp/demo-out in the capture containers) and writes changes until stopped.
 *   node --import tsx scripts/demo-writer.ts --etcd host:port --api http(s)://host:port [--token-file F]
 * With --token-file, the first token in F (a `--auth-token-file`, `<token> <role>` a line)
 * is sent to the API; it must be an admin token. For https, NODE_EXTRA_CA_CERTS names the CA.
 */
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { Etcd3 } from 'etcd3';
import { createDemoChangefeed, seedDemoKeys, startDemoWriter } from '../src/dev/demo-writer.ts';
import { waitFor } from '../src/dev/local-cluster.ts';

const { values } = parseArgs({ options: { etcd: { type: 'string' }, api: { type: 'string' }, 'token-file': { type: 'string' } }, strict: true });
const etcd = values.etcd ?? '127.0.0.1:2379';
const apiUrl = values.api ?? 'http://127.0.0.1:8080';
const tokenFile = values['token-file'];
const token = tokenFile === undefined ? undefined : firstToken(tokenFile);

/** The token of the first line of a token file that is not blank or a comment. */
function firstToken(path: string): string {
  const line = readFileSync(path, 'utf8').split('\n').map((l) => l.trim()).find((l) => l !== '' && !l.startsWith('#'));
  const token = line?.split(/\s+/)[0];
  if (token === undefined) throw new Error(`--token-file ${path} holds no token`);
  return token;
}
const client = new Etcd3({ hosts: `http://${etcd}` });
await waitFor('the spanfeed API', async () => ((await fetch(`${apiUrl}/api/v1/health`)).ok ? true : undefined), 120_000, 500);
await seedDemoKeys(client);
await createDemoChangefeed(apiUrl, etcd, 'file:///tmp/demo-out', token);
const stop = startDemoWriter(client);
process.stdout.write(`demo writer: writing under demo/ on ${etcd}; changefeed "demo" created through ${apiUrl}\n`);
const shutdown = (): void => {
  stop();
  client.close();
  process.exit(0);
};
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);

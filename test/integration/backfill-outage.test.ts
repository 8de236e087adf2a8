/**
 * A backfill rides out a 10-second PostgreSQL outage: 30,000 existing keys of a real etcd
 * (four tables of one span each) are backfilled by two `spanfeed server` processes into a
 * real PostgreSQL in small pages, so the copy takes several seconds; PostgreSQL is stopped
 * mid-backfill for 10 s and started again. Every failed page retries in place like any
 * pipeline step, so the changefeed never fails (before, a page failed the changefeed
 * after 5 tries, about 1.5 s into the outage), the warning shows the outage meanwhile, no
 * span is given back, the backfill goes on from its tokens (every key counted once) and
 * finishes, and the verifier finds the copy exact.
 */
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { Etcd3 } from 'etcd3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LocalPostgres } from '../../src/dev/local-postgres.ts';
import type { ChangefeedView } from './harness.ts';
import { TestCapture, TestEtcd, callAny, waitFor } from './harness.ts';

const bin = fileURLToPath(new URL('../../bin/spanfeed', import.meta.url));
const cluster = `bfo${process.pid}`;
const tableNames = ['a', 'b', 'c', 'd'];
const keysPerTable = 7_500;
const keyCount = tableNames.length * keysPerTable;
const outageMs = 10_000;

type View = ChangefeedView & { error?: string; backfill: { state: string; keysDone: number; keysTotal: number } | null };

let etcd: TestEtcd;
let client: Etcd3;
let postgres: LocalPostgres;
const captures: TestCapture[] = [];

function call<T = any>(method: string, path: string, body?: unknown): Promise<{ status: number; body: T }> {
  return callAny<T>(captures, method, path, body);
}

async function view(id: string): Promise<View> {
  const answer = await call<View>('GET', `/api/v1/changefeeds/${id}`);
  if (answer.status !== 200) throw new Error(`GET ${id}: ${answer.status} ${JSON.stringify(answer.body)}`);
  return answer.body;
}

/** Puts `count` keys under `prefix`, 100 to a transaction, 8 transactions at once; the revision of the last one. */
async function putAll(prefix: string, count: number): Promise<bigint> {
  const txns: Buffer[][] = [];
  for (let i = 0; i < count; i++) {
    if (i % 100 === 0) txns.push([]);
    txns.at(-1)?.push(Buffer.from(`${prefix}${String(i).padStart(6, '0')}`));
  }
  let last = 0n;
  for (let next = 0; next < txns.length; next += 8) {
    const answers = await Promise.all(
      txns.slice(next, next + 8).map((keys) => client.kv.txn({ success: keys.map((key) => ({ request_put: { key, value: Buffer.from(`value-${key.toString()}`) } })) })),
    );
    for (const answer of answers) if (BigInt(answer.header.revision) > last) last = BigInt(answer.header.revision);
  }
  return last;
}

beforeAll(async () => {
  etcd = await TestEtcd.start();
  client = new Etcd3({ hosts: `http://${etcd.endpoint}` });
  postgres = await LocalPostgres.start();
  // Retries in place for as long as the outage lasts (at most 500 ms apart): no give-back.
  const extraArgs = ['--pipeline-step-deadline-ms', '5000', '--pipeline-retries', '100', '--pipeline-retry-backoff-max-ms', '500'];
  for (let i = 0; i < 2; i++) captures.push(await TestCapture.start(etcd, { cluster, extraArgs }));
}, 60_000);

afterAll(async () => {
  await Promise.all(captures.map((c) => c.stop()));
  client?.close();
  await etcd?.stop();
  await postgres?.stop();
});

describe('a backfill through a sink outage', () => {
  it('rides out 10 s of PostgreSQL down mid-backfill: never failed, warned meanwhile, finished, exact', async () => {
    let lastRevision = 0n;
    for (const name of tableNames) lastRevision = await putAll(`bo/${name}/`, keysPerTable);
    await waitFor('an owner', async () => ((await call('GET', '/api/v1/captures')).status === 200 ? true : undefined));
    const created = await call('POST', '/api/v1/changefeeds', {
      id: 'bo',
      source: { uri: `etcd://${etcd.endpoint}?backfillPageKeys=20&backfillSpansInFlight=1` },
      sink: { uri: postgres.url },
      tables: tableNames.map((name) => ({ name, prefix: `bo/${name}/` })),
      backfill: true,
    });
    expect(created.status).toBe(201);

    // Every changefeed state seen, from now to the end of the backfill.
    const states = new Map<string, string | undefined>();
    let sampling = true;
    const sampler = (async () => {
      while (sampling) {
        try {
          const body = await view('bo');
          if (!states.has(body.state)) states.set(body.state, body.error);
        } catch {
          // No owner for a moment: sample again.
        }
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
    })();

    try {
      const midway = await waitFor('the backfill to be under way', async () => {
        const body = await view('bo');
        return body.backfill !== null && body.backfill.keysDone >= keyCount / 5 ? body.backfill : undefined;
      }, 60_000, 50);
      expect(midway.keysTotal).toBe(keyCount);
      expect(midway.state).toBe('running');

      // The outage: PostgreSQL down for 10 s, mid-backfill. All along the changefeed stays
      // normal, the backfill cannot finish, and the warning says why.
      const outageStarted = Date.now();
      await postgres.halt();
      let warned: { failingSpans: number; error: string } | null = null;
      const intoOutageMs = (): number => Date.now() - outageStarted;
      while (intoOutageMs() < outageMs) {
        const body = await view('bo');
        expect(body.state, `${intoOutageMs()} ms into the outage: ${body.error ?? ''}`).toBe('normal');
        expect(body.backfill?.state).toBe('running');
        warned ??= body.warning;
        await new Promise((resolve) => setTimeout(resolve, Math.max(0, Math.min(100, outageMs - intoOutageMs()))));
      }
      expect(warned?.failingSpans).toBeGreaterThan(0);
      expect(warned?.error).toMatch(/ECONNREFUSED|connect|terminat|shutting down/i);
      const beforeRestart = await view('bo');
      expect(beforeRestart.state, beforeRestart.error).toBe('normal');
      expect(beforeRestart.warning).not.toBeNull();
      expect(beforeRestart.backfill?.keysDone).toBeLessThan(keyCount);
      await postgres.restart();

      const done = await waitFor('the backfill to finish and the checkpoint to pass it', async () => {
        const body = await view('bo');
        return body.backfill?.state === 'done' && BigInt(body.checkpointTs) >= lastRevision ? body : undefined;
      }, 60_000, 100);
      // Pages retried from their tokens: no key counted twice.
      expect(done.backfill?.keysDone).toBe(keyCount);
      await waitFor('the warning to clear', async () => ((await view('bo')).warning === null ? true : undefined), 10_000, 100);
    } finally {
      sampling = false;
      await sampler;
    }
    expect(Object.fromEntries(states)).toEqual({ normal: undefined });
    // Retried in place: no pipeline gave its span back.
    for (const capture of captures) {
      expect(capture.proc.running).toBe(true);
      expect(capture.proc.output).not.toMatch(/span pipeline failed/);
    }

    const out = spawnSync(process.execPath, [bin, 'verify', '--changefeed', 'bo', '--etcd', etcd.endpoint, '--cluster', cluster], { encoding: 'utf8' });
    let result: Record<string, unknown>;
    try {
      result = JSON.parse(out.stdout.trim().split('\n').at(-1) ?? '{}') as Record<string, unknown>;
    } catch {
      result = { stdout: out.stdout, stderr: out.stderr };
    }
    expect(result).toMatchObject({ missing: 0, mismatched: 0, extra: 0, tables: tableNames.length, tablesPending: 0 });
    expect(result.keysChecked as number).toBeGreaterThanOrEqual(keyCount);
    expect(out.status).toBe(0);
  });
});

/**
 * A sink that never answers, on a real cluster (real etcd, three `spanfeed server`
 * processes with a 1 s `--pipeline-step-deadline-ms`, a datagen source). The changefeed's
 * PostgreSQL sink points at a loopback TCP server started here, in one of two ways:
 *
 * - `silent`: it accepts every connection and never writes a byte, so every sink call
 *   hangs in the connect (until the pg client's own 10 s connection timeout, far past the
 *   step deadline);
 * - `stalled`: it answers the startup (authentication ok, ready for query) and then never
 *   answers a query, as a server that stopped answering does, so a sink call hangs for
 *   ever.
 *
 * Either way the operator sees a warning naming the deadline (before step deadlines it
 * stayed null, the watermark saying `advancing`, for as long as the call hung: 10 s for
 * the silent sink, for ever for the stalled one), the hung spans are given back and
 * placed again, a DELETE leaves no span of the changefeed on any capture, a healthy
 * changefeed beside it keeps advancing, and no capture exits. A capture that loses its
 * etcd session while holding a call that hangs for ever stops its pipelines and rejoins.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ChangefeedView, SpanPage } from './harness.ts';
import { TestCapture, TestEtcd, api, callAny, waitFor } from './harness.ts';
import { HangingServer } from './hanging-server.ts';

const cluster = `hung${process.pid}`;
const stepDeadlineMs = 1_000;
const spansPerTable = 4;
const deadlineNamed = new RegExp(`within ${stepDeadlineMs} ms`);

let etcd: TestEtcd;
const servers: HangingServer[] = [];
const captures: TestCapture[] = [];

/** The API through the running captures but those in `except` (a paused one would only time out). */
function call<T = any>(method: string, path: string, body?: unknown, except: readonly TestCapture[] = []): Promise<{ status: number; body: T }> {
  return callAny<T>(captures.filter((c) => !except.includes(c)), method, path, body);
}

async function view(id: string, except: readonly TestCapture[] = []): Promise<ChangefeedView & { error?: string }> {
  const answer = await call<ChangefeedView & { error?: string }>('GET', `/api/v1/changefeeds/${id}`, undefined, except);
  if (answer.status !== 200) throw new Error(`GET ${id}: ${answer.status} ${JSON.stringify(answer.body)}`);
  return answer.body;
}

/** The capture's log lines (pino JSON) with message `msg` about changefeed `id`. */
function logLines(capture: TestCapture, msg: string, id: string): Record<string, unknown>[] {
  const lines: Record<string, unknown>[] = [];
  for (const raw of capture.proc.output.split('\n')) {
    if (!raw.includes(msg)) continue;
    try {
      const line = JSON.parse(raw) as Record<string, unknown>;
      if (line.msg === msg && line.changefeed === id) lines.push(line);
    } catch {
      // A line cut at the start of the kept output: not one to count.
    }
  }
  return lines;
}

/** Spans of `id` this capture's pipelines hold, from its own /metrics (0 when it holds none). */
async function spansHeld(capture: TestCapture, id: string): Promise<number> {
  const answer = await api<string>(capture.url, 'GET', '/metrics');
  const line = answer.body.split('\n').find((l) => l.startsWith(`spanfeed_capture_spans_held{changefeed="${id}"}`));
  return line === undefined ? 0 : Number(line.split(' ').at(-1));
}

/** Samples the owner's placement of every span of `id` (state@primary, each change once) until stopped. */
function samplePlacements(id: string): { history: Map<string, string[]>; stop: () => Promise<void> } {
  const history = new Map<string, string[]>();
  let sampling = true;
  const done = (async () => {
    while (sampling) {
      try {
        const answer = await call<SpanPage>('GET', `/api/v1/changefeeds/${id}/spans`);
        if (answer.status === 200) {
          for (const span of answer.body.spans) {
            const key = JSON.stringify([span.table, span.start]);
            const seen = history.get(key) ?? [];
            const now = `${span.state}@${span.primary ?? '-'}`;
            if (seen.at(-1) !== now) seen.push(now);
            history.set(key, seen);
          }
        }
      } catch {
        // No owner for a moment: sample again.
      }
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  })();
  return {
    history,
    stop: async () => {
      sampling = false;
      await done;
    },
  };
}

/** True when a span was seen replicating, then in another state or on another capture, then being placed (prepare, commit) or replicating again. */
function placedAgain(history: ReadonlyMap<string, readonly string[]>): boolean {
  return [...history.values()].some((seen) => {
    const first = seen.findIndex((s) => s.startsWith('replicating@'));
    if (first < 0 || first + 1 >= seen.length) return false;
    return seen.slice(first + 1).some((s) => /^(prepare|commit|replicating)@/.test(s));
  });
}

/**
 * Creates changefeed `id` into `server`, and checks (a) the warning names the deadline
 * while the changefeed stays normal, and (b) pipelines fail for good after their retries
 * (each a missed deadline) and their spans are placed again.
 */
async function hangAndGiveBack(id: string, server: HangingServer): Promise<void> {
  const created = await call('POST', '/api/v1/changefeeds', {
    id,
    source: { uri: 'datagen://?rate=20' },
    sink: { uri: `postgres://spanfeed@127.0.0.1:${server.port}/spanfeed` },
    tables: [{ name: 't', spans: spansPerTable }],
  });
  expect(created.status).toBe(201);
  const placements = samplePlacements(id);
  try {
    // (a) The warning: spans failing with an error that names the deadline.
    const warned = await waitFor('a warning that names the step deadline', async () => {
      const body = await view(id);
      return body.warning !== null && deadlineNamed.test(body.warning.error) ? body : undefined;
    }, 20_000, 100);
    expect(warned.state).toBe('normal');
    expect(warned.warning?.failingSpans).toBeGreaterThan(0);
    // The sink really was reached, and never answered.
    expect(server.connectionsSeen).toBeGreaterThan(0);

    // (b) Give-back: a capture says a pipeline failed (its retries spent on the missed
    // deadline), and the owner placed that span again.
    await waitFor('a span given back and placed again', () => {
      const givenBack = captures.flatMap((c) => logLines(c, 'span pipeline failed', id)).filter((l) => deadlineNamed.test(String(l.error)));
      return givenBack.length > 0 && placedAgain(placements.history) ? true : undefined;
    }, 30_000, 200);
    const after = await view(id);
    expect(after.state).toBe('normal');
    expect(after.spans).toBe(spansPerTable);
  } finally {
    await placements.stop();
  }
}

/** (c) The DELETE answers at once, and within a bounded time no capture holds a span of `id`. */
async function deleteWithinBoundedTime(id: string): Promise<void> {
  const started = Date.now();
  const removed = await call('DELETE', `/api/v1/changefeeds/${id}`);
  expect(removed.status).toBe(200);
  expect(Date.now() - started).toBeLessThan(5_000);
  // Each capture drops the changefeed's pipelines once its watch sees the delete (a call
  // that hangs is waited for at most a step deadline, in the background).
  await waitFor(`no capture to hold a span of ${id}`, async () => {
    for (const capture of captures) if ((await spansHeld(capture, id)) > 0) return undefined;
    return true;
  }, 2 * stepDeadlineMs + 8_000, 100);
  expect((await call('GET', `/api/v1/changefeeds/${id}`)).status).toBe(404);
}

/** The healthy changefeed still advances without a warning, and (d) no capture exited or hit a decision error. */
async function othersUnharmed(): Promise<void> {
  const before = BigInt((await view('ok')).checkpointTs);
  await waitFor('the healthy changefeed to advance', async () => (BigInt((await view('ok')).checkpointTs) > before ? true : undefined), 10_000, 100);
  expect((await view('ok')).warning).toBeNull();
  for (const capture of captures) {
    expect(capture.proc.running).toBe(true);
    expect(capture.proc.output).not.toMatch(/pipeline decision failed|InvariantError/);
  }
}

beforeAll(async () => {
  etcd = await TestEtcd.start();
  for (const mode of ['silent', 'stalled'] as const) {
    const server = new HangingServer(mode);
    servers.push(server);
    await server.listen();
  }
  const extraArgs = ['--pipeline-step-deadline-ms', String(stepDeadlineMs), '--pipeline-retries', '2', '--pipeline-retry-backoff-max-ms', '200'];
  for (let i = 0; i < 3; i++) captures.push(await TestCapture.start(etcd, { cluster, extraArgs }));
  await waitFor('an owner', async () => ((await call('GET', '/api/v1/captures')).status === 200 ? true : undefined));
  // A healthy changefeed beside the hung ones.
  const healthy = await call('POST', '/api/v1/changefeeds', { id: 'ok', source: { uri: 'datagen://?rate=20' }, sink: { uri: 'blackhole://' }, tables: [{ name: 't', spans: 2 }] });
  expect(healthy.status).toBe(201);
}, 60_000);

afterAll(async () => {
  await Promise.all(captures.map((c) => c.stop()));
  await etcd?.stop();
  await Promise.all(servers.map((s) => s.stop()));
});

describe('a sink that never answers', () => {
  it('silent sink: warns naming the deadline, gives the spans back, is deleted within bounded time, and its connections close', async () => {
    const server = servers[0] as HangingServer;
    await hangAndGiveBack('silent', server);
    await deleteWithinBoundedTime('silent');
    // The sink's connections are closed too: the last pending connect ends at the pg
    // client's own 10 s connection timeout, which the sink's close waits for.
    await waitFor('no connection to the silent sink left open', () => (server.sockets.size === 0 ? true : undefined), 20_000, 100);
    await othersUnharmed();
  });

  it('stalled sink: the same, and a capture that loses its session while a call hangs for ever rejoins', async () => {
    const server = servers[1] as HangingServer;
    await hangAndGiveBack('stalled', server);
    // A capture (not the owner) whose sink call hangs: paused past its lease, it self-fences
    // when it runs again, which stops every pipeline (at most a step deadline for the hung
    // calls, and as long again for closing the sink), and joins again as a new capture.
    const paused = await waitFor('a capture other than the owner whose sink call hangs', async () => {
      for (const capture of captures) {
        if ((await capture.status()).isOwner) continue;
        if (logLines(capture, 'pipeline step failed; retrying in place', 'stalled').length > 0) return capture;
      }
      return undefined;
    }, 10_000, 100);
    const oldId = paused.id;
    paused.proc.signal('SIGSTOP');
    try {
      await waitFor('the paused capture to leave the cluster', async () => {
        const answer = await call<{ id: string }[]>('GET', '/api/v1/captures', undefined, [paused]);
        return answer.status === 200 && !answer.body.some((c) => c.id === oldId) ? true : undefined;
      }, 30_000, 200);
    } finally {
      paused.proc.signal('SIGCONT');
    }
    const rejoined = await waitFor('the paused capture to rejoin with a new id', async () => {
      const status = await paused.status();
      return status.id !== oldId && status.id !== '' ? status.id : undefined;
    }, 15_000, 100);
    await paused.refreshId();
    await waitFor('the rejoined capture to be listed', async () => {
      const answer = await call<{ id: string }[]>('GET', '/api/v1/captures');
      return answer.status === 200 && answer.body.some((c) => c.id === rejoined) ? true : undefined;
    }, 15_000, 100);
    await deleteWithinBoundedTime('stalled');
    // Its connections are not checked: pg's pool.end() waits for a client whose query
    // never returns, so the sink's close leaves them open.
    await othersUnharmed();
  });
});

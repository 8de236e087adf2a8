/**
 * Chaos soak: real processes on loopback, faults drawn from a seeded generator, and
 * checks made from outside the processes.
 *
 *   npm run chaos -- --seconds S --seed N [--captures 4] [--catch-up-s 60] [--keep]
 *                    [--faults captureKill,captureStop,ownerResign,drain,move,rebalance,pauseResume,pauseAtEtcdKill,etcdLeaderKill]
 *
 * It starts a three-member metadata etcd (its leader SIGKILLed and restarted every few
 * seconds), a single-member upstream etcd with a writer (puts, overwrites, deletes over
 * three tables, some of them binary), four `spanfeed server` captures, and two backfilled
 * changefeeds from the upstream: one into a file sink, one into an etcd sink (a mirror
 * under `mirror/` of the upstream). For S seconds it injects faults: SIGKILL a capture
 * (sometimes the owner) and start a replacement, SIGSTOP one past its lease TTL and
 * SIGCONT it, resign the owner, drain and undrain a capture, move a span, rebalance,
 * pause and resume a changefeed. Then it stops the faults and the writer and checks:
 *
 *   (a) no checkpoint regresses, neither through the API (every ~200 ms, from any live
 *       capture) nor as persisted in etcd (`/changefeeds/<id>/status`), and
 *       checkpoint <= resolved;
 *   (b) every changefeed catches up past the last upstream revision written, within
 *       --catch-up-s;
 *   (c) each sink replays to exactly the upstream at its persisted checkpoint: the etcd
 *       sink through the verifier, the file sink through an independent reader here;
 *   (d) no capture (and no etcd) exits unless this script killed it.
 *
 * It also measures, as figures that fail nothing, how long the persisted checkpoint is
 * frozen after each metadata-etcd leader kill (new leader -> every changefeed's persisted
 * checkpoint above its value at the kill), leaving out kills overlapped by other faults.
 *
 * It prints one JSON line and exits 1 on any failure; then the temp dir (process logs,
 * the file sink) is kept and its path printed. Every process is killed by its pid and
 * every temp dir removed, also on SIGINT.
 */
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import type { Etcd3 } from 'etcd3';
import { createEtcdClient } from '../src/cluster/etcd-client.ts';
import { clusterKeys } from '../src/cluster/keys.ts';
import { SeededRandom } from '../src/core/rng.ts';
import { prefixEnd } from '../src/core/span.ts';
import { api as callApi } from '../src/dev/local-cluster.ts';
import { LocalEtcdCluster, stablePort } from '../src/dev/local-etcd-cluster.ts';
import { LoggedProcess } from '../src/dev/logged-process.ts';
import { verify } from '../src/verify/verifier.ts';
import { positive } from '../src/dev/script-flags.ts';

const root = fileURLToPath(new URL('..', import.meta.url));
const bin = join(root, 'bin/spanfeed');

// ---------------------------------------------------------------------------------------
// Options and limits.

const { values } = parseArgs({
  options: {
    seconds: { type: 'string' },
    seed: { type: 'string' },
    captures: { type: 'string' },
    'catch-up-s': { type: 'string' },
    keep: { type: 'boolean' },
    faults: { type: 'string' },
  },
  strict: true,
});
const faultSeconds = positive('seconds', values.seconds, 60);
const seed = values.seed === undefined ? Math.floor(Math.random() * 1_000_000) : Number(values.seed);
if (!Number.isSafeInteger(seed) || seed < 0) throw new Error('--seed must be a non-negative integer');
const captureCount = positive('captures', values.captures, 4);
const catchUpMs = positive('catch-up-s', values['catch-up-s'], 60) * 1_000;
const leaseTtlS = 3;
const tableNames = ['orders', 'users', 'items'] as const;
const keysPerTable = 500;
const prefillKeysPerTable = 200;
/** Writer: a batch of `writeBatchOps` every `writeBatchEveryMs` (about 300 ops/s). */
const writeBatchOps = 6;
const writeBatchEveryMs = 20;
const faultGapMs = { min: 1_000, max: 3_000 };
const etcdKillGapMs = { min: 5_000, max: 9_000 };
const etcdDownMs = { min: 500, max: 2_500 };
const pollEveryMs = 200;
const apiTimeoutMs = 3_000;
const mutationTimeoutMs = 10_000;
const startTimeoutMs = 30_000;
const findingsMax = 50;

// Independent generators: faults, etcd kills and the writer each replay from the seed.
const faultRng = new SeededRandom(seed * 4 + 1);
const etcdRng = new SeededRandom(seed * 4 + 2);
const writerRng = new SeededRandom(seed * 4 + 3);

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));
const between = (rng: SeededRandom, range: { min: number; max: number }): number => range.min + rng.int(range.max - range.min + 1);
const startedAt = Date.now();
const elapsedS = (): number => Math.round((Date.now() - startedAt) / 100) / 10;

// ---------------------------------------------------------------------------------------
// State shared by the phases, and what the summary reports.

const tempDir = mkdtempSync(join(tmpdir(), 'spanfeed-chaos-'));
const sinkDir = join(tempDir, 'file-sink');
const cluster = `chaos${process.pid}`;
const keys = clusterKeys(cluster);

const faults: Record<string, number> = {
  etcdLeaderKill: 0, captureKill: 0, ownerKill: 0, captureStop: 0, ownerResign: 0, drain: 0, undrain: 0, move: 0, rebalance: 0, pause: 0, resume: 0,
};
/** API answers to fault requests by kind and status (4xx are refusals, not failures). */
const answers: Record<string, Record<string, number>> = {};
const findings: string[] = [];
let checkpointRegressions = 0;
let checkpointAboveResolved = 0;
let catchUpFailures = 0;
let failedChangefeeds = 0;
let missing = 0;
let mismatched = 0;
let extra = 0;
let keysChecked = 0;
let unexpectedExits = 0;
let unexpectedEtcdExits = 0;
let captureStartFailures = 0;
let pausedLeftOver = 0;
let writerErrors = 0;
let writes = 0;
let lastRevision = 0n;
let apiPolls = 0;
let apiPollFailures = 0;
let etcdPolls = 0;
let etcdPollFailures = 0;
const catchUp: Record<string, number | null> = {};
const verified: Record<string, unknown> = {};

function finding(text: string, detail?: string): void {
  if (findings.length < findingsMax) findings.push(`${elapsedS()}s ${text}`);
  process.stderr.write(`chaos: FINDING at ${elapsedS()}s: ${text}\n${detail === undefined ? '' : `${detail}\n`}`);
}

const warnings: string[] = [];

/** Something wrong that is not one of the failure counts: reported, not failed. */
function warning(text: string): void {
  if (warnings.length < findingsMax) warnings.push(`${elapsedS()}s ${text}`);
  process.stderr.write(`chaos: WARNING at ${elapsedS()}s: ${text}\n`);
}

function note(text: string): void {
  process.stderr.write(`chaos: ${elapsedS()}s ${text}\n`);
}

let apiInternalErrors = 0;

/**
 * Counts an answer to a fault request. A 5xx other than 503 breaks the API's contract
 * (503 means retry, nothing changed): it is reported, and the caller treats the change
 * as maybe applied.
 */
function answered(kind: string, status: number | string, body?: unknown): void {
  const byStatus = (answers[kind] ??= {});
  byStatus[String(status)] = (byStatus[String(status)] ?? 0) + 1;
  if (typeof status === 'number' && status >= 500 && status !== 503) {
    apiInternalErrors++;
    warning(`API answered ${status} to ${kind}: ${JSON.stringify(body)}`);
  }
}

// ---------------------------------------------------------------------------------------
// Processes: the etcds and the captures. Every one is tracked for the exit handlers.

let meta: LocalEtcdCluster | undefined;
let upstream: LocalEtcdCluster | undefined;
let metaClient: Etcd3 | undefined;
let upClient: Etcd3 | undefined;

interface ChaosCapture {
  readonly name: string;
  readonly proc: LoggedProcess;
  readonly url: string;
  id: string;
}

const captures: ChaosCapture[] = [];
const allCaptures: ChaosCapture[] = [];
let captureSerial = 0;

function api<T = any>(url: string, method: string, path: string, body?: unknown, timeoutMs = apiTimeoutMs): Promise<{ status: number; body: T }> {
  return callApi<T>(url, method, path, body, undefined, timeoutMs);
}

/** Captures that run and are not SIGSTOPped. */
function live(): ChaosCapture[] {
  return captures.filter((c) => c.proc.running && !c.proc.stopped);
}

/**
 * Calls the API through live captures until one answers other than 503 (no owner right
 * now), bounded by `deadlineMs`. Throws when none did.
 */
async function callAny<T = any>(method: string, path: string, body?: unknown, deadlineMs = 15_000): Promise<{ status: number; body: T }> {
  // A change that times out here may still be applied: give it longer than a read.
  const timeoutMs = method === 'GET' ? apiTimeoutMs : mutationTimeoutMs;
  const deadline = Date.now() + deadlineMs;
  let last = 'no live capture';
  let turn = 0;
  while (Date.now() < deadline) {
    const candidates = live();
    const capture = candidates[turn++ % Math.max(1, candidates.length)];
    if (capture !== undefined) {
      try {
        const answer = await api<T>(capture.url, method, path, body, timeoutMs);
        if (answer.status !== 503) return answer;
        last = `503 ${JSON.stringify(answer.body)}`;
      } catch (error) {
        last = (error as Error).message;
      }
    }
    await sleep(100);
  }
  throw new Error(`${method} ${path}: no capture answered (${last})`);
}

function watchExit(capture: ChaosCapture): void {
  capture.proc.exited.then(
    (exit) => {
      if (capture.proc.killedOnPurpose) return;
      unexpectedExits++;
      finding(`capture ${capture.name} (pid ${capture.proc.pid}, id ${capture.id || '?'}) exited on its own: code ${exit.code} signal ${exit.signal}; log ${capture.proc.logPath}`, capture.proc.tail(3_000));
    },
    () => undefined,
  );
}

async function startCapture(): Promise<ChaosCapture | undefined> {
  if (meta === undefined) throw new Error('no metadata etcd');
  const name = `c${++captureSerial}`;
  const httpPort = await stablePort();
  const args = [
    bin, 'server',
    '--etcd', meta.endpoints.join(','), '--cluster', cluster,
    '--http', `127.0.0.1:${httpPort}`, '--grpc', '127.0.0.1:0',
    '--lease-ttl-s', String(leaseTtlS), '--log-level', 'info',
    '--file-sink-root', tempDir,
  ];
  const proc = new LoggedProcess(name, process.execPath, args, join(tempDir, `capture-${name}.log`), { cwd: root });
  const capture: ChaosCapture = { name, proc, url: `http://127.0.0.1:${httpPort}`, id: '' };
  captures.push(capture);
  allCaptures.push(capture);
  watchExit(capture);
  const deadline = Date.now() + startTimeoutMs;
  while (Date.now() < deadline && proc.running) {
    try {
      const status = await api<{ id: string }>(capture.url, 'GET', '/api/v1/status', undefined, 1_000);
      if (status.status === 200 && status.body.id !== '') {
        capture.id = status.body.id;
        return capture;
      }
    } catch {
      // Not listening yet.
    }
    await sleep(100);
  }
  captureStartFailures++;
  if (proc.running) {
    finding(`capture ${name} (pid ${proc.pid}) did not serve its status within ${startTimeoutMs} ms; killed`, proc.tail(3_000));
    await proc.kill();
  }
  captures.splice(captures.indexOf(capture), 1);
  return undefined;
}

/** Every live capture's current id (a fenced capture rejoins with a new one) and which is owner. */
async function refreshCaptures(): Promise<ChaosCapture | undefined> {
  let owner: ChaosCapture | undefined;
  await Promise.all(
    live().map(async (capture) => {
      try {
        const status = await api<{ id: string; isOwner: boolean }>(capture.url, 'GET', '/api/v1/status', undefined, 1_000);
        if (status.status !== 200) return;
        capture.id = status.body.id;
        if (status.body.isOwner) owner = capture;
      } catch {
        // Busy or dying: keeps its last id.
      }
    }),
  );
  return owner;
}

// ---------------------------------------------------------------------------------------
// Cleanup: on every way out, kill by pid and remove the temp dir (kept on failure).

let cleanedUp = false;
let keepTempDir = values.keep === true;

function cleanupNow(): void {
  if (cleanedUp) return;
  cleanedUp = true;
  for (const capture of allCaptures) capture.proc.killNow();
  meta?.killNow();
  upstream?.killNow();
  try {
    if (keepTempDir) {
      // The 64 MB WALs are of no use afterwards; the logs and the file sink stay.
      for (const entry of readdirSync(tempDir)) if (entry.endsWith('-data')) rmSync(join(tempDir, entry), { recursive: true, force: true });
      for (const sub of ['meta', 'upstream']) {
        try {
          for (const entry of readdirSync(join(tempDir, sub))) if (entry.endsWith('-data')) rmSync(join(tempDir, sub, entry), { recursive: true, force: true });
        } catch {
          // Not created.
        }
      }
    } else {
      rmSync(tempDir, { recursive: true, force: true });
    }
  } catch {
    // Best effort on the way out.
  }
}

process.on('exit', cleanupNow);
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.on(signal, () => {
    note(`${signal}: stopping every process`);
    cleanupNow();
    process.exit(130);
  });
}

// ---------------------------------------------------------------------------------------
// The writer: puts, overwrites and deletes over a few tables, at a bounded rate.

let writing = false;

function randomKey(table: string): Buffer {
  const n = writerRng.int(keysPerTable);
  // One key in fifty is not UTF-8 (the file sink writes keyBase64 for it).
  if (n % 50 === 7) return Buffer.concat([Buffer.from(`up/${table}/`), Buffer.from([0xff, 0xfe, n & 0xff])]);
  return Buffer.from(`up/${table}/${String(n).padStart(5, '0')}`);
}

function randomValue(): Buffer {
  if (writerRng.chance(0.05)) return Buffer.from([0xc3, 0x28, writerRng.int(256)]);
  return Buffer.from(`v${seed}-${writes}-${writerRng.int(1_000_000)}`);
}

async function writeOne(client: Etcd3, allowDelete: boolean): Promise<void> {
  const table = writerRng.pick(tableNames);
  const key = randomKey(table);
  const remove = allowDelete && writerRng.chance(0.15);
  const value = remove ? undefined : randomValue();
  try {
    const response = value === undefined ? await client.delete().key(key).exec() : await client.put(key).value(value).exec();
    const revision = BigInt(response.header.revision);
    if (revision > lastRevision) lastRevision = revision;
    writes++;
  } catch (error) {
    writerErrors++;
    if (writerErrors <= 3) finding(`upstream write failed: ${(error as Error).message}`);
  }
}

async function writerLoop(client: Etcd3): Promise<void> {
  while (writing) {
    const started = Date.now();
    await Promise.all(Array.from({ length: writeBatchOps }, () => writeOne(client, true)));
    await sleep(Math.max(0, writeBatchEveryMs - (Date.now() - started)));
  }
}

// ---------------------------------------------------------------------------------------
// The monitor: checkpoints through the API and in etcd never regress.

interface FeedView {
  readonly id: string;
  readonly state: string;
  readonly error?: string;
  readonly checkpointTs: string;
  readonly resolvedTs: string;
  readonly watermark?: { readonly state: string; readonly reason: string | null };
  readonly spansByState?: Record<string, number> | null;
  readonly warning?: unknown;
}

const feedIds = ['cf-file', 'cf-etcd'] as const;
const highest: Record<string, bigint> = {};
const failedSeen = new Set<string>();
let monitoring = false;
let pollTurn = 0;

const highestSinceS: Record<string, number> = {};
/** True while a slot reads below its high mark (a drop already counted). */
const below: Record<string, boolean> = {};
let checkpointRegressionPolls = 0;
const historiesDumped = new Set<string>();

/**
 * The last versions of a changefeed's persisted status, newest first, read back through
 * etcd's MVCC history (nothing compacts the metadata etcd during a run).
 */
async function statusHistory(client: Etcd3, id: string, versionsMax = 15): Promise<string[]> {
  const lines: string[] = [];
  let revision: string | undefined;
  for (let i = 0; i < versionsMax; i++) {
    const query = client.get(keys.changefeedStatus(id));
    if (revision !== undefined) query.revision(revision);
    const response = await query.exec();
    const kv = response.kvs[0];
    if (kv === undefined) break;
    lines.push(`  modRevision ${kv.mod_revision} version ${kv.version}: ${kv.value.toString()}`);
    if (BigInt(kv.mod_revision) <= 1n) break;
    revision = (BigInt(kv.mod_revision) - 1n).toString();
  }
  return lines;
}

let persistedHistoryRegressions = 0;
let persistedVersionsChecked = 0;

/**
 * (a) exactly, as persisted: every version a status key ever had, read back through
 * etcd's MVCC history (oldest first), must carry a checkpoint no lower than the ones
 * before it. Polling can miss a drop that lasts less than a poll; this cannot.
 */
async function checkPersistedHistory(client: Etcd3, id: string, versionsMax = 50_000): Promise<void> {
  const versions: { modRevision: bigint; checkpointTs: bigint; text: string }[] = [];
  let newestVersion = 0;
  let revision: string | undefined;
  for (let i = 0; i < versionsMax; i++) {
    const query = client.get(keys.changefeedStatus(id));
    if (revision !== undefined) query.revision(revision);
    const kv = (await query.exec()).kvs[0];
    if (kv === undefined) break;
    const text = kv.value.toString();
    if (newestVersion === 0) newestVersion = Number(kv.version);
    versions.push({ modRevision: BigInt(kv.mod_revision), checkpointTs: BigInt((JSON.parse(text) as { checkpointTs: string }).checkpointTs), text });
    if (BigInt(kv.mod_revision) <= 1n) break;
    revision = (BigInt(kv.mod_revision) - 1n).toString();
  }
  versions.reverse();
  persistedVersionsChecked += versions.length;
  if (versions.length !== newestVersion) warning(`the status history of ${id} has ${versions.length} versions readable of ${newestVersion}`);
  let high: (typeof versions)[number] | undefined;
  for (const version of versions) {
    if (high !== undefined && version.checkpointTs < high.checkpointTs) {
      persistedHistoryRegressions++;
      finding(
        `persisted checkpoint of ${id} regressed in etcd's history: ${high.checkpointTs} -> ${version.checkpointTs}`,
        `  modRevision ${high.modRevision}: ${high.text}\n  modRevision ${version.modRevision}: ${version.text}`,
      );
    }
    if (high === undefined || version.checkpointTs > high.checkpointTs) high = version;
  }
}

function observe(via: 'api' | 'etcd', id: string, checkpointTs: bigint, resolvedTs: bigint, from: string): void {
  const slot = `${via}:${id}`;
  const before = highest[slot];
  if (before !== undefined && checkpointTs < before) {
    checkpointRegressionPolls++;
    // One regression per drop: the polls that still read below the high mark after it
    // count as polls, not as more regressions.
    if (below[slot] !== true) {
      below[slot] = true;
      checkpointRegressions++;
      const text = `checkpoint regressed (${via}) for ${id}: ${before} (seen since ${highestSinceS[slot]}s) -> ${checkpointTs} (read from ${from})`;
      if (metaClient !== undefined && !historiesDumped.has(id)) {
        historiesDumped.add(id);
        const client = metaClient;
        void statusHistory(client, id)
          .then((history) => finding(text, `persisted status history of ${id}, newest first:\n${history.join('\n')}`))
          .catch((error: unknown) => finding(text, `status history unreadable: ${(error as Error).message}`));
      } else {
        finding(text);
      }
    }
  } else {
    below[slot] = false;
    if (before === undefined || checkpointTs > before) {
      highest[slot] = checkpointTs;
      highestSinceS[slot] = elapsedS();
    }
  }
  if (checkpointTs > resolvedTs) {
    checkpointAboveResolved++;
    if (checkpointAboveResolved <= 5) finding(`checkpoint above resolved (${via}) for ${id}: ${checkpointTs} > ${resolvedTs} (read from ${from})`);
  }
}

async function pollApiOnce(): Promise<void> {
  const candidates = live();
  const capture = candidates[pollTurn++ % Math.max(1, candidates.length)];
  if (capture === undefined) return;
  apiPolls++;
  try {
    const answer = await api<FeedView[]>(capture.url, 'GET', '/api/v1/changefeeds', undefined, 2_000);
    if (answer.status !== 200 || !Array.isArray(answer.body)) {
      apiPollFailures++;
      return;
    }
    for (const view of answer.body) {
      observe('api', view.id, BigInt(view.checkpointTs), BigInt(view.resolvedTs), `${capture.name} ${capture.id}`);
      if (view.state === 'failed' && !failedSeen.has(view.id)) {
        failedSeen.add(view.id);
        failedChangefeeds++;
        finding(`changefeed ${view.id} failed: ${view.error ?? '(no error)'}`);
      }
    }
  } catch {
    apiPollFailures++;
  }
}

async function pollEtcdOnce(client: Etcd3): Promise<void> {
  etcdPolls++;
  try {
    for (const id of feedIds) {
      const value = await client.get(keys.changefeedStatus(id)).string();
      if (value === null) continue;
      const status = JSON.parse(value) as { checkpointTs: string; resolvedTs: string };
      observe('etcd', id, BigInt(status.checkpointTs), BigInt(status.resolvedTs), 'metadata etcd');
      seenPersisted(id, BigInt(status.checkpointTs));
    }
  } catch {
    etcdPollFailures++;
  }
}

async function monitorLoop(client: Etcd3): Promise<void> {
  while (monitoring) {
    const started = Date.now();
    await Promise.all([pollApiOnce(), pollEtcdOnce(client)]);
    await sleep(Math.max(0, pollEveryMs - (Date.now() - started)));
  }
}

async function persistedCheckpoint(client: Etcd3, id: string): Promise<bigint | undefined> {
  const value = await client.get(keys.changefeedStatus(id)).string();
  return value === null ? undefined : BigInt((JSON.parse(value) as { checkpointTs: string }).checkpointTs);
}

// ---------------------------------------------------------------------------------------
// How long the persisted checkpoint stays frozen after a metadata-etcd leader kill: from
// the moment a surviving member reports a new leader (polled every 50 ms after the kill)
// to the moment each changefeed's persisted checkpoint is read above its value at the
// kill. Figures, not checks: nothing fails on them.

const electionPollMs = 50;
const electionWaitMs = 10_000;
const resumePollMs = 50;
const resumeWaitMs = 30_000;
const directReadTimeoutMs = 500;

/**
 * A fault that legitimately stops a checkpoint while it lasts and for a lease TTL after
 * (a capture's lease expiring, a new owner, a resumed changefeed starting over): a leader
 * kill whose window it overlaps is left out of the resume figures.
 */
interface Disturbance {
  readonly kind: string;
  readonly from: number;
  to: number | undefined;
}

const disturbances: Disturbance[] = [];
const disturbanceMarginMs = leaseTtlS * 1_000;

function disturb(kind: string): Disturbance {
  const d: Disturbance = { kind, from: Date.now(), to: undefined };
  disturbances.push(d);
  return d;
}

function settle(d: Disturbance | undefined): void {
  if (d !== undefined && d.to === undefined) d.to = Date.now();
}

/** The open pause of each changefeed (closed by its resume). */
const pauseDisturbance = new Map<string, Disturbance>();

interface LeaderKill {
  readonly atS: number;
  readonly member: string;
  readonly kind: string;
  electionMs: number | null;
  resumeMs: Record<string, number | null>;
  /** The longest resume over the changefeeds, when every one resumed. */
  resumeAllMs: number | null;
  excluded: string[];
  unmeasured: string | null;
}

const leaderKills: LeaderKill[] = [];
const measurements = new Set<Promise<void>>();
let measuring = true;

/** The leader and its member id, as a running member that is the leader says. */
async function leaderWithId(cluster: LocalEtcdCluster): Promise<{ member: (typeof cluster.members)[number]; id: string } | undefined> {
  for (const member of cluster.members) {
    const status = await cluster.memberStatus(member, 1_000);
    if (status !== undefined && status.memberId === status.leaderId) return { member, id: status.memberId };
  }
  return undefined;
}

/** One changefeed's persisted checkpoint, read from one member through its gateway (linearizable). */
async function directCheckpoint(clientPort: number, id: string): Promise<bigint | undefined> {
  const response = await fetch(`http://127.0.0.1:${clientPort}/v3/kv/range`, {
    method: 'POST',
    body: JSON.stringify({ key: Buffer.from(keys.changefeedStatus(id)).toString('base64') }),
    signal: AbortSignal.timeout(directReadTimeoutMs),
  });
  if (!response.ok) throw new Error(`range: ${response.status}`);
  const body = (await response.json()) as { kvs?: { value?: string }[] };
  const value = body.kvs?.[0]?.value;
  if (value === undefined) return undefined;
  return BigInt((JSON.parse(Buffer.from(value, 'base64').toString()) as { checkpointTs: string }).checkpointTs);
}

/** Open measurements' "seen above" hooks, fed by their own polls and by the monitor's. */
const resumeWatchers = new Set<(id: string, checkpointTs: bigint, at: number) => void>();

function seenPersisted(id: string, checkpointTs: bigint): void {
  const at = Date.now();
  for (const watcher of resumeWatchers) watcher(id, checkpointTs, at);
}

/**
 * SIGKILLs the metadata etcd leader and measures, in the background, the election and
 * the checkpoint resume after it. The checkpoints "at the kill" are read from the leader
 * itself just before the SIGKILL (the monitor's last reading if that read fails).
 */
async function killLeaderMeasured(cluster: LocalEtcdCluster, leader: { member: (typeof cluster.members)[number]; id: string }, kind: string): Promise<void> {
  const before: Record<string, bigint | undefined> = {};
  await Promise.all(
    feedIds.map(async (id) => {
      try {
        before[id] = await directCheckpoint(leader.member.clientPort, id);
      } catch {
        before[id] = highest[`etcd:${id}`];
      }
    }),
  );
  const record: LeaderKill = { atS: elapsedS(), member: leader.member.name, kind, electionMs: null, resumeMs: {}, resumeAllMs: null, excluded: [], unmeasured: null };
  leaderKills.push(record);
  const killedAt = Date.now();
  const self = disturb('etcdLeaderKill');
  const killed = cluster.kill(leader.member);
  const promise = measureLeaderKill(cluster, leader, killedAt, before, record, self)
    .catch((error: unknown) => {
      record.unmeasured = `error: ${(error as Error).message}`;
    })
    .finally(() => measurements.delete(promise));
  measurements.add(promise);
  settle(self);
  await killed;
}

async function measureLeaderKill(
  cluster: LocalEtcdCluster,
  leader: { member: (typeof cluster.members)[number]; id: string },
  killedAt: number,
  before: Record<string, bigint | undefined>,
  record: LeaderKill,
  self: Disturbance,
): Promise<void> {
  const survivors = cluster.members.filter((m) => m !== leader.member);
  // The election: a survivor that names a leader other than the killed member.
  let electedAt: number | undefined;
  while (measuring && electedAt === undefined && Date.now() - killedAt < electionWaitMs) {
    const started = Date.now();
    const statuses = await Promise.all(survivors.map((m) => cluster.memberStatus(m, 250)));
    if (statuses.some((s) => s !== undefined && s.leaderId !== leader.id)) electedAt = Date.now();
    else await sleep(Math.max(0, electionPollMs - (Date.now() - started)));
  }
  if (electedAt === undefined) {
    record.unmeasured = measuring ? `no new leader within ${electionWaitMs} ms` : 'run ended';
    return;
  }
  const elected = electedAt;
  record.electionMs = elected - killedAt;
  // The resume: every changefeed's persisted checkpoint above its value at the kill.
  const resumedAt: Record<string, number> = {};
  const watcher = (id: string, checkpointTs: bigint, at: number): void => {
    if (resumedAt[id] !== undefined || at < elected || !(id in before)) return;
    const at0 = before[id];
    if (at0 === undefined || checkpointTs > at0) resumedAt[id] = at;
  };
  resumeWatchers.add(watcher);
  let turn = 0;
  try {
    while (measuring && feedIds.some((id) => resumedAt[id] === undefined) && Date.now() - elected < resumeWaitMs) {
      const started = Date.now();
      const running = cluster.members.filter((m) => m.proc?.running === true && m !== leader.member);
      const member = running[turn++ % Math.max(1, running.length)];
      if (member !== undefined) {
        await Promise.all(
          feedIds.map(async (id) => {
            if (resumedAt[id] !== undefined) return;
            try {
              const checkpointTs = await directCheckpoint(member.clientPort, id);
              if (checkpointTs !== undefined) watcher(id, checkpointTs, Date.now());
            } catch {
              // That member is busy or restarting: the next poll asks another.
            }
          }),
        );
      }
      await sleep(Math.max(0, resumePollMs - (Date.now() - started)));
    }
  } finally {
    resumeWatchers.delete(watcher);
  }
  for (const id of feedIds) record.resumeMs[id] = resumedAt[id] === undefined ? null : resumedAt[id] - elected;
  const windowEnd = feedIds.every((id) => resumedAt[id] !== undefined) ? Math.max(...feedIds.map((id) => resumedAt[id] as number)) : Date.now();
  if (feedIds.every((id) => resumedAt[id] !== undefined)) record.resumeAllMs = windowEnd - elected;
  // Left out: a pause, or another capture kill, SIGSTOP, owner resign or leader kill,
  // during [kill, resume] or within a lease TTL before the kill (its effect still lasting).
  const reasons = new Set<string>();
  for (const d of disturbances) {
    if (d === self) continue;
    const effectEnd = (d.to ?? Number.POSITIVE_INFINITY) + (d.kind === 'etcdLeaderKill' ? 0 : disturbanceMarginMs);
    if (d.from <= windowEnd && effectEnd >= killedAt) reasons.add(d.kind);
  }
  record.excluded = [...reasons].sort();
  if (record.excluded.length === 0 && record.resumeAllMs === null) {
    record.unmeasured = measuring ? `not every checkpoint moved within ${resumeWaitMs} ms of the new leader` : 'run ended';
  }
}

function percentile(values: number[], p: number): number | null {
  if (values.length === 0) return null;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))] ?? null;
}

function leaderKillFigures(): Record<string, unknown> {
  const measured = leaderKills.filter((k) => k.excluded.length === 0 && k.unmeasured === null && k.resumeAllMs !== null);
  const resume = measured.map((k) => k.resumeAllMs as number);
  const elections = leaderKills.flatMap((k) => (k.electionMs === null ? [] : [k.electionMs]));
  return {
    leaderKillsMeasured: measured.length,
    leaderKillsExcluded: leaderKills.filter((k) => k.excluded.length > 0).length,
    leaderKillsUnmeasured: leaderKills.filter((k) => k.excluded.length === 0 && k.unmeasured !== null).length,
    checkpointResumeAfterLeaderMsP50: percentile(resume, 50),
    checkpointResumeAfterLeaderMsP99: percentile(resume, 99),
    checkpointResumeAfterLeaderMsMax: resume.length === 0 ? null : Math.max(...resume),
    leaderElectionMsP50: percentile(elections, 50),
    leaderElectionMsMax: elections.length === 0 ? null : Math.max(...elections),
    leaderKills: leaderKills.map((k) => ({ atS: k.atS, member: k.member, kind: k.kind, electionMs: k.electionMs, resumeMs: k.resumeMs, ...(k.excluded.length > 0 ? { excluded: k.excluded } : {}), ...(k.unmeasured === null ? {} : { unmeasured: k.unmeasured }) })),
  };
}

// ---------------------------------------------------------------------------------------
// Faults.

let faulting = false;
/** Recoveries scheduled by faults (SIGCONT, undrain, resume, etcd restart). */
const pending = new Set<Promise<void>>();
let drained: { capture: ChaosCapture; id: string } | undefined;
const paused = new Set<string>();

function later(ms: number, action: () => Promise<void> | void): void {
  const promise = (async () => {
    await sleep(ms);
    await action();
  })()
    .catch((error: unknown) => note(`recovery failed: ${(error as Error).message}`))
    .finally(() => pending.delete(promise));
  pending.add(promise);
}

async function pickCapture(ownerChance: number): Promise<{ capture: ChaosCapture; isOwner: boolean } | undefined> {
  const owner = await refreshCaptures();
  const candidates = live();
  if (candidates.length === 0) return undefined;
  if (owner !== undefined && faultRng.chance(ownerChance)) return { capture: owner, isOwner: true };
  const capture = faultRng.pick(candidates);
  return { capture, isOwner: capture === owner };
}

async function faultCaptureKill(): Promise<void> {
  const picked = await pickCapture(0.3);
  if (picked === undefined) return;
  const { capture, isOwner } = picked;
  faults.captureKill = (faults.captureKill ?? 0) + 1;
  if (isOwner) faults.ownerKill = (faults.ownerKill ?? 0) + 1;
  note(`SIGKILL ${capture.name} ${capture.id}${isOwner ? ' (owner)' : ''}`);
  settle(disturb('captureKill'));
  await capture.proc.kill();
  captures.splice(captures.indexOf(capture), 1);
  await startCapture();
}

async function faultCaptureStop(): Promise<void> {
  if (captures.some((c) => c.proc.stopped)) return;
  const picked = await pickCapture(0.3);
  if (picked === undefined) return;
  const { capture, isOwner } = picked;
  const forMs = leaseTtlS * 1_000 + 1_000 + faultRng.int(2_000);
  faults.captureStop = (faults.captureStop ?? 0) + 1;
  note(`SIGSTOP ${capture.name} ${capture.id}${isOwner ? ' (owner)' : ''} for ${forMs} ms`);
  const stop = disturb('captureStop');
  capture.proc.pause();
  later(forMs, () => {
    capture.proc.resume();
    settle(stop);
    note(`SIGCONT ${capture.name}`);
  });
}

async function faultOwnerResign(): Promise<void> {
  faults.ownerResign = (faults.ownerResign ?? 0) + 1;
  const resign = disturb('ownerResign');
  try {
    const answer = await callAny('POST', '/api/v1/owner/resign');
    answered('ownerResign', answer.status, answer.body);
    note(`owner resign: ${answer.status}`);
  } finally {
    settle(resign);
  }
}

async function undrain(target: { capture: ChaosCapture; id: string }): Promise<void> {
  faults.undrain = (faults.undrain ?? 0) + 1;
  const answer = await callAny('DELETE', `/api/v1/captures/${target.id}/drain`);
  answered('undrain', answer.status, answer.body);
  note(`undrain ${target.capture.name} ${target.id}: ${answer.status}${answer.status === 200 ? '' : ` ${JSON.stringify(answer.body)}`}`);
  if (drained === target) drained = undefined;
}

async function faultDrain(): Promise<void> {
  if (drained !== undefined) return;
  const picked = await pickCapture(0.2);
  if (picked === undefined || picked.capture.id === '') return;
  const target = { capture: picked.capture, id: picked.capture.id };
  faults.drain = (faults.drain ?? 0) + 1;
  const answer = await callAny('POST', `/api/v1/captures/${target.id}/drain`);
  answered('drain', answer.status, answer.body);
  note(`drain ${target.capture.name} ${target.id}${picked.isOwner ? ' (owner)' : ''}: ${answer.status}`);
  drained = target;
  later(2_000 + faultRng.int(4_000), () => undrain(target));
}

async function faultMove(): Promise<void> {
  const id = faultRng.pick(feedIds);
  const spans = await callAny<{ spans: { table: string; start: string; state: string; primary: string | null }[] }>('GET', `/api/v1/changefeeds/${id}/spans`);
  if (spans.status !== 200 || !Array.isArray(spans.body.spans) || spans.body.spans.length === 0) return;
  const span = faultRng.pick(spans.body.spans);
  await refreshCaptures();
  const targets = live().filter((c) => c.id !== '' && c.id !== span.primary);
  if (targets.length === 0) return;
  const target = faultRng.pick(targets);
  faults.move = (faults.move ?? 0) + 1;
  const answer = await callAny('POST', `/api/v1/changefeeds/${id}/spans/move`, { table: span.table, start: span.start, captureId: target.id });
  answered('move', answer.status, answer.body);
  note(`move ${id} ${span.table} ${JSON.stringify(span.start)} ${span.state} to ${target.name} ${target.id}: ${answer.status}${answer.status === 202 ? '' : ` ${JSON.stringify(answer.body)}`}`);
}

async function faultRebalance(): Promise<void> {
  const id = faultRng.pick(feedIds);
  faults.rebalance = (faults.rebalance ?? 0) + 1;
  const answer = await callAny('POST', `/api/v1/changefeeds/${id}/rebalance`);
  answered('rebalance', answer.status, answer.body);
  note(`rebalance ${id}: ${answer.status}${answer.status === 202 ? '' : ` ${JSON.stringify(answer.body)}`}`);
}

async function resumeFeed(id: string): Promise<void> {
  faults.resume = (faults.resume ?? 0) + 1;
  const answer = await callAny<{ error?: { code?: string } }>('POST', `/api/v1/changefeeds/${id}/resume`);
  answered('resume', answer.status, answer.body);
  note(`resume ${id}: ${answer.status}${answer.status === 202 ? '' : ` ${JSON.stringify(answer.body)}`}`);
  // 409 not-paused: an earlier try that timed out here was applied.
  if (answer.status === 202 || answer.body.error?.code === 'not-paused') {
    paused.delete(id);
    settle(pauseDisturbance.get(id));
    pauseDisturbance.delete(id);
  }
}

async function faultPauseResume(): Promise<void> {
  const id = faultRng.pick(feedIds);
  if (paused.has(id)) return;
  await pauseThenResume(id);
}

/** Pauses `id` through the API and schedules its resume, counting both. */
async function pauseThenResume(id: string): Promise<void> {
  faults.pause = (faults.pause ?? 0) + 1;
  const pause = disturb('pause');
  let answer: { status: number; body: { error?: { code?: string } } };
  try {
    answer = await callAny<{ error?: { code?: string } }>('POST', `/api/v1/changefeeds/${id}/pause`);
  } catch (error) {
    settle(pause);
    throw error;
  }
  answered('pause', answer.status, answer.body);
  note(`pause ${id}: ${answer.status}${answer.status === 202 ? '' : ` ${JSON.stringify(answer.body)}`}`);
  // 409 already-paused: an earlier try that timed out here was applied; resume it too
  // (and after a 5xx, which may have been applied).
  if (answer.status !== 202 && answer.status < 500 && answer.body.error?.code !== 'already-paused') {
    settle(pause);
    return;
  }
  paused.add(id);
  pauseDisturbance.set(id, pause);
  later(1_000 + faultRng.int(3_000), () => resumeFeed(id));
}

/**
 * The metadata etcd leader SIGKILLed and a changefeed paused right after (while the
 * owner's checkpoint write may hang on the dead member), resumed a little later.
 */
async function faultPauseAtEtcdKill(): Promise<void> {
  if (meta === undefined) return;
  const id = faultRng.pick(feedIds);
  if (paused.has(id)) return;
  const cluster = meta;
  const found = await leaderWithId(cluster);
  if (found === undefined) return;
  const leader = found.member;
  faults.etcdLeaderKill = (faults.etcdLeaderKill ?? 0) + 1;
  note(`SIGKILL metadata etcd leader ${leader.name}, then pause ${id}`);
  await killLeaderMeasured(cluster, found, 'pauseAtEtcdKill');
  later(between(faultRng, etcdDownMs), () => cluster.restart(leader));
  await sleep(faultRng.int(500));
  await pauseThenResume(id);
}

const allFaults: readonly { readonly name: string; readonly weight: number; readonly run: () => Promise<void> }[] = [
  { name: 'captureKill', weight: 3, run: faultCaptureKill },
  { name: 'captureStop', weight: 2, run: faultCaptureStop },
  { name: 'ownerResign', weight: 2, run: faultOwnerResign },
  { name: 'drain', weight: 2, run: faultDrain },
  { name: 'move', weight: 3, run: faultMove },
  { name: 'rebalance', weight: 2, run: faultRebalance },
  { name: 'pauseResume', weight: 2, run: faultPauseResume },
  { name: 'pauseAtEtcdKill', weight: 1, run: faultPauseAtEtcdKill },
];
const faultNames = [...allFaults.map((f) => f.name), 'etcdLeaderKill'];
/** `--faults a,b`: only these kinds (to chase one finding); all of them by default. */
const chosenFaults = values.faults === undefined ? faultNames : values.faults.split(',').map((name) => name.trim());
for (const name of chosenFaults) if (!faultNames.includes(name)) throw new Error(`--faults: unknown fault ${JSON.stringify(name)}; known: ${faultNames.join(', ')}`);
const faultTable = allFaults.filter((f) => chosenFaults.includes(f.name));

async function faultLoop(until: number): Promise<void> {
  const total = faultTable.reduce((n, f) => n + f.weight, 0);
  while (faulting && Date.now() < until && total > 0) {
    await sleep(between(faultRng, faultGapMs));
    if (!faulting || Date.now() >= until) return;
    let draw = faultRng.int(total);
    const fault = faultTable.find((f) => (draw -= f.weight) < 0) ?? faultTable[0];
    try {
      await fault?.run();
    } catch (error) {
      note(`fault failed: ${(error as Error).message}`);
    }
  }
}

async function etcdKillLoop(cluster: LocalEtcdCluster, until: number): Promise<void> {
  while (faulting && Date.now() < until && chosenFaults.includes('etcdLeaderKill')) {
    await sleep(between(etcdRng, etcdKillGapMs));
    if (!faulting || Date.now() >= until) return;
    const found = await leaderWithId(cluster);
    if (found === undefined) continue;
    faults.etcdLeaderKill = (faults.etcdLeaderKill ?? 0) + 1;
    note(`SIGKILL metadata etcd leader ${found.member.name}`);
    await killLeaderMeasured(cluster, found, 'etcdLeaderKill');
    await sleep(between(etcdRng, etcdDownMs));
    cluster.restart(found.member);
  }
}

// ---------------------------------------------------------------------------------------
// The sinks replayed independently.

/**
 * Keys and values as lowercase hex: two keys compare in byte order exactly as their hex
 * strings do (two characters per byte, and a byte prefix is a hex prefix).
 */
type HexState = Map<string, string>;

async function upstreamState(client: Etcd3, table: string, atTs: bigint): Promise<HexState> {
  const state: HexState = new Map();
  let start = Buffer.from(`up/${table}/`);
  const end = Buffer.from(prefixEnd(`up/${table}/`), 'latin1');
  for (let page = 0; page < 1_000; page++) {
    const response = await client.getAll().inRange({ start, end }).limit(5_000).revision(atTs.toString()).exec();
    for (const kv of response.kvs) state.set(kv.key.toString('hex'), kv.value.toString('hex'));
    const last = response.kvs.at(-1);
    if (!response.more || last === undefined) return state;
    start = Buffer.concat([last.key, Buffer.from([0])]);
  }
  throw new Error('upstream range read did not end');
}

function bytesOf(line: Record<string, unknown>, name: 'key' | 'value' | 'start' | 'end'): Buffer | undefined {
  const text = line[name];
  if (typeof text === 'string') return Buffer.from(text, 'utf8');
  const b64 = line[`${name}Base64`];
  if (typeof b64 === 'string') return Buffer.from(b64, 'base64');
  return undefined;
}

/**
 * The file sink's state of one table at `atTs`, read here and not with the verifier:
 * only newline-terminated lines count; per key the line with the highest ts <= atTs
 * wins; a retire at ts deletes every key of [start, end) whose winning line is older.
 */
function fileSinkState(table: string, atTs: bigint): { state: HexState; lines: number; foreign: number } {
  const latest = new Map<string, { ts: bigint; value: string | undefined }>();
  const retires: { start: string; end: string | undefined; ts: bigint }[] = [];
  let lines = 0;
  let foreign = 0;
  let names: string[] = [];
  try {
    names = readdirSync(join(sinkDir, table)).filter((n) => n.endsWith('.ndjson'));
  } catch {
    // No directory: nothing written for this table.
  }
  for (const name of names) {
    const text = readFileSync(join(sinkDir, table, name), 'utf8');
    const complete = text.slice(0, text.lastIndexOf('\n') + 1);
    for (const raw of complete.split('\n')) {
      if (raw === '') continue;
      let line: Record<string, unknown>;
      try {
        line = JSON.parse(raw) as Record<string, unknown>;
      } catch {
        foreign++;
        continue;
      }
      lines++;
      if (line.table !== table || typeof line.ts !== 'string' || !/^\d+$/.test(line.ts)) {
        foreign++;
        continue;
      }
      const ts = BigInt(line.ts);
      if (ts > atTs) continue;
      if (line.op === 'retire') {
        const start = bytesOf(line, 'start');
        if (start === undefined) foreign++;
        else retires.push({ start: start.toString('hex'), end: bytesOf(line, 'end')?.toString('hex'), ts });
        continue;
      }
      const key = bytesOf(line, 'key');
      if (key === undefined || (line.op !== 'put' && line.op !== 'delete')) {
        foreign++;
        continue;
      }
      const hex = key.toString('hex');
      const previous = latest.get(hex);
      if (previous !== undefined && previous.ts > ts) continue;
      latest.set(hex, { ts, value: line.op === 'delete' ? undefined : (bytesOf(line, 'value') ?? Buffer.alloc(0)).toString('hex') });
    }
  }
  for (const retire of retires) {
    for (const [key, entry] of latest) {
      if (entry.ts < retire.ts && key >= retire.start && (retire.end === undefined || key < retire.end)) latest.set(key, { ts: retire.ts, value: undefined });
    }
  }
  const state: HexState = new Map();
  for (const [key, { value }] of latest) if (value !== undefined) state.set(key, value);
  return { state, lines, foreign };
}

/** The file sink, read here, against the upstream at `atTs`. */
async function verifyFileSink(client: Etcd3, atTs: bigint): Promise<Record<string, number | string>> {
  let checked = 0;
  let miss = 0;
  let diff = 0;
  let more = 0;
  let lines = 0;
  let foreign = 0;
  for (const table of tableNames) {
    const up = await upstreamState(client, table, atTs);
    const sink = fileSinkState(table, atTs);
    lines += sink.lines;
    foreign += sink.foreign;
    for (const [key, value] of up) {
      checked++;
      const copied = sink.state.get(key);
      if (copied === undefined) {
        miss++;
        if (miss <= 5) note(`file sink misses ${Buffer.from(key, 'hex').toString('latin1')} at ${atTs}`);
      } else if (copied !== value) {
        diff++;
        if (diff <= 5) note(`file sink mismatches ${Buffer.from(key, 'hex').toString('latin1')} at ${atTs}`);
      }
    }
    for (const key of sink.state.keys()) {
      if (!up.has(key)) {
        more++;
        if (more <= 5) note(`file sink has extra ${Buffer.from(key, 'hex').toString('latin1')} at ${atTs}`);
      }
    }
  }
  if (foreign > 0) finding(`file sink holds ${foreign} complete lines that are not events of their table`);
  return { atTs: atTs.toString(), keysChecked: checked, missing: miss, mismatched: diff, extra: more, lines, foreign };
}

// ---------------------------------------------------------------------------------------
// The run.

async function waitCheckpoints(client: Etcd3, revision: bigint, timeoutMs: number): Promise<Record<string, number | null>> {
  const started = Date.now();
  const reached: Record<string, number | null> = Object.fromEntries(feedIds.map((id) => [id, null]));
  while (Date.now() - started < timeoutMs) {
    for (const id of feedIds) {
      if (reached[id] !== null) continue;
      let persisted: bigint | undefined;
      try {
        persisted = await persistedCheckpoint(client, id);
      } catch {
        continue;
      }
      const api = highest[`api:${id}`];
      if (persisted !== undefined && persisted >= revision && api !== undefined && api >= revision) reached[id] = Date.now() - started;
    }
    if (feedIds.every((id) => reached[id] !== null)) break;
    await sleep(250);
  }
  return reached;
}

async function describeFeeds(): Promise<string> {
  try {
    const answer = await callAny<FeedView[]>('GET', '/api/v1/changefeeds', undefined, 5_000);
    if (!Array.isArray(answer.body)) return JSON.stringify(answer.body);
    return answer.body.map((v) => JSON.stringify({ id: v.id, state: v.state, error: v.error, checkpointTs: v.checkpointTs, resolvedTs: v.resolvedTs, watermark: v.watermark, spansByState: v.spansByState, warning: v.warning })).join('\n');
  } catch (error) {
    return (error as Error).message;
  }
}

/** Verifies one changefeed's sink at its persisted checkpoint (read before the sink is). */
async function verifyFeed(id: (typeof feedIds)[number], sinkUri: string, upstreamUri: string): Promise<Record<string, unknown> | undefined> {
  if (metaClient === undefined || upClient === undefined) return undefined;
  const atTs = await persistedCheckpoint(metaClient, id);
  if (atTs === undefined) return undefined;
  if (id === 'cf-file') return verifyFileSink(upClient, atTs);
  const result = await verify(upstreamUri, sinkUri, tableNames.map((name) => ({ name, start: `up/${name}/`, end: prefixEnd(`up/${name}/`) })), atTs);
  return { ...result };
}

let midRunChecks = 0;
let midRunCheckErrors = 0;

/** (c) during the faults too: every sink matches the upstream at its persisted checkpoint. */
async function midRunVerifyLoop(sinks: Record<(typeof feedIds)[number], string>, upstreamUri: string, until: number): Promise<void> {
  while (faulting && Date.now() < until) {
    await sleep(8_000);
    if (!faulting || Date.now() >= until) return;
    for (const id of feedIds) {
      try {
        const result = (await verifyFeed(id, sinks[id], upstreamUri)) as { missing: number; mismatched: number; extra: number } | undefined;
        if (result === undefined) continue;
        midRunChecks++;
        missing += result.missing;
        mismatched += result.mismatched;
        extra += result.extra;
        if (result.missing + result.mismatched + result.extra > 0) finding(`mid-run: sink of ${id} differs from the upstream at its persisted checkpoint: ${JSON.stringify(result)}`);
      } catch (error) {
        midRunCheckErrors++;
        note(`mid-run verify of ${id} failed: ${(error as Error).message}`);
      }
    }
  }
}

async function run(): Promise<void> {
  note(`seed ${seed}, ${faultSeconds} s of faults, temp dir ${tempDir}`);
  meta = await LocalEtcdCluster.start({ dir: join(tempDir, 'meta'), size: 3, token: `spanfeed-chaos-meta-${process.pid}-${seed}` });
  upstream = await LocalEtcdCluster.start({
    dir: join(tempDir, 'upstream'),
    size: 1,
    token: `spanfeed-chaos-up-${process.pid}-${seed}`,
    // Frequent per-watcher progress: the etcd source's resolved-ts for idle spans.
    extraArgs: ['--experimental-watch-progress-notify-interval=100ms'],
  });
  metaClient = createEtcdClient({ endpoints: meta.endpoints, callTimeoutMs: 2_000 });
  upClient = createEtcdClient({ endpoints: upstream.endpoints, callTimeoutMs: 5_000 });
  const upstreamUri = `etcd://${upstream.endpoints.join(',')}`;

  // Keys that exist before the changefeeds do: the backfill copies them.
  for (let i = 0; i < prefillKeysPerTable * tableNames.length; i += writeBatchOps) {
    await Promise.all(Array.from({ length: writeBatchOps }, () => writeOne(upClient as Etcd3, false)));
  }
  for (let i = 0; i < captureCount; i++) {
    if ((await startCapture()) === undefined) throw new Error('a capture did not start before any fault');
  }
  const tables = (spans: number) => tableNames.map((name) => ({ name, prefix: `up/${name}/`, spans }));
  const feeds = {
    'cf-file': { source: { uri: upstreamUri }, sink: { uri: `file://${sinkDir}?maxFileBytes=65536` }, tables: tables(4), backfill: true },
    'cf-etcd': { source: { uri: upstreamUri }, sink: { uri: `${upstreamUri}/mirror/` }, tables: tables(3), backfill: true },
  };
  for (const [id, body] of Object.entries(feeds)) {
    const created = await callAny('POST', '/api/v1/changefeeds', { id, ...body }, 30_000);
    if (created.status !== 201) throw new Error(`create ${id}: ${created.status} ${JSON.stringify(created.body)}`);
  }
  monitoring = true;
  const monitor = monitorLoop(metaClient);
  const backfilled = await waitCheckpoints(metaClient, lastRevision, 60_000);
  if (feedIds.some((id) => backfilled[id] === null)) throw new Error(`the changefeeds did not pass the backfill before any fault:\n${await describeFeeds()}`);
  note(`backfilled past ${lastRevision}; faults start`);

  // The fault phase.
  writing = true;
  const writer = writerLoop(upClient);
  faulting = true;
  const until = Date.now() + faultSeconds * 1_000;
  const sinks = { 'cf-file': feeds['cf-file'].sink.uri, 'cf-etcd': feeds['cf-etcd'].sink.uri };
  await Promise.all([faultLoop(until), etcdKillLoop(meta, until), midRunVerifyLoop(sinks, upstreamUri, until)]);
  faulting = false;

  // Everything back: recoveries due, etcd members, SIGCONT, undrain, resume, captures.
  await Promise.all([...pending]);
  for (const member of meta.members) meta.restart(member);
  for (const capture of captures) if (capture.proc.stopped) capture.proc.resume();
  if (drained !== undefined) await undrain(drained).catch((error: unknown) => note(`undrain failed: ${(error as Error).message}`));
  for (const id of [...paused]) await resumeFeed(id).catch((error: unknown) => note(`resume failed: ${(error as Error).message}`));
  // A changefeed paused that every pause here was resumed for: a resume did not stick.
  try {
    const views = await callAny<FeedView[]>('GET', '/api/v1/changefeeds');
    for (const view of Array.isArray(views.body) ? views.body : []) {
      if (view.state !== 'paused') continue;
      finding(`changefeed ${view.id} is paused after the faults although every pause of it was answered by a resume; resuming it`, JSON.stringify(view));
      pausedLeftOver++;
      await resumeFeed(view.id);
    }
  } catch (error) {
    note(`could not list changefeeds after the faults: ${(error as Error).message}`);
  }
  for (let i = captures.filter((c) => c.proc.running).length; i < captureCount; i++) await startCapture();
  writing = false;
  await writer;
  note(`faults and writes stopped: ${writes} writes, last revision ${lastRevision}`);

  // (b) catch-up.
  const reached = await waitCheckpoints(metaClient, lastRevision, catchUpMs);
  Object.assign(catchUp, reached);
  for (const id of feedIds) {
    if (reached[id] !== null) continue;
    catchUpFailures++;
    let persisted = 'unknown';
    try {
      persisted = String(await persistedCheckpoint(metaClient, id));
    } catch (error) {
      persisted = (error as Error).message;
    }
    finding(`changefeed ${id} did not catch up past revision ${lastRevision} within ${catchUpMs} ms: persisted checkpoint ${persisted}, api ${highest[`api:${id}`]}`, await describeFeeds());
  }
  // The leader-kill measurements still open (each bounded) end before the monitor does.
  await Promise.all([...measurements]);
  measuring = false;
  monitoring = false;
  await monitor;

  for (const id of feedIds) {
    try {
      await checkPersistedHistory(metaClient, id);
    } catch (error) {
      finding(`could not read the status history of ${id}: ${(error as Error).message}`);
      persistedHistoryRegressions++;
    }
  }

  // (c) the sinks replayed at their persisted checkpoints.
  for (const id of feedIds) {
    const result = await verifyFeed(id, sinks[id], upstreamUri);
    if (result === undefined) {
      finding(`changefeed ${id} has no persisted status`);
      catchUpFailures++;
      continue;
    }
    verified[id] = result;
    const r = result as { missing: number; mismatched: number; extra: number; keysChecked: number };
    missing += r.missing;
    mismatched += r.mismatched;
    extra += r.extra;
    keysChecked += r.keysChecked;
    if (r.missing + r.mismatched + r.extra > 0) finding(`sink of ${id} differs from the upstream at its persisted checkpoint: ${JSON.stringify(result)}`);
  }
}

function summary(error: unknown): number {
  for (const [which, etcd] of [['metadata', meta], ['upstream', upstream]] as const) {
    for (const exit of etcd?.unexpected ?? []) {
      unexpectedEtcdExits++;
      finding(`${which} etcd ${exit.member} (pid ${exit.pid}) exited on its own: code ${exit.code} signal ${exit.signal}`, exit.tail);
    }
  }
  const failures = checkpointRegressions + persistedHistoryRegressions + checkpointAboveResolved + catchUpFailures + failedChangefeeds + missing + mismatched + extra + unexpectedExits + unexpectedEtcdExits + captureStartFailures + pausedLeftOver + writerErrors + (error === undefined ? 0 : 1);
  if (failures > 0) keepTempDir = true;
  const line = {
    seed,
    seconds: faultSeconds,
    ...(values.faults === undefined ? {} : { faultKinds: chosenFaults }),
    ok: failures === 0,
    faults,
    answers,
    writes,
    lastRevision: lastRevision.toString(),
    checkpointRegressions,
    checkpointRegressionPolls,
    persistedHistoryRegressions,
    persistedVersionsChecked,
    checkpointAboveResolved,
    catchUpFailures,
    failedChangefeeds,
    missing,
    mismatched,
    extra,
    keysChecked,
    unexpectedExits,
    unexpectedEtcdExits,
    captureStartFailures,
    pausedLeftOver,
    apiInternalErrors,
    writerErrors,
    catchUpMs: catchUp,
    verified,
    midRunChecks,
    midRunCheckErrors,
    polls: { api: apiPolls, apiFailures: apiPollFailures, etcd: etcdPolls, etcdFailures: etcdPollFailures },
    capturesStarted: allCaptures.length,
    ...leaderKillFigures(),
    error: error === undefined ? null : (error as Error).message,
    findings,
    warnings,
    tempDir: keepTempDir ? tempDir : null,
    elapsedS: elapsedS(),
  };
  process.stdout.write(`${JSON.stringify(line)}\n`);
  return failures === 0 ? 0 : 1;
}

let runError: unknown;
try {
  await run();
} catch (error) {
  runError = error;
  process.stderr.write(`chaos: run failed: ${(error as Error).stack ?? String(error)}\n`);
}
faulting = false;
writing = false;
monitoring = false;
measuring = false;
const code = summary(runError);
if (keepTempDir) process.stderr.write(`chaos: kept ${tempDir} (process logs, file sink)\n`);
for (const capture of allCaptures) capture.proc.killNow();
metaClient?.close();
upClient?.close();
await Promise.all(allCaptures.map((c) => c.proc.exited));
await meta?.stop();
await upstream?.stop();
cleanupNow();
process.exit(code);

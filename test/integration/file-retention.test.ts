/**
 * File sink retention (`retainFiles`, `retainHours`) against real files: only sealed
 * files wholly at or below the checkpoint go, oldest first, as the settings allow; an
 * open file, a file of a writer that died and anything above the checkpoint stay; after a
 * move's replay a consumer loses nothing up to the checkpoint; bad settings are refused at
 * create; and the verifier compares what is above a retained directory's horizon, against
 * a real etcd, and end to end through a running capture.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, utimesSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Etcd3 } from 'etcd3';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { Span } from '../../src/core/span.ts';
import { validateSinkUri } from '../../src/pipeline/registry.ts';
import { FileSink, parseFileSinkUri } from '../../src/pipeline/sinks/file.ts';
import type { FileSinkContext } from '../../src/pipeline/sinks/file.ts';
import { cutByAge, rankSealed, readRetentionHorizon, retentionLogName, retireCandidates, sealSuffix } from '../../src/pipeline/sinks/file-retention.ts';
import type { ChangeEvent } from '../../src/pipeline/source.ts';
import { ValidationError, parseCreateRequest } from '../../src/server/changefeed-info.ts';
import { RetentionHorizonError, fileSinkState, fileSinkView, verify } from '../../src/verify/verifier.ts';
import type { ChangefeedView } from './harness.ts';
import { TestCapture, TestEtcd, api, waitFor } from './harness.ts';

const spanA: Span = { table: 'kv', start: '', end: 'm' };
const spanB: Span = { table: 'kv', start: 'm', end: '' };
const put = (key: string, ts: bigint, table = 'kv'): ChangeEvent => ({ table, key, value: `v${ts}`, op: 'put', ts });
/** Passes only when a test asks for one. */
const manual = { passIntervalMs: 1e12 } as const;
const hourMs = 3_600_000;

const dirs: string[] = [];
function tempDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'spanfeed-retain-'));
  dirs.push(dir);
  return dir;
}

afterEach(() => {
  for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
});

interface Line {
  readonly key: string;
  readonly ts: bigint;
}

/** Every complete line of every data file of a table directory, by file name. */
function linesByFile(tableDir: string): Map<string, Line[]> {
  const out = new Map<string, Line[]>();
  for (const name of readdirSync(tableDir).filter((n) => n.endsWith('.ndjson'))) {
    const text = readFileSync(join(tableDir, name), 'utf8');
    const lines = text.slice(0, Math.max(0, text.lastIndexOf('\n'))).split('\n').filter((l) => l !== '');
    out.set(name, lines.map((l) => JSON.parse(l) as { key: string; ts: string }).map((l) => ({ key: l.key, ts: BigInt(l.ts) })));
  }
  return out;
}

function retentionLog(tableDir: string): { file: string; maxTs: bigint }[] {
  const path = join(tableDir, retentionLogName);
  if (!existsSync(path)) return [];
  return readFileSync(path, 'utf8').split('\n').filter((l) => l !== '').map((l) => JSON.parse(l) as { file: string; maxTs: string }).map((l) => ({ file: l.file, maxTs: BigInt(l.maxTs) }));
}

/** Writes one event per ts in [from, to] for `span`, 100-odd bytes each, flushing every 5. */
async function writeRange(sink: FileSink, span: Span, from: number, to: number, prefix = span.start === '' ? 'a' : 'n'): Promise<void> {
  for (let ts = from; ts <= to; ts++) {
    await sink.write(span, [{ ...put(`${prefix}${String(ts).padStart(6, '0')}`, BigInt(ts)), value: 'x'.repeat(80) }]);
    if (ts % 5 === 0) await sink.flush(span);
  }
  await sink.flush(span);
}

function sealedNames(tableDir: string): string[] {
  return readdirSync(tableDir).filter((n) => n.endsWith(sealSuffix)).map((n) => n.slice(0, -sealSuffix.length));
}

describe('the retention rule (pure)', () => {
  const files = [
    { name: 'c', maxTs: 30n },
    { name: 'a', maxTs: 10n },
    { name: 'b', maxTs: 20n },
    { name: 'd', maxTs: 40n },
  ];

  it('ranks oldest first and lets go only a prefix at or below the checkpoint, outside the newest n', () => {
    const ranked = rankSealed(files);
    expect(ranked.map((f) => f.name)).toEqual(['a', 'b', 'c', 'd']);
    expect(retireCandidates(ranked, 25n, {}, 100).map((f) => f.name)).toEqual(['a', 'b']);
    expect(retireCandidates(ranked, 100n, { retainFiles: 1 }, 100).map((f) => f.name)).toEqual(['a', 'b', 'c']);
    expect(retireCandidates(ranked, 100n, { retainFiles: 4 }, 100)).toEqual([]);
    expect(retireCandidates(ranked, 100n, { retainFiles: 0 }, 2).map((f) => f.name)).toEqual(['a', 'b']);
    expect(retireCandidates(ranked, 9n, { retainFiles: 0 }, 100)).toEqual([]);
  });

  it('stops at the first file retainHours keeps', () => {
    const ranked = rankSealed(files);
    const now = 100 * hourMs;
    const written = new Map([['a', now - 5 * hourMs], ['b', now - 1 * hourMs], ['c', now - 5 * hourMs]]);
    expect(cutByAge(ranked.slice(0, 3), written, { retainHours: 2 }, now).map((f) => f.name)).toEqual(['a']);
    expect(cutByAge(ranked.slice(0, 3), written, { retainHours: 0.5 }, now).map((f) => f.name)).toEqual(['a', 'b', 'c']);
    expect(cutByAge(ranked, written, {}, now).map((f) => f.name)).toEqual(['a', 'b', 'c', 'd']);
  });
});

describe('file sink retention', () => {
  it('deletes only sealed files wholly at or below the checkpoint, keeping the newest retainFiles', async () => {
    const dir = tempDir();
    const sink = new FileSink(parseFileSinkUri(`file://${dir}?maxFileBytes=1024&retainFiles=2`), { retentionLimits: manual });
    const tableDir = join(dir, 'kv');
    try {
      await writeRange(sink, spanA, 1, 100);
      const before = linesByFile(tableDir);
      expect(before.size).toBeGreaterThan(6);
      // No checkpoint observed yet: nothing goes.
      expect((await sink.retainNow()).retired).toBe(0);
      expect(linesByFile(tableDir).size).toBe(before.size);

      const checkpointTs = 60n;
      sink.observeCheckpoint(checkpointTs);
      const { retired } = await sink.retainNow();
      expect(retired).toBeGreaterThan(0);
      const after = linesByFile(tableDir);
      const log = retentionLog(tableDir);
      expect(log.map((l) => l.file).sort()).toEqual([...before.keys()].filter((n) => !after.has(n)).sort());
      expect(log).toHaveLength(retired);
      for (const { file, maxTs } of log) {
        // Wholly at or below the checkpoint, as its seal said.
        const lines = before.get(file) ?? [];
        expect(lines.every((l) => l.ts <= checkpointTs)).toBe(true);
        expect(maxTs).toBe(lines.reduce((m, l) => (l.ts > m ? l.ts : m), 0n));
      }
      // Oldest first: what is left starts where what went ends.
      const horizon = await readRetentionHorizon(tableDir);
      expect(horizon).toBe(log.reduce((m, l) => (l.maxTs > m ? l.maxTs : m), 0n));
      const left = [...after.values()].flat();
      for (let ts = Number(horizon) + 1; ts <= 100; ts++) expect(left.some((l) => l.ts === BigInt(ts))).toBe(true);
      // Nothing above the checkpoint went; the first file past it is the first one kept.
      expect(left.filter((l) => l.ts > checkpointTs)).toHaveLength(40);

      // The checkpoint moves to the end: every sealed file but the newest two goes; the
      // open file stays (it is not sealed, whatever its ts).
      sink.observeCheckpoint(1_000n);
      await sink.retainNow();
      const sealed = sealedNames(tableDir);
      const remaining = [...linesByFile(tableDir).keys()];
      expect(sealed).toHaveLength(2);
      expect(remaining).toHaveLength(3);
      expect(remaining.filter((n) => !sealed.includes(n))).toHaveLength(1);
      const total = [...linesByFile(tableDir).values()].flat();
      expect(total.some((l) => l.ts === 100n)).toBe(true);
    } finally {
      await sink.close();
    }
  });

  it('never deletes an open file; closes and seals one left idle, after which it may go', async () => {
    const dir = tempDir();
    let now = Date.now();
    const context: FileSinkContext = { retentionLimits: { ...manual, idleCloseMs: 60_000 }, nowMs: () => now };
    const sink = new FileSink(parseFileSinkUri(`file://${dir}?retainFiles=0`), context);
    const tableDir = join(dir, 'kv');
    try {
      await writeRange(sink, spanA, 1, 10);
      sink.observeCheckpoint(1_000n);
      await sink.retainNow();
      const [open] = [...linesByFile(tableDir).keys()];
      expect(open).toBeDefined();
      expect(sealedNames(tableDir)).toEqual([]);
      expect(retentionLog(tableDir)).toEqual([]);

      // Written but not flushed: not idle, however long ago.
      await sink.write(spanA, [put('a-unflushed', 11n)]);
      now += 120_000;
      await sink.retainNow();
      expect(sealedNames(tableDir)).toEqual([]);
      await sink.flush(spanA);

      // Idle and flushed: closed and sealed, then (retainFiles=0) retired in the same pass.
      now += 120_000;
      expect(await sink.retainNow()).toEqual({ sealed: 1, retired: 1 });
      expect(existsSync(join(tableDir, open as string))).toBe(false);
      expect(retentionLog(tableDir)).toEqual([{ file: open, maxTs: 11n }]);
      // The span writes on, in a new file.
      await sink.write(spanA, [put('a-later', 12n)]);
      await sink.flush(spanA);
      expect([...linesByFile(tableDir).values()].flat()).toEqual([{ key: 'a-later', ts: 12n }]);
    } finally {
      await sink.close();
    }
  });

  it('retainHours keeps files last written within the hours, and files retire oldest first', async () => {
    const dir = tempDir();
    const sink = new FileSink(parseFileSinkUri(`file://${dir}?maxFileBytes=1024&retainHours=1`), { retentionLimits: manual });
    const tableDir = join(dir, 'kv');
    try {
      await writeRange(sink, spanA, 1, 60);
      await sink.retainNow();
      sink.observeCheckpoint(1_000n);
      // Everything was just written: nothing goes.
      expect((await sink.retainNow()).retired).toBe(0);
      const byMaxTs = sealedNames(tableDir).map((name) => ({ name, maxTs: (linesByFile(tableDir).get(name) ?? []).reduce((m, l) => (l.ts > m ? l.ts : m), 0n) })).sort((a, b) => Number(a.maxTs - b.maxTs));
      expect(byMaxTs.length).toBeGreaterThan(4);
      const [first, second, third, fourth] = byMaxTs as unknown as [{ name: string }, { name: string }, { name: string }, { name: string }];
      const old = (Date.now() - 2 * hourMs) / 1000;
      // The oldest two and the fourth were last written two hours ago; the third just now:
      // the oldest two go, and the third holds the fourth back.
      for (const { name } of [first, second, fourth]) utimesSync(join(tableDir, name), old, old);
      expect((await sink.retainNow()).retired).toBe(2);
      expect(retentionLog(tableDir).map((l) => l.file)).toEqual([first.name, second.name]);
      expect(existsSync(join(tableDir, fourth.name))).toBe(true);
      utimesSync(join(tableDir, third.name), old, old);
      expect((await sink.retainNow()).retired).toBe(2);
      expect(retentionLog(tableDir).map((l) => l.file)).toEqual([first.name, second.name, third.name, fourth.name]);
    } finally {
      await sink.close();
    }
  });

  it('with both settings a file goes only when neither keeps it', async () => {
    const dir = tempDir();
    let now = Date.now();
    const sink = new FileSink(parseFileSinkUri(`file://${dir}?maxFileBytes=1024&retainFiles=3&retainHours=1`), { retentionLimits: { ...manual, idleCloseMs: 1e12 }, nowMs: () => now });
    const tableDir = join(dir, 'kv');
    try {
      await writeRange(sink, spanA, 1, 80);
      await sink.retainNow();
      sink.observeCheckpoint(1_000n);
      const sealed = sealedNames(tableDir).length;
      expect(sealed).toBeGreaterThan(5);
      expect((await sink.retainNow()).retired).toBe(0);
      now += 2 * hourMs;
      expect((await sink.retainNow()).retired).toBe(sealed - 3);
      expect(sealedNames(tableDir)).toHaveLength(3);
    } finally {
      await sink.close();
    }
  });

  it('after a move, a consumer of the files loses nothing up to the checkpoint; a dead writer\'s file stays', async () => {
    const dir = tempDir();
    const tableDir = join(dir, 'kv');
    const uri = `file://${dir}?maxFileBytes=1024&retainFiles=0`;
    // Capture 1 holds span A and writes up to 40; the changefeed's checkpoint is 30 (span
    // B lags). Capture 2 holds span B and dies without closing its file.
    const one = new FileSink(parseFileSinkUri(uri), { retentionLimits: manual });
    // One file, never rotated: it stays open until the process dies.
    const dead = new FileSink(parseFileSinkUri(`file://${dir}?retainFiles=0`), { retentionLimits: manual });
    await writeRange(one, spanA, 1, 40);
    await writeRange(dead, spanB, 1, 30);
    // A consumer tails the directory: it reads what is there up to the checkpoint, each
    // time before retention runs.
    const seen = new Set<string>();
    const tail = (checkpointTs: bigint): void => {
      for (const l of [...linesByFile(tableDir).values()].flat()) if (l.ts <= checkpointTs) seen.add(`${l.key}@${l.ts}`);
    };
    tail(30n);
    one.observeCheckpoint(30n);
    await one.retainNow();
    // Span A moves: capture 1 closes its sink (its files get seals) and capture 3 replays
    // from the span's checkpoint 30 into new files, on to 70. Span B moves too.
    await one.close();
    const three = new FileSink(parseFileSinkUri(uri), { retentionLimits: manual });
    try {
      await writeRange(three, spanA, 31, 70);
      await writeRange(three, spanB, 31, 70);
      const checkpointTs = 50n;
      tail(checkpointTs);
      three.observeCheckpoint(checkpointTs);
      expect((await three.retainNow()).retired).toBeGreaterThan(0);
      const left = linesByFile(tableDir);
      // Capture 1's files are all gone (wholly below 50), the dead writer's is not.
      expect([...left.values()].flat().some((l) => l.key.startsWith('a') && l.ts <= 30n)).toBe(false);
      expect([...left.values()].flat().filter((l) => l.key.startsWith('n') && l.ts <= 30n)).toHaveLength(30);
      for (const { maxTs } of retentionLog(tableDir)) expect(maxTs).toBeLessThanOrEqual(checkpointTs);
      // What the consumer read before plus what is left holds every event up to 70.
      for (const l of [...left.values()].flat()) seen.add(`${l.key}@${l.ts}`);
      for (let ts = 1; ts <= 70; ts++) {
        expect(seen.has(`a${String(ts).padStart(6, '0')}@${ts}`)).toBe(true);
        expect(seen.has(`n${String(ts).padStart(6, '0')}@${ts}`)).toBe(true);
      }
      // And what is left holds every event above the horizon by itself.
      const horizon = (await readRetentionHorizon(tableDir)) as bigint;
      const leftKeys = new Set([...left.values()].flat().map((l) => `${l.key}@${l.ts}`));
      for (let ts = Number(horizon) + 1; ts <= 70; ts++) expect(leftKeys.has(`a${String(ts).padStart(6, '0')}@${ts}`)).toBe(true);
    } finally {
      await three.close();
      await dead.close();
    }
  });

  it('keeps today\'s directory (no seals, no log) with retention off', async () => {
    const dir = tempDir();
    const sink = new FileSink(parseFileSinkUri(`file://${dir}?maxFileBytes=1024`), { retentionLimits: manual });
    try {
      await writeRange(sink, spanA, 1, 50);
      sink.observeCheckpoint(1_000n);
      expect(await sink.retainNow()).toEqual({ sealed: 0, retired: 0 });
    } finally {
      await sink.close();
    }
    expect(readdirSync(join(dir, 'kv')).every((n) => n.endsWith('.ndjson'))).toBe(true);
  });
});

describe('retention settings', () => {
  it('parses them and refuses bad values with a clear error, at create (HTTP 400)', () => {
    expect(parseFileSinkUri('file:///d?retainFiles=5&retainHours=1.5')).toMatchObject({ retainFiles: 5, retainHours: 1.5 });
    expect(parseFileSinkUri('file:///d')).not.toHaveProperty('retainFiles');
    const bad: [string, RegExp][] = [
      ['retainFiles=-1', /retainFiles="-1" must be an integer from 0 to 1000000/],
      ['retainFiles=1.5', /retainFiles="1.5" must be an integer/],
      ['retainFiles=many', /retainFiles="many"/],
      ['retainFiles=1000001', /retainFiles/],
      ['retainHours=-2', /retainHours="-2" must be a number from 0 to 87600/],
      ['retainHours=1e3', /retainHours="1e3"/],
      ['retainHours=', /retainHours=""/],
      ['retainHours=100000', /retainHours/],
      ['retainfiles=3', /parameter "retainfiles" is not known \(known: maxFileBytes, retainFiles, retainHours\)/],
      ['retainFiles=1&retainFiles=2', /"retainFiles" is given more than once/],
    ];
    for (const [query, message] of bad) {
      expect(() => validateSinkUri(`file:///d?${query}`)).toThrow(message);
      const body = { id: 'cf', source: { uri: 'datagen://' }, sink: { uri: `file:///d?${query}` }, tables: [{ name: 't', prefix: 't/' }] };
      expect(() => parseCreateRequest(body)).toThrow(ValidationError);
      expect(() => parseCreateRequest(body)).toThrow(message);
    }
  });
});

describe('verifying a retained directory', () => {
  let etcd: TestEtcd;
  let client: Etcd3;

  beforeAll(async () => {
    etcd = await TestEtcd.start();
    client = new Etcd3({ hosts: `http://${etcd.endpoint}` });
  }, 120_000);

  afterAll(async () => {
    client?.close();
    await etcd?.stop();
  });

  it('compares keys changed above the horizon, leaves the rest out, refuses a ts below it', async () => {
    const dir = tempDir();
    const table = { name: 'vt', start: 'vt/', end: 'vt0' };
    const span: Span = { table: 'vt', start: 'vt/', end: 'vt0' };
    const sink = new FileSink(parseFileSinkUri(`file://${dir}?maxFileBytes=1024&retainFiles=1`), { retentionLimits: manual });
    // A writer that died holds `vt/ghost`, put early; its delete goes in a file that is
    // retired. A full replay of what is left brings the ghost back; the verifier must not
    // count it, since it was last changed below the horizon.
    const dead = new FileSink(parseFileSinkUri(`file://${dir}`), { retentionLimits: manual });
    const change = async (key: string, value: string | undefined): Promise<bigint> => {
      const revision = BigInt(value === undefined ? (await client.delete().key(key).exec()).header.revision : (await client.put(key).value(value).exec()).header.revision);
      const event: ChangeEvent = value === undefined ? { table: 'vt', key, op: 'delete', ts: revision } : { table: 'vt', key, value, op: 'put', ts: revision };
      await (key === 'vt/ghost' && value !== undefined ? dead : sink).write(span, [event]);
      return revision;
    };
    try {
      await change('vt/ghost', 'boo');
      await dead.flush(span);
      for (let i = 0; i < 30; i++) await change(`vt/k${i % 10}`, `${i}-${'x'.repeat(60)}`);
      await change('vt/ghost', undefined);
      await change('vt/k9', undefined);
      let last = 0n;
      for (let i = 0; i < 30; i++) last = await change(`vt/m${i}`, `${i}-${'y'.repeat(60)}`);
      await sink.flush(span);
      await sink.retainNow();
      sink.observeCheckpoint(last);
      expect((await sink.retainNow()).retired).toBeGreaterThan(0);
      const { horizonTs } = await fileSinkView(dir, 'vt', last);
      expect(horizonTs).toBeDefined();
      expect((await fileSinkState(dir, 'vt', last)).get('vt/ghost')).toBe('boo');

      const result = await verify(`etcd://${etcd.endpoint}`, `file://${dir}`, [table], last);
      expect(result).toMatchObject({ missing: 0, mismatched: 0, extra: 0, horizonTs: (horizonTs as bigint).toString() });
      expect(result.keysBelowHorizon).toBeGreaterThan(0);
      expect(result.keysChecked).toBeGreaterThan(0);
      await expect(verify(`etcd://${etcd.endpoint}`, `file://${dir}`, [table], (horizonTs as bigint) - 1n)).rejects.toThrow(RetentionHorizonError);

      // A change above the horizon that the sink lost is found: delete the newest file.
      const newest = [...linesByFile(join(dir, 'vt'))].find(([, lines]) => lines.some((l) => l.ts === last));
      rmSync(join(dir, 'vt', (newest as [string, Line[]])[0]));
      expect((await verify(`etcd://${etcd.endpoint}`, `file://${dir}`, [table], last)).missing).toBeGreaterThan(0);
    } finally {
      await sink.close();
      await dead.close();
    }
  });
});

describe('a running capture with retention', () => {
  const bin = fileURLToPath(new URL('../../bin/spanfeed', import.meta.url));
  const cluster = `retain${process.pid}`;
  let etcd: TestEtcd;
  let client: Etcd3;
  let capture: TestCapture | undefined;
  /** Outlives each test: the capture writes into it until it stops. */
  let dir: string;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'spanfeed-retain-'));
    etcd = await TestEtcd.start();
    client = new Etcd3({ hosts: `http://${etcd.endpoint}` });
    // Small steps: the writes below land in many batches, so the files roll many times.
    capture = await TestCapture.start(etcd, { cluster, extraArgs: ['--pipeline-batch-events', '20'] });
  }, 120_000);

  afterAll(async () => {
    await capture?.stop();
    client?.close();
    await etcd?.stop();
    if (dir !== undefined) rmSync(dir, { recursive: true, force: true });
  });

  it('retires files below the persisted checkpoint, counts them, and verify compares above the horizon', async () => {
    const url = (capture as TestCapture).url;
    await waitFor('an owner', async () => ((await api(url, 'GET', '/api/v1/captures')).status === 200 ? true : undefined));
    const refused = await api<{ error: string }>(url, 'POST', '/api/v1/changefeeds', {
      id: 'bad',
      source: { uri: `etcd://${etcd.endpoint}` },
      sink: { uri: `file://${dir}?retainFiles=-3` },
      tables: [{ name: 'rt', prefix: 'rt/' }],
    });
    expect(refused.status).toBe(400);
    expect(JSON.stringify(refused.body)).toMatch(/retainFiles/);
    const created = await api(url, 'POST', '/api/v1/changefeeds', {
      id: 'cf',
      source: { uri: `etcd://${etcd.endpoint}` },
      sink: { uri: `file://${dir}?maxFileBytes=2048&retainFiles=2` },
      tables: [{ name: 'rt', prefix: 'rt/', spans: 2 }],
    });
    expect(created.status).toBe(201);
    await waitFor('the changefeed to advance', async () => ((await api<ChangefeedView>(url, 'GET', '/api/v1/changefeeds/cf')).body.watermark.state === 'advancing' ? true : undefined), 30_000, 100);
    let last = 0n;
    for (let round = 0; round < 20; round++) {
      const revisions = await Promise.all(Array.from({ length: 50 }, async (_, i) => (await client.put(`rt/${String((round * 50 + i) % 400).padStart(4, '0')}`).value(`${round}-${'z'.repeat(40)}`).exec()).header.revision));
      for (const r of revisions) if (BigInt(r) > last) last = BigInt(r);
    }
    await waitFor('the checkpoint to pass the writes', async () => (BigInt((await api<ChangefeedView>(url, 'GET', '/api/v1/changefeeds/cf')).body.checkpointTs) >= last ? true : undefined), 60_000, 100);
    await waitFor('files to be retired', () => (existsSync(join(dir, 'rt', retentionLogName)) ? true : undefined), 30_000, 100);
    const metrics = await api<string>(url, 'GET', '/metrics');
    expect(String(metrics.body)).toMatch(/spanfeed_sink_files_retired_total\{changefeed="cf"\} [1-9]/);
    const out = spawnSync(process.execPath, [bin, 'verify', '--changefeed', 'cf', '--etcd', etcd.endpoint, '--cluster', cluster], { encoding: 'utf8' });
    expect(out.stderr).toMatch(/retention retired files up to ts \d+: only keys changed above it are compared/);
    expect(out.status).toBe(0);
    expect(JSON.parse(out.stdout.trim())).toMatchObject({ tables: 1, missing: 0, mismatched: 0, extra: 0, horizonTs: expect.any(String) });
  }, 120_000);
});
